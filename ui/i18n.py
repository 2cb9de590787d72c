"""The language switch: every component that shows text registers it here, by key, in both languages.

A tab module holds ``TEXT = {"en": {...}, "zh": {...}}`` and creates its components with English text from
``tr(TEXT, key)``; registering them with :meth:`Translations.add` is what makes the switch reach them. The switch
builds one update per registered component, in registration order, so no list of keys or positions is kept
anywhere else.
"""

from __future__ import annotations

import gradio as gr

LANGS = {"English": "en", "简体中文": "zh"}


def tr(text: dict, key: str, lang: str = "en") -> str:
    """``text[lang][key]``, falling back to English where a translation is missing."""
    return text.get(lang, {}).get(key) or text["en"][key]


class Translations:
    def __init__(self):
        self._items: list[tuple[gr.components.Component | gr.blocks.Block, str, dict, str, dict]] = []

    def add(self, component, text: dict, key: str, attr: str = "label", **fmt):
        """Show ``text[lang][key]`` (formatted with ``fmt``) as ``component``'s ``attr`` ("label", "value", "info")."""
        self._items.append((component, attr, text, key, fmt))
        return component

    @property
    def components(self) -> list:
        return [item[0] for item in self._items]

    def updates(self, language: str) -> list:
        lang = LANGS.get(language, "en")
        return [
            gr.update(**{attr: tr(text, key, lang).format(**fmt) if fmt else tr(text, key, lang)})
            for _, attr, text, key, fmt in self._items
        ]

    def missing(self) -> list[str]:
        """Keys with no Chinese text (a test keeps this empty)."""
        return sorted({key for _, _, text, key, _ in self._items if not text.get("zh", {}).get(key)})
