"""One module per tab: its layout, its handlers and its texts in both languages.

A tab module defines ``TEXT = {"en": {...}, "zh": {...}}`` (with at least ``"tab"``, its title) and
``build(ctx: Context)``, which lays the tab out inside ``gr.Tab(...)``, wires its events and registers every text
it shows with ``ctx.i18n``. ``TABS`` is the order in which ``app.py`` assembles them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import gradio as gr

from ui.i18n import Translations


@dataclass
class Context:
    demo: gr.Blocks
    i18n: Translations = field(default_factory=Translations)
    #: The visitor's language code ("en", "zh"), for texts a handler writes (summaries, progress); a gr.State, so
    #: not a parameter of the API endpoints.
    lang: gr.State | None = None


def tabs():
    """The tab modules, in page order (imported here so that importing ``ui.tabs`` alone stays cheap)."""
    from ui.tabs import bound, compare, denoise, forward, lab2d, sample, schedules

    return [forward, schedules, sample, compare, denoise, lab2d, bound]
