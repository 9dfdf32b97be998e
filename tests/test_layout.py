"""The import rules of the layout: a light contract, and one composition root.

- tunefleet/spec.py, protocol.py and the _spec_*.py helpers import pydantic, PyYAML
  and the standard library only, so that every process can validate a spec.
- workers/ never imports service/, service/ never imports workers/, and the
  rest of tunefleet/ imports neither: only tunefleet/cli/ brings them together,
  each lazily inside the command that runs it.
- `tunefleet worker` (its help and a running worker) loads no module of the
  service, FastAPI, SQLAlchemy or Alembic; `tunefleet serve` loads no torch.
- The modules of workers/ and tunefleet/ stay small, like the service's
  (tests/service/test_layout.py).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

CONTRACT = [
    REPO_ROOT / "tunefleet" / "spec.py",
    REPO_ROOT / "tunefleet" / "protocol.py",
    *sorted((REPO_ROOT / "tunefleet").glob("_spec_*.py")),
]
CONTRACT_MODULES = {"tunefleet", *(f"tunefleet.{p.stem}" for p in CONTRACT)}
# What a spec or a protocol message may need besides the standard library.
CONTRACT_THIRD_PARTY = {"pydantic", "pydantic_core", "yaml"}
SERVICE_STACK = {"service", "fastapi", "starlette", "sqlalchemy", "alembic", "psycopg", "uvicorn"}
TORCH_STACK = {"torch", "torchvision", "sklearn", "workers"}
MAX_LINES = 450


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def python_files(package: str) -> list[Path]:
    return sorted((REPO_ROOT / package).rglob("*.py"))


def loaded_top_level_modules(script: str, *argv: str) -> set[str]:
    """The top-level packages in sys.modules after running ``script`` in a fresh interpreter."""
    code = textwrap.dedent(script) + textwrap.dedent(
        """
        import json as _json, sys as _sys
        print("MODULES=" + _json.dumps(sorted({m.split(".")[0] for m in _sys.modules})))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *argv],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("MODULES=")]
    assert lines, f"the script failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}"
    return set(json.loads(lines[-1].removeprefix("MODULES=")))


RUN_CLI = """
import sys
from tunefleet.cli import main
sys.argv = ["tunefleet", *sys.argv[1:]]
try:
    main()
except SystemExit as exit:
    assert not exit.code, f"exit code {exit.code}"
"""


@pytest.mark.parametrize("path", CONTRACT, ids=lambda p: p.name)
def test_the_contract_imports_pydantic_and_the_standard_library_only(path):
    for name in imported_modules(path):
        top = name.split(".")[0]
        allowed = (
            top in sys.stdlib_module_names
            or top in CONTRACT_THIRD_PARTY
            or name in CONTRACT_MODULES
            or name == "__future__"
        )
        assert allowed, f"{path.relative_to(REPO_ROOT)} imports {name}: keep the contract light"


def test_importing_the_contract_loads_nothing_heavy():
    loaded = loaded_top_level_modules("import tunefleet.spec, tunefleet.protocol")
    heavy = {"httpx", "typer", "rich", "numpy", "optuna", *SERVICE_STACK, *TORCH_STACK}
    assert not loaded & heavy, f"the contract loads {sorted(loaded & heavy)}"


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [("workers", "service"), ("service", "workers"), ("migrations", "workers")],
)
def test_the_service_and_the_workers_never_import_each_other(package, forbidden):
    for path in python_files(package):
        for name in imported_modules(path):
            assert name.split(".")[0] != forbidden, (
                f"{path.relative_to(REPO_ROOT)} imports {name}: "
                f"{package}/ must not depend on {forbidden}/"
            )


def test_only_the_cli_imports_the_service_or_the_workers_from_tunefleet():
    cli = REPO_ROOT / "tunefleet" / "cli"
    for path in python_files("tunefleet"):
        if cli in path.parents:
            continue
        for name in imported_modules(path):
            assert name.split(".")[0] not in {"service", "workers"}, (
                f"{path.relative_to(REPO_ROOT)} imports {name}: only tunefleet/cli/ may"
            )


def test_the_cli_imports_the_service_and_the_workers_only_inside_commands():
    for path in python_files("tunefleet/cli"):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = (
                    [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module]
                )
                for name in names:
                    assert (name or "").split(".")[0] not in {"service", "workers"}, (
                        f"{path.relative_to(REPO_ROOT)}:{node.lineno} imports {name} at the top"
                    )


def test_worker_help_loads_no_service_module():
    loaded = loaded_top_level_modules(RUN_CLI, "worker", "--help")
    assert "typer" in loaded  # the CLI did run
    assert not loaded & SERVICE_STACK, f"`tunefleet worker --help` loads {loaded & SERVICE_STACK}"


def test_a_running_worker_loads_no_service_module():
    # A real worker, against a stand-in API that has no work, until its idle exit.
    script = textwrap.dedent(
        """
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class NoWork(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), NoWork)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    import os
    import sys
    os.environ["TUNEFLEET_TOKEN"] = "tf_worker"
    sys.argv[1:] = ["worker", "--service", f"http://127.0.0.1:{server.server_port}",
                    "--device", "cpu", "--idle-exit", "0.5"]
    """
    ) + RUN_CLI.replace('sys.argv = ["tunefleet", *sys.argv[1:]]', "")
    loaded = loaded_top_level_modules(script)
    assert "workers" in loaded and "torch" in loaded  # the trial engine was loaded
    assert not loaded & SERVICE_STACK, f"a running worker loads {loaded & SERVICE_STACK}"


@pytest.mark.parametrize("command", ["serve", "migrate"])
def test_the_api_commands_load_no_torch(command):
    loaded = loaded_top_level_modules(RUN_CLI, command, "--help")
    assert not loaded & TORCH_STACK, f"`tunefleet {command} --help` loads {loaded & TORCH_STACK}"


def test_the_app_the_api_serves_loads_no_torch():
    loaded = loaded_top_level_modules(
        "from service.main import create_app\nimport tunefleet.cli\ncreate_app"
    )
    assert "fastapi" in loaded
    assert not loaded & TORCH_STACK, f"the API loads {loaded & TORCH_STACK}"


@pytest.mark.parametrize(
    "path",
    [*python_files("workers"), *python_files("tunefleet")],
    ids=lambda p: str(p.relative_to(REPO_ROOT)),
)
def test_no_worker_or_contract_module_is_over_450_lines(path):
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, (
        f"{path.relative_to(REPO_ROOT)} has {lines} lines: look for its second job"
    )
