"""The images: what they install, who they run as, what they start, what they copy."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from .conftest import DEPLOY, REPO_ROOT
from .dockerignore import DockerIgnore
from .images import (
    Instruction,
    build_args,
    expand,
    final_stage,
    installed_names,
    parse_dockerfile,
    pip_installs,
    project_extras,
    project_requirements,
    read_dockerfile,
    run_commands,
)

API = DEPLOY / "Dockerfile.api"
WORKER = DEPLOY / "Dockerfile.worker"
DASHBOARD = DEPLOY / "Dockerfile.dashboard"
ALL_IMAGES = [API, WORKER, DASHBOARD]
TORCH_PACKAGES = {"torch", "torchvision"}


def _copied_files(instructions: list[Instruction]) -> dict[str, str]:
    """Destination path inside the image -> source path in the build context."""
    workdir = "/"
    copied: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "WORKDIR":
            workdir = str(Path(workdir, instruction.value))
        if instruction.keyword in {"COPY", "ADD"} and "from" not in instruction.flags:
            *sources, dest = instruction.arguments()
            base = Path(workdir, dest)
            for source in sources:
                target = base / Path(source).name if dest.endswith("/") else base
                copied[str(target)] = source
    return copied


def _user_instruction(dockerfile: Path) -> Instruction:
    users = [i for i in final_stage(read_dockerfile(dockerfile)) if i.keyword == "USER"]
    assert users, f"{dockerfile.name} has no USER instruction: it would run as root"
    return users[-1]


# ----------------------------------------------------------------------------- the API image


def test_api_image_does_not_install_torch():
    names = installed_names(API)
    assert "fastapi" in names and "optuna" in names, names
    assert not names & TORCH_PACKAGES, f"the API image installs {names & TORCH_PACKAGES}"


def test_api_image_is_not_a_cuda_or_pytorch_base():
    base = final_stage(read_dockerfile(API))[0].value.split()[0]
    assert base.startswith("python:3.11") and "slim" in base, base


def test_api_image_healthcheck_asks_readyz_without_curl():
    checks = [i for i in final_stage(read_dockerfile(API)) if i.keyword == "HEALTHCHECK"]
    assert len(checks) == 1
    command = checks[0].value
    assert command.startswith("CMD ")
    assert "/readyz" in command and "urllib" in command and "curl" not in command


# ----------------------------------------------------------------------------- the worker image


def test_worker_image_installs_a_cuda_build_of_torch_in_pyprojects_range(pyproject):
    instructions = read_dockerfile(WORKER)
    args = build_args(WORKER)
    torch_installs = [
        [expand(w, args) for w in words]
        for _, words in pip_installs(final_stage(instructions))
        if any(w.startswith("torch==") or w.startswith("torch==$") for w in words)
    ]
    assert len(torch_installs) == 1, "the worker image must pin torch in one pip install"
    words = torch_installs[0]
    pins = {Requirement(w).name: Requirement(w) for w in words if "==" in w}
    declared = {r.name: r for r in project_requirements(["worker"])}
    for name in TORCH_PACKAGES:
        assert name in pins, f"{name} is not pinned in the worker image"
        version = next(iter(pins[name].specifier)).version
        assert declared[name].specifier.contains(version), (
            f"the worker image's {name}=={version} is outside pyproject.toml's "
            f"worker extra's {declared[name].specifier}"
        )
    # The index is named, so that a CUDA build is a deliberate choice.
    assert "--index-url" in words
    index = words[words.index("--index-url") + 1]
    assert index.startswith("https://")


def test_worker_image_installs_torch_before_the_project():
    installs = [words for _, words in pip_installs(final_stage(read_dockerfile(WORKER)))]
    torch_at = next(n for n, w in enumerate(installs) if any("torch==" in x for x in w))
    others_at = next(n for n, w in enumerate(installs) if any(project_extras(x) for x in w))
    assert torch_at < others_at


def test_worker_image_checks_that_its_dependencies_are_consistent():
    commands = [
        words
        for i in final_stage(read_dockerfile(WORKER))
        if i.keyword == "RUN"
        for words in run_commands(i)
    ]
    assert ["pip", "check"] in commands


# ----------------------------------------------------------------------------- all images


@pytest.mark.parametrize("dockerfile", ALL_IMAGES, ids=lambda p: p.name)
def test_image_runs_as_a_non_root_user(dockerfile):
    user = _user_instruction(dockerfile).value.split(":")[0]
    assert user not in {"root", "0"}, f"{dockerfile.name} runs as {user}"
    later = [
        i
        for i in final_stage(read_dockerfile(dockerfile))
        if i.line > _user_instruction(dockerfile).line and i.keyword == "RUN"
    ]
    assert not later, f"{dockerfile.name} runs commands after switching user"


def test_images_share_one_uid_for_the_artifact_volume():
    uids = {}
    for dockerfile in ALL_IMAGES:
        text = " ".join(i.value for i in read_dockerfile(dockerfile) if i.keyword == "RUN")
        match = re.search(r"useradd\b.*--uid (\d+)", text)
        assert match, f"{dockerfile.name} creates no user with a fixed uid"
        uids[dockerfile.name] = int(match.group(1))
    assert len(set(uids.values())) == 1 and min(uids.values()) >= 1000, uids


@pytest.mark.parametrize(
    ("dockerfile", "program"),
    [(API, "tunefleet"), (WORKER, "tunefleet"), (DASHBOARD, "optuna-dashboard")],
    ids=lambda v: getattr(v, "name", v),
)
def test_entrypoint_is_the_program_in_exec_form(dockerfile, program):
    entrypoints = [i for i in final_stage(read_dockerfile(dockerfile)) if i.keyword == "ENTRYPOINT"]
    assert entrypoints, f"{dockerfile.name} has no ENTRYPOINT"
    # Exec form, so the program is PID 1's child of nothing and gets SIGTERM itself.
    assert entrypoints[-1].exec_form() == [program]


@pytest.mark.parametrize("dockerfile", ALL_IMAGES, ids=lambda p: p.name)
def test_every_copy_source_exists_and_is_in_the_build_context(dockerfile):
    ignore = DockerIgnore.read(REPO_ROOT / ".dockerignore")
    copies = [
        i
        for i in read_dockerfile(dockerfile)
        if i.keyword in {"COPY", "ADD"} and "from" not in i.flags
    ]
    assert copies
    for copy in copies:
        for source in copy.arguments()[:-1]:
            assert (REPO_ROOT / source).exists(), (
                f"{dockerfile.name}:{copy.line} copies {source}, which is not in the repository"
            )
            assert not ignore.excludes(source), (
                f"{dockerfile.name}:{copy.line} copies {source}, which .dockerignore leaves out"
            )


@pytest.mark.parametrize("dockerfile", [API, WORKER], ids=lambda p: p.name)
def test_images_copy_everything_the_project_build_needs(dockerfile, pyproject):
    copied = set(_copied_files(final_stage(read_dockerfile(dockerfile))).values())
    needed = {"pyproject.toml"}
    readme = pyproject["project"].get("readme")
    if isinstance(readme, str):
        needed.add(readme)
    includes = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    needed |= {pattern.rstrip("*").rstrip(".") for pattern in includes}
    assert needed <= copied, f"{dockerfile.name} does not copy {sorted(needed - copied)}"


def test_dockerignore_keeps_secrets_and_local_state_out():
    ignore = DockerIgnore.read(REPO_ROOT / ".dockerignore")
    for path in [
        ".env",
        "deploy/.env",
        ".git/config",
        ".venv/bin/python",
        "tunefleet.db",
        "tunefleet.egg-info/PKG-INFO",
        "service/__pycache__/main.cpython-311.pyc",
    ]:
        assert ignore.excludes(path), f".dockerignore lets {path} into the build context"
    for path in ["pyproject.toml", "README.md", "service/main.py", "deploy/Dockerfile.api"]:
        assert not ignore.excludes(path), f".dockerignore leaves out {path}"


def test_dockerignore_rules_follow_dockers_order_and_negation():
    ignore = DockerIgnore("docs\n**/*.pyc\n!docs/keep.md\n")
    assert ignore.excludes("docs/guide.md")
    assert not ignore.excludes("docs/keep.md")
    assert ignore.excludes("a/b/c.pyc")
    assert not ignore.excludes("docsy/file")


def test_a_dockerfile_that_installs_torch_is_caught():
    text = "FROM python:3.11-slim\nRUN pip install fastapi \\\n    torch==2.4.0\n"
    instructions = parse_dockerfile(text)
    assert [i.keyword for i in instructions] == ["FROM", "RUN"]
    names = {Requirement(w).name for _, words in pip_installs(instructions) for w in words}
    assert "torch" in names


def test_what_the_api_image_runs_never_imports_torch():
    # The API image has no torch: every module of the service and the shared
    # package must import without it (migrations/env.py runs only inside Alembic).
    script = (
        "import importlib, pkgutil, sys\n"
        "importlib.import_module('migrations')\n"
        "for package in ('service', 'tunefleet'):\n"
        "    module = importlib.import_module(package)\n"
        "    for info in pkgutil.walk_packages(module.__path__, package + '.'):\n"
        "        if not info.name.endswith('__main__'):\n"
        "            importlib.import_module(info.name)\n"
        "leaked = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'torchvision'})\n"
        "print(leaked[:3])\n"
        "sys.exit(1 if leaked else 0)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"torch is imported: {done.stdout}{done.stderr}"


def test_worker_image_runs_the_torch_that_ci_tests_with():
    # The Makefile pins the torch of the test suite; the image should not differ.
    makefile = (REPO_ROOT / "Makefile").read_text()
    match = re.search(r"^TORCH_SPEC\s*\??=\s*(.+)$", makefile, re.MULTILINE)
    assert match, "Makefile no longer sets TORCH_SPEC: update this test with the new pin"
    tested = {Requirement(w).name: str(Requirement(w).specifier) for w in match.group(1).split()}
    args = build_args(WORKER)
    image = {
        "torch": f"=={args['TORCH_VERSION']}",
        "torchvision": f"=={args['TORCHVISION_VERSION']}",
    }
    assert image == tested
