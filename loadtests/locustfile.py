"""Locust load test of onhand's HTTP API (issue #5).

    ONHAND_LOAD_ADMIN_KEY=onh_… locust -f loadtests/locustfile.py --headless \\
        -u 50 -r 25 -t 30s --host http://127.0.0.1:8000 \\
        --csv out/locust --html out/locust.html --only-summary

(``python -m loadtests.smoke`` does all of it against a fresh ``onhand up``, then checks
the invariants.) User classes, by weight: ``ProductPageReader`` (8), ``FlashSaleBuyer``
(2), ``CheckoutWithAbandonment`` (2), ``RetryingClient`` (1); name some on the command
line to run only those. See ``loadtests/scenarios/users.py``.

Environment:

* ``ONHAND_LOAD_ADMIN_KEY`` (required): an admin key; the ``test_start`` listener
  creates the run's catalog with it (warehouses, SKUs with stock, one API key per
  scenario; ``loadtests/scenarios/catalog.py``).
* ``ONHAND_LOAD_RUN``: the run id (``[a-z0-9]{1,12}``; random if unset). Everything
  is named after it (SKU prefix ``LT<run>-``), so ``python -m loadtests.invariants
  --prefix LT<run>-`` checks this run only. Set it for distributed runs: every process
  sets up the same run idempotently.
* ``ONHAND_LOAD_SHAPE=flash``: the flash-sale shape (``-u`` base users, ramps to 10 x
  in 5 s, holds, decays; ``loadtests/scenarios/shape.py``).
* ``ONHAND_LOAD_SUMMARY``: a path to write the run summary to (JSON): requests,
  failures, status codes, 5xx, CHECK results, outcomes, the catalog.
* ``ONHAND_LOAD_MAX_FAILURE_RATIO`` (default 0.01): the exit code is 1 when failures
  exceed this share of the HTTP requests, when any answer is a 5xx, when any CHECK
  failed, or when a task raised.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # `locust -f loadtests/locustfile.py` from another directory
    sys.path.insert(0, _ROOT)

from locust import events  # noqa: E402
from locust import log as locust_log  # noqa: E402
from locust.env import Environment  # noqa: E402
from locust.runners import MasterRunner  # noqa: E402

from loadtests.scenarios.catalog import SetupError, run_id_from_env, setup_catalog  # noqa: E402
from loadtests.scenarios.shape import FlashSaleShape  # noqa: E402
from loadtests.scenarios.users import (  # noqa: E402
    OUTCOMES,
    RUN,
    CheckoutWithAbandonment,
    FlashSaleBuyer,
    ProductPageReader,
    RetryingClient,
    install_catalog,
)

__all__ = [
    "CheckoutWithAbandonment",
    "FlashSaleBuyer",
    "ProductPageReader",
    "RetryingClient",
]

log = logging.getLogger("onhand.load")

if os.environ.get("ONHAND_LOAD_SHAPE", "") == "flash":

    class FlashSale(FlashSaleShape):
        abstract = False


_STATUSES: Counter[str] = Counter()
_CHECKS: Counter[str] = Counter()
_SETUP_ERRORS: list[str] = []


def _create_catalog(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, MasterRunner) or RUN.catalog is not None:
        return
    admin_key = os.environ.get("ONHAND_LOAD_ADMIN_KEY", "")
    try:
        if not admin_key:
            raise SetupError("ONHAND_LOAD_ADMIN_KEY is not set")
        if not environment.host:
            raise SetupError("no --host")
        catalog = setup_catalog(environment.host, admin_key, run_id_from_env())
    except SetupError as exc:
        _SETUP_ERRORS.append(str(exc))
        log.error("catalog setup failed: %s", exc)
        if environment.runner is not None:
            environment.runner.quit()
        return
    install_catalog(catalog)
    log.info("catalog ready: %s", json.dumps(catalog.as_dict()))


def _count(
    request_type: str,
    name: str,
    response: Any = None,
    exception: BaseException | None = None,
    **_: Any,
) -> None:
    if request_type == "CHECK":
        _CHECKS[f"{name}: {'ok' if exception is None else 'FAILED'}"] += 1
        return
    status = getattr(response, "status_code", 0) or 0
    _STATUSES[str(status)] += 1


def summary(environment: Environment) -> dict[str, Any]:
    stats = environment.stats
    http = [e for e in stats.entries.values() if e.method != "CHECK"]
    requests = sum(e.num_requests for e in http)
    failures = sum(e.num_failures for e in http)
    runner = environment.runner
    return {
        "requests": requests,
        "failures": failures,
        "failure_ratio": failures / requests if requests else 0.0,
        "rps": sum(e.total_rps for e in http),
        "status_codes": dict(sorted(_STATUSES.items())),
        "server_errors": sum(n for s, n in _STATUSES.items() if s.startswith("5")),
        "no_answer": _STATUSES.get("0", 0),
        "checks": dict(sorted(_CHECKS.items())),
        "failed_checks": sum(n for k, n in _CHECKS.items() if k.endswith("FAILED")),
        "exceptions": len(runner.exceptions) if runner is not None else 0,
        "outcomes": dict(sorted(OUTCOMES.items())),
        "endpoints": {
            f"{e.method} {e.name}": {
                "requests": e.num_requests,
                "failures": e.num_failures,
                "median_ms": e.median_response_time,
                "p95_ms": e.get_response_time_percentile(0.95),
                "p99_ms": e.get_response_time_percentile(0.99),
            }
            for e in sorted(http, key=lambda e: (e.name, e.method))
        },
        "errors": [
            {"name": f"{e.method} {e.name}", "error": str(e.error), "count": e.occurrences}
            for e in sorted(stats.errors.values(), key=lambda e: -e.occurrences)[:20]
        ],
        "setup_errors": list(_SETUP_ERRORS),
        "catalog": RUN.catalog.as_dict() if RUN.catalog is not None else None,
    }


def verdict(result: dict[str, Any], max_failure_ratio: float) -> list[str]:
    """Why the run failed (empty: it passed)."""
    reasons = []
    if result["setup_errors"]:
        reasons.append(f"setup failed: {result['setup_errors']}")
    if result["requests"] == 0:
        reasons.append("no requests were made")
    if result["server_errors"]:
        reasons.append(f"{result['server_errors']} answers were 5xx")
    if result["failure_ratio"] > max_failure_ratio:
        reasons.append(f"failure ratio {result['failure_ratio']:.4f} above {max_failure_ratio}")
    if result["failed_checks"]:
        reasons.append(f"{result['failed_checks']} CHECKs failed")
    if result["exceptions"]:
        reasons.append(f"{result['exceptions']} task exceptions")
    if locust_log.unhandled_greenlet_exception:
        reasons.append("an unhandled greenlet exception (see the log)")
    return reasons


def _write_summary(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, MasterRunner):
        return
    result = summary(environment)
    max_ratio = float(os.environ.get("ONHAND_LOAD_MAX_FAILURE_RATIO", "0.01"))
    reasons = verdict(result, max_ratio)
    result["verdict"] = reasons
    path = os.environ.get("ONHAND_LOAD_SUMMARY")
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(result, indent=2, default=str) + "\n")
    for reason in reasons:
        log.error("load run failed: %s", reason)
    environment.process_exit_code = 1 if reasons else 0


events.test_start.add_listener(_create_catalog)  # type: ignore[no-untyped-call]
events.request.add_listener(_count)  # type: ignore[no-untyped-call]
events.quitting.add_listener(_write_summary)  # type: ignore[no-untyped-call]
