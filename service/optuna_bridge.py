"""Everything the service asks of Optuna: the one module that touches it.

Spec -> distributions, sampler and pruner; creating and deleting the Optuna
study behind a TuneFleet study; summaries (counts per state, best trial,
Pareto front); trial listing and enqueueing. Functions take the storage and
keyword arguments; they raise `service.errors` types for what a user can cause.

On RDBStorage, counts and pages are computed in SQL on Optuna's own tables
(`trials`, `trial_values`) so that a summary or a page does not load every
trial of a study; any other storage gets the generic (slower) path.

Samplers are rebuilt from the spec for each Study object. A sampler with a
fixed seed starts the same random stream every time it is built, so callers
that ask for trials should keep one Study object per study and process
(`load_optuna_study` gives a fresh one) when the spec sets a seed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import warnings
import zlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import optuna
import sqlalchemy as sa
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.storages import BaseStorage, RDBStorage
from optuna.storages._rdb import models as rdb
from optuna.storages._rdb.storage import _create_scoped_session as _rdb_session
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState, create_trial
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, selectinload

from service.errors import Conflict, InvalidSpec, NotFound
from service.sampling import ObservationCachingTPE, SnapshotStorage, sample_params
from tunefleet import spec as specs
from tunefleet.spec import StudySpec

__all__ = [
    "SPEC_ATTR",
    "STUDY_ID_ATTR",
    "TRIAL_STATES",
    "TrialPage",
    "best_trials",
    "build_pruner",
    "build_sampler",
    "check_server_support",
    "create_optuna_study",
    "delete_optuna_study",
    "distributions",
    "enqueue_trial",
    "finite_or_none",
    "get_trial_by_number",
    "list_trials",
    "load_optuna_study",
    "objective_index",
    "trial_params",
    "trial_state_counts",
    "trial_state_totals",
]

log = logging.getLogger(__name__)

SPEC_ATTR = "tunefleet_spec"
STUDY_ID_ATTR = "tunefleet_study_id"
TRIAL_STATES = {state.name.lower(): state for state in TrialState}
"""Trial states as the API names them: running, waiting, complete, pruned, fail."""


# --------------------------------------------------------------------------
# Spec -> Optuna objects
# --------------------------------------------------------------------------


def distributions(spec: StudySpec) -> dict[str, BaseDistribution]:
    """Optuna distributions of the search space, for `study.ask(fixed_distributions=...)`."""
    out: dict[str, BaseDistribution] = {}
    for name, param in spec.search_space.items():
        if isinstance(param, specs.FloatParam):
            out[name] = FloatDistribution(param.low, param.high, log=param.log, step=param.step)
        elif isinstance(param, specs.IntParam):
            out[name] = IntDistribution(param.low, param.high, log=param.log, step=param.step)
        else:
            out[name] = CategoricalDistribution(list(param.choices))
    return out


def check_server_support(spec: StudySpec) -> None:
    """Reject a valid spec that this server cannot run: Optuna refuses the sampler or
    pruner options (found now, not at the first lease)."""
    for part, build in (("sampler", build_sampler), ("pruner", build_pruner)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                build(spec)
        except (ValueError, TypeError) as error:
            raise InvalidSpec(f"Optuna refuses this {part}: {error}", path=[part]) from None


def build_sampler(
    spec: StudySpec, *, study_key: int = 0, for_leases: bool = False
) -> optuna.samplers.BaseSampler:
    """The sampler the spec names, with its options.

    `study_key` (TuneFleet's study id) seeds a scrambled QMC sequence that has
    no seed: every process must draw from the same sequence. `for_leases`
    gives TPE the variant that keeps its observations between asks
    (service/sampling.py); it samples what Optuna's own TPESampler samples.
    """
    s = spec.sampler
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if isinstance(s, specs.TPESampler):
            tpe = ObservationCachingTPE if for_leases else optuna.samplers.TPESampler
            return tpe(
                seed=s.seed,
                n_startup_trials=s.n_startup_trials,
                n_ei_candidates=s.n_ei_candidates,
                multivariate=s.multivariate,
                group=s.group,
                constant_liar=s.constant_liar,
            )
        if isinstance(s, specs.NSGA2Sampler):
            return optuna.samplers.NSGAIISampler(
                seed=s.seed,
                population_size=s.population_size,
                mutation_prob=s.mutation_prob,
                crossover_prob=s.crossover_prob,
                swapping_prob=s.swapping_prob,
            )
        if isinstance(s, specs.RandomSampler):
            return optuna.samplers.RandomSampler(seed=s.seed)
        if isinstance(s, specs.GPSampler):
            return optuna.samplers.GPSampler(
                seed=s.seed,
                n_startup_trials=s.n_startup_trials,
                deterministic_objective=s.deterministic_objective,
            )
        if isinstance(s, specs.CmaEsSampler):
            return optuna.samplers.CmaEsSampler(
                seed=s.seed,
                n_startup_trials=s.n_startup_trials,
                popsize=s.popsize,
                use_separable_cma=s.use_separable_cma,
                with_margin=s.with_margin,
                lr_adapt=s.lr_adapt,
            )
        if isinstance(s, specs.QMCSampler):
            seed = s.seed if s.seed is not None else zlib.crc32(f"qmc-{study_key}".encode())
            return optuna.samplers.QMCSampler(qmc_type=s.qmc_type, scramble=s.scramble, seed=seed)
        if isinstance(s, specs.GridSampler):
            return _GridSampler(specs.grid_values(spec), seed=s.seed)
    raise AssertionError(f"unhandled sampler {s!r}")


class _GridSampler(optuna.samplers.GridSampler):
    """Optuna's grid sampler for ask-and-tell: its after_trial only calls study.stop()
    once the grid is covered, which raises outside study.optimize() and would fail
    every tell from then on. The study's trial budget ends the search instead."""

    def after_trial(self, study, trial, state, values) -> None:
        return None


def build_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    """The pruner the spec names; epochs are the resource of the halving pruners."""
    p = spec.pruner
    if isinstance(p, specs.MedianPruner):
        return optuna.pruners.MedianPruner(
            n_startup_trials=p.n_startup_trials,
            n_warmup_steps=p.n_warmup_steps,
            interval_steps=p.interval_steps,
            n_min_trials=p.n_min_trials,
        )
    if isinstance(p, specs.HyperbandPruner):
        return optuna.pruners.HyperbandPruner(
            min_resource=p.min_resource,
            max_resource=p.max_resource or spec.budget.epochs,
            reduction_factor=p.reduction_factor,
            bootstrap_count=p.bootstrap_count,
        )
    if isinstance(p, specs.SuccessiveHalvingPruner):
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=p.min_resource,
            reduction_factor=p.reduction_factor,
            min_early_stopping_rate=p.min_early_stopping_rate,
            bootstrap_count=p.bootstrap_count,
        )
    return optuna.pruners.NopPruner()


def _directions(spec: StudySpec) -> list[StudyDirection]:
    return [StudyDirection[d.upper()] for d in spec.directions]


# --------------------------------------------------------------------------
# Studies
# --------------------------------------------------------------------------


def create_optuna_study(storage: BaseStorage, *, name: str, spec: StudySpec, study_key: int) -> int:
    """Create the Optuna study behind TuneFleet study `study_key`; returns its Optuna id.

    Directions and metric names (axis labels in optuna-dashboard) come from the
    objectives; the spec and our id are kept as study user attributes. A
    leftover study of the same name that TuneFleet made and no longer uses
    (a crash between the two commits) is replaced; any other one is a conflict.
    """
    try:
        study = optuna.create_study(storage=storage, study_name=name, directions=spec.directions)
    except optuna.exceptions.DuplicatedStudyError:
        _delete_leftover(storage, name=name)
        study = optuna.create_study(storage=storage, study_name=name, directions=spec.directions)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(spec.metric_names)
        study.set_user_attr(STUDY_ID_ATTR, study_key)
        study.set_user_attr(SPEC_ATTR, spec.model_dump(mode="json"))
    except Exception:
        delete_optuna_study(storage, optuna_study_id=study._study_id)
        raise
    return study._study_id


def _delete_leftover(storage: BaseStorage, *, name: str) -> None:
    study_id = storage.get_study_id_from_name(name)
    if STUDY_ID_ATTR not in storage.get_study_user_attrs(study_id):
        raise Conflict(
            f"the Optuna storage already has a study named {name!r} that TuneFleet did not "
            "create; rename this study or remove that one"
        )
    log.warning("replacing leftover Optuna study %r", name)
    storage.delete_study(study_id)


def delete_optuna_study(storage: BaseStorage, *, optuna_study_id: int) -> None:
    """Delete an Optuna study and its trials; a study already gone is not an error."""
    with contextlib.suppress(KeyError):
        storage.delete_study(optuna_study_id)


def load_optuna_study(
    storage: BaseStorage,
    *,
    name: str,
    spec: StudySpec,
    study_key: int = 0,
    for_leases: bool = False,
) -> optuna.Study:
    """The Optuna study with the spec's sampler and pruner, ready for ask and tell.

    `for_leases`: the study the lease path samples on, over a `SnapshotStorage`
    (on RDBStorage) and with the lease path's sampler (service/sampling.py).
    """
    if for_leases and isinstance(storage, RDBStorage):
        storage = SnapshotStorage(storage)
    return optuna.load_study(
        study_name=name,
        storage=storage,
        sampler=build_sampler(spec, study_key=study_key, for_leases=for_leases),
        pruner=build_pruner(spec),
    )


# --------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------


def trial_state_counts(storage: BaseStorage, *, optuna_study_id: int) -> dict[str, int]:
    """How many trials the study has in each state (every state present, zeros included)."""
    counts = dict.fromkeys(TRIAL_STATES, 0)
    if isinstance(storage, RDBStorage):
        query = (
            sa.select(rdb.TrialModel.state, sa.func.count())
            .where(rdb.TrialModel.study_id == optuna_study_id)
            .group_by(rdb.TrialModel.state)
        )
        with storage.engine.connect() as conn:
            for state, n in conn.execute(query):
                counts[_state_name(state)] = n
        return counts
    for trial in storage.get_all_trials(optuna_study_id, deepcopy=False):
        counts[trial.state.name.lower()] += 1
    return counts


def trial_state_totals(storage: BaseStorage) -> dict[str, int]:
    """Trials per state over every study (for /metrics); RDBStorage only, else empty."""
    if not isinstance(storage, RDBStorage):
        return {}
    counts = dict.fromkeys(TRIAL_STATES, 0)
    query = sa.select(rdb.TrialModel.state, sa.func.count()).group_by(rdb.TrialModel.state)
    with storage.engine.connect() as conn:
        for state, n in conn.execute(query):
            counts[_state_name(state)] = n
    return counts


def _state_name(state: TrialState | str) -> str:
    return (state.name if isinstance(state, TrialState) else str(state)).lower()


def best_trials(storage: BaseStorage, *, optuna_study_id: int) -> list[FrozenTrial]:
    """The best trial of a one-objective study, or the Pareto front of a multi-objective
    one; empty before the first trial completes (or when the Optuna study is gone)."""
    try:
        directions = storage.get_study_directions(optuna_study_id)
    except KeyError:  # deleted outside TuneFleet, e.g. from the dashboard
        return []
    if len(directions) == 1:
        try:
            return [storage.get_best_trial(optuna_study_id)]
        except ValueError:  # no completed trial yet
            return []
    name = storage.get_study_name_from_id(optuna_study_id)
    study = optuna.Study(study_name=name, storage=storage, sampler=optuna.samplers.RandomSampler())
    return sorted(study.best_trials, key=lambda t: t.number)


# --------------------------------------------------------------------------
# Trials
# --------------------------------------------------------------------------


@dataclass
class TrialPage:
    trials: list[FrozenTrial]
    count: int  # all trials matching the filter, not only this page


def list_trials(
    storage: BaseStorage,
    *,
    optuna_study_id: int,
    states: Iterable[TrialState] | None = None,
    order_by: int | None = None,
    descending: bool = False,
    limit: int = 50,
    offset: int = 0,
) -> TrialPage:
    """A page of a study's trials, filtered by state.

    Ordered by number, or by the value of objective `order_by` (trials without
    that value come last either way).
    """
    state_list = list(states) if states is not None else None
    if isinstance(storage, RDBStorage):
        return _list_trials_sql(
            storage, optuna_study_id, state_list, order_by, descending, limit, offset
        )
    trials = storage.get_all_trials(optuna_study_id, deepcopy=False, states=state_list)
    if order_by is None:
        trials.sort(key=lambda t: t.number, reverse=descending)
    else:
        with_value = [t for t in trials if t.values and len(t.values) > order_by]
        without = [t for t in trials if not (t.values and len(t.values) > order_by)]
        with_value.sort(key=lambda t: (t.values[order_by], t.number), reverse=descending)
        trials = with_value + sorted(without, key=lambda t: t.number)
    return TrialPage(trials=trials[offset : offset + limit], count=len(trials))


def _list_trials_sql(
    storage: RDBStorage,
    study_id: int,
    states: list[TrialState] | None,
    order_by: int | None,
    descending: bool,
    limit: int,
    offset: int,
) -> TrialPage:
    T, V = rdb.TrialModel, rdb.TrialValueModel
    where = [T.study_id == study_id]
    if states is not None:
        where.append(T.state.in_(states))
    count_query = sa.select(sa.func.count()).select_from(T).where(*where)
    ids_query = sa.select(T.trial_id).where(*where)
    if order_by is None:
        ids_query = ids_query.order_by(T.number.desc() if descending else T.number)
    else:
        ids_query = ids_query.outerjoin(
            V, sa.and_(V.trial_id == T.trial_id, V.objective == order_by)
        )
        # -inf < finite values < +inf; a trial with no value sorts last.
        rank = sa.case(
            (V.value_type == V.TrialValueType.INF_NEG, -1),
            (V.value_type == V.TrialValueType.FINITE, 0),
            (V.value_type == V.TrialValueType.INF_POS, 1),
            else_=None,
        )
        if descending:
            ids_query = ids_query.order_by(
                rank.desc().nulls_last(), V.value.desc().nulls_last(), T.number
            )
        else:
            ids_query = ids_query.order_by(rank.nulls_last(), V.value.nulls_last(), T.number)
    ids_query = ids_query.limit(limit).offset(offset)
    with Session(storage.engine) as session:
        count = session.execute(count_query).scalar_one()
        ids = list(session.execute(ids_query).scalars())
        trials = _frozen_trials(storage, session, ids)
    return TrialPage(trials=trials, count=count)


def _frozen_trials(storage: RDBStorage, session: Session, ids: list[int]) -> list[FrozenTrial]:
    """Trials by id in the given order, in a handful of queries (as RDBStorage loads them)."""
    if not ids:
        return []
    T = rdb.TrialModel
    models = (
        session.query(T)
        .options(
            selectinload(T.params),
            selectinload(T.values),
            selectinload(T.user_attributes),
            selectinload(T.system_attributes),
            selectinload(T.intermediate_values),
        )
        .filter(T.trial_id.in_(ids))
        .all()
    )
    by_id = {m.trial_id: storage._build_frozen_trial_from_trial_model(m) for m in models}
    return [by_id[i] for i in ids if i in by_id]


def get_trial_by_number(storage: BaseStorage, *, optuna_study_id: int, number: int) -> FrozenTrial:
    """Trial `number` of a study; NotFound when there is none."""
    try:
        trial_id = storage.get_trial_id_from_study_id_trial_number(optuna_study_id, number)
    except KeyError:
        raise NotFound(f"the study has no trial number {number}") from None
    return storage.get_trial(trial_id)


def enqueue_trial(
    storage: BaseStorage,
    *,
    optuna_study_id: int,
    params: dict[str, Any],
    user_attrs: dict[str, Any] | None = None,
) -> FrozenTrial:
    """Queue a trial with fixed parameters (validated by `tunefleet.spec.validate_params`);
    the next lease runs it, and the sampler fills the parameters left out."""
    template = create_trial(
        state=TrialState.WAITING,
        system_attrs={"fixed_params": params},
        user_attrs=user_attrs,
    )
    try:
        trial_id = storage.create_new_trial(optuna_study_id, template_trial=template)
    except KeyError:
        raise NotFound(
            "the Optuna study behind this study was deleted outside TuneFleet; "
            "delete this study and create it again"
        ) from None
    return storage.get_trial(trial_id)


def trial_params(trial: FrozenTrial) -> dict[str, Any]:
    """The parameters of a trial; for a waiting one, those it was enqueued with."""
    if trial.params:
        return dict(trial.params)
    return dict(trial.system_attrs.get("fixed_params") or {})


def objective_index(spec: StudySpec, metric: str) -> int:
    """Position of a metric among the spec's objectives (InvalidSpec for another name)."""
    try:
        return spec.metric_names.index(metric)
    except ValueError:
        raise InvalidSpec(
            "order_by must be number or one of this study's metrics: "
            + ", ".join(spec.metric_names),
            path=["query", "order_by"],
        ) from None


def finite_or_none(value: float | None) -> float | None:
    """JSON has no NaN or infinity: such values are shown as null."""
    if value is None or not math.isfinite(value):
        return None
    return value


# ===========================================================================
# Trial lifecycle for the worker protocol: ask, report, prune, tell, fail,
# re-queue. Used by service/scheduling.py and service/leasing.py; every call
# into Optuna for a leased trial goes through the functions below.
# ===========================================================================

# Trial user attributes the service writes; a worker's attrs cannot overwrite them.
ATTR_WORKER_ID = "worker_id"
ATTR_DEVICE = "device"
ATTR_PROGRESS = "progress"
ATTR_FAIL_REASON = "fail_reason"
ATTR_RETRY_OF = "retry_of"
ATTR_RETRY_COUNT = "retry_count"
ATTR_RETRIED_AS = "retried_as"
ATTR_ARTIFACT = "artifact"
RESERVED_TRIAL_ATTRS = frozenset(
    {
        ATTR_WORKER_ID,
        ATTR_DEVICE,
        ATTR_PROGRESS,
        ATTR_FAIL_REASON,
        ATTR_RETRY_OF,
        ATTR_RETRY_COUNT,
        ATTR_RETRIED_AS,
        ATTR_ARTIFACT,
    }
)


class LoadedStudy:
    """A study's Optuna object, built once per process so that its sampler (TPE's
    observation cache, NSGA-II's generations) and the cached storage live on.

    ``lock`` serializes ask and prune decisions within the process; the
    scheduler holds the study's row lock in the database around it as well, so
    that several API processes never ask past the budget.
    """

    def __init__(self, study: optuna.Study, spec: StudySpec) -> None:
        self.study = study
        self.distributions = distributions(spec)
        self.lock = threading.RLock()

    @property
    def storage(self) -> BaseStorage:
        return self.study._storage

    def trials(self) -> list[FrozenTrial]:
        """The study's trials, sorted by number: on RDBStorage one read of those that
        changed since the last (Optuna's cached storage). Not copies: read only."""
        return self.storage.get_all_trials(self.study._study_id, deepcopy=False)

    def counts(self) -> dict[str, int]:
        """How many trials are in each state (RUNNING, WAITING, COMPLETE, PRUNED, FAIL).

        One GROUP BY on RDBStorage: reading every trial through the cached
        storage costs several queries and a pass over the whole study.
        """
        counts = trial_state_counts(_backend(self.storage), optuna_study_id=self.study._study_id)
        return {name.upper(): n for name, n in counts.items()}


# The studies this process has leased from, most recently used last. Each holds
# Optuna's cache of its trials, so the oldest go beyond MAX_LOADED_STUDIES
# (loading one again costs one read of its trials; a sampler with a fixed seed
# then starts its sequence again).
MAX_LOADED_STUDIES = 256
_loaded_studies: OrderedDict[tuple[int, int, str], LoadedStudy] = OrderedDict()
_loaded_studies_lock = threading.Lock()


def loaded_study(
    storage: BaseStorage, *, optuna_study_name: str, spec: dict, study_key: int
) -> LoadedStudy:
    """The process's Optuna Study for a TuneFleet study, with the spec's sampler and pruner."""
    key = (id(storage), study_key, optuna_study_name)
    with _loaded_studies_lock:
        entry = _loaded_studies.get(key)
        if entry is not None:
            _loaded_studies.move_to_end(key)
            return entry
    study_spec = StudySpec.model_validate(spec)
    study = load_optuna_study(
        storage, name=optuna_study_name, spec=study_spec, study_key=study_key, for_leases=True
    )
    with _loaded_studies_lock:
        entry = _loaded_studies.setdefault(key, LoadedStudy(study, study_spec))
        _loaded_studies.move_to_end(key)
        while len(_loaded_studies) > MAX_LOADED_STUDIES:
            _loaded_studies.popitem(last=False)
        return entry


def forget_loaded_study(study_key: int) -> None:
    """Drop this process's Study objects of a TuneFleet study (deleted, say)."""
    with _loaded_studies_lock:
        for key in [k for k in _loaded_studies if k[1] == study_key]:
            del _loaded_studies[key]


def ask_leased_trial(entry: LoadedStudy, trials: list[FrozenTrial]) -> FrozenTrial:
    """Start a trial: a WAITING one (enqueued or re-queued) first, else a sampled one.

    `trials` is the study as `entry.trials()` read it just before, under the
    study's locks. Who runs the trial is on its lease; the worker id and device
    go into the trial's user attributes when it finishes.
    """
    with entry.lock:
        waiting = any(t.state == TrialState.WAITING for t in trials)
        if waiting or not isinstance(entry.storage, SnapshotStorage):
            trial = entry.study.ask(fixed_distributions=entry.distributions)
            # The Trial holds what ask wrote (id, number, params): no need to read it back.
            return trial._cached_frozen_trial
        return _ask_new_trial(entry, trials)


def _ask_new_trial(entry: LoadedStudy, trials: list[FrozenTrial]) -> FrozenTrial:
    """study.ask(fixed_distributions) for a new trial, sampled on `trials` (plus the new
    trial, as ask sees it), with its parameters and the sampler's system attributes
    written in one transaction."""
    study, storage = entry.study, entry.storage
    backend = storage._backend
    frozen = backend._create_new_trial(study._study_id)  # the new trial, not read back
    study._thread_local.cached_all_trials = None
    with storage.sampling(study._study_id, [*trials, frozen], frozen) as system_attrs:
        sample_params(study, frozen, entry.distributions)
    # The trial was created just now under the study's locks and is RUNNING with
    # no parameters or attributes: plain inserts, in one transaction.
    with _rdb_session(backend.scoped_session, True) as session:
        session.add_all(
            rdb.TrialParamModel(
                trial_id=frozen._trial_id,
                param_name=name,
                param_value=distribution.to_internal_repr(frozen.params[name]),
                distribution_json=optuna.distributions.distribution_to_json(distribution),
            )
            for name, distribution in frozen.distributions.items()
        )
        session.add_all(
            rdb.TrialSystemAttributeModel(
                trial_id=frozen._trial_id, key=key, value_json=json.dumps(value)
            )
            for key, value in system_attrs.items()
        )
    return frozen


def _upsert_trial_attrs(
    session: Session, backend: RDBStorage, model: type, trial_id: int, attrs: dict[str, Any]
) -> None:
    """Set several attributes of a trial in one statement (insert or update each key)."""
    if not attrs:
        return
    dialect = backend.engine.name
    if dialect not in ("postgresql", "sqlite"):
        for key, value in attrs.items():
            backend._set_trial_attr_without_commit(session, model, trial_id, key, value)
        return
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    statement = insert(model).values(
        [{"trial_id": trial_id, "key": k, "value_json": json.dumps(v)} for k, v in attrs.items()]
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[model.trial_id, model.key],
            set_={"value_json": statement.excluded.value_json},
        )
    )


def _backend(storage: BaseStorage) -> BaseStorage:
    """The storage behind Optuna's cache: what our own queries and transactions use."""
    if isinstance(storage, optuna.storages._CachedStorage):
        return storage._backend
    return storage


def _finish_trial(
    storage: BaseStorage,
    trial_id: int,
    *,
    state: TrialState,
    values: list[float] | None = None,
    user_attrs: dict[str, Any],
) -> None:
    """User attributes, values and the final state in one transaction: one commit
    instead of one per attribute, and a retried call never finds half a result.

    Raises UpdateFinishedTrialError when the trial already finished.
    """
    backend = _backend(storage)
    if not isinstance(backend, RDBStorage):
        for key, value in user_attrs.items():
            storage.set_trial_user_attr(trial_id, key, value)
        storage.set_trial_state_values(trial_id, state, values)
        return
    with _rdb_session(backend.scoped_session) as session:
        trial = rdb.TrialModel.find_or_raise_by_id(trial_id, session, for_update=True)
        backend.check_trial_is_updatable(trial_id, trial.state)
        _upsert_trial_attrs(session, backend, rdb.TrialUserAttributeModel, trial_id, user_attrs)
        # A running trial has no values yet (they are written with its final state).
        for objective, value in enumerate(values or ()):
            stored, kind = rdb.TrialValueModel.value_to_stored_repr(value)
            session.add(
                rdb.TrialValueModel(
                    trial_id=trial_id, objective=objective, value=stored, value_type=kind
                )
            )
        trial.state = state
        trial.datetime_complete = datetime.now()


def get_frozen_trial(storage: BaseStorage, trial_id: int) -> FrozenTrial:
    return storage.get_trial(trial_id)


def set_trial_progress(storage: BaseStorage, trial_id: int, progress: dict) -> None:
    """Show how far a running trial got; a trial that finished meanwhile keeps its last."""
    with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
        storage.set_trial_user_attr(trial_id, ATTR_PROGRESS, progress)


def _same_float(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def record_intermediate(entry: LoadedStudy, *, trial_id: int, step: int, value: float) -> bool:
    """Record a validation value and ask the pruner; True when the trial is now PRUNED.

    The same step with the same value again changes nothing; with another value
    it is a Conflict. Multi-objective studies record the value and never prune
    (Optuna cannot prune them).
    """
    with entry.lock:
        trial = entry.storage.get_trial(trial_id)
        recorded = trial.intermediate_values.get(step)
        if recorded is not None and not _same_float(recorded, value):
            raise Conflict(
                f"trial {trial.number} already has {recorded} at step {step}, not {value}; "
                "intermediate values cannot be changed"
            )
        if trial.state == TrialState.PRUNED:
            return True
        if trial.state != TrialState.RUNNING:
            raise Conflict(f"trial {trial.number} is {trial.state.name}, not running")
        if recorded is None:
            entry.storage.set_trial_intermediate_value(trial_id, step, value)
        if len(entry.study.directions) > 1:
            return False
        trial = entry.storage.get_trial(trial_id)
        if not entry.study.pruner.prune(entry.study, trial):
            return False
        entry.study.tell(trial.number, state=TrialState.PRUNED, skip_if_finished=True)
        return True


def complete_leased_trial(
    entry: LoadedStudy,
    *,
    trial_id: int,
    values: list[float],
    attrs: dict,
    artifact: str | None,
    worker: dict[str, str],
) -> None:
    """Tell the values with the worker's attrs; a retry of a tell that went through is accepted."""
    storage = entry.storage
    user_attrs = {k: v for k, v in attrs.items() if k not in RESERVED_TRIAL_ATTRS}
    user_attrs |= worker
    if artifact is not None:
        user_attrs[ATTR_ARTIFACT] = artifact
    try:
        # _finish_trial checks the state under the trial's row lock: no read before.
        _finish_trial(
            storage, trial_id, state=TrialState.COMPLETE, values=values, user_attrs=user_attrs
        )
        return
    except optuna.exceptions.UpdateFinishedTrialError:
        trial = storage.get_trial(trial_id)  # finished before: a retried tell, the reaper
    if (
        trial.state != TrialState.COMPLETE
        or trial.values is None
        or not all(_same_float(a, b) for a, b in zip(trial.values, values, strict=True))
    ):
        raise Conflict(
            f"trial {trial.number} is already {trial.state.name}"
            + (f" with values {trial.values}" if trial.values else "")
        )


def fail_leased_trial(
    storage: BaseStorage,
    *,
    trial_id: int,
    optuna_study_id: int,
    reason: str,
    requeue: bool = False,
    worker: dict[str, str] | None = None,
) -> tuple[FrozenTrial, FrozenTrial | None]:
    """Mark a running trial FAIL with the reason as a user attribute, and with
    ``requeue`` queue a WAITING trial with its parameters first.

    Returns the trial and its retry. A trial already finished is left as it is
    (with the retry it named, if any): failing twice re-queues once.
    """
    trial = storage.get_trial(trial_id)
    if trial.state != TrialState.RUNNING:
        return trial, _retry_of(storage, trial, optuna_study_id)
    retry = None
    user_attrs = {ATTR_FAIL_REASON: reason, **(worker or {})}
    if requeue:
        retry = _queue_retry(storage, failed=trial, study_id=optuna_study_id)
        # Lineage both ways; a finished trial's attributes cannot change, so now.
        user_attrs[ATTR_RETRIED_AS] = retry.number
    with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
        _finish_trial(storage, trial_id, state=TrialState.FAIL, user_attrs=user_attrs)
    return storage.get_trial(trial_id), retry


def _retry_of(storage: BaseStorage, trial: FrozenTrial, study_id: int) -> FrozenTrial | None:
    number = trial.user_attrs.get(ATTR_RETRIED_AS)
    if number is None:
        return None
    return storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study_id, number))


def _queue_retry(storage: BaseStorage, *, failed: FrozenTrial, study_id: int) -> FrozenTrial:
    """A WAITING trial with the failed one's parameters and its lineage in user attrs."""
    template = create_trial(
        state=TrialState.WAITING,
        system_attrs={"fixed_params": dict(failed.params)},
        user_attrs={
            ATTR_RETRY_OF: failed.number,
            ATTR_RETRY_COUNT: retry_count_of(failed) + 1,
        },
    )
    return storage.get_trial(storage.create_new_trial(study_id, template_trial=template))


def retry_count_of(trial: FrozenTrial) -> int:
    return int(trial.user_attrs.get(ATTR_RETRY_COUNT, 0))


def orphaned_running_trials(
    session: Session, *, started_before: datetime
) -> list[tuple[int, int, int]]:
    """(TuneFleet study id, trial id, number) of RUNNING trials that have no lease row."""
    # Optuna writes datetime_start as naive local time.
    cutoff = started_before.astimezone().replace(tzinfo=None)
    rows = session.execute(
        sa.text(
            "SELECT s.id, t.trial_id, t.number FROM trials t "
            "JOIN studies os ON os.study_id = t.study_id "
            "JOIN tf_studies s ON s.optuna_study_name = os.study_name "
            "LEFT JOIN tf_leases l ON l.trial_id = t.trial_id "
            "WHERE t.state = 'RUNNING' AND l.trial_id IS NULL AND t.datetime_start < :cutoff"
        ),
        {"cutoff": cutoff},
    ).all()
    return [(row[0], row[1], row[2]) for row in rows]
