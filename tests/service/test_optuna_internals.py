"""The private Optuna names the service relies on (service/_optuna_internals.py).

One test per name: when an Optuna release renames, moves or changes one, the
failure names the Optuna symbol, so that moving the pin in pyproject.toml
starts from a list of what to adapt. The sampler-equivalence test
(tests/service/test_sampling.py) checks that the lease path built on them
still samples what `study.ask` samples. A last test holds every other module
of service/ away from Optuna's private names.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import inspect
import math
import tomllib
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import optuna
import pytest
import sqlalchemy as sa
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from packaging.requirements import Requirement
from packaging.version import Version

from service import _optuna_internals as internals

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def fenced(symbol: str) -> Iterator[None]:
    """Turn any error into a failure that names the Optuna symbol that changed."""
    try:
        yield
    except Exception as error:
        pytest.fail(
            f"Optuna {optuna.__version__} changed {symbol}, which service/_optuna_internals.py "
            f"relies on: {type(error).__name__}: {error}",
            pytrace=False,
        )


def params_of(function) -> list[str]:
    return [p for p in inspect.signature(function).parameters if p != "self"]


@pytest.fixture
def storage(tmp_path: Path) -> Iterator[optuna.storages.RDBStorage]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rdb = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'optuna.db'}")
    yield rdb
    rdb.engine.dispose()


SPACE = {
    "x": FloatDistribution(0.0, 1.0),
    "n": IntDistribution(1, 4),
    "c": CategoricalDistribution(["a", "b"]),
}


def study_with_trials(storage, n: int = 3) -> optuna.Study:
    study = optuna.create_study(
        storage=storage, study_name="s", sampler=optuna.samplers.RandomSampler(seed=0)
    )
    for i in range(n):
        trial = study.ask(SPACE)
        study.tell(trial, float(i))
    return study


# Studies and trials ---------------------------------------------------------------


def test_frozen_trial_and_trial_ids(storage) -> None:
    study = study_with_trials(storage, n=1)
    with fenced("optuna.trial.FrozenTrial._trial_id / optuna.trial.Trial._trial_id"):
        trial = study.ask(SPACE)
        frozen = storage.get_trial(internals.trial_id_of(trial))
        assert frozen.number == trial.number
        assert internals.trial_id_of(frozen) == internals.trial_id_of(trial)


def test_study_id_and_storage(storage) -> None:
    study = study_with_trials(storage, n=0)
    with fenced("optuna.Study._study_id"):
        assert internals.study_id_of(study) == storage.get_study_id_from_name("s")
    with fenced("optuna.Study._storage"):
        # Optuna wraps an RDBStorage in its cache; the service's own storage is behind it.
        assert internals.uncached(internals.storage_of(study)) is storage


def test_asked_trial_is_what_ask_wrote(storage) -> None:
    study = study_with_trials(storage, n=0)
    with fenced("optuna.trial.Trial._cached_frozen_trial"):
        trial = study.ask(SPACE)
        frozen = internals.asked_trial(trial)
        assert frozen.params == trial.params and frozen.number == trial.number
        assert internals.trial_id_of(frozen) == internals.trial_id_of(trial)
        assert frozen.state == TrialState.RUNNING


def test_forget_cached_trials(storage) -> None:
    study = study_with_trials(storage, n=1)
    with fenced("optuna.Study._thread_local.cached_all_trials"):
        internals.forget_cached_trials(study)
        assert hasattr(type(study._thread_local), "cached_all_trials")
        # Still the cache that Optuna itself drops after a tell.
        assert "_thread_local.cached_all_trials = None" in inspect.getsource(optuna.study._tell)


# Storages ---------------------------------------------------------------------------


def test_cached_storage(storage) -> None:
    with fenced("optuna.storages._CachedStorage"):
        assert issubclass(optuna.storages._CachedStorage, optuna.storages.BaseStorage)
        snapshot = internals.SnapshotStorage(storage)
        assert internals.uncached(snapshot) is storage
        assert snapshot.backend is storage
        assert internals.uncached(storage) is storage
        base = optuna.storages._CachedStorage
        for name in ("get_all_trials", "set_trial_system_attr"):
            assert params_of(getattr(internals.SnapshotStorage, name)) == params_of(
                getattr(base, name)
            ), name


def test_snapshot_storage_answers_from_the_given_trials(storage) -> None:
    study = study_with_trials(storage)
    study_id = internals.study_id_of(study)
    snapshot = internals.SnapshotStorage(storage)
    with fenced("optuna.storages._CachedStorage.get_all_trials / set_trial_system_attr"):
        trials = snapshot.get_all_trials(study_id, deepcopy=False)
        new = internals.create_trial_row(storage, study_id)
        with snapshot.sampling(study_id, [*trials[:1], new], new) as written:
            assert [t.number for t in snapshot.get_all_trials(study_id)] == [0, 3]
            snapshot.set_trial_system_attr(internals.trial_id_of(new), "k", 1)
        assert written == {"k": 1} and new.system_attrs == {"k": 1}
        assert storage.get_trial(internals.trial_id_of(new)).system_attrs == {}
        assert len(snapshot.get_all_trials(study_id)) == 4


def test_snapshot_storage_counts_the_trials_it_caches(storage) -> None:
    study = study_with_trials(storage)
    study_id = internals.study_id_of(study)
    snapshot = internals.SnapshotStorage(storage)
    with fenced("optuna.storages._cached_storage._StudyInfo.trials / _CachedStorage._studies"):
        assert snapshot.cached_trial_count(study_id) == 0
        snapshot.get_all_trials(study_id, deepcopy=False)
        assert snapshot.cached_trial_count(study_id) == len(study.trials)


def test_rdb_table_models() -> None:
    columns = {
        internals.TrialModel: {
            "trial_id", "number", "study_id", "state", "datetime_start", "datetime_complete"
        },
        internals.TrialValueModel: {"trial_id", "objective", "value", "value_type"},
        internals.TrialParamModel: {"trial_id", "param_name", "param_value", "distribution_json"},
        internals.TrialUserAttributeModel: {"trial_id", "key", "value_json"},
        internals.TrialSystemAttributeModel: {"trial_id", "key", "value_json"},
    }  # fmt: skip
    for model, expected in columns.items():
        with fenced(f"optuna.storages._rdb.models.{model.__name__}"):
            assert expected <= set(model.__table__.columns.keys())
    with fenced("optuna.storages._rdb.models.TrialValueModel.TrialValueType"):
        kinds = internals.TrialValueModel.TrialValueType
        assert {"INF_NEG", "FINITE", "INF_POS"} <= set(kinds.__members__)
        assert internals.TrialModel.__tablename__ == "trials"
        assert internals.TrialValueModel.__tablename__ == "trial_values"


def test_rdb_session(storage) -> None:
    symbol = "optuna.storages._rdb.storage._create_scoped_session"
    with fenced(symbol):
        from optuna.storages._rdb.storage import _create_scoped_session

        assert params_of(_create_scoped_session) == ["scoped_session", "ignore_integrity_error"]
    with (
        fenced(f"{symbol} / optuna.storages.RDBStorage.scoped_session"),
        internals.rdb_session(storage) as session,
    ):
        assert session.execute(sa.text("SELECT 1")).scalar_one() == 1


def test_lock_trial_row(storage) -> None:
    study = study_with_trials(storage, n=1)
    trial_id = internals.trial_id_of(study.trials[0])
    with (
        fenced("optuna.storages._rdb.models.TrialModel.find_or_raise_by_id"),
        internals.rdb_session(storage) as session,
    ):
        row = internals.lock_trial_row(session, trial_id)
        assert row.state == TrialState.COMPLETE
        with pytest.raises(KeyError):
            internals.lock_trial_row(session, trial_id + 1000)


def test_stored_value() -> None:
    kinds = internals.TrialValueModel.TrialValueType
    with fenced("optuna.storages._rdb.models.TrialValueModel.value_to_stored_repr"):
        assert internals.stored_value(0.5) == (0.5, kinds.FINITE)
        assert internals.stored_value(math.inf) == (None, kinds.INF_POS)
        assert internals.stored_value(-math.inf) == (None, kinds.INF_NEG)


def test_frozen_trial_of_row(storage) -> None:
    study = study_with_trials(storage, n=1)
    expected = study.trials[0]
    with (
        fenced("optuna.storages.RDBStorage._build_frozen_trial_from_trial_model"),
        internals.rdb_session(storage) as session,
    ):
        row = session.get(internals.TrialModel, internals.trial_id_of(expected))
        assert internals.frozen_trial_of_row(storage, row) == expected


def test_create_trial_row(storage) -> None:
    study = study_with_trials(storage, n=2)
    with fenced("optuna.storages.RDBStorage._create_new_trial"):
        assert params_of(optuna.storages.RDBStorage._create_new_trial)[0] == "study_id"
        frozen = internals.create_trial_row(storage, internals.study_id_of(study))
        assert frozen.number == 2 and frozen.state == TrialState.RUNNING and not frozen.params
        assert storage.get_trial(internals.trial_id_of(frozen)).number == 2


def test_set_trial_attr_in_session(storage) -> None:
    study = study_with_trials(storage, n=0)
    trial_id = internals.trial_id_of(study.ask())
    with fenced("optuna.storages.RDBStorage._set_trial_attr_without_commit"):
        assert params_of(optuna.storages.RDBStorage._set_trial_attr_without_commit) == [
            "session", "model_cls", "trial_id", "key", "value"
        ]  # fmt: skip
        with internals.rdb_session(storage) as session:
            internals.set_trial_attr_in_session(
                storage, session, internals.TrialUserAttributeModel, trial_id, "k", [1, "a"]
            )
        assert storage.get_trial(trial_id).user_attrs == {"k": [1, "a"]}


# Sampling -------------------------------------------------------------------------------


def test_study_view_for(storage) -> None:
    study = study_with_trials(storage)
    with fenced("optuna.pruners._filter_study"):
        view = internals.study_view_for(study, study.trials[-1])
        assert [t.number for t in view.trials] == [0, 1, 2]


def test_study_with_observations_is_what_samplers_read(storage) -> None:
    study = study_with_trials(storage, n=2)
    past = [
        optuna.trial.FrozenTrial(
            number=-1,
            trial_id=-1,
            state=TrialState.COMPLETE,
            value=5.0,
            datetime_start=None,
            datetime_complete=None,
            params={"x": 0.5, "n": 2, "c": "a"},
            distributions=SPACE,
            user_attrs={},
            system_attrs={},
            intermediate_values={},
        )
    ]
    with fenced("optuna.Study._get_trials, the read of a study's trials samplers make"):
        assert params_of(optuna.Study._get_trials) == ["deepcopy", "states", "use_cache"]
        for sampler in (optuna.samplers.TPESampler, optuna.samplers.GPSampler):
            assert "study._get_trials(" in inspect.getsource(sampler), sampler
        view = internals.study_with_observations(study, past)
        done = (TrialState.COMPLETE,)
        assert [t.number for t in view._get_trials(False, done, True)] == [-1, 0, 1]
        assert [t.number for t in view.get_trials(deepcopy=True)] == [-1, 0, 1]
        assert [t.number for t in view.trials] == [-1, 0, 1]
        assert view._get_trials(states=(TrialState.RUNNING,)) == []
        assert view.directions == study.directions and view.sampler is study.sampler
        assert [t.number for t in study.trials] == [0, 1]  # the study itself is untouched


def test_single_value() -> None:
    with fenced("optuna.distributions._get_single_value"):
        assert internals.single_value(FloatDistribution(0.5, 0.5)) == 0.5
        assert internals.single_value(CategoricalDistribution(["only"])) == "only"


def test_distribution_contains() -> None:
    with fenced("optuna.distributions.BaseDistribution._contains"):
        assert internals.distribution_contains(IntDistribution(1, 4), 2)
        assert not internals.distribution_contains(IntDistribution(1, 4), 5)


def test_observation_caching_tpe_overrides_get_internal_repr(storage) -> None:
    tpe = optuna.samplers.TPESampler
    with fenced("optuna.samplers.TPESampler._get_internal_repr / _get_params"):
        assert params_of(tpe._get_internal_repr) == params_of(
            internals.ObservationCachingTPE._get_internal_repr
        )
        assert params_of(tpe._get_params) == ["trial", "study"]
        study = study_with_trials(storage, n=6)
        space = {"x": SPACE["x"], "n": SPACE["n"]}
        ours = internals.ObservationCachingTPE(seed=0)
        for _ in range(2):  # the second time from its cache
            got = ours._get_internal_repr(study.trials, space, study)
            expected = tpe(seed=0)._get_internal_repr(study.trials, space, study)
            assert got.keys() == expected.keys()
            for name in expected:
                np.testing.assert_array_equal(got[name], expected[name])


# The pin and the fence ---------------------------------------------------------------


def test_optuna_is_pinned_to_the_minor_version_these_tests_pass_on() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"].values()
    declared = [*project["dependencies"], *(r for extra in extras for r in extra)]
    requirements = [Requirement(r) for r in declared if Requirement(r).name == "optuna"]
    assert requirements, "pyproject.toml does not name Optuna in any extra"
    installed = Version(optuna.__version__)
    next_minor = Version(f"{installed.major}.{installed.minor + 1}")
    for requirement in requirements:
        assert installed in requirement.specifier, (requirement, installed)
        assert next_minor not in requirement.specifier, (
            f"{requirement} admits Optuna {next_minor}: pin the minor version these tests pass on"
        )


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


@functools.cache
def optuna_private_names() -> frozenset[str]:
    """Every private name Optuna defines: functions, classes and attributes it assigns."""
    names = set()
    for path in Path(optuna.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = node.name
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                name = node.attr
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                name = node.id
            else:
                continue
            if _is_private(name):
                names.add(name)
    return frozenset(names)


def _root(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def private_optuna_uses(source: str) -> list[str]:
    """Where a module reaches into Optuna: a private module or name imported from it,
    `optuna...._name`, `obj._name` for a private Optuna name, and, in a subclass of an
    Optuna class, `self._name` or a method `_name` that is Optuna's."""
    private = optuna_private_names()
    tree = ast.parse(source)
    from_optuna = {"optuna"}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "optuna":
            from_optuna.update(a.asname or a.name for a in node.names)
            parts = node.module.split(".") + [a.name for a in node.names]
            if any(_is_private(p) for p in parts):
                found.append(f"line {node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "optuna" and any(
                    _is_private(p) for p in alias.name.split(".")
                ):
                    found.append(f"line {node.lineno}: import {alias.name}")
    subclasses = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef) and any(_root(b) in from_optuna for b in node.bases)
    ]
    in_subclass = {id(n) for cls in subclasses for n in ast.walk(cls)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            receiver = node.value.id if isinstance(node.value, ast.Name) else None
            if _root(node) == "optuna" or (
                node.attr in private
                and (receiver not in ("self", "cls") or id(node) in in_subclass)
            ):
                found.append(f"line {node.lineno}: .{node.attr}")
        elif isinstance(node, ast.FunctionDef) and id(node) in in_subclass and node.name in private:
            found.append(f"line {node.lineno}: def {node.name}")
    return found


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("x = trial._trial_id", True),
        ("from optuna.storages._rdb import models", True),
        ("from optuna.storages import _CachedStorage", True),
        ("import optuna\nx = optuna.storages._CachedStorage", True),
        ("import optuna\nclass T(optuna.samplers.TPESampler):\n    def _get_params(self): 0", True),
        ("from optuna import samplers\nclass T(samplers.TPESampler):\n    x = 0", False),
        ("import optuna\nclass T(optuna.samplers.TPESampler):\n    def f(self): self._rng", True),
        ("class Reaper:\n    def f(self):\n        self._task = None", False),
        ("import optuna\nx = optuna.create_study()", False),
    ],
)
def test_the_fence_finds_private_optuna_names(source: str, expected: bool) -> None:
    assert bool(private_optuna_uses(source)) == expected, private_optuna_uses(source)


def test_no_other_service_module_uses_a_private_optuna_name() -> None:
    offenders = {}
    for path in sorted((ROOT / "service").rglob("*.py")):
        if path.name == "_optuna_internals.py":
            continue
        uses = private_optuna_uses(path.read_text(encoding="utf-8"))
        if uses:
            offenders[str(path.relative_to(ROOT))] = uses
    assert not offenders, (
        "private Optuna names outside service/_optuna_internals.py; give each a named "
        f"function there, with a test in this file: {offenders}"
    )
    assert private_optuna_uses((ROOT / "service" / "_optuna_internals.py").read_text())
