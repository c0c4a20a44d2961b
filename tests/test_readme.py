"""README.md stays true: every ``tools/*.py`` command in its code blocks exists, answers
``--help``, and has every ``--flag`` the README shows; every ``make`` target it shows exists."""

import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
TOOL = re.compile(r"(?:^|[\s;&|(])(?:\S*python\S*\s+)?(tools/[\w/]+\.py)\b(.*)")
FLAG = re.compile(r"(?<![\w-])(--[a-z][\w-]*)")


def _code_pieces():
    """README's code in reading order: each line of a fenced or 4-space indented block (``\\``
    continuations joined) and each inline code span; a heading as ``None`` (it ends the scope
    of a tool named before it)."""
    pieces, fenced, block = [], False, False
    for line in README.read_text().splitlines():
        if line.lstrip().startswith("```"):
            fenced, block = not fenced, False
            continue
        if fenced or line.startswith("    "):
            if block and pieces[-1].endswith("\\"):
                pieces[-1] = pieces[-1][:-1] + " " + line.strip()
            else:
                pieces.append(line.strip())
            block = True
            continue
        block = False
        if line.startswith("#"):
            pieces.append(None)
        pieces += re.findall(r"`([^`]+)`", line)
    return pieces


def _tool_commands():
    """{tool: flags shown after ``tools/X.py`` in the same command}."""
    commands = {}
    for piece in filter(None, _code_pieces()):
        match = TOOL.search(piece)
        if match:
            tool, rest = match.groups()
            commands.setdefault(tool, set()).update(FLAG.findall(rest.split("#", 1)[0]))
    return commands


def _loose_flags():
    """Flags shown in code of their own (`` `--max-dets` ``), in prose about some tool."""
    return {
        flag
        for piece in filter(None, _code_pieces())
        if piece.startswith("--") and not TOOL.search(piece)
        for flag in FLAG.findall(piece)
    }


# flags of other programs that the README shows on their own (pip's, in "Install")
OTHER_PROGRAMS_FLAGS = {"--no-build-isolation", "--no-deps"}


@cache
def _help(tool):
    result = subprocess.run(
        [sys.executable, tool, "--help"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    return result


def test_readme_shows_tool_commands():
    commands = _tool_commands()
    assert {"tools/train_net.py", "tools/small_object_report.py"} <= set(commands)
    assert "--config-file" in commands["tools/train_net.py"]


def _all_tools():
    return sorted(str(p.relative_to(REPO)) for p in (REPO / "tools").glob("*.py"))


@pytest.mark.parametrize("tool", sorted(_tool_commands()))
def test_every_readme_tool_command_answers_help_and_has_its_flags(tool):
    assert (REPO / tool).is_file(), f"README shows {tool}, which does not exist"
    result = _help(tool)
    assert result.returncode == 0, result.stderr[-2000:]
    shown = _tool_commands()[tool]
    missing = sorted(flag for flag in shown if not re.search(rf"{flag}\b", result.stdout))
    assert not missing, f"README shows {tool} with {missing}, which its --help does not list"


def test_every_readme_make_target_exists():
    makefile = (REPO / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, re.M))
    code = [piece for piece in _code_pieces() if piece]
    shown = {m for piece in code for m in re.findall(r"\bmake ([a-z][\w-]*)", piece)}
    assert shown, "README shows no make command"
    assert shown <= targets, f"README shows make targets that do not exist: {shown - targets}"


def test_every_flag_the_readme_names_on_its_own_belongs_to_a_tool():
    known = set(OTHER_PROGRAMS_FLAGS)
    for tool in _all_tools():
        result = _help(tool)
        assert result.returncode == 0, f"{tool} --help: {result.stderr[-2000:]}"
        known |= set(FLAG.findall(result.stdout))
    unknown = sorted(_loose_flags() - known)
    assert not unknown, f"README names flags that no tool has: {unknown}"
