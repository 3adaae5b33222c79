"""mkdocs hooks of the mixlab site (``hooks:`` in mkdocs.yml).

* ``<!-- mixlab-cli-reference -->`` in a page is replaced by every ``mixlab`` subcommand's ``--help``,
  generated from the argparse parsers of :func:`mixlab.cli.build_parser`, so the CLI reference
  cannot go stale (:func:`cli_reference`).
* ``<!-- mixlab-methods: NAME NAME ... -->`` is replaced by a table of those registered methods:
  the command, what it does, the paper, the defaults (``mixlab.registry.METHODS``, what ``mixlab
  list methods`` prints), so a method page's defaults are the code's (:func:`method_table`).
* Sphinx roles left in docstrings (``:class:`~mixlab.x.Y```) render as plain code.
* Pages under ``guide/`` that the nav does not list are added to its "Guides" section, so a new
  guide page appears without editing mkdocs.yml.
"""

from __future__ import annotations

import argparse
import os
import re

MARKER = "<!-- mixlab-cli-reference -->"
METHODS_MARKER = re.compile(r"<!-- mixlab-methods: ([^>]*?) -->")
_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj):(<code>[^<]*</code>)")


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """``{name: parser}`` of the subcommands of ``parser``, in the order they were added."""
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices) if actions else {}


def cli_reference() -> str:
    """Markdown: ``mixlab --help``, then one section per subcommand with its ``--help`` text."""
    os.environ.setdefault("COLUMNS", "100")  # argparse wraps to the terminal: fix the width
    from mixlab.cli import build_parser

    parser = build_parser()
    parts = ["## mixlab\n", "```text\n" + parser.format_help().rstrip() + "\n```\n"]
    for name, sub in subcommands(parser).items():
        parts += [f"## mixlab {name}\n", "```text\n" + sub.format_help().rstrip() + "\n```\n"]
    return "\n".join(parts)


def method_table(names: list[str]) -> str:
    """Markdown table of the registered methods ``names``: command, description, paper, defaults.

    Raises:
        ValueError: a name that is not registered (the page names a method that does not exist).
    """
    from mixlab.registry import METHODS, is_self_supervised

    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) in a mixlab-methods marker: {', '.join(unknown)}")
    rows = ["| command | what it does | paper | defaults (`--set method.params.NAME=VALUE`) |", "|---|---|---|---|"]
    for name in names:
        spec = METHODS[name]
        command = f"mixlab pretrain --framework {name}" if is_self_supervised(name) else f"mixlab train --method {name}"
        defaults = ", ".join(f"`{k}={v}`" for k, v in spec.defaults.items()) or "none"
        rows.append(f"| `{command}` | {spec.description} | {spec.paper} | {defaults} |")
    return "\n".join(rows)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, cli_reference())
    return METHODS_MARKER.sub(lambda m: method_table(m.group(1).split()), markdown)


def on_page_content(html: str, page, config, files) -> str:
    return _ROLE.sub(r"\1", html)


def on_nav(nav, config, files):
    from mkdocs.structure.pages import Page

    listed = {p.file.src_uri for p in nav.pages}
    section = next((s for s in nav.items if getattr(s, "title", None) == "Guides"), None)
    if section is None:
        return nav
    for f in sorted(files.documentation_pages(), key=lambda f: f.src_uri):
        if f.src_uri.startswith("guide/") and f.src_uri not in listed:
            page = Page(None, f, config)
            page.parent = section
            section.children.append(page)
    return nav
