"""The language switch: every component that shows text registers it here, by key, in both languages.

A tab module holds ``TEXT = {"en": {...}, "zh": {...}}`` and creates its components with English text from
``tr(TEXT, key)``; registering them with :meth:`Translations.add` is what makes the switch reach them. The switch
builds one update per registered component, in registration order, so no list of keys or positions is kept
anywhere else.
"""

from __future__ import annotations

import gradio as gr

LANGS = {"English": "en", "简体中文": "zh"}


def tr(text: dict, key: str, lang: str = "en", **fmt) -> str:
    """``text[lang][key]``, falling back to English where a translation is missing, formatted with ``fmt`` if any:
    the UI's one text lookup."""
    shown = text.get(lang, {}).get(key) or text["en"][key]
    return shown.format(**fmt) if fmt else shown


class Translations:
    """Registered texts, grouped per component (a component may show several: a label and its choices)."""

    def __init__(self):
        self._items: dict[int, tuple] = {}  # id(component) -> (component, [(attr, text, key, fmt), ...])

    def add(self, component, text: dict, key: str, attr: str = "label", **fmt):
        """Show ``text[lang][key]`` (formatted with ``fmt``) as ``component``'s ``attr`` ("label", "value", "info",
        or "choices": a list of (shown, value) pairs whose values stay the same in every language)."""
        self._items.setdefault(id(component), (component, []))[1].append((attr, text, key, fmt))
        return component

    @property
    def components(self) -> list:
        return [component for component, _ in self._items.values()]

    def updates(self, language: str) -> list:
        lang = LANGS.get(language, "en")
        return [
            gr.update(**{attr: tr(text, key, lang, **fmt) for attr, text, key, fmt in texts})
            for _, texts in self._items.values()
        ]

    def missing(self) -> list[str]:
        """Keys with no Chinese text (a test keeps this empty)."""
        return sorted(
            {key for _, texts in self._items.values() for _, text, key, _ in texts if not text.get("zh", {}).get(key)}
        )
