"""Input components that check what an API client sends before gradio or the handler touch it.

The browser only sends what the widgets allow; a client of the API can send anything JSON can hold (a list for a
number, 10**400, a string of 10 KB). Each check here turns such a value into a short, clear ``gr.Error``.
"""

from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path

import gradio as gr
import gradio.component_meta as _component_meta
from gradio.exceptions import InvalidPathError
from gradio.utils import get_upload_folder, is_in_or_equal

#: Beyond this, a number is certainly out of every range the app offers; rejecting it before any float()
#: conversion also avoids OverflowError for integers of 309 digits and more.
HUGE = 2**53
log = logging.getLogger("ddpm_explorer")


def user_error(message: str) -> gr.Error:
    """A message for the user about their request; the server log keeps no traceback for it (not a fault)."""
    return gr.Error(message, print_exception=False)


def short_repr(value, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: an error message must not echo a 10 KB request back."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def check_number(value, label: str):
    """The value if it is a real, finite number of sane size; else a ``gr.Error`` naming ``label``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise user_error(f"{label} must be a finite number, got {short_repr(value)}")
    if isinstance(value, int) and abs(value) > HUGE:
        raise user_error(f"{label} is far out of range (a number of {len(str(abs(value)))} digits)")
    if not math.isfinite(value):
        raise user_error(f"{label} must be a finite number, got {value!r}")
    return value


@contextlib.contextmanager
def _no_stub_files():
    """gradio writes a ``.pyi`` stub beside the source of every component subclass when the class is created;
    the app's folder may be read-only at run time (as on Spaces), and nothing but results may be written."""
    original = _component_meta.create_or_modify_pyi
    _component_meta.create_or_modify_pyi = lambda *args, **kwargs: None
    try:
        yield
    finally:
        _component_meta.create_or_modify_pyi = original


with _no_stub_files():

    class UploadImage(gr.Image):
        """An image upload that passes the raw file path on: ``ddpm_core.imaging`` decodes it safely (gradio
        would open it with PIL first, turning corrupt files and bombs into an opaque error)."""

        is_template = True
        #: Besides gradio's upload cache, files may come from these folders (the app's own examples).
        allowed_folders: tuple[str, ...] = ()

        def preprocess(self, payload):
            if payload is None:
                return None
            if payload.path is None:
                raise user_error("The upload did not arrive as a file; please upload it again.")
            if not any(
                is_in_or_equal(payload.path, folder) for folder in (get_upload_folder(), *self.allowed_folders)
            ):
                # an API client can name any path; only uploads (and the examples) are ever read
                raise user_error("That file was not uploaded to this Space: upload the image, then use it.")
            return payload.path

    class SafeSketchpad(gr.Sketchpad):
        """A drawing canvas whose drawing reaches the handler as the path of its composite image, unread: the
        handler decodes it with ``ddpm_core.imaging``'s allow-list and pixel limit once the job is known to have a
        listener (gradio's own would first open the composite, the background and every layer with PIL, whatever
        their format and size, even for a job nobody listens to). Layers and background are ignored: the canvas
        sends its composite."""

        is_template = True

        def get_block_name(self) -> str:
            # the page draws a component by this name; a template's default is its base's ("sketchpad"), which
            # the page has no component for (gr.Sketchpad itself is an "imageeditor")
            return "imageeditor"

        def preprocess(self, payload):
            composite = getattr(payload, "composite", None)
            if composite is None:
                return None
            if not composite.path or not is_in_or_equal(composite.path, get_upload_folder()):
                raise user_error("The drawing did not arrive as an upload to this Space; please draw it again.")
            return composite.path

    class IntegerDropdown(gr.Dropdown):
        """A dropdown whose values are whole numbers, documented so in the API (gradio's says strings)."""

        is_template = True

        def api_info(self):
            info = super().api_info()
            if info.get("enum") and all(isinstance(v, int) for v in info["enum"]):
                info["type"] = "integer"
            return info

    class StrictNumber(gr.Number):
        """A number input whose API value is checked (type, size, finiteness) before gradio's own handling."""

        is_template = True

        def preprocess(self, payload):
            if payload is None:
                return None
            return super().preprocess(check_number(payload, self.label or "value"))

    class StrictSlider(gr.Slider):
        """A slider whose API value is checked (type, size, finiteness) before gradio's bounds check."""

        is_template = True

        def preprocess(self, payload):
            return super().preprocess(check_number(payload, self.label or "value"))

    class StrictCheckboxGroup(gr.CheckboxGroup):
        """A checkbox group whose API value must be a list of strings (a single string counts as a list of one)."""

        is_template = True

        def preprocess(self, payload):
            payload = [payload] if isinstance(payload, str) else payload
            if not isinstance(payload, list) or not all(isinstance(v, str) for v in payload):
                raise user_error(f"{self.label or 'value'} must be a list of names, got {short_repr(payload)}")
            return super().preprocess(payload)


def clear_request_errors(demo: gr.Blocks) -> gr.Blocks:
    """Requests gradio refuses before any handler runs get a message that says why (gradio's own is generic):
    too few values, a file path that was never uploaded, a value that does not fit its input's form."""
    validate, preprocess = demo.validate_inputs, demo.preprocess_data

    def validate_inputs(block_fn, inputs):
        if len(inputs) < len(block_fn.inputs):
            names = ", ".join(getattr(b, "label", None) or type(b).__name__ for b in block_fn.inputs)
            raise user_error(
                f"{block_fn.api_name or block_fn.name} takes {len(block_fn.inputs)} values ({names}); "
                f"{len(inputs)} arrived: a value is missing"
            )
        return validate(block_fn, inputs)

    async def preprocess_data(block_fn, inputs, state, explicit_call=False):
        try:
            return await preprocess(block_fn, inputs, state, explicit_call)
        except gr.Error:
            raise
        except InvalidPathError as err:
            raise user_error("That file was not uploaded to this Space: upload the image, then use it.") from err
        except Exception as err:  # pydantic's ValidationError included: a value of the wrong form
            # one line in the log, not a traceback: a malformed request is the client's mistake, not a fault
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            log.info("refused a request to %s: %s", block_fn.api_name or block_fn.name, short_repr(first_line, 120))
            raise user_error(
                f"A value sent to {block_fn.api_name or block_fn.name} does not fit its input "
                f"({short_repr(first_line, 120)})"
            ) from err

    demo.validate_inputs, demo.preprocess_data = validate_inputs, preprocess_data
    return demo


EXAMPLES_DIR = Path(__file__).resolve().parents[1] / "examples"  # images this repo made itself
# served from the repo as they are, never copied into gradio's cache, where the disk cap's sweep removes files
gr.set_static_paths([str(EXAMPLES_DIR)])
EXAMPLES = sorted(str(p) for p in EXAMPLES_DIR.glob("*.png"))
DEFAULT_IMAGE = str(EXAMPLES_DIR / "sunset.png") if (EXAMPLES_DIR / "sunset.png").is_file() else None
UploadImage.allowed_folders = (str(EXAMPLES_DIR),)


def image_with_examples(label: str, height: int, elem_id: str, examples_label: str) -> tuple[UploadImage, gr.Dataset]:
    """An image upload or paste, preset to the bundled sunset, with the example images below it. Returns the input
    and the examples' gr.Dataset (whose label the language switch updates)."""
    image = UploadImage(
        value=DEFAULT_IMAGE,
        label=label,
        type="filepath",
        sources=["upload", "clipboard"],
        height=height,
        elem_id=elem_id,
    )
    return image, gr.Examples(EXAMPLES, inputs=image, label=examples_label).dataset
