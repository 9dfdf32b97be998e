"""A small Dockerfile reader: enough of the syntax to check what an image does.

It joins continuation lines, drops comments and parser directives, splits off
`--flag=value` options, and knows which build stage each instruction is in. It
does not expand variables or heredocs (the deploy/ Dockerfiles use neither
inside instructions that the tests read).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

_FLAG = re.compile(r"--([a-z][a-z0-9-]*)(?:=(\S*))?")
KEYWORDS = frozenset(
    {
        "ADD",
        "ARG",
        "CMD",
        "COPY",
        "ENTRYPOINT",
        "ENV",
        "EXPOSE",
        "FROM",
        "HEALTHCHECK",
        "LABEL",
        "MAINTAINER",
        "ONBUILD",
        "RUN",
        "SHELL",
        "STOPSIGNAL",
        "USER",
        "VOLUME",
        "WORKDIR",
    }
)


@dataclass(frozen=True)
class Instruction:
    """One instruction: FROM, RUN, COPY, ... with its options and its arguments."""

    keyword: str
    value: str
    line: int
    stage: int
    flags: dict[str, str] = field(default_factory=dict)

    def exec_form(self) -> list[str] | None:
        """The JSON (exec) form's arguments, or None for the shell form."""
        if not self.value.startswith("["):
            return None
        parsed = json.loads(self.value)
        if not isinstance(parsed, list) or not all(isinstance(a, str) for a in parsed):
            raise ValueError(f"line {self.line}: {self.keyword}'s exec form is not a string list")
        return parsed

    def arguments(self) -> list[str]:
        """Arguments as a list, from the exec form or by shell-style splitting."""
        form = self.exec_form()
        return form if form is not None else shlex.split(self.value)


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """(first physical line number, joined text) of each instruction."""
    lines: list[tuple[int, str]] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#"):
            continue  # comments and parser directives, also inside a continuation
        if not parts and not stripped:
            continue
        if not parts:
            start = number
        if raw.rstrip().endswith("\\"):
            parts.append(raw.rstrip()[:-1].strip())
            continue
        parts.append(stripped)
        lines.append((start, " ".join(p for p in parts if p)))
        parts = []
    if parts:
        raise ValueError(f"line {start}: the file ends inside a continuation line")
    return lines


def parse_dockerfile(text: str) -> list[Instruction]:
    """Every instruction of a Dockerfile, in order."""
    instructions: list[Instruction] = []
    stage = -1
    for number, logical in _logical_lines(text):
        keyword, _, rest = logical.partition(" ")
        keyword = keyword.upper()
        if keyword not in KEYWORDS:
            raise ValueError(f"line {number}: not an instruction: {logical!r}")
        rest = rest.strip()
        flags: dict[str, str] = {}
        while match := _FLAG.match(rest):
            flags[match.group(1)] = match.group(2) or ""
            rest = rest[match.end() :].strip()
        if keyword == "FROM":
            stage += 1
        elif stage < 0 and keyword != "ARG":
            raise ValueError(f"line {number}: {keyword} before the first FROM")
        instructions.append(
            Instruction(keyword=keyword, value=rest, line=number, stage=stage, flags=flags)
        )
    if stage < 0:
        raise ValueError("no FROM instruction")
    return instructions


def read_dockerfile(path: Path) -> list[Instruction]:
    return parse_dockerfile(path.read_text())


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    """The instructions of the last build stage: what the image is made of at run time."""
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def build_args(instructions: list[Instruction]) -> dict[str, str]:
    """ARG defaults, by name (the last declaration wins)."""
    args: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "ARG":
            name, _, default = instruction.value.partition("=")
            args[name.strip()] = default.strip().strip('"')
    return args


def run_commands(instruction: Instruction) -> list[list[str]]:
    """A shell-form RUN split into simple commands at &&, || and ;, each as its words."""
    if instruction.keyword != "RUN":
        raise ValueError(f"line {instruction.line}: not a RUN instruction")
    form = instruction.exec_form()
    if form is not None:
        return [form]
    lexer = shlex.shlex(instruction.value, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in {"&&", "||", ";", "|"}:
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]
