"""The composition root: the one place that reads settings and wires adapters into
services."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry
from sqlalchemy import Engine, text

from agentiam.adapters.storage import migrate
from agentiam.adapters.storage.engine import make_engine
from agentiam.adapters.storage.unit_of_work import SqlUnitOfWork
from agentiam.config import Settings
from agentiam.ports import Clock, UnitOfWork
from agentiam.services.admin_keys import AdminKeyService
from agentiam.services.agents import AgentService
from agentiam.services.audit import AuditService
from agentiam.services.context import SystemClock
from agentiam.services.humans import HumanService

__all__ = ["Container", "build"]


@dataclass
class Container:
    settings: Settings
    engine: Engine
    clock: Clock
    humans: HumanService
    agents: AgentService
    admin_keys: AdminKeyService
    audit: AuditService
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def database_ready(self) -> bool:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return migrate.is_current(self.engine)

    def close(self) -> None:
        self.engine.dispose()


def build(
    settings: Settings, *, clock: Clock | None = None, engine: Engine | None = None
) -> Container:
    """Wire everything for ``settings``. Pass ``clock`` or ``engine`` to substitute them."""
    engine = engine or make_engine(settings.database_url)
    clock = clock or SystemClock()

    def uow(*, read_only: bool = False) -> UnitOfWork:
        return SqlUnitOfWork(engine, read_only=read_only)

    return Container(
        settings=settings,
        engine=engine,
        clock=clock,
        humans=HumanService(uow, clock, settings.limits),
        agents=AgentService(
            uow,
            clock,
            settings.limits,
            access_review_interval_days=settings.access_review_interval_days,
        ),
        admin_keys=AdminKeyService(uow, clock),
        audit=AuditService(uow, clock),
    )


def create_app(settings: Settings | None = None) -> Any:
    """ASGI factory for ``uvicorn --factory agentiam.bootstrap:create_app``."""
    from agentiam.adapters.http.app import create_app as _create

    return _create(build(settings or Settings.from_env()))
