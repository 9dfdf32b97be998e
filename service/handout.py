"""The hand-out of a trial in the lease's own transaction.

A lease starts a trial in Optuna's tables (a new trial: its row, parameters
and the sampler's system attributes; an enqueued or re-queued one: its state
set RUNNING, its parameters and system attributes) and records the lease. All
of it is written here on the caller's session, that is on one connection and
in one transaction, which the caller commits with the lease row: either the
worker's trial and its lease both exist, or neither does. A database that goes
away at any statement, or at the commit, leaves no RUNNING trial without a
lease (tests/service/api/test_handout.py fails each statement in turn;
tests/service/test_lease_kill.py SIGKILLs an API process stopped at each write).

What stays outside that transaction, and why it cannot leave a ghost:

- Optuna's storage without a database of its own (InMemoryStorage, in a few
  unit tests) is asked through `study.ask`, which commits on its own; the
  reaper fails a RUNNING trial that has no lease after one grace period, and
  its re-queued copy does not count as a retry (service/reaper.py).
- Writes after the hand-out (reports, the final tell) go through Optuna's
  engine in transactions of their own; they touch a trial that already has its
  lease, which settles it.
"""

from __future__ import annotations

import copy
import json

import optuna
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.orm import Session

from service._optuna_internals import (
    SnapshotStorage,
    TrialParamModel,
    TrialSystemAttributeModel,
    asked_trial,
    claim_waiting_row,
    forget_cached_trials,
    insert_trial_row,
    set_trial_attr_in_session,
    trial_id_of,
)
from service.sampling import sample_params
from service.study_cache import LoadedStudy
from tunefleet.spec import SOURCE_PARAM

__all__ = ["start_trial"]


def start_trial(
    session: Session,
    entry: LoadedStudy,
    trials: list[FrozenTrial],
    *,
    warm: frozenset[str] = frozenset(),
) -> FrozenTrial:
    """Start the study's next trial in `session`, uncommitted: a WAITING one (enqueued
    or re-queued) first, else a sampled one.

    `trials` is the study as `entry.trials()` read it just before, under the
    study's locks (this process's lock and the study's row lock, both held).
    Among WAITING trials, those whose fixed `source_model` is one of the worker's
    `warm` backbones go first: the worker skips loading another backbone, and
    the sampler is not steered (those trials' parameters are already drawn).
    """
    storage = entry.storage
    if not isinstance(storage, SnapshotStorage):
        # Not on a database: Optuna's ask commits on its own (see the module's doc).
        return asked_trial(entry.study.ask(fixed_distributions=entry.distributions))
    study_id = entry.optuna_study_id
    claimed = None
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    if waiting:
        claimed = claim_waiting_row(session, study_id, prefer=_on_warm_backbone(waiting, warm))
    if claimed is None:
        trial = insert_trial_row(session, study_id)
        fixed: dict = {}
    else:
        trial = _claimed_trial(storage, trials, *claimed)
        fixed = dict(trial.system_attrs.get("fixed_params", {}))
    forget_cached_trials(entry.study)
    view = [t for t in trials if trial_id_of(t) != trial_id_of(trial)]
    with storage.sampling(study_id, [*view, trial], trial) as system_attrs:
        sample_params(entry.study, trial, entry.distributions, fixed=fixed)
    session.add_all(
        TrialParamModel(
            trial_id=trial_id_of(trial),
            param_name=name,
            param_value=distribution.to_internal_repr(trial.params[name]),
            distribution_json=optuna.distributions.distribution_to_json(distribution),
        )
        for name, distribution in trial.distributions.items()
    )
    if claimed is None:
        session.add_all(
            TrialSystemAttributeModel(
                trial_id=trial_id_of(trial), key=key, value_json=json.dumps(value)
            )
            for key, value in system_attrs.items()
        )
    else:
        for key, value in system_attrs.items():
            set_trial_attr_in_session(
                storage.backend, session, TrialSystemAttributeModel, trial_id_of(trial), key, value
            )
    session.flush()
    return trial


def _on_warm_backbone(waiting: list[FrozenTrial], warm: frozenset[str]) -> list[int]:
    """The ids of the WAITING trials whose fixed source model the worker holds."""
    if not warm:
        return []
    return [
        trial_id_of(t)
        for t in waiting
        if t.system_attrs.get("fixed_params", {}).get(SOURCE_PARAM) in warm
    ]


def _claimed_trial(
    storage: SnapshotStorage, trials: list[FrozenTrial], trial_id: int, started
) -> FrozenTrial:
    """The claimed WAITING trial as it is now: RUNNING, started, no parameters yet."""
    known = next((t for t in trials if trial_id_of(t) == trial_id), None)
    # Enqueued after the read (by another process): read it, as it was committed.
    trial = copy.deepcopy(known) if known is not None else storage.backend.get_trial(trial_id)
    trial.state = TrialState.RUNNING
    trial.datetime_start = started
    trial.params = {}
    trial.distributions = {}
    return trial
