"""`tunefleet demo`: the whole service on one machine, with no configuration.

Migrates the database (embedded SQLite unless TUNEFLEET_DATABASE_URL says
otherwise), starts the API and worker processes, creates the built-in study
(digits-cnn pretrained on digits 0-4, transferred to digits 5-9; accuracy and
robustness), shows its progress live, then prints the Pareto front and the
command that opens optuna-dashboard on the same database.
"""

from __future__ import annotations

import os
import secrets
import signal
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from tunefleet.cli.errors import service_errors
from tunefleet.cli.fleet import LocalFleet
from tunefleet.cli.server import DatabaseUrl
from tunefleet.cli.views import best_table, counts_of, watch_study
from tunefleet.client import TuneFleetClient


def demo_spec(*, name: str, trials: int, epochs: int, seed: int) -> dict:
    """The built-in study: what to search when transferring digits 0-4 to digits 5-9."""
    return {
        "name": name,
        "source_model": "builtin:digits-cnn",
        "dataset": "builtin:digits-5to9",
        "objectives": [
            {"metric": "accuracy", "direction": "maximize"},
            {"metric": "robustness", "direction": "maximize"},
        ],
        "search_space": {
            "lr": {"type": "float", "low": 3e-4, "high": 3e-2, "log": True},
            "activation": {"type": "categorical", "choices": ["relu", "gelu", "silu", "tanh"]},
            "head_depth": {"type": "int", "low": 1, "high": 3},
        },
        "fixed_params": {"unfreeze_blocks": 1},
        "robustness": {
            "gaussian_sigma": [0.1, 0.3],
            "fgsm_eps": [0.03],
            "pgd": {"eps": 0.03, "steps": 3},
            "corruptions": ["blur", "contrast"],
        },
        "sampler": {"type": "tpe", "seed": seed},
        "budget": {
            "max_trials": trials,
            "epochs": epochs,
            "trial_timeout_s": 600,
            "max_retries": 1,
        },
        "seed": seed,
    }


def demo(
    trials: Annotated[int, typer.Option(min=1, help="Trials in the demo study.")] = 24,
    epochs: Annotated[int, typer.Option(min=1, help="Fine-tuning epochs per trial.")] = 4,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes to start.")] = 2,
    seed: Annotated[int, typer.Option(help="Seed of the sampler and the training.")] = 0,
    data_dir: Annotated[
        Path | None, typer.Option(help="Where the demo keeps its files [TUNEFLEET_DATA_DIR].")
    ] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Run the built-in study end to end: API, workers, live progress, Pareto front."""
    with service_errors():
        run_demo(
            Console(),
            trials=trials,
            epochs=epochs,
            workers=workers,
            data_dir=data_dir,
            database_url=database_url,
            seed=seed,
        )


def _raise_interrupt(_sig, _frame) -> None:
    raise KeyboardInterrupt


def run_demo(
    console: Console,
    *,
    trials: int,
    epochs: int,
    workers: int,
    data_dir: Path | None,
    database_url: str | None,
    seed: int,
) -> dict:
    """Run the demo study to the end and return its final state."""
    from service import auth
    from service.config import load_settings, weak_token_secret
    from service.db import make_engine, redact_url, session_scope
    from service.migrate import migrate
    from workers.transfer.builtin import load_or_pretrain

    overrides = {"data_dir": data_dir, "database_url": database_url}
    settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    if weak_token_secret(settings.token_secret):
        # A secret for this run only: the demo makes its own tokens and API process.
        settings.token_secret = secrets.token_hex(32)
    settings.ensure_dirs()
    url = settings.database_url
    cache_dir = settings.data_dir / "cache"

    console.print(f"[bold]database[/bold] {redact_url(url)}")
    migrate(url)
    engine = make_engine(url, pool_size=1, max_overflow=0)
    try:
        with session_scope(engine) as session:
            user_token = auth.create_token(
                session, scope="user", owner="demo", secret=settings.token_secret
            )
            worker_token = auth.create_token(
                session, scope="worker", owner="demo-fleet", secret=settings.token_secret
            )
    finally:
        engine.dispose()

    with console.status("pretraining the source model (digits 0-4), once per cache"):
        _, model_hash = load_or_pretrain(cache_dir)
    console.print(f"[bold]source model[/bold] builtin:digits-cnn {model_hash[:12]} in {cache_dir}")

    threads = max(1, (os.cpu_count() or 1) // workers)
    fleet = LocalFleet(
        database_url=url,
        data_dir=settings.data_dir,
        settings={
            "token_secret": settings.token_secret,
            "heartbeat_interval_s": 2,
            "grace_period_s": 30,
            "reaper_interval_s": 2,
            "cache_dir": cache_dir,
            "artifact_dir": settings.artifact_dir,
            # Files a study may name: datasets and models under the demo's folder only.
            "data_roots": settings.data_dir / "datasets",
            "model_roots": settings.data_dir / "models",
        },
        extra_env={"OMP_NUM_THREADS": str(threads)},
    )
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with console.status("starting the API and the workers"):
            api_url = fleet.start_api()
            for index in range(workers):
                fleet.start_worker(index, worker_token, "--device", "cpu")
        console.print(
            f"[bold]API[/bold] {api_url}  [bold]workers[/bold] {workers} (logs in {fleet.log_dir})"
        )
        stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
        spec = demo_spec(name=f"digits-demo-{stamp}", trials=trials, epochs=epochs, seed=seed)
        with TuneFleetClient(api_url, user_token) as client:
            created = client.create_study(spec)
            console.print(
                f"[bold]study[/bold] {created['name']} (id {created['id']}): "
                f"{trials} trials of {epochs} epochs"
            )

            def check_workers() -> None:
                if fleet.workers_alive() == 0:
                    raise RuntimeError(f"every worker exited; see the logs in {fleet.log_dir}")

            final = watch_study(client, created["id"], console, check=check_workers)
    finally:
        with console.status("stopping the fleet"):
            fleet.stop()
        signal.signal(signal.SIGTERM, previous)

    counts = counts_of(final)
    console.print()
    console.print(best_table(final))
    console.print(
        f"{counts.get('COMPLETE', 0)} complete, {counts.get('PRUNED', 0)} pruned, "
        f"{counts.get('FAIL', 0)} failed. Open the dashboard on the same database with:"
    )
    console.print(f"  optuna-dashboard {url}", soft_wrap=True, highlight=False)
    return final
