"""What the image tests read from a Dockerfile, on top of the dockerfile-parse package.

dockerfile-parse joins continuation lines and drops comments; this adds the build
stage of each instruction, its `--flag=value` options, the exec or shell form's
arguments, and the `pip install` commands with the package names they ask for
(a project extra such as `.[api]` stands for the names pyproject.toml lists).
"""

from __future__ import annotations

import io
import json
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from dockerfile_parse import DockerfileParser
from packaging.requirements import Requirement

from .conftest import REPO_ROOT

_FLAG = re.compile(r"--([a-z][a-z0-9-]*)(?:=(\S*))?")
_PROJECT_EXTRAS = re.compile(r"^\.\[([\w,-]+)\]$")


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


def _parser(text: str) -> DockerfileParser:
    return DockerfileParser(fileobj=io.BytesIO(text.encode()), env_replace=False)


def parse_dockerfile(text: str) -> list[Instruction]:
    """Every instruction of a Dockerfile, in order, with its build stage (0 for the first)."""
    instructions: list[Instruction] = []
    stage = -1
    for item in _parser(text).structure:
        keyword = item["instruction"]
        if keyword == "COMMENT":
            continue
        if keyword == "FROM":
            stage += 1
        rest = item["value"].strip()
        flags: dict[str, str] = {}
        while match := _FLAG.match(rest):
            flags[match.group(1)] = match.group(2) or ""
            rest = rest[match.end() :].strip()
        instructions.append(
            Instruction(keyword, rest, line=item["startline"] + 1, stage=stage, flags=flags)
        )
    return instructions


def read_dockerfile(path: Path) -> list[Instruction]:
    return parse_dockerfile(path.read_text())


def build_args(path: Path) -> dict[str, str]:
    """ARG defaults, by name."""
    return dict(_parser(path.read_text()).args)


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    """The instructions of the last build stage: what the image is made of at run time."""
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


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


def pip_installs(instructions: list[Instruction]) -> list[tuple[Instruction, list[str]]]:
    """Each `pip install ...` command, with the words after `install`."""
    found = []
    for instruction in instructions:
        if instruction.keyword != "RUN":
            continue
        for words in run_commands(instruction):
            for n in range(len(words) - 1):
                if words[n] in {"pip", "pip3"} and words[n + 1] == "install":
                    found.append((instruction, words[n + 2 :]))
                    break
    return found


def expand(word: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), word)


def project_extras(word: str) -> list[str] | None:
    """The extras of a `.[a,b]` install of the project, or None for another word."""
    match = _PROJECT_EXTRAS.match(word)
    return match.group(1).split(",") if match else None


def project_requirements(extras: list[str]) -> list[Requirement]:
    """What `pip install .[extras]` asks for: the dependencies and those extras, expanded."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(d) for d in project["dependencies"]]
    pending = list(extras)
    seen: set[str] = set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for line in project["optional-dependencies"][extra]:
            requirement = Requirement(line)
            if requirement.name == project["name"]:
                pending.extend(requirement.extras)
            else:
                wanted.append(requirement)
    return wanted


def installed_names(dockerfile: Path) -> set[str]:
    """Every package name an image's pip commands ask for, project extras included."""
    args = build_args(dockerfile)
    names: set[str] = set()
    for _, words in pip_installs(final_stage(read_dockerfile(dockerfile))):
        words = [expand(w, args) for w in words]
        skip_next = False
        for word in words:
            if skip_next:
                skip_next = False
            elif word in {"--index-url", "--extra-index-url", "-i", "-c", "-r"}:
                skip_next = True
            elif (extras := project_extras(word)) is not None:
                names |= {r.name.lower() for r in project_requirements(extras)}
            elif not word.startswith("-") and word not in {".", "./"}:
                names.add(Requirement(word).name.lower())
    return names
