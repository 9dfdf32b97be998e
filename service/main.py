"""The API application: create_app() and its routers, nothing else."""

from __future__ import annotations

import warnings
from contextlib import asynccontextmanager

import optuna
from fastapi import FastAPI

from service import study_cache
from service.api import health, leases, studies, tokens, trials
from service.api.handlers import install_error_handlers
from service.api.openapi import install_openapi
from service.api.requests import install_request_checks
from service.config import Settings, load_settings
from service.db import engine_kwargs, make_engine
from service.metrics import install_metrics
from service.reaper import Reaper
from tunefleet import __version__


def make_storage(settings: Settings) -> optuna.storages.RDBStorage:
    """Optuna's storage on our database; `tunefleet migrate` has created its tables."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return optuna.storages.RDBStorage(
            settings.database_url,
            engine_kwargs=engine_kwargs(
                settings.database_url,
                pool_size=settings.db_pool_size,
                max_overflow=settings.db_max_overflow,
            ),
            skip_compatibility_check=True,
            skip_table_creation=True,
        )


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API for one process; the database must already be migrated."""
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        reaper = Reaper(engine=app.state.engine, storage=app.state.storage, settings=settings)
        reaper.start()
        yield
        await reaper.stop()
        app.state.storage.engine.dispose()
        app.state.engine.dispose()

    app = FastAPI(
        title="TuneFleet",
        version=__version__,
        summary="Hyperparameter search for transfer learning on a fleet of GPU workers.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    study_cache.configure(max_cached_trials=settings.max_cached_trials)
    app.state.engine = make_engine(
        settings.database_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
    )
    app.state.storage = make_storage(settings)
    install_error_handlers(app)
    install_openapi(app)
    install_request_checks(app, max_body_bytes=settings.max_body_bytes)
    install_metrics(app)  # outermost: also counts the 413s of the body limit
    app.include_router(health.router)
    app.include_router(studies.router)
    app.include_router(trials.router)
    app.include_router(leases.router)
    app.include_router(tokens.router)
    return app
