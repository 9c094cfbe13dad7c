"""The README's command lines against the real tools, so that the README cannot drift.

Every line of a ```sh block in README.md that starts with one of the project's CLIs
(rbm-train, rbm-registry, rbm-serve, rbm-client, rbm-healthcheck, rbm-ratings,
``python -m trainer``, torchrun) is read as its synopsis: ``[...]`` marks optional parts,
``a|b`` alternatives, upper-case words placeholders. Running them for real would train,
serve and need data, so each is checked against the real ``--help`` of the command it
names, subcommand by subcommand: every subcommand must exist, every flag must exist where
it is given (a parent's flag after a subcommand does not), a flag that takes a value must
get one, and a value of a flag with choices must be one of them.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest

from tests.harness.cli import BIN, ROOT

README = ROOT / "README.md"
CLIS = (
    "rbm-train",
    "rbm-registry",
    "rbm-serve",
    "rbm-client",
    "rbm-healthcheck",
    "rbm-ratings",
    "torchrun",
)
PYTHON_M_TRAINER = "python -m trainer"
TRAINER_ARGV = (sys.executable, "-m", "trainer")
PLACEHOLDER = re.compile(r"[A-Z][A-Z0-9_]*")


# -- the README's commands --------------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    """One command line of a ```sh block: where it is, and its words."""

    line: int  # 1-based, in README.md
    text: str
    words: tuple[str, ...]
    after_bar: bool = False  # the program's name, then the words after a `` | ``

    @property
    def name(self) -> str:
        """The program, as the README names it."""
        if self.words[0] == "torchrun":
            return "torchrun"
        if _is_python_m_trainer(self.words):
            return PYTHON_M_TRAINER
        return self.words[0]


def _is_python_m_trainer(words: Sequence[str]) -> bool:
    return list(words[:3]) in (["python", "-m", "trainer"], ["python3", "-m", "trainer"])


def _sh_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, logical line) of every ```sh block, continuation lines joined."""
    in_block, pending, start = False, "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("```"):
            in_block = not in_block and stripped in ("```sh", "```bash", "```shell")
            pending = ""
            continue
        if not in_block:
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        yield start, pending + stripped
        pending = ""


def _words(line: str) -> list[list[str]]:
    """A synopsis line's words, brackets dropped, split at `` | `` into its segments.

    A `` | `` inside ``[...]`` (``[--promote | --no-register]``) separates alternatives
    of the same command: both sides stay in its words.
    """
    segments: list[list[str]] = [[]]
    depth = 0
    for raw in shlex.split(line, comments=True):
        token = raw.replace("[", "").replace("]", "")
        if token == "|" and depth == 0:
            segments.append([])
        elif token and token != "|":
            segments[-1].append(token)
        depth += raw.count("[") - raw.count("]")
    return [s for s in segments if s]


def readme_commands(text: str) -> list[Command]:
    """Each command of the project's CLIs in ``text``'s ```sh blocks.

    ``alias set M A V | alias delete M A`` is two commands of one program: a segment after
    `` | `` that does not start with a program goes to the line's program (``after_bar``);
    ``problems_of`` tells an alternative subcommand from a pipe into another tool.
    """
    commands = []
    for number, line in _sh_lines(text):
        segments = _words(line)
        if not segments:
            continue
        head = segments[0]
        if head[0] not in CLIS and not _is_python_m_trainer(head):
            continue
        commands.append(Command(number, line, tuple(head)))
        for more in segments[1:]:
            if more[0] in CLIS or _is_python_m_trainer(more):
                commands.append(Command(number, line, tuple(more)))
            elif head[0] in CLIS:
                commands.append(Command(number, line, (head[0], *more), after_bar=True))
    return commands


# -- what the real --help says ----------------------------------------------------------------
@dataclass(frozen=True)
class Option:
    """One flag as --help shows it."""

    takes_value: bool
    many: bool  # nargs "+" or "*": ``--movies 1 2 3``
    choices: frozenset[str]


@dataclass(frozen=True)
class Help:
    """What a command's --help says it accepts."""

    options: dict[str, Option]
    subcommands: frozenset[str]
    text: str


def parse_help(text: str) -> Help:
    """Read argparse's option lines (``  -n N, --n N``) and subcommand list from ``text``."""
    options: dict[str, Option] = {}
    subcommands: set[str] = set()
    section = ""
    for line in text.splitlines():
        if line and not line[0].isspace():
            section = line.strip().lower()
            continue
        if section.endswith("options:") or section == "optional arguments:":
            match = re.match(r"^  (-\S.*?)(?:\s{2,}|$)", line)
            if not match:
                continue
            for part in match.group(1).split(", "):
                flag, _, metavar = part.partition(" ")
                choices = frozenset()
                if metavar.startswith("{"):
                    choices = frozenset(metavar[1 : metavar.index("}")].split(","))
                options[flag] = Option(bool(metavar), "..." in metavar, choices)
        elif section == "positional arguments:":
            match = re.match(r"^    ([a-z][\w-]*)(?:\s{2,}|$)", line)
            if match:
                subcommands.add(match.group(1))
    return Help(options, frozenset(subcommands), text)


def _program(name: str) -> tuple[str, ...]:
    if name == PYTHON_M_TRAINER:
        return TRAINER_ARGV
    installed = BIN / name
    if installed.exists():
        return (str(installed),)
    found = shutil.which(name)
    assert found, f"{name} is not installed (make install)"
    return (found,)


@functools.cache
def help_of(argv: tuple[str, ...]) -> Help:
    """The real ``argv --help``, parsed (once per test session)."""
    proc = subprocess.run(
        [*argv, "--help"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "1000"},  # one line per option
    )
    assert proc.returncode == 0, f"`{' '.join(argv)} --help` failed:\n{proc.stderr}"
    return parse_help(proc.stdout)


# -- the check --------------------------------------------------------------------------------
def _walk(argv: tuple[str, ...], shown: str, words: Sequence[str], launcher: bool) -> list[str]:
    """What is wrong with ``words`` as arguments of ``argv``.

    ``launcher`` (torchrun): the first positional word is the program it launches; with
    ``-m trainer`` the words after it are checked as ``python -m trainer``'s.
    """
    problems: list[str] = []
    parsed = help_of(argv)
    module = False
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word.startswith("-") and word != "-":
            flag, has_inline, inline = word.partition("=")
            option = parsed.options.get(flag)
            if option is None:
                problems.append(f"`{shown}` has no option {flag}")
                continue
            module = module or flag in ("-m", "--module")
            if not option.takes_value:
                continue
            values = [inline] if has_inline else []
            while not has_inline and i < len(words) and not words[i].startswith("-"):
                values.append(words[i])
                i += 1
                if not option.many:
                    break
            if not values:
                problems.append(f"`{shown} {flag}` needs a value")
            for value in values:
                wrong = [v for v in value.split("|") if v not in option.choices]
                if option.choices and wrong and not PLACEHOLDER.fullmatch(value):
                    allowed = ", ".join(sorted(option.choices))
                    problems.append(f"`{shown} {flag}` takes {allowed}, not {', '.join(wrong)}")
        elif launcher:
            if module and word == "trainer":
                problems += _walk(TRAINER_ARGV, PYTHON_M_TRAINER, words[i:], launcher=False)
            else:
                problems.append(f"`{shown}` launches {word!r}: expected `-m trainer`")
            return problems
        elif parsed.subcommands:
            if word not in parsed.subcommands:
                known = ", ".join(sorted(parsed.subcommands))
                problems.append(f"`{shown}` has no command {word!r} (it has {known})")
                return problems
            argv, shown = (*argv, word), f"{shown} {word}"
            parsed = help_of(argv)
        # else: a positional argument (MODEL, VERSION|ALIAS, ...): nothing to check
    return problems


def problems_of(command: Command) -> list[str]:
    """What in ``command`` the real tools do not accept; empty if it all checks out."""
    name = command.name
    if command.after_bar:
        first = command.words[1]
        if first not in help_of(_program(name)).subcommands and shutil.which(first):
            return []  # ``| head -2``: a pipe into another tool, not a subcommand
    skip = 3 if name == PYTHON_M_TRAINER else 1
    return _walk(_program(name), name, command.words[skip:], launcher=name == "torchrun")


COMMANDS = readme_commands(README.read_text(encoding="utf-8"))


def test_the_readme_names_every_cli() -> None:
    names = {c.name for c in COMMANDS}
    assert {"rbm-train", "rbm-registry", "rbm-serve", "rbm-client", "torchrun"} <= names, names
    assert "rbm-healthcheck" in names
    assert len(COMMANDS) >= 15, COMMANDS  # the registry's subcommands alone are 11 lines


@pytest.mark.parametrize(
    "command", COMMANDS, ids=[f"README.md:{c.line}:{' '.join(c.words[:2])}" for c in COMMANDS]
)
def test_a_readme_command_uses_only_real_commands_and_flags(command: Command) -> None:
    assert problems_of(command) == [], command.text


# The README's training commands run on a fresh clone: rbm-train's defaults are ./data
# (absent there, and no download without a network) and ./registry (the package's own
# folder), so each names --data-dir and a registry (or --no-register).
TRAINING = [c for c in COMMANDS if c.name in ("rbm-train", PYTHON_M_TRAINER, "torchrun")]


def test_the_readme_training_commands_name_their_data_and_registry() -> None:
    assert TRAINING
    missing = [
        f"README.md:{c.line}: {c.text}"
        for c in TRAINING
        if "--data-dir" not in c.words or not {"--registry", "--no-register"} & set(c.words)
    ]
    assert missing == []


# -- the check itself can fail ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("line", "says"),
    [
        ("rbm-serve --port 0 --no-such-flag", "`rbm-serve` has no option --no-such-flag"),
        ("rbm-serve [--device tpu]", "`rbm-serve --device` takes auto, cpu, cuda, not tpu"),
        ("rbm-serve [--backend torch|tensorrt]", "not tensorrt"),
        ("rbm-serve --registry", "`rbm-serve --registry` needs a value"),
        ("rbm-registry promote MODEL 3 --nope", "`rbm-registry promote` has no option --nope"),
        ("rbm-registry publish MODEL", "`rbm-registry` has no command 'publish'"),
        ("rbm-registry alias rename M A B", "`rbm-registry alias` has no command 'rename'"),
        ("rbm-client recommend --user 1 --target h:1", "`rbm-client recommend` has no option"),
        ("rbm-client info | rbm-healthcheck --adress h:1", "`rbm-healthcheck` has no option"),
        ("rbm-train --dataset ml-100k --data-dir DIR --epoch 3", "has no option --epoch"),
        ("torchrun --nproc 2 -m trainer --split u1", "`torchrun` has no option --nproc"),
        ("torchrun --standalone -m trainer --spilt u1", "`python -m trainer` has no option"),
        ("python -m trainer --dataset ml-2m", "not ml-2m"),
    ],
)
def test_the_check_reports_what_the_tools_do_not_accept(line: str, says: str) -> None:
    commands = readme_commands(f"```sh\n{line}\n```\n")
    assert commands, line
    found = [problem for command in commands for problem in problems_of(command)]
    assert any(says in problem for problem in found), found


def test_the_check_accepts_a_correct_synopsis_and_reads_only_sh_blocks() -> None:
    text = (
        "```sh\n"
        "rbm-client --target 127.0.0.1:50051 --json predict --user 1 --movies 1 2 3  # ok\n"
        "rbm-registry alias set MODEL ALIAS VERSION | alias delete MODEL ALIAS\n"
        "rbm-serve [--log-level INFO] [--cache redis|memory] \\\n"
        "          [--tls-cert PATH --tls-key PATH [--tls-client-ca PATH]]\n"
        "rbm-client info | head -1\n"
        "rbm-train --data-dir DIR [--promote | --no-register] [--json]\n"
        "```\n"
        "```text\nrbm-serve --not-checked-here\n```\n"
    )
    commands = readme_commands(text)
    assert [c.words[:2] for c in commands] == [
        ("rbm-client", "--target"),
        ("rbm-registry", "alias"),
        ("rbm-registry", "alias"),
        ("rbm-serve", "--log-level"),
        ("rbm-client", "info"),
        ("rbm-client", "head"),
        ("rbm-train", "--data-dir"),
    ]
    assert commands[-1].words[-3:] == ("--promote", "--no-register", "--json")
    found = {c.words: problems_of(c) for c in commands}
    assert all(problems == [] for problems in found.values()), found


def test_help_parsing_reads_flags_values_choices_and_subcommands() -> None:
    parsed = help_of(_program("rbm-client"))
    assert {"recommend", "rate", "predict", "info"} <= parsed.subcommands
    assert parsed.options["--json"] == Option(False, False, frozenset())
    assert parsed.options["--target"].takes_value
    predict = help_of((*_program("rbm-client"), "predict"))
    assert predict.options["--movies"].many
    served = help_of(_program("rbm-serve"))
    assert served.options["--cache"].choices == {"redis", "memory"}
