"""Sphinx directives that render CONFIG reference tables from the code.

``layer-options`` lists :data:`channels_engines.layer.LAYER_OPTIONS`; ``engine-options NAME``
lists the ``options`` of the engine that ``ENGINE: NAME`` selects (a registered name, an
entry-point name or a dotted path); ``credential-provider-options NAME`` lists the options
of the credential provider that ``"credentials": {"provider": NAME, ...}`` selects. Each
row shows the key, what :meth:`Option.describe` says is allowed, the default and the help
text, so the documentation cannot drift from the declarations the layer validates against.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

HEADERS = ("Key", "Allowed values", "Default", "Meaning")
WIDTHS = (18, 30, 14, 38)


class _OptionsTable(SphinxDirective):
    option_spec = {"caption": directives.unchanged, "class": directives.class_option}

    def note_module(self, name: str) -> None:
        """Rebuild this page when the module ``name`` changes."""
        path = getattr(sys.modules.get(name), "__file__", None)
        if path:
            self.env.note_dependency(path)

    def table(self, options: Mapping[str, Any], caption: str) -> nodes.table:
        table = nodes.table(classes=["config-options", *self.options.get("class", [])])
        caption = self.options.get("caption", caption)
        table += nodes.title(caption, caption)
        group = nodes.tgroup(cols=len(HEADERS))
        table += group
        for width in WIDTHS:
            group += nodes.colspec(colwidth=width)
        head = nodes.thead()
        head += _row(nodes.paragraph(text=header) for header in HEADERS)
        group += head
        body = nodes.tbody()
        for key, option in options.items():
            body += _row(
                [
                    nodes.paragraph("", "", nodes.literal(text=key)),
                    nodes.paragraph(text=option.describe()),
                    nodes.paragraph("", "", nodes.literal(text=_default(option))),
                    nodes.paragraph(text=option.help),
                ]
            )
        group += body
        return table


class LayerOptions(_OptionsTable):
    """``layer-options``: the CONFIG keys the layer handles for every engine."""

    def run(self) -> list[nodes.Node]:
        try:
            from channels_engines.layer import LAYER_OPTIONS
        except Exception as exc:
            raise self.error(
                f"layer-options: cannot import channels_engines.layer: {exc!r}"
            ) from exc
        self.note_module("channels_engines.layer")
        return [self.table(LAYER_OPTIONS, "CONFIG keys of every engine")]


class EngineOptions(_OptionsTable):
    """``engine-options NAME``: the CONFIG keys one engine adds."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        name = self.arguments[0]
        try:
            from channels_engines.engines import engines

            engine = engines.load(name, where="engine-options")
        except Exception as exc:
            raise self.error(f"cannot document the options of ENGINE {name!r}: {exc}") from exc
        self.note_module(engine.__module__)
        if not engine.options:
            text = f"The {name} engine has no CONFIG keys of its own."
            return [nodes.paragraph(text=text)]
        return [self.table(engine.options, f"CONFIG keys of the {name} engine")]


class CredentialProviderOptions(_OptionsTable):
    """``credential-provider-options NAME``: the options one credential provider takes."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        name = self.arguments[0]
        try:
            from channels_engines.credentials import credential_providers

            provider = credential_providers.load(name, where="credential-provider-options")
        except Exception as exc:
            raise self.error(
                f"cannot document the options of the credential provider {name!r}: {exc}"
            ) from exc
        self.note_module(provider.__module__)
        if not provider.options:
            text = f"The {name} provider takes no options."
            return [nodes.paragraph(text=text)]
        caption = f"Options of the {name} credential provider"
        return [self.table(provider.options, caption)]


def _row(cells: Any) -> nodes.row:
    row = nodes.row()
    for content in cells:
        entry = nodes.entry()
        entry += content
        row += entry
    return row


def _default(option: Any) -> str:
    if getattr(option, "required", False):
        return "(required)"
    if option.secret and option.default is not None:
        return "(hidden)"
    return repr(option.default)


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("layer-options", LayerOptions)
    app.add_directive("engine-options", EngineOptions)
    app.add_directive("credential-provider-options", CredentialProviderOptions)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
