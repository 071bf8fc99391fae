r"""The documentation's commands and links are real.

Every ```bash block of ``README.md``, ``docs/*.md``, ``benchmarks/README.md`` and
``CHANGELOG.md``, and every inline command span written out in full in them, is parsed
(nothing is trained or run):

* ``python -m pyg_mmrec <sub> ...`` and ``torchrun ... -m pyg_mmrec <sub> ...``: the
  subcommand exists, its ``--help`` works, every ``--flag`` on the line is one the
  subcommand's parser knows (spelled out, not abbreviated), and the whole line parses (a
  ``train`` line also passes train's own checks of model, keys and protocols). A usage line
  (``[--force]``, ``a|b``, ``<dir>``) and an inline mention only have their names checked;
* ``python -m pyg_mmrec.<module> ...``: the module's ``--help`` works and lists every flag;
* ``python examples/*.py`` / ``python benchmarks/*.py``: the script exists and defines every
  flag used on the line;
* ``make <target>``: the Makefile defines the target.

Every relative link points to an existing file, and an anchor to an existing heading.
``benchmarks/README.md`` lists every benchmark script. The README has at most 200 lines.

``PENDING_MERGE`` lists what the documents describe ahead of the branch that adds it. While
such a feature is absent, the checks that need it are marked xfail with the branch's name;
once it is present they run like every other check, and
``test_pending_merge_list_is_current`` fails until its entry is deleted. After the branches
are merged the list must be empty.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]

#: feature key -> branch that adds it (see the module docstring)
PENDING_MERGE: Dict[str, str] = {
}

#: documents whose commands are bad on purpose (the table of bad inputs and their errors);
#: their links are still checked
COMMANDS_NOT_CHECKED = {"docs/errors.md"}

#: documents whose ```python blocks show signatures, not code to run
PYTHON_NOT_CHECKED = {"docs/architecture.md"}

README_MAX_LINES = 200


def documents() -> List[str]:
    docs = ["README.md", "CHANGELOG.md", "benchmarks/README.md"]
    docs += sorted(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))
    return [d for d in docs if (REPO / d).is_file()]


# --------------------------------------------------------------------------- markdown
_FENCE = re.compile(r"^(\s*)```(\w*)\s*$")


def fenced_blocks(text: str) -> List[Tuple[str, int, List[str]]]:
    r"""``(language, first line number, lines)`` of every fenced code block."""
    blocks, lang, start, body = [], None, 0, []
    for n, line in enumerate(text.split("\n"), start=1):
        m = _FENCE.match(line)
        if m and lang is None:
            lang, start, body = m.group(2).lower(), n + 1, []
            indent = len(m.group(1))
        elif m and lang is not None:
            blocks.append((lang, start, body))
            lang = None
        elif lang is not None:
            body.append(line[indent:] if line[:indent].strip() == "" else line)
    return blocks


def prose_lines(text: str) -> List[Tuple[int, str]]:
    r"""Numbered lines outside fenced code blocks."""
    out, inside = [], False
    for n, line in enumerate(text.split("\n"), start=1):
        if _FENCE.match(line):
            inside = not inside
            continue
        if not inside:
            out.append((n, line))
    return out


def command_lines(lines: List[str], first: int) -> List[Tuple[int, str]]:
    r"""Shell lines of a block with ``\`` continuations joined."""
    out, buf, start = [], "", first
    for n, line in enumerate(lines, start=first):
        if not buf:
            start = n
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        if buf.strip():
            out.append((start, buf.strip()))
        buf = ""
    return out


_INLINE_COMMAND = re.compile(
    r"`((?:[A-Z_]+=\S+ )*(?:python3? (?:-m pyg_mmrec|examples/|benchmarks/)|torchrun )[^`]*)`")


def _is_synopsis(cmd: str) -> bool:
    # `train|results`, `<run dir>`, `[--force]`, `...`: a description of a command's form,
    # not a command to run as written
    return any(s in cmd for s in ("|", "<", "...", "…")) or "[-" in cmd


def collect_commands() -> List[Tuple[str, int, str, bool]]:
    cmds = []
    for doc in documents():
        if doc in COMMANDS_NOT_CHECKED:
            continue
        text = (REPO / doc).read_text(encoding="utf-8")
        for lang, first, body in fenced_blocks(text):
            if lang in ("bash", "sh", "shell"):
                cmds += [(doc, n, c, True) for n, c in command_lines(body, first)]
        for n, line in prose_lines(text):
            for m in _INLINE_COMMAND.finditer(line):
                if not _is_synopsis(m.group(1)):
                    cmds.append((doc, n, m.group(1), False))
    return cmds


def collect_links() -> List[Tuple[str, int, str]]:
    links = []
    for doc in documents():
        text = (REPO / doc).read_text(encoding="utf-8")
        for n, line in prose_lines(text):
            line = re.sub(r"`[^`]*`", "", line)  # links are not written inside code spans
            for m in re.finditer(r"\[[^\]]*\]\(([^)\s]+)\)", line):
                target = m.group(1)
                if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, mailto:, ...
                    links.append((doc, n, target))
    return links


def heading_anchors(path: Path) -> set:
    r"""GitHub's anchors for the headings of a Markdown file."""
    anchors, seen = set(), {}
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
        k = seen.get(slug, 0)
        seen[slug] = k + 1
        anchors.add(slug if k == 0 else f"{slug}-{k}")
    return anchors


# --------------------------------------------------------------------------- features
def _missing(key: str) -> None:
    r"""Fails for an absent feature, or marks the check xfail if it is pending a merge."""
    if key in PENDING_MERGE:
        pytest.xfail(f"{key} is documented ahead of the merge of branch {PENDING_MERGE[key]}")
    pytest.fail(f"the documentation uses {key}, which does not exist")


@lru_cache(maxsize=None)
def cli_parser() -> argparse.ArgumentParser:
    from pyg_mmrec.cli import build_parser
    return build_parser()


def subparsers() -> Dict[str, argparse.ArgumentParser]:
    for action in cli_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("pyg_mmrec.cli.build_parser() has no subcommands")


def feature_present(key: str) -> bool:
    kind, _, what = key.partition(":")
    if kind == "subcommand":
        return what in subparsers()
    if kind == "flag":
        sub, flag = what.split(":")
        return sub in subparsers() and flag in subparsers()[sub]._option_string_actions
    if kind == "file":
        return (REPO / what).exists()
    if kind == "attr":
        mod, attr = what.rsplit(".", 1)
        import importlib
        return hasattr(importlib.import_module(mod), attr)
    raise ValueError(key)


def _parse_quietly(parser: argparse.ArgumentParser, argv: List[str]) -> Tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            parser.parse_args(argv)
        except SystemExit as e:
            return int(e.code or 0), out.getvalue() + err.getvalue()
    return 0, ""


def _flags(args: List[str]) -> List[str]:
    return [a.split("=", 1)[0] for a in args if a.startswith("--") and a != "--"]


def check_cli(args: List[str], full: bool = True) -> None:
    r"""``full``: the line is a whole command (a code block), so it must also parse as
    one; an inline reference such as `python -m pyg_mmrec train` only names things."""
    if not args:  # inline, the program's name alone is a mention, not a command
        assert not full, "`python -m pyg_mmrec` without a subcommand"
        return
    if args[0].startswith("-"):  # options of the program itself, e.g. --help
        code, text = _parse_quietly(cli_parser(), args)
        assert code == 0, f"`python -m pyg_mmrec {' '.join(args)}` failed:\n{text}"
        return
    sub, rest = args[0], args[1:]
    subs = subparsers()
    if sub not in subs:
        _missing(f"subcommand:{sub}")
    code, text = _parse_quietly(cli_parser(), [sub, "--help"])
    assert code == 0 and "usage:" in text, f"`{sub} --help` failed:\n{text}"
    known = subs[sub]._option_string_actions
    for flag in _flags(rest):
        if flag not in known:
            _missing(f"flag:{sub}:{flag}")
    if full:
        code, text = _parse_quietly(cli_parser(), args)
        assert code == 0, f"the parser rejects the documented line:\n{text}"
        if sub == "train":
            check_train_config(cli_parser().parse_args(args))


def check_train_config(ns: argparse.Namespace) -> None:
    r"""The model, plug-in, ``--config``/``--set``/``--grid`` keys and ``--missing`` specs of a
    documented ``train`` line are valid: the checks ``train`` runs before any training."""
    from pyg_mmrec.config import (build_config, config_overrides, grid_settings,
                                  parse_assignments, parse_grid)
    from pyg_mmrec.data.missing import parse_missing_spec
    # a file of the repository, or the short name of a shipped configuration
    cfg = (REPO / ns.config) if ns.config and (REPO / ns.config).exists() else ns.config
    overrides = config_overrides(cfg, ns.model) if ns.config else {}
    overrides.update(parse_assignments(ns.set))
    for flag in ("epochs", "lr", "batch_size", "patience", "eval_every", "weight_decay",
                 "metric", "topk"):
        if getattr(ns, flag, None) is not None:
            overrides[f"train.{flag}"] = getattr(ns, flag)
    for setting in grid_settings(parse_grid(ns.grid)):
        build_config(ns.model, {**overrides, **setting}, ns.plugin)
    for spec in ns.missing or ["natural"]:
        parse_missing_spec(spec)


@lru_cache(maxsize=None)
def module_help(module: str) -> Tuple[int, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
    return p.returncode, p.stdout + p.stderr


def check_module(module: str, args: List[str]) -> None:
    code, text = module_help(module)
    assert code == 0, f"`python -m {module} --help` failed:\n{text}"
    for flag in _flags(args):
        assert re.search(re.escape(flag) + r"\b", text), f"{module} has no option {flag}"


def check_script(script: str, args: List[str]) -> None:
    path = REPO / script
    if not path.is_file():
        _missing(f"file:{script}")
    source = path.read_text(encoding="utf-8")
    for flag in _flags(args):
        assert f'"{flag}"' in source or f"'{flag}'" in source, f"{script} defines no {flag}"


def check_make(targets: List[str]) -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    for t in targets:
        if not t.startswith("-") and "=" not in t:
            assert re.search(rf"^{re.escape(t)}\s*:", makefile, re.M), f"no make target {t}"


def check_command(cmd: str, full: bool = True) -> bool:
    r"""Checks one shell line; returns False for commands this test does not know."""
    tokens = shlex.split(cmd, comments=True)
    if _is_synopsis(" ".join(tokens)):  # a usage line: check the names it uses, not its form
        full = False
        tokens = shlex.split(" ".join(tokens).replace("[", " ").replace("]", " "))
    while tokens and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", tokens[0]):  # VAR=value prefix
        tokens.pop(0)
    if not tokens:
        return False
    prog = os.path.basename(tokens[0])
    if prog == "make":
        check_make(tokens[1:])
        return True
    if prog == "torchrun":
        if not full and "-m" not in tokens:  # an inline mention of torchrun's options
            return False
        assert "-m" in tokens, "torchrun without -m"
        i = tokens.index("-m")
        assert tokens[i + 1] == "pyg_mmrec", f"torchrun runs {tokens[i + 1]}"
        check_cli(tokens[i + 2:], full)
        return True
    if prog in ("python", "python3") and len(tokens) > 1:
        if tokens[1] == "-m" and tokens[2] == "pyg_mmrec":
            check_cli(tokens[3:], full)
            return True
        if tokens[1] == "-m" and tokens[2].startswith("pyg_mmrec."):
            check_module(tokens[2], tokens[3:])
            return True
        if tokens[1].endswith(".py"):
            check_script(tokens[1], tokens[2:])
            return True
    return False


# --------------------------------------------------------------------------- tests
COMMANDS = collect_commands()
LINKS = collect_links()


def test_documents_have_commands_and_links():
    # guards against a parser change that silently finds nothing to check
    assert sum(doc == "README.md" and full for doc, _, _, full in COMMANDS) >= 10
    assert sum(doc == "README.md" for doc, _, _ in LINKS) >= 10


@pytest.mark.parametrize("doc,line,cmd,full", COMMANDS,
                         ids=[f"{d}:{n}" for d, n, _, _ in COMMANDS])
def test_documented_command(doc, line, cmd, full):
    check_command(cmd, full)


@pytest.mark.parametrize("doc,line,target", LINKS,
                         ids=[f"{d}:{n}:{t}" for d, n, t in LINKS])
def test_relative_link(doc, line, target):
    path, _, anchor = target.partition("#")
    base = (REPO / doc).parent
    dest = (base / path).resolve() if path else (REPO / doc)
    if not dest.exists():
        rel = os.path.relpath(dest, REPO)
        _missing(f"file:{rel}")
    assert REPO in dest.parents or dest == REPO, f"{target} leaves the repository"
    if anchor:
        assert dest.suffix == ".md", f"anchor into a non-Markdown file: {target}"
        anchors = heading_anchors(dest)
        assert anchor in anchors, (f"{doc}:{line}: no heading #{anchor} in "
                                   f"{os.path.relpath(dest, REPO)}; have {sorted(anchors)}")


def test_readme_is_short():
    n = len((REPO / "README.md").read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; at most {README_MAX_LINES}"


def test_benchmarks_readme_lists_every_script():
    text = (REPO / "benchmarks" / "README.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"`(\w+\.py)`", text))
    present = {p.name for p in (REPO / "benchmarks").glob("*.py")}
    assert present <= listed, f"benchmarks without a line in benchmarks/README.md: " \
                              f"{sorted(present - listed)}"
    for name in sorted(listed - present):
        _missing(f"file:benchmarks/{name}")


def test_documents_state_facts():
    r"""Documents state facts and commands: no work-log vocabulary, no issue numbers."""
    bad = []
    for doc in documents():
        for n, line in enumerate((REPO / doc).read_text(encoding="utf-8").split("\n"), 1):
            if re.search(r"\bsessions?\b|\bissue\s*#?\d|(?<![\w/])#\d+\b", line, re.I):
                bad.append(f"{doc}:{n}: {line.strip()}")
    assert not bad, "\n".join(bad)


def _python_blocks() -> List[Tuple[str, int, str]]:
    out = []
    for doc in documents():
        if doc in PYTHON_NOT_CHECKED:
            continue
        for lang, first, body in fenced_blocks((REPO / doc).read_text(encoding="utf-8")):
            if lang == "python":
                out.append((doc, first, "\n".join(body)))
    return out


@pytest.mark.parametrize("doc,line,code", _python_blocks(),
                         ids=[f"{d}:{n}" for d, n, _ in _python_blocks()])
def test_python_snippet_names_exist(doc, line, code):
    r"""Every ``pyg_mmrec`` name a snippet imports or reads from the package exists."""
    import importlib
    tree = ast.parse(code)  # a syntax error fails here
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "pyg_mmrec":
                    importlib.import_module(a.name)
                    aliases[a.asname or a.name] = a.name
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("pyg_mmrec"):
            mod = importlib.import_module(node.module)
            for a in node.names:
                if not hasattr(mod, a.name):
                    _missing(f"attr:{node.module}.{a.name}")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in aliases):
            mod = importlib.import_module(aliases[node.value.id])
            if not hasattr(mod, node.attr):
                _missing(f"attr:{aliases[node.value.id]}.{node.attr}")


@pytest.mark.parametrize("key", sorted(PENDING_MERGE))
def test_pending_merge_list_is_current(key):
    if not feature_present(key):
        pytest.xfail(f"{key}: waits for branch {PENDING_MERGE[key]}")
    pytest.fail(f"{key} exists now: delete its entry from PENDING_MERGE in tests/test_docs.py")
