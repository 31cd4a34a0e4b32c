"""Load smoke test: a fresh ``onhand up``, ~30 s of locust, then the invariants.

    python -m loadtests.smoke [--seconds 30] [--users 50] [--spawn-rate 25] [--shape]
                              [--workdir DIR] [--keep]

1. starts ``onhand up`` as a subprocess in its own session, with its own data
   directory (``<workdir>/data``), a free port and no ``ONHAND_*`` settings, so it runs
   embedded Redis and PostgreSQL of its own; reads the admin key it prints and the
   Redis URL it announces (PostgreSQL: from ``postmaster.pid``), waits for ``/readyz``;
2. runs locust headless with every user class of ``loadtests/locustfile.py`` against
   it (``--csv``/``--html`` reports and the run summary go to ``<workdir>/report``;
   ``--shape`` uses the flash-sale shape with ``--users`` as the base);
3. reads ``onhand_oversell_total`` from ``/metrics`` (must be 0), then runs
   :mod:`loadtests.invariants` on the embedded servers;
4. stops the service with SIGINT to its process group (as Ctrl-C does) and waits for
   "onhand stopped".

Exit status 0 only if locust passed its own verdict (no 5xx, no failed CHECK, failure
ratio within ``--max-failure-ratio``), no oversell was observed, every invariant held
and the service stopped cleanly. The work directory is a new temporary one unless
``--workdir`` is given; its ``data`` (the embedded servers') is deleted after a passing
run unless ``--keep`` is given, its ``report`` is kept.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from loadtests.invariants import Options, Report, check_urls

ROOT = Path(__file__).resolve().parents[1]
LOCUSTFILE = ROOT / "loadtests" / "locustfile.py"
_TOKEN = re.compile(r"\b(onh_[0-9a-f]{16}_[A-Za-z0-9_-]{43})\b")
_REDIS_URL = re.compile(r"embedded Redis at (redis://[0-9.]+:\d+/\d+)")


class SmokeError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def postgres_url(data_dir: Path) -> str:
    """The embedded server's URL, from ``postmaster.pid`` (line 4: port, 5: socket dir)."""
    lines = (data_dir / "postgres" / "postmaster.pid").read_text().splitlines()
    port, socket_dir = lines[3].strip(), lines[4].strip()
    return f"postgresql://postgres@/onhand?host={quote(socket_dir, safe='/')}&port={port}"


class Service:
    """``onhand up`` in its own session; its output is kept (and copied to ``up.log``)."""

    def __init__(self, data_dir: Path, port: int, log_path: Path) -> None:
        self.data_dir = data_dir
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.lines: list[str] = []
        self.proc: subprocess.Popen[str] | None = None
        self.admin_key = ""
        self.redis_url = ""
        self.database_url = ""
        self._reader: threading.Thread | None = None

    def __enter__(self) -> Service:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def start(self, timeout_s: float = 180.0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ONHAND_")}
        env.update(
            ONHAND_DATA_DIR=str(self.data_dir),
            ONHAND_API_PORT=str(self.port),
            PYTHONUNBUFFERED="1",
            COLUMNS="400",  # rich: no wrapped lines
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "onhand", "up"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout_s
        while not (self.admin_key and self.redis_url):
            self._alive_or_raise()
            if time.monotonic() > deadline:
                raise SmokeError("onhand up printed no admin key in time:\n" + self.output)
            text = self.output
            if m := _TOKEN.search(text):
                self.admin_key = m.group(1)
            if m := _REDIS_URL.search(text):
                self.redis_url = m.group(1)
            time.sleep(0.1)
        self.database_url = postgres_url(self.data_dir)
        with httpx.Client(base_url=self.base_url, timeout=5) as http:
            while True:
                self._alive_or_raise()
                try:
                    if http.get("/readyz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise SmokeError("onhand never became ready:\n" + self.output)
                time.sleep(0.2)

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with open(self.log_path, "w") as log:
            for line in self.proc.stdout:
                self.lines.append(line)
                log.write(line)
                log.flush()

    def _alive_or_raise(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise SmokeError(f"onhand up exited with {self.proc.returncode}:\n{self.output}")

    def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGINT to the process group (Ctrl-C), then SIGKILL if it does not stop."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self._reader is not None:
            self._reader.join(10)
        return proc.returncode

    @property
    def stopped_cleanly(self) -> bool:
        return (
            self.proc is not None
            and self.proc.returncode == 0
            and ("onhand stopped" in self.output)
        )

    def oversell_total(self) -> float:
        text = httpx.get(f"{self.base_url}/metrics", timeout=10).text
        m = re.search(r"^onhand_oversell_total ([0-9.e+]+)$", text, re.MULTILINE)
        if m is None:
            raise SmokeError("no onhand_oversell_total in /metrics")
        return float(m.group(1))


def run_locust(
    service: Service, report_dir: Path, run: str, args: argparse.Namespace
) -> tuple[int, dict[str, Any]]:
    summary_path = report_dir / "summary.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONHAND_")}
    env.update(
        ONHAND_LOAD_ADMIN_KEY=service.admin_key,
        ONHAND_LOAD_RUN=run,
        ONHAND_LOAD_SUMMARY=str(summary_path),
        ONHAND_LOAD_MAX_FAILURE_RATIO=str(args.max_failure_ratio),
        PYTHONUNBUFFERED="1",
    )
    if args.shape:
        env["ONHAND_LOAD_SHAPE"] = "flash"
    command = [
        sys.executable, "-m", "locust",
        "-f", str(LOCUSTFILE),
        "--headless",
        "-u", str(args.users),
        "-r", str(args.spawn_rate),
        "-t", f"{args.seconds}s",
        "--stop-timeout", "5",
        "--host", service.base_url,
        "--csv", str(report_dir / "locust"),
        "--html", str(report_dir / "locust.html"),
        "--only-summary",
        "--logfile", str(report_dir / "locust.log"),
    ]  # fmt: skip
    print(f"$ {' '.join(command)}", flush=True)
    with open(report_dir / "locust.out", "w") as out:
        proc = subprocess.run(
            command,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=args.seconds + 120,
            check=False,
        )
    summary: dict[str, Any] = {}
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
    return proc.returncode, summary


def describe(summary: dict[str, Any]) -> str:
    if not summary:
        return "locust wrote no summary"
    lines = [
        f"locust: {summary['requests']} HTTP requests (avg {summary['rps']:.0f}/s), "
        f"{summary['failures']} failures (ratio {summary['failure_ratio']:.4%}), "
        f"5xx {summary['server_errors']}, no answer {summary['no_answer']}, "
        f"task exceptions {summary['exceptions']}",
        f"  status codes: {summary['status_codes']}",
        f"  checks: {summary['checks']}",
        f"  outcomes: {summary['outcomes']}",
        "  endpoints (requests / failures / median / p95 / p99 ms):",
    ]
    for name, e in summary["endpoints"].items():
        lines.append(
            f"    {name:<48} {e['requests']:>7} {e['failures']:>5} "
            f"{e['median_ms']:>6} {e['p95_ms']:>6} {e['p99_ms']:>6}"
        )
    for err in summary["errors"]:
        lines.append(f"  error x{err['count']}: {err['name']}: {err['error'][:200]}")
    return "\n".join(lines)


def check_invariants(service: Service, report_dir: Path) -> list[str]:
    if service.proc is not None and service.proc.poll() is not None:
        return [f"onhand up exited with {service.proc.returncode} during the run"]
    try:
        report: Report = asyncio.run(
            check_urls(
                service.redis_url,
                service.database_url,
                options=Options(drain_timeout_s=60, quiet_timeout_s=120),
            )
        )
    except Exception as exc:  # a dead server, a broken ledger: the smoke failed
        return [f"invariant check could not run: {type(exc).__name__}: {exc}"]
    print(report.render(), flush=True)
    (report_dir / "invariants.txt").write_text(report.render(limit=10_000) + "\n")
    return [f"{len(report.violations)} invariant violations"] if report.violations else []


def smoke(args: argparse.Namespace, workdir: Path) -> list[str]:
    """Run everything; the reasons the smoke failed (empty: it passed)."""
    data_dir, report_dir = workdir / "data", workdir / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    run = uuid.uuid4().hex[:8]
    reasons: list[str] = []
    service = Service(data_dir, free_port(), report_dir / "up.log")
    try:
        started = time.monotonic()
        service.start()
        print(
            f"onhand up ready in {time.monotonic() - started:.1f} s at {service.base_url} "
            f"(redis {service.redis_url}; postgres {service.database_url})",
            flush=True,
        )
        code, summary = run_locust(service, report_dir, run, args)
        print(describe(summary), flush=True)
        if code != 0:
            reasons.append(f"locust exited with {code}: {summary.get('verdict') or 'see log'}")
        oversell = service.oversell_total()
        print(f"onhand_oversell_total {oversell:g}", flush=True)
        if oversell:
            reasons.append(f"onhand_oversell_total is {oversell:g}")
        reasons += check_invariants(service, report_dir)
    finally:
        service.stop()
    if not service.stopped_cleanly:
        exit_code = service.proc.returncode if service.proc is not None else None
        reasons.append(f"onhand up did not stop cleanly (exit {exit_code})")
    return reasons


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.smoke", description=__doc__)
    parser.add_argument("--seconds", type=int, default=30, help="locust run time (30)")
    parser.add_argument("--users", type=int, default=50, help="users, or base users (50)")
    parser.add_argument("--spawn-rate", type=float, default=25, help="users/s (25)")
    parser.add_argument("--shape", action="store_true", help="the flash-sale load shape")
    parser.add_argument("--max-failure-ratio", type=float, default=0.01)
    parser.add_argument("--workdir", help="where data and reports go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="onhand-smoke-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"work directory: {workdir}", flush=True)
    try:
        reasons = smoke(args, workdir)
    except (SmokeError, subprocess.TimeoutExpired, OSError, httpx.HTTPError) as exc:
        reasons = [f"{type(exc).__name__}: {exc}"]
    except KeyboardInterrupt:
        reasons = ["interrupted"]
    if reasons:
        print("SMOKE FAILED:\n  " + "\n  ".join(reasons), flush=True)
        print(f"reports and logs kept in {workdir}", flush=True)
        return 1
    print("SMOKE PASSED", flush=True)
    if args.keep:
        print(f"reports and logs kept in {workdir}", flush=True)
    else:
        shutil.rmtree(workdir / "data", ignore_errors=True)
        print(f"reports kept in {workdir / 'report'}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
