"""The README stays a first visit's page, its commands are real, and the documentation site builds strictly.

The strict build fails on a broken link or anchor, a page missing from the nav, and a
`::: bit_keras.MODULE` line that names no module (docs/api/*.md).
"""

import argparse
import ast
import os
import re
import shlex
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
INSTALL = "pip install -r requirements.txt && pip install --no-deps -e . && "


def _read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def _code_blocks(text, languages):
    """The bodies of the fenced code blocks in `languages`."""
    return [body for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", text, re.M | re.S) if lang in languages]


def _commands(text):
    """Every `bit_keras ...` command line of the text's bash blocks, continuations joined, comments cut."""
    commands = []
    for block in _code_blocks(text, ("bash", "sh", "")):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            for part in re.split(r"\s*(?:&&|;)\s*", line):   # `pip install ... && bit_keras demo`
                if part.startswith(("bit_keras ", "python -m bit_keras ")):
                    commands.append(part)
    return commands


def _parsers():
    """{command: its argparse parser}, built as `bit_keras` builds them (no TensorFlow import)."""
    from bit_keras.cli.main import build_parser

    top = build_parser()
    subparsers = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    return top, subparsers.choices


def _check_command(command, top, parsers):
    """Problems of one command line against the real parser: unknown command or flag."""
    words = [w.strip("[]") for w in shlex.split(command.replace("...", ""))]
    words = words[3:] if words[0] == "python" else words[1:]
    flags = [w.split("=")[0] for w in words if w.startswith("--")]
    name = next((w for w in words if not w.startswith("-")), None)
    if name not in parsers:
        return [f"{command!r}: no command {name!r}"]
    known = {s for action in parsers[name]._actions + top._actions for s in action.option_strings}
    return [f"{command!r}: `bit_keras {name}` has no {flag}" for flag in flags if flag not in known]


def test_readme_is_a_first_visit_page():
    lines = _read(README).splitlines()
    assert len(lines) < 200, f"README.md has {len(lines)} lines; move detail into docs/"
    text = "\n".join(lines)
    # .ci/run runs the first line matching this, exactly as written (comment cut): keep both commands.
    tests = [line for line in lines if re.match(r"^pip install .*python -m pytest -q", line)]
    assert tests and re.sub(r" *#.*$", "", tests[0]) == INSTALL + "python -m pytest -q"
    demo = [line for line in lines if line.startswith(INSTALL + "bit_keras demo")]
    assert demo and re.sub(r" *#.*$", "", demo[0]) == INSTALL + "bit_keras demo"
    for link in re.findall(r"\]\((docs/[^)#]+)", text):   # the README's links into the site
        assert os.path.isfile(os.path.join(ROOT, link)), f"README links to missing {link}"


def test_every_command_shown_in_the_readme_and_guides_exists():
    top, parsers = _parsers()
    pages = [README] + [os.path.join(ROOT, "docs", name) for name in sorted(os.listdir(os.path.join(ROOT, "docs")))
                        if name.endswith(".md")]
    shown = {page: _commands(_read(page)) for page in pages}
    assert len(shown[README]) >= 10, "the README's tour shows the commands"
    problems = [f"{os.path.relpath(page, ROOT)}: {problem}" for page, commands in shown.items()
                for command in commands for problem in _check_command(command, top, parsers)]
    assert not problems, "\n".join(problems)
    for block in _code_blocks(_read(README), ("python",)):
        ast.parse(block)   # the tour's Python is valid Python


def test_check_command_catches_unknown_commands_and_flags():
    top, parsers = _parsers()
    assert _check_command("bit_keras finetune --variant m-r50x1 --output runs/x", top, parsers) == []
    assert _check_command("bit_keras finetune --no-such-flag 1", top, parsers)
    assert _check_command("bit_keras no-such-command --help", top, parsers)


def test_docs_build_strictly(tmp_path):
    site = tmp_path / "site"
    path = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1", PYTHONPATH=path)   # no "MkDocs 2.0" banner from Material
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    # The generated pages hold what they mirror: each command's help, BENCHMARKS.md's sections.
    cli = (site / "cli" / "index.html").read_text(encoding="utf-8")
    _, parsers = _parsers()
    for name in parsers:
        assert f"bit_keras {name}" in cli
    assert "--micro-batch" in cli
    benchmarks = (site / "benchmarks" / "index.html").read_text(encoding="utf-8")
    first_section = re.search(r"^## (.+)$", _read(os.path.join(ROOT, "BENCHMARKS.md")), re.M).group(1)
    assert first_section.split(":")[0] in benchmarks
    assert (site / "benchmarks" / "ablate_normalization.png").is_file()
    api = (site / "api" / "models" / "index.html").read_text(encoding="utf-8")
    assert "BiTBackbone" in api and "from_preset" in api   # the reference comes from the docstrings
    assert "fonts.googleapis.com" not in (site / "index.html").read_text(encoding="utf-8")
