"""`tunefleet study ...` and `tunefleet trials ...`: the user API from a terminal."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console

from tunefleet.cli.errors import CliError
from tunefleet.cli.specfile import read_spec
from tunefleet.cli.views import best_table, studies_table, summary_line, trials_table, watch_study
from tunefleet.client import AmbiguousFailure, ApiError, TuneFleetClient, Unreachable

study_app = typer.Typer(help="Create, inspect and control studies.", no_args_is_help=True)
out = Console(soft_wrap=True)

Service = Annotated[
    str,
    typer.Option(
        "--service",
        envvar="TUNEFLEET_SERVICE_URL",
        help="URL of the TuneFleet API.",
    ),
]
Token = Annotated[
    str,
    typer.Option(
        "--token", envvar="TUNEFLEET_TOKEN", help="A user or admin token.", show_default=False
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the API's JSON, for scripts.")]
StudyRef = Annotated[
    str, typer.Argument(help="The study's name, or id:N for its id (a bare number: a name first).")
]
DEFAULT_SERVICE = "http://127.0.0.1:8000"


def _client(service: str, token: str) -> TuneFleetClient:
    if not token:
        raise CliError(
            "no token: pass --token or set TUNEFLEET_TOKEN "
            "(make one with `tunefleet token create --scope user --owner NAME`)"
        )
    return TuneFleetClient(service, token)


def resolve_study(client: TuneFleetClient, ref: str | int) -> int:
    """A study's id from `id:N`, else from its name; a bare number no study is named is an id."""
    if isinstance(ref, int):
        return ref
    kind, sep, rest = str(ref).partition(":")
    if sep and kind == "id":
        if not rest.isdigit():
            raise CliError(f"{ref!r}: write a study id as id:N, e.g. id:3")
        return int(rest)
    try:
        return int(client.study_by_name(str(ref))["id"])
    except ApiError as error:
        if error.status_code == 404 and str(ref).isdigit():
            return int(ref)
        raise


def _call(service: str, token: str, fn, *args: Any, study: str | None = None, **kwargs) -> Any:
    """Run fn(client, ...) and turn the client's errors into one line; `study` is resolved
    to an id first and passed as the first argument."""
    with _client(service, token) as client:
        try:
            if study is not None:
                args = (resolve_study(client, study), *args)
            return fn(client, *args, **kwargs)
        except ApiError as error:
            raise CliError(_explain(error)) from None
        except AmbiguousFailure as error:
            raise CliError(
                f"{error}; it may have taken effect: look before sending it again "
                "(`tunefleet trials` or `tunefleet study show`)"
            ) from None
        except Unreachable as error:
            raise CliError(
                f"{error}; check --service (TUNEFLEET_SERVICE_URL) and that "
                "`tunefleet serve` is running"
            ) from None


def _explain(error: ApiError) -> str:
    hint = {
        401: " (check --token / TUNEFLEET_TOKEN)",
        403: " (this token's scope may not do that)",
    }.get(error.status_code, "")
    message = error.message
    if error.path:
        where = ".".join(str(p) for p in error.path)
        if where not in message:  # most messages start with their path already
            message = f"{where}: {message}"
    return f"{message}{hint}"


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


@study_app.command("create")
def create(
    file: Annotated[str, typer.Option("-f", "--file", help="Spec in YAML or JSON; - for stdin.")],
    service: Service = DEFAULT_SERVICE,
    token: Token = "",
    as_json: AsJson = False,
) -> None:
    """Create a study from a spec file (validated here first, then by the service)."""
    spec = read_spec(file)
    study = _call(service, token, TuneFleetClient.create_study, spec)
    if as_json:
        _print_json(study)
    else:
        out.print(f"created study {study['name']} (id {study['id']})")


@study_app.command("list")
def list_studies(
    state: Annotated[
        str | None, typer.Option(help="running, paused, stopped, completed or failed.")
    ] = None,
    limit: int = 50,
    offset: int = 0,
    service: Service = DEFAULT_SERVICE,
    token: Token = "",
    as_json: AsJson = False,
) -> None:
    """List your studies."""
    page = _call(
        service, token, TuneFleetClient.list_studies, state=state, limit=limit, offset=offset
    )
    if as_json:
        _print_json(page)
        return
    out.print(studies_table(page["data"]))
    out.print(f"{len(page['data'])} of {page['count']}")


@study_app.command("show")
def show(
    study: StudyRef, service: Service = DEFAULT_SERVICE, token: Token = "", as_json: AsJson = False
) -> None:
    """A study's state, trial counts and best trial (or Pareto front)."""
    data = _call(service, token, TuneFleetClient.study, study=study)
    if as_json:
        _print_json(data)
        return
    out.print(summary_line(data))
    out.print()
    out.print(best_table(data))


def _control(action: str):
    def command(
        study: StudyRef,
        service: Service = DEFAULT_SERVICE,
        token: Token = "",
        as_json: AsJson = False,
    ) -> None:
        data = _call(service, token, TuneFleetClient.control, action, study=study)
        if as_json:
            _print_json(data)
        else:
            out.print(f"study {data['name']} is {data['state']}")

    command.__doc__ = {
        "pause": "Pause: no new trials; running ones are told to stop at their next heartbeat.",
        "resume": "Resume a paused or failed study (a failed one with its count reset).",
        "stop": "Stop for good: no new trials; running ones stop at their next heartbeat.",
    }[action]
    return command


for _action in ("pause", "resume", "stop"):
    study_app.command(_action)(_control(_action))


@study_app.command("delete")
def delete(
    study: StudyRef,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    service: Service = DEFAULT_SERVICE,
    token: Token = "",
) -> None:
    """Delete a study and its Optuna study, trials included."""
    if not yes and not typer.confirm(f"Delete study {study} and all its trials?"):
        raise typer.Exit(1)
    _call(service, token, TuneFleetClient.delete_study, study=study)
    out.print(f"deleted study {study}")


@study_app.command("watch")
def watch(
    study: StudyRef,
    interval: Annotated[float, typer.Option(help="Seconds between refreshes.")] = 1.0,
    service: Service = DEFAULT_SERVICE,
    token: Token = "",
) -> None:
    """Live progress until the study ends (Ctrl-C stops watching, not the study);
    exit code 1 when it ends failed or stopped."""
    final = _call(
        service, token, lambda c, ref: watch_study(c, ref, out, interval_s=interval), study=study
    )
    out.print()
    out.print(best_table(final))
    if final["state"] in ("failed", "stopped"):
        raise typer.Exit(1)


@study_app.command("enqueue")
def enqueue(
    study: StudyRef,
    param: Annotated[
        list[str], typer.Option("--param", "-p", help="name=value; repeat for each parameter.")
    ],
    service: Service = DEFAULT_SERVICE,
    token: Token = "",
    as_json: AsJson = False,
) -> None:
    """Queue a trial with fixed parameters (the sampler picks those left out; none: all of
    them); the next free worker runs it."""
    params: dict[str, Any] = {}
    for item in param:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise CliError(f"--param {item!r}: write it as name=value, e.g. lr=0.01")
        params[name] = yaml.safe_load(value)
    data = _call(service, token, TuneFleetClient.enqueue, params, study=study)
    if as_json:
        _print_json(data)
    else:
        out.print(f"queued trial with {params}")


def trials(
    study: StudyRef,
    state: Annotated[
        str | None, typer.Option(help="complete, running, pruned, fail or waiting.")
    ] = None,
    order_by: Annotated[
        str | None,
        typer.Option(
            "--order-by",
            help="An objective's metric, best first, or number; default: the first objective.",
        ),
    ] = None,
    limit: int = 50,
    offset: int = 0,
    service: Service = DEFAULT_SERVICE,
    token: Token = "",
    as_json: AsJson = False,
) -> None:
    """List a study's trials, best first (by the first objective), filtered by state."""

    def fetch(client: TuneFleetClient, study_id: int) -> tuple[dict, dict]:
        data = client.study(study_id)
        order = order_by or data["spec"]["objectives"][0]["metric"]
        return data, client.trials(
            study_id, state=state, order_by=order, limit=limit, offset=offset
        )

    data, page = _call(service, token, fetch, study=study)
    if as_json:
        _print_json(page)
        return
    out.print(trials_table(data, page["data"]))
    out.print(f"{len(page['data'])} of {page['count']}")
