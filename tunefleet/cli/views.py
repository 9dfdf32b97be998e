"""How studies and trials look in a terminal: tables, the Pareto front, live progress."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from tunefleet.client import TuneFleetClient

FINISHED_STATES = ("COMPLETE", "PRUNED")
# States a study does not leave by itself: watching ends there.
ENDED_STUDY_STATES = ("completed", "stopped", "failed")


def counts_of(study: dict) -> dict[str, int]:
    """Trials per state, upper-case Optuna names (COMPLETE, RUNNING, PRUNED, FAIL, WAITING)."""
    counts = study.get("trial_counts") or {}
    return {str(k).upper(): int(v) for k, v in counts.items()}


def metric_names(study: dict) -> list[str]:
    return [o["metric"] for o in study["spec"]["objectives"]]


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def _values(trial: dict, metrics: list[str]) -> list[str]:
    values = trial.get("values") or {}
    if isinstance(values, list):
        values = dict(zip(metrics, values, strict=False))
    return [_fmt(values.get(m)) for m in metrics]


def best_table(study: dict) -> Table:
    """The best trial, or the Pareto front when the study has several objectives."""
    metrics = metric_names(study)
    best = study.get("best_trials") or []
    title = "Pareto front" if len(metrics) > 1 else "Best trial"
    table = Table(title=f"{title} of {study['name']}")
    table.add_column("trial", justify="right")
    for metric in metrics:
        table.add_column(metric, justify="right")
    table.add_column("params", overflow="fold")
    for trial in best:
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(trial.get("params", {}).items()))
        table.add_row(str(trial["number"]), *_values(trial, metrics), params)
    return table


def studies_table(studies: list[dict]) -> Table:
    table = Table(title="Studies")
    for column in ("id", "name", "state", "priority", "objectives", "created"):
        # Fold, never cut: a name is what the user types next.
        table.add_column(
            column,
            justify="right" if column in ("id", "priority") else "left",
            overflow="fold",
            no_wrap=column in ("id", "state", "priority"),
        )
    for study in studies:
        objectives = ", ".join(f"{o['metric']} ({o['direction'][:3]})" for o in study["objectives"])
        table.add_row(
            str(study["id"]),
            study["name"],
            _state(study),
            str(study.get("priority", 0)),
            objectives,
            str(study["created_at"])[:19].replace("T", " "),
        )
    return table


def trials_table(study: dict, trials: list[dict]) -> Table:
    metrics = metric_names(study)
    table = Table(title=f"Trials of {study['name']}")
    table.add_column("#", justify="right")
    table.add_column("state")
    for metric in metrics:
        table.add_column(metric, justify="right")
    table.add_column("params", overflow="fold")
    # Shown when the study was warm-started: which past trial each enqueued one repeats.
    origins = any(trial.get("warm_start_from") for trial in trials)
    if origins:
        table.add_column("warm_start_from")
    for trial in trials:
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(trial.get("params", {}).items()))
        origin = [trial.get("warm_start_from") or ""] if origins else []
        table.add_row(
            str(trial["number"]), trial["state"], *_values(trial, metrics), params, *origin
        )
    return table


def _state(study: dict) -> str:
    return study["state"]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def best_so_far(study: dict) -> str:
    """The best value (one objective), or the Pareto front's size and best value per objective."""
    metrics = metric_names(study)
    best = study.get("best_trials") or []
    if not best:
        return "no result yet"
    if len(metrics) == 1:
        return f"best {metrics[0]} {_fmt(_values(best[0], metrics)[0])}"
    directions = {o["metric"]: o["direction"] for o in study["spec"]["objectives"]}
    parts = []
    for i, metric in enumerate(metrics):
        values = [float(v) for t in best if (v := _value(t, metrics, i)) is not None]
        if values:
            pick = max if directions[metric] == "maximize" else min
            parts.append(f"{metric} {_fmt(pick(values))}")
    return f"Pareto front of {_plural(len(best), 'trial')}, best " + ", ".join(parts)


def _value(trial: dict, metrics: list[str], i: int) -> float | None:
    values = trial.get("values") or {}
    if isinstance(values, list):
        return values[i] if i < len(values) else None
    return values.get(metrics[i])


def summary_line(study: dict) -> Text:
    """One line that says where the study stands (and why it failed); folds, never cut."""
    c = counts_of(study)
    line = Text(overflow="fold")
    line.append(study["name"], style="bold")
    line.append(
        f" {study['state']}: {c.get('COMPLETE', 0)} done, {c.get('RUNNING', 0)} running, "
        f"{c.get('PRUNED', 0)} pruned, {c.get('FAIL', 0)} failed; {best_so_far(study)}"
    )
    if (warm := study.get("warm_start")) is not None:
        sources = ", ".join(warm["sources"]) or "no past study"
        line.append(
            f"\nwarm start: the sampler observes {_plural(warm['observations'], 'past trial')} "
            f"of {sources}"
        )
    if study["state"] == "failed":
        line.append(
            f"\nfailed: {study.get('fail_reason') or 'too many failed trials'} "
            f"(fix it, then `tunefleet study resume {study['name']}`)",
            style="red",
        )
    return line


def is_finished(study: dict) -> bool:
    if study["state"] in ENDED_STUDY_STATES:
        return True
    c = counts_of(study)
    done = sum(c.get(s, 0) for s in FINISHED_STATES)
    budget = study["spec"]["budget"]["max_trials"]
    return done >= budget and c.get("RUNNING", 0) == 0 and c.get("WAITING", 0) == 0


def watch_study(
    client: TuneFleetClient,
    ref: str | int,
    console: Console,
    *,
    interval_s: float = 0.5,
    check: Callable[[], None] | None = None,
) -> dict:
    """Show live progress until the study finishes; returns its final state.

    `check` runs every poll and may raise to abort (the demo checks its workers).
    """
    study = client.study(ref)
    budget = study["spec"]["budget"]["max_trials"]
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    )
    task = progress.add_task("trials finished", total=budget)
    with Live(Group(progress, summary_line(study)), console=console, refresh_per_second=4) as live:
        while True:
            c = counts_of(study)
            progress.update(task, completed=sum(c.get(s, 0) for s in FINISHED_STATES))
            live.update(Group(progress, summary_line(study)))
            if is_finished(study):
                return study
            if check is not None:
                check()
            time.sleep(interval_s)
            study = client.study(ref)
