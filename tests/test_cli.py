"""The command line: help, and readable errors for bad settings."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO_ROOT, free_port, subprocess_env


def run_cli(*args: str, **settings: object) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tunefleet", *args],
        env=subprocess_env(**settings),
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )


def test_help_lists_every_command():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("migrate", "serve", "worker", "demo", "token"):
        assert command in result.stdout


def test_unknown_database_scheme_is_one_line_naming_the_setting():
    result = run_cli("migrate", database_url="mysql://root@localhost/x")
    assert result.returncode != 0
    assert "TUNEFLEET_DATABASE_URL" in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unreachable_database_is_one_line_naming_the_setting(tmp_path):
    url = f"postgresql://postgres:secret@127.0.0.1:{free_port()}/nothing"
    result = run_cli("migrate", database_url=url, data_dir=tmp_path)
    assert result.returncode != 0
    assert "TUNEFLEET_DATABASE_URL" in result.stderr
    assert "Traceback" not in result.stderr
    assert "secret" not in result.stderr  # the password is never printed
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_numeric_setting_names_the_variable(tmp_path):
    result = run_cli("migrate", grace_period_s="soon", data_dir=tmp_path)
    assert result.returncode == 2
    assert "TUNEFLEET_GRACE_PERIOD_S" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_on_an_unmigrated_database_says_to_migrate(pg_url, tmp_path):
    result = run_cli("serve", "--port", str(free_port()), database_url=pg_url, data_dir=tmp_path)
    assert result.returncode == 1
    assert "run `tunefleet migrate` first" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_on_an_unreachable_database_is_one_line(tmp_path):
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing"
    result = run_cli("serve", "--port", str(free_port()), database_url=url, data_dir=tmp_path)
    assert result.returncode == 1
    assert "cannot reach the database at TUNEFLEET_DATABASE_URL" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_token_create_list_and_revoke_from_the_command_line(migrated_pg_url):
    made = run_cli(
        "token",
        "create",
        "--scope",
        "worker",
        "--owner",
        "pool-a",
        "--expires-in",
        "2w",
        database_url=migrated_pg_url,
    )
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().splitlines()[-1]
    assert "valid until" in made.stderr

    listed = run_cli("token", "list", database_url=migrated_pg_url)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if "pool-a" in line)
    assert "worker" in row and "active" in row
    assert token not in listed.stdout
    token_id = re.match(r"\W*(\d+)\W", row)[1]  # the id is the row's first cell

    revoked = run_cli("token", "revoke", token_id, database_url=migrated_pg_url)
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked token" in revoked.stderr
    again = run_cli("token", "list", "--owner", "pool-a", database_url=migrated_pg_url)
    assert "revoked" in again.stdout

    missing = run_cli("token", "revoke", "99999", database_url=migrated_pg_url)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "error: no token with id 99999"


def test_token_create_with_a_bad_expiry_says_how_to_write_one(migrated_pg_url):
    result = run_cli(
        "token",
        "create",
        "--scope",
        "user",
        "--owner",
        "x",
        "--expires-in",
        "soon",
        database_url=migrated_pg_url,
    )
    assert result.returncode == 1
    assert "e.g. 30d or 12h" in result.stderr
    assert "Traceback" not in result.stderr


def test_token_create_takes_its_value_from_an_environment_variable(migrated_pg_url):
    value = "tf_" + "v" * 40
    made = run_cli(
        "token",
        "create",
        "--scope",
        "worker",
        "--owner",
        "pool",
        "--value-env",
        "TUNEFLEET_POOL_TOKEN",
        database_url=migrated_pg_url,
        pool_token=value,
    )
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip().splitlines()[-1] == value
    missing = run_cli(
        "token",
        "create",
        "--scope",
        "worker",
        "--owner",
        "pool",
        "--value-env",
        "NOT_SET_HERE",
        database_url=migrated_pg_url,
    )
    assert missing.returncode == 1
    assert "NOT_SET_HERE" in missing.stderr and "not set" in missing.stderr
