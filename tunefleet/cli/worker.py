"""`tunefleet worker`: one worker process. Imports ``workers`` only, never the service."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from tunefleet.cli.errors import fail


def worker(
    service: Annotated[
        list[str] | None,
        typer.Option(
            help="URL of the TuneFleet API; several API processes (repeat the option, or "
            "comma-separate) for failover [TUNEFLEET_SERVICE_URL, comma-separated]."
        ),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            help="A file holding the worker-scope token [TUNEFLEET_TOKEN_FILE]; "
            "or set TUNEFLEET_TOKEN. Never on the command line, where `ps` shows it."
        ),
    ] = None,
    token: Annotated[str | None, typer.Option(hidden=True)] = None,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda or cuda:N; default auto [TUNEFLEET_DEVICE].")
    ] = None,
    max_trials: Annotated[
        int | None, typer.Option(min=1, help="Exit after this many trials [TUNEFLEET_MAX_TRIALS].")
    ] = None,
    idle_exit: Annotated[
        float | None,
        typer.Option(help="Exit after this many seconds without work [TUNEFLEET_IDLE_EXIT_S]."),
    ] = None,
    worker_id: Annotated[
        str | None, typer.Option(help="Default hostname-pid-device [TUNEFLEET_WORKER_ID].")
    ] = None,
    pack: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=64,
            help="Lease up to K trials of one study at once; head-only trials of the same "
            "head shape train fused [TUNEFLEET_PACK].",
        ),
    ] = None,
    slots: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=64,
            help="Run N trials at once on the device, each slot a worker process of its "
            "own (trials that cannot fuse); on a GPU, run CUDA MPS [TUNEFLEET_SLOTS].",
        ),
    ] = None,
    warm: Annotated[
        bool,
        typer.Option(
            "--warm",
            help="Pretrain the demo's source model (builtin:digits-cnn) before the first lease.",
        ),
    ] = False,
    objective: Annotated[
        str | None,
        typer.Option(hidden=True, help="module:function run instead of the trial engine (tests)."),
    ] = None,
) -> None:
    """Run one worker: lease trials, fine-tune, report. One process per GPU (--slots N: N).

    A first SIGTERM/SIGINT finishes the current trial and exits; a second one
    hands the trial back (it is re-queued) and exits at once. A bad setting
    (--device included) is exit 2 before the first lease.
    """
    if token is not None:
        fail(
            "--token is not taken: a token on the command line shows in `ps` to every user of "
            "the machine. Set TUNEFLEET_TOKEN, or put it in a file and pass --token-file PATH."
        )
    from workers.command import run_worker_command

    code = run_worker_command(
        service_url=",".join(service) if service else None,
        token_file=token_file,
        device=device,
        max_trials=max_trials,
        idle_exit_s=idle_exit,
        worker_id=worker_id,
        pack=pack,
        slots=slots,
        objective=objective,
        warm=warm,
    )
    if code:
        raise typer.Exit(code)
