"""The Study objects this process leases from, kept between requests (an LRU).

A study's Optuna object is built once per process so that its sampler (TPE's
observation cache, NSGA-II's generations, a seeded sampler's random stream)
and Optuna's cache of its trials live on from one lease to the next.

Memory: a cached finished trial costs about 3 KiB (a FrozenTrial and its
distributions; measured with a four-parameter space). A study whose sampler
reads no history (random search) keeps none: its leases read only its WAITING
and RUNNING trials and count the rest with one GROUP BY. The others keep every
trial while loaded, as Optuna's own process would; the cache as a whole holds
at most MAX_LOADED_STUDIES studies and, beyond the most recently used one,
MAX_CACHED_TRIALS trials (the least recently used studies leave first and are
read again when next leased).
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict

import optuna
from optuna.storages import BaseStorage
from optuna.trial import FrozenTrial, TrialState

from service._optuna_internals import SnapshotStorage, storage_of, study_id_of, uncached
from service.models import StudyRecord
from service.optuna_store import load_optuna_study, trial_state_counts
from service.search import distributions, sampler_reads_history
from tunefleet.spec import StudySpec

__all__ = [
    "MAX_CACHED_TRIALS",
    "MAX_LOADED_STUDIES",
    "LoadedStudy",
    "configure",
    "forget_loaded_study",
    "loaded_study",
    "study_of",
]

_UNFINISHED = (TrialState.WAITING, TrialState.RUNNING)


class LoadedStudy:
    """A study's Optuna object with the spec's sampler and pruner, and its lock.

    ``lock`` serializes ask and prune decisions within the process; the lease
    path holds the study's row lock in the database around it as well, so
    that several API processes never ask past the budget.
    """

    def __init__(self, study: optuna.Study, spec: StudySpec) -> None:
        self.study = study
        self.distributions = distributions(spec)
        self.reads_history = sampler_reads_history(spec)
        self.lock = threading.RLock()

    @property
    def storage(self) -> BaseStorage:
        return storage_of(self.study)

    @property
    def optuna_study_id(self) -> int:
        return study_id_of(self.study)

    def trials(self) -> list[FrozenTrial]:
        """The study's trials, sorted by number: on RDBStorage one read of those that
        changed since the last (Optuna's cached storage). Not copies: read only."""
        trials = self.storage.get_all_trials(self.optuna_study_id, deepcopy=False)
        with _loaded_studies_lock:
            _evict()
        return trials

    def cached_trial_count(self) -> int:
        """How many of the study's trials this process holds in Optuna's cache."""
        storage = self.storage
        if not isinstance(storage, SnapshotStorage):
            return 0
        return storage.cached_trial_count(self.optuna_study_id)

    def for_lease(self) -> tuple[list[FrozenTrial], Counter[str]]:
        """What a lease reads, under the study's locks: the trials its sampler sees
        and how many trials are in each state (RUNNING, WAITING, COMPLETE, ...).

        A sampler that reads history sees every trial, and one read serves both.
        Random search sees the WAITING and RUNNING trials only, read without the
        cache, and the states are counted in the database: the process then keeps
        nothing for each finished trial of the study.
        """
        if self.reads_history:
            trials = self.trials()
            return trials, Counter(t.state.name for t in trials)
        trials = uncached(self.storage).get_all_trials(
            self.optuna_study_id, deepcopy=False, states=_UNFINISHED
        )
        return trials, Counter(self.counts())

    def counts(self) -> dict[str, int]:
        """How many trials are in each state (RUNNING, WAITING, COMPLETE, PRUNED, FAIL).

        One GROUP BY on RDBStorage: reading every trial through the cached
        storage costs several queries and a pass over the whole study.
        """
        counts = trial_state_counts(uncached(self.storage), optuna_study_id=self.optuna_study_id)
        return {name.upper(): n for name, n in counts.items()}


# The studies this process has leased from, most recently used last. Each holds
# Optuna's cache of its trials, so the oldest go beyond MAX_LOADED_STUDIES, or
# when the studies' cached trials together pass MAX_CACHED_TRIALS (about 3 KiB
# each); the most recently used stays whatever its size. Loading one again costs
# one read of its trials; a sampler with a fixed seed then starts its sequence again.
MAX_LOADED_STUDIES = 256
MAX_CACHED_TRIALS = 100_000  # the API's TUNEFLEET_MAX_CACHED_TRIALS sets it
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
            _evict()
            return entry
    study_spec = StudySpec.model_validate(spec)
    study = load_optuna_study(
        storage, name=optuna_study_name, spec=study_spec, study_key=study_key, for_leases=True
    )
    with _loaded_studies_lock:
        entry = _loaded_studies.setdefault(key, LoadedStudy(study, study_spec))
        _loaded_studies.move_to_end(key)
        _evict()
        return entry


def configure(*, max_cached_trials: int) -> None:
    """Set the cache's bound on cached trials (the API's `max_cached_trials` setting)."""
    global MAX_CACHED_TRIALS
    MAX_CACHED_TRIALS = max_cached_trials
    with _loaded_studies_lock:
        _evict()


def _evict() -> None:
    """Drop the least recently used studies beyond the cache's bounds (lock held)."""
    cached = sum(e.cached_trial_count() for e in _loaded_studies.values())
    while len(_loaded_studies) > 1 and (
        len(_loaded_studies) > MAX_LOADED_STUDIES or cached > MAX_CACHED_TRIALS
    ):
        _, oldest = _loaded_studies.popitem(last=False)
        cached -= oldest.cached_trial_count()


def study_of(storage: BaseStorage, record: StudyRecord) -> LoadedStudy:
    """The loaded study of a TuneFleet study's row."""
    return loaded_study(
        storage, optuna_study_name=record.optuna_study_name, spec=record.spec, study_key=record.id
    )


def forget_loaded_study(study_key: int) -> None:
    """Drop this process's Study objects of a TuneFleet study (deleted, say)."""
    with _loaded_studies_lock:
        for key in [k for k in _loaded_studies if k[1] == study_key]:
            del _loaded_studies[key]
