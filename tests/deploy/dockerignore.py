"""Which paths a .dockerignore file keeps out of the build context."""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


class DockerIgnore:
    """The rules of one .dockerignore: later lines win, `!` re-includes."""

    def __init__(self, text: str) -> None:
        self.rules: list[tuple[bool, re.Pattern[str]]] = []
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            keep = line.startswith("!")
            pattern = line[1:].strip() if keep else line
            pattern = str(PurePosixPath(pattern.lstrip("/")))
            self.rules.append((keep, _pattern_regex(pattern)))

    @classmethod
    def read(cls, path: Path) -> DockerIgnore:
        return cls(path.read_text() if path.exists() else "")

    def excludes(self, path: str) -> bool:
        """True when `path` (relative to the context) or a folder above it is left out."""
        parts = PurePosixPath(path).parts
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        excluded = False
        for keep, regex in self.rules:
            if any(regex.match(c) for c in candidates):
                excluded = not keep
        return excluded
