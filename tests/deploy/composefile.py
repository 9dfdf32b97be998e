"""Reading Compose files the way `docker compose` does, for the checks the tests make."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from typing import Any

# ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?message}, ${VAR?message}, $VAR
_REFERENCE = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}"
    r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))"
)
_SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY", re.IGNORECASE)
_URL_CREDENTIALS = re.compile(r"://(?P<user>[^:/@\s]+):(?P<password>[^@]+)@")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)")
_DURATION_SECONDS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def references(text: str) -> list[tuple[str, str]]:
    """(variable, operator) of each interpolation in a string; `$$` is a literal dollar."""
    text = text.replace("$$", "")
    found = []
    for match in _REFERENCE.finditer(text):
        if match.group("bare"):
            found.append((match.group("bare"), ""))
        else:
            found.append((match.group("braced"), match.group("op") or ""))
    return found


def strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(path, value) of every string in a parsed YAML document, keys' paths included."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from strings(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for n, value in enumerate(node):
            yield from strings(value, f"{path}[{n}]")
    elif isinstance(node, str):
        yield path, node


def hard_coded_secrets(document: dict[str, Any]) -> list[str]:
    """Places where a secret is written into the file instead of coming from the environment."""
    problems = []
    for service_name, service in (document.get("services") or {}).items():
        environment = service.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.partition("=")[::2] for item in environment)
        for name, value in environment.items():
            if _SECRET_NAME.search(name) and (value is None or not references(str(value))):
                problems.append(f"services.{service_name}.environment.{name} = {value!r}")
        command = service.get("command") or []
        words = command.split() if isinstance(command, str) else [str(w) for w in command]
        for flag, value in itertools.pairwise(words):
            if flag in {"--token", "--value", "--password"} and not references(value):
                problems.append(f"services.{service_name}.command {flag} {value!r}")
    for path, value in strings(document):
        for match in _URL_CREDENTIALS.finditer(value.replace("$$", "$")):
            if not references(match.group("password")):
                problems.append(f"{path}: password in {value!r}")
    return problems


def optional_secret_references(document: dict[str, Any]) -> list[str]:
    """Secret variables referenced without `:?`, which would silently become empty."""
    problems = []
    for path, value in strings(document):
        for name, op in references(value):
            if _SECRET_NAME.search(name) and op != ":?":
                problems.append(f"{path}: ${{{name}}} is not required (use ${{{name}:?message}})")
    return problems


def duration_seconds(text: str) -> float:
    """A Compose duration such as '1m30s' or '16m', in seconds."""
    parts = _DURATION.findall(text)
    if not parts or "".join(a + b for a, b in parts) != text:
        raise ValueError(f"not a Compose duration: {text!r}")
    return sum(float(amount) * _DURATION_SECONDS[unit] for amount, unit in parts)


def command_text(service: dict[str, Any]) -> str:
    """A service's entrypoint and command as one line of text."""
    parts = []
    for key in ("entrypoint", "command"):
        value = service.get(key)
        if isinstance(value, list):
            parts.extend(str(v) for v in value)
        elif value is not None:
            parts.append(str(value))
    return " ".join(parts)


def gpu_reservations(service: dict[str, Any]) -> list[dict[str, Any]]:
    """The nvidia device reservations of a service."""
    devices = (
        ((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {}
    ).get("devices") or []
    return [d for d in devices if d.get("driver") == "nvidia" or "gpu" in d.get("capabilities", [])]
