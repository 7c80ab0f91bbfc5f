"""MkDocs hooks: the pages that are copies of something else are made at build time, so they cannot drift.

- `cli.md`: every command's `--help`, from `bit_keras.cli.main.build_parser()` (the parser the
  command runs; building it imports no TensorFlow).
- Mirrored Markdown files of the repository (`MIRRORED`), with the pictures they show and their
  links between each other rewritten to the site's page names.
"""

from __future__ import annotations

import argparse
import os
import posixpath
import re
import sys

from mkdocs.structure.files import File

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# site page -> repository file (relative to the repository root, POSIX separators)
MIRRORED = {
    "benchmarks.md": "BENCHMARKS.md",
    "savedmodel.md": "export/README.md",
}

HELP_COLUMNS = "100"   # argparse wraps help at $COLUMNS: fixed, so the page is the same on every machine
_LINK = re.compile(r"(!?\[[^\]]*\]\()([^)\s]+)(\))")


def on_files(files, config):
    for page, source in MIRRORED.items():
        text, pictures = _mirror(page, source)
        files.append(File.generated(config, page, content=text))
        for uri, path in pictures:
            if files.get_file_from_path(uri) is None:
                files.append(File.generated(config, uri, abs_src_path=path))
    files.append(File.generated(config, "cli.md", content=cli_reference()))
    return files


def _mirror(page: str, source: str):
    """(the page's Markdown, [(site path, file)] of the local files it links to)."""
    with open(os.path.join(ROOT, source), encoding="utf-8") as f:
        text = f.read()
    pages_by_source = {src: dst for dst, src in MIRRORED.items()}
    pictures = []
    page_dir = posixpath.dirname(page)
    source_dir = posixpath.dirname(source)

    def rewrite(match):
        target = match.group(2)
        if re.match(r"^[a-z][a-z0-9+.-]*:|^#|^/", target, re.IGNORECASE):  # a URL, an anchor, an absolute path
            return match.group(0)
        path, _, anchor = target.partition("#")
        in_repo = posixpath.normpath(posixpath.join(source_dir, path))
        if in_repo in pages_by_source:   # another mirrored file: link to its page
            new = posixpath.relpath(pages_by_source[in_repo], page_dir or ".")
            return f"{match.group(1)}{new}{'#' + anchor if anchor else ''}{match.group(3)}"
        if not path.endswith(".md") and os.path.isfile(os.path.join(ROOT, in_repo)):
            pictures.append((posixpath.normpath(posixpath.join(page_dir, path)), os.path.join(ROOT, in_repo)))
        return match.group(0)   # anything else is left as written: `mkdocs build --strict` reports it if broken

    return _LINK.sub(rewrite, text), pictures


def cli_reference() -> str:
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)
    from bit_keras.cli.main import build_parser

    previous = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = HELP_COLUMNS
    try:
        parser = build_parser()
        lines = ["# Command line", "",
                 "Every command's `--help`, as the installed `bit_keras` prints it (this page is generated "
                 "from the parser when the site is built). `python -m bit_keras ...` works exactly like "
                 "`bit_keras ...`.", "",
                 "```text", parser.format_help().rstrip(), "```", ""]
        commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        lines += ["| command | what |", "|---|---|"]
        helps = {action.dest: action.help for action in commands._choices_actions}
        lines += [f"| [`{name}`](#bit_keras-{name}) | {(helps.get(name) or '').replace('|', chr(92) + '|')} |"
                  for name in commands.choices]
        lines.append("")
        for name, command in commands.choices.items():
            lines += [f"## bit_keras {name}", "", "```text", command.format_help().rstrip(), "```", ""]
    finally:
        if previous is None:
            os.environ.pop("COLUMNS", None)
        else:
            os.environ["COLUMNS"] = previous
    return "\n".join(lines)
