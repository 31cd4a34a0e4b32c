"""Fixtures of the contract suite: one ManualClock and one engine per implementation.

Every test that takes ``engine`` runs twice: against the in-memory specification
(``[memory]``) and against the Redis engine (``[redis]``, marked ``redis``). Both get
the test's ``clock``, so time only moves when the test advances it.
"""

from __future__ import annotations

import pytest

from onhand.engine.base import ManualClock, StockEngine
from tests.engines import make_engine, make_ready


@pytest.fixture
def clock() -> ManualClock:
    """The engine's only clock; ``clock.advance(ms)`` moves time."""
    return ManualClock()


@pytest.fixture(
    params=[
        pytest.param("memory", id="memory"),
        pytest.param("redis", id="redis", marks=pytest.mark.redis),
    ]
)
def new_engine(request: pytest.FixtureRequest, clock: ManualClock) -> StockEngine:
    """A fresh, empty engine of each kind, driven by ``clock`` (not yet opened).

    Synchronous on purpose: ``getfixturevalue`` of the async ``redis_client`` fixture
    cannot run inside an already running event loop (an async fixture).
    """
    if request.param == "memory":
        return make_engine("memory", clock=clock)
    # Ask for the server first: ``namespace`` only cleans up keys when it sees that
    # ``redis_url`` is in use by the test.
    request.getfixturevalue("redis_url")
    client = request.getfixturevalue("redis_client")
    namespace: str = request.getfixturevalue("namespace")
    return make_engine("redis", clock=clock, redis_client=client, namespace=namespace)


@pytest.fixture
async def engine(new_engine: StockEngine) -> StockEngine:
    """``new_engine``, open for business (every Redis partition marked ready)."""
    return await make_ready(new_engine)
