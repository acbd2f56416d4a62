"""The documents agree with the code: commands and flags exist, imports import, the config reference is current."""

from __future__ import annotations

import argparse
import importlib
import re
import shlex
from pathlib import Path

import pytest

from miniplaces.cli import build_parser
from miniplaces.config import config_reference_markdown

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"(?<!`)`(miniplaces [^`]+)`(?!`)")
IMPORT = re.compile(r"^\s*from (miniplaces[\w.]*) import ([\w, ]+)$|^\s*import (miniplaces[\w.]*)$", re.M)
REFERENCE = re.compile(r"<!-- config-reference:start -->\n(.*?)<!-- config-reference:end -->", re.S)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


def command_lines(text: str) -> list[str]:
    """`miniplaces …` command lines of the fenced blocks (continuations joined) and of inline code."""
    found = []
    for block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip().removeprefix("$ ")
            if re.search(r"(^|\s)miniplaces\s", line):
                found.append(line)
    found += INLINE.findall(text)
    return found


def _placeholder(word: str) -> bool:
    """`<command>`, `NAME`: a word standing for any command."""
    return bool(re.fullmatch(r"<[\w -]+>|[A-Z_]+|…|\.\.\.", word))


def check_command(parser: argparse.ArgumentParser, line: str) -> list[str]:
    """Problems of one command line: an unknown subcommand or a flag its parser does not have."""
    words = shlex.split(line)
    start = words.index("miniplaces") + 1
    words = words[start:]
    if not words or words[0].startswith("-"):
        return [f"{line!r}: unknown option {words[0]!r}"] if words and words[0] not in _flags(parser) else []
    commands = _subparsers(parser)
    if _placeholder(words[0]):
        return []
    if words[0] not in commands:
        return [f"{line!r}: no command {words[0]!r}"]
    sub, rest = commands[words[0]], words[1:]
    nested = _subparsers(sub)
    if nested:  # `miniplaces bench NAME`
        if not rest or _placeholder(rest[0]):
            return []
        if rest[0] not in nested:
            if rest and rest[0] in _flags(sub):
                return []
            return [f"{line!r}: no {words[0]} {rest[0]!r}; known: {sorted(nested)}"]
        sub, rest = nested[rest[0]], rest[1:]
    known = _flags(sub)
    return [f"{line!r}: no flag {w.split('=')[0]!r}" for w in rest
            if w.startswith("--") and w.split("=")[0] not in known]


def test_command_extraction_finds_flags_and_continuations() -> None:
    text = "```\n$ miniplaces train --model vit \\\n    --nope 1  # comment --other\n```\nand `miniplaces models`"
    assert command_lines(text) == ["miniplaces train --model vit      --nope 1", "miniplaces models"]
    problems = check_command(build_parser(), command_lines(text)[0])
    assert problems == ["'miniplaces train --model vit      --nope 1': no flag '--nope'"]
    assert check_command(build_parser(), "miniplaces bench conv --quick") == []
    assert check_command(build_parser(), "miniplaces bench nope")
    assert check_command(build_parser(), "miniplaces nope")
    assert check_command(build_parser(), "miniplaces bench NAME --quick") == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_command_and_flag_exists(doc: Path) -> None:
    parser = build_parser()
    problems = [p for line in command_lines(doc.read_text()) for p in check_command(parser, line)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_python_imports_in_docs_import(doc: Path) -> None:
    problems = []
    for block in FENCE.findall(doc.read_text()):
        for module, names, bare in IMPORT.findall(block):
            try:
                imported = importlib.import_module(module or bare)
            except ImportError as err:
                problems.append(f"{module or bare}: {err}")
                continue
            problems += [f"{module}.{name}" for name in (n.strip() for n in names.split(",") if n.strip())
                         if not hasattr(imported, name)]
    assert not problems, f"{doc.name}: these do not import: {problems}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_no_development_machine_paths(doc: Path) -> None:
    text = doc.read_text()
    assert not re.findall(r"(?<![\w.])/(?:work|tmp|root|home)/\S*", text)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_exist(doc: Path) -> None:
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text())
    missing = [link for link in links if "://" not in link and not (doc.parent / link).exists()]
    assert not missing


def test_readme_is_short() -> None:
    assert len((ROOT / "README.md").read_bytes()) <= 12_000


def test_config_reference_is_generated_from_train_config() -> None:
    """docs/training.md embeds `config_reference_markdown()`; after changing a TrainConfig field, paste it again."""
    match = REFERENCE.search((ROOT / "docs" / "training.md").read_text())
    assert match, "docs/training.md lacks the config-reference markers"
    assert match.group(1) == config_reference_markdown()


def test_config_reference_lists_every_key_with_help() -> None:
    from miniplaces.config import TrainConfig, config_keys

    reference = config_reference_markdown()
    for key in config_keys():
        assert f"| `{key}` |" in reference
    assert all(f.metadata.get("help") for f in __import__("dataclasses").fields(TrainConfig))
