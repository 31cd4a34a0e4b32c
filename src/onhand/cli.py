"""The ``onhand`` command: run and operate the engine's processes.

Every command builds its own :class:`~onhand.settings.Settings` from ``ONHAND_*``
environment variables (``ONHAND_REDIS_URL``, ``ONHAND_DATABASE_URL``, …).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Callable, Coroutine, Iterator
from typing import Annotated, Any

import typer
from prometheus_client import start_http_server
from redis.exceptions import ResponseError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from onhand.ledger.fencing import Verdict, stream_positions, verify_and_reopen
from onhand.ledger.metrics import WriterMetrics
from onhand.ledger.migrate import asyncpg_dsn, upgrade
from onhand.ledger.reconcile import fix, reconcile
from onhand.ledger.rehydrate import RedisNotEmpty, rehydrate
from onhand.ledger.store import LedgerStore
from onhand.ledger.writer import StreamWriter
from onhand.reaper import Reaper
from onhand.runtime import open_stack
from onhand.settings import Settings

app = typer.Typer(help="onhand: a Redis-first inventory reservation engine.", no_args_is_help=True)
console = Console(stderr=True)


def _run(coro: Coroutine[Any, Any, int | None]) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    code = asyncio.run(coro)
    if code:
        raise typer.Exit(code)


@app.command()
def migrate() -> None:
    """Upgrade the Postgres schema to the newest migration."""
    settings = Settings()
    _run(upgrade(settings.require_database_url()))
    console.print("schema is at head")


@app.command()
def writer(
    burst: Annotated[bool, typer.Option(help="Drain everything, then exit.")] = False,
    consumer: Annotated[str | None, typer.Option(help="Consumer name (default host-pid).")] = None,
) -> None:
    """Drain the partition streams into the Postgres ledger (runs until SIGTERM)."""
    settings = Settings()

    async def main() -> int:
        async with open_stack(settings) as stack:
            metrics = WriterMetrics()
            if settings.writer_metrics_port:
                start_http_server(settings.writer_metrics_port, registry=metrics.registry)
            w = StreamWriter(
                stack.engine.client,
                stack.ledger(),
                stack.engine.keys,
                group=settings.writer_group,
                consumer=consumer,
                batch=settings.writer_batch,
                block_ms=settings.writer_block_ms,
                claim_idle_ms=settings.writer_claim_idle_ms,
                max_attempts=settings.writer_max_attempts,
                trim_interval_ms=settings.writer_trim_interval_ms,
                linger_ms=settings.writer_linger_ms,
                burst=burst,
                metrics=metrics,
                engine=stack.engine,
            )
            await w.run()
            console.print(
                f"writer: {w.written} events written, {w.lost} lost, "
                f"{w.dead_lettered} dead-lettered"
            )
            return 0

    _run(main())


@app.command()
def reaper(
    burst: Annotated[bool, typer.Option(help="Expire what is due, then exit.")] = False,
) -> None:
    """Return overdue holds to stock, in bounded batches (runs until SIGTERM)."""
    settings = Settings()

    async def main() -> int:
        async with open_stack(settings, postgres=False) as stack:
            r = Reaper(
                stack.engine,
                interval_ms=settings.reaper_interval_ms,
                batch=settings.reaper_batch,
                burst=burst,
            )
            await r.run()
            console.print(f"reaper: {r.expired_total} holds expired")
            return 0

    _run(main())


@contextlib.contextmanager
def progress_bars() -> Iterator[Callable[[str, int, int], None]]:
    """A ``progress(phase, done, total)`` callback drawing one rich bar per phase."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        tasks: dict[str, Any] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.update(tasks[phase], completed=done, total=total)

        yield progress


@app.command(name="rehydrate")
def rehydrate_cmd(
    force: Annotated[bool, typer.Option(help="Replace data Redis still holds.")] = False,
    drain: Annotated[bool, typer.Option(help="Drain surviving stream entries first.")] = True,
) -> None:
    """Rebuild Redis from the Postgres ledger, verify it, then reopen it."""
    settings = Settings()

    async def main() -> int:
        async with open_stack(settings) as stack:
            with progress_bars() as progress:
                try:
                    report = await rehydrate(
                        stack.engine,
                        stack.ledger(),
                        force=force,
                        drain=drain,
                        group=settings.writer_group,
                        retention_ms=settings.retention_ms,
                        progress=progress,
                    )
                except RedisNotEmpty as exc:
                    console.print(f"[red]{exc}[/red]")
                    return 2
            console.print(
                f"rehydrated {report.records} records, {report.skus} SKUs, "
                f"{report.reservations} reservations ({report.pending} open) in "
                f"{report.seconds:.1f}s; verified; epoch {report.epoch}"
            )
            return 0

    _run(main())


@app.command(name="reconcile")
def reconcile_cmd(
    fix_: Annotated[bool, typer.Option("--fix", help="Repair Redis from the ledger.")] = False,
    wait_ms: Annotated[int, typer.Option(help="How long to wait for the writer.")] = 5_000,
) -> None:
    """Compare Redis with the ledger record by record; exit 1 on drift."""
    settings = Settings()

    async def main() -> int:
        async with open_stack(settings) as stack:
            with progress_bars() as progress:
                drifts = await reconcile(
                    stack.engine, stack.ledger(), wait_ms=wait_ms, progress=progress
                )
            table = Table("sku", "warehouse", "kind", "differences (redis → ledger)")
            for d in drifts:
                diff = ", ".join(f"{k} {r} → {g}" for k, (r, g) in d.differences().items())
                table.add_row(d.sku, d.warehouse, d.kind, diff)
            if drifts:
                Console().print(table)
            if fix_ and drifts:
                with progress_bars() as progress:
                    fixed = await fix(stack.engine, drifts, progress)
                console.print(f"repaired {fixed} records from the ledger")
                return 0 if fixed == len([d for d in drifts if d.kind != "lag"]) else 1
            console.print(f"{len(drifts)} drifted records")
            return 1 if drifts else 0

    _run(main())


@app.command()
def status() -> None:
    """Readiness, writer lag and pending entries per partition; lost and dead letters."""
    settings = Settings()

    async def main() -> int:
        async with open_stack(settings) as stack:
            engine, store = stack.engine, stack.ledger()
            readiness = await engine.readiness()
            positions = await stream_positions(engine)
            marks = await store.watermarks()
            table = Table(
                "partition", "ready", "stream end", "committed", "lag (s)", "length", "pending"
            )
            for p in range(engine.keys.partitions):
                stream = engine.keys.stream(p)
                length = await engine.client.xlen(stream)
                pending = 0
                with contextlib.suppress(ResponseError):  # no group yet
                    summary = await engine.client.xpending(stream, settings.writer_group)
                    pending = int(summary["pending"])
                end, mark = positions.get(p, (0, 0)), marks.get(p)
                lag_s = max(0, end[0] - (mark or (0, 0))[0]) / 1000 if end > (mark or (0, 0)) else 0
                table.add_row(
                    str(p),
                    readiness[p] or "FENCED",
                    f"{end[0]}-{end[1]}",
                    f"{mark[0]}-{mark[1]}" if mark else "-",
                    f"{lag_s:.3f}",
                    str(length),
                    str(pending),
                )
            Console().print(table)
            counts = await store.counts()
            console.print(
                f"lost events: {counts['lost_events']}, dead letters: "
                f"{counts['dead_letters']}, epoch: {await store.current_epoch()}"
            )
            return 0

    _run(main())


@app.command()
def reopen() -> None:
    """After a Redis restart: reopen it if it is not behind the ledger (else rehydrate)."""
    settings = Settings()

    async def main() -> int:
        async with open_stack(settings) as stack:
            verdict = await verify_and_reopen(stack.engine, stack.ledger())
            console.print(f"redis: {verdict}")
            return 1 if verdict is Verdict.NEEDS_REHYDRATE else 0

    _run(main())


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (ONHAND_API_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (ONHAND_API_PORT).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes.")] = None,
    reuse_port: Annotated[
        bool, typer.Option(hidden=True, help="One worker of several: own SO_REUSEPORT socket.")
    ] = False,
) -> None:
    """Serve the HTTP API with uvicorn (uvloop + httptools, one write per response).

    With several workers on Linux each worker process listens on a socket of its own
    (``SO_REUSEPORT``: the kernel spreads connections over them) under onhand's
    supervisor, which starts a worker again if it exits after serving; elsewhere, or
    on port 0, uvicorn's own supervisor and one shared socket."""
    import uvicorn

    from onhand.api.listeners import ensure_free, listen_reuse_port, reuse_port_supported

    settings = Settings()
    settings.require_redis_url(), settings.require_database_url()
    host = host or settings.api_host
    port = settings.api_port if port is None else port
    workers = workers or settings.api_workers
    if workers > 1 and port != 0 and reuse_port_supported():
        try:
            ensure_free(host, port)
        except OSError as exc:
            console.print(f"[red]cannot listen on {host}:{port}: {exc.strerror}[/red]")
            raise typer.Exit(1) from exc
        raise typer.Exit(_serve_workers(host, port, workers))
    options: dict[str, Any] = {
        "factory": True,
        "host": host,
        "port": port,
        "loop": "uvloop",
        "http": "onhand.api.protocol:OneWriteHttpToolsProtocol",
        "timeout_keep_alive": settings.api_keep_alive_s,
        "access_log": False,
        "server_header": False,
        "lifespan": "on",  # a failed startup stops the server instead of serving without it
    }
    if not reuse_port:
        uvicorn.run("onhand.api.asgi:app_from_env", workers=workers, **options)
        return
    _exit_with_parent()
    config = uvicorn.Config("onhand.api.asgi:app_from_env", **options)
    server = uvicorn.Server(config)
    server.run(sockets=[listen_reuse_port(host, port, config.backlog)])
    if not server.started:
        raise typer.Exit(3)  # uvicorn's STARTUP_FAILURE: the supervisor does not retry it


# A worker that exits after serving this long is started again; sooner, it is failing
# at start-up (Redis, Postgres or the app) and the whole server stops.
WORKER_RESTART_AFTER_S = 10.0


def _serve_workers(host: str, port: int, workers: int) -> int:
    from onhand.supervisor import ChildSpec, Supervisor

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    argv = [sys.executable, "-m", "onhand", "serve", "--host", host, "--port", str(port)]
    argv += ["--workers", "1", "--reuse-port"]
    children: list[ChildSpec] = [(f"worker-{i}", argv, {}) for i in range(1, workers + 1)]
    console.print(f"serving on {host}:{port}: {workers} workers, a listening socket each")
    return Supervisor(children, restart_after_s=WORKER_RESTART_AFTER_S).run(timeout_s=30.0)


def _exit_with_parent() -> None:
    """Linux: SIGTERM this process when its parent (the supervisor) dies, even by
    SIGKILL, so no worker outlives it; then check the parent is not gone already."""
    import ctypes
    import os
    import signal

    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)
    if os.getppid() != parent:
        raise typer.Exit(1)


@app.command()
def up() -> None:
    """Run everything: API + writer + reaper, on embedded Redis/Postgres unless URLs are set."""
    from onhand.up import data_dir_of, run_all

    settings = Settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    code = run_all(settings, data_dir=data_dir_of(settings), console=console)
    if code:
        raise typer.Exit(code)


keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    client_id: Annotated[str, typer.Option(help="Client the key acts for ([A-Za-z0-9_-]{1,16}).")],
    scope: Annotated[
        list[str],
        typer.Option(
            help="Scope (repeat): availability:read, reservations:write, stock:write, admin."
        ),
    ],
    name: Annotated[str, typer.Option(help="A label.")] = "",
) -> None:
    """Create a key and print it (shown once)."""
    settings = Settings()

    async def main() -> int:
        from onhand.api.apikeys import KeyStore

        store = await LedgerStore.open(asyncpg_dsn(settings.require_database_url()))
        try:
            new = await KeyStore(store.pool).create(client_id, scope, name=name)
        finally:
            await store.close()
        console.print(f"key {new.key.key_id} for {client_id} ({', '.join(sorted(new.key.scopes))})")
        print(new.token)
        return 0

    _run(main())


@keys_app.command("list")
def keys_list() -> None:
    """List keys (never their secrets)."""
    settings = Settings()

    async def main() -> int:
        from onhand.api.apikeys import KeyStore

        store = await LedgerStore.open(asyncpg_dsn(settings.require_database_url()))
        try:
            found = await KeyStore(store.pool).list()
        finally:
            await store.close()
        table = Table("key id", "client", "name", "scopes", "created", "revoked")
        for k in found:
            table.add_row(
                k.key_id,
                k.client_id,
                k.name,
                " ".join(sorted(k.scopes)),
                k.created_at,
                "yes" if k.revoked else "",
            )
        Console().print(table)
        return 0

    _run(main())


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key id (16 hex digits).")]) -> None:
    """Revoke a key: refused at once by new processes, within the key cache TTL by others."""
    settings = Settings()

    async def main() -> int:
        from onhand.api.apikeys import KeyStore

        store = await LedgerStore.open(asyncpg_dsn(settings.require_database_url()))
        try:
            found = await KeyStore(store.pool).revoke(key_id)
        finally:
            await store.close()
        console.print(f"revoked {key_id}" if found else f"[red]no key {key_id}[/red]")
        return 0 if found else 1

    _run(main())


@app.command()
def seed() -> None:
    """Seed the demo catalog (warehouses, SKUs with policies and stock) once."""
    settings = Settings()

    async def main() -> int:
        from onhand.catalog import WarehouseCatalog
        from onhand.seed import seed_demo

        async with open_stack(settings) as stack:
            catalog = WarehouseCatalog(stack.engine.client, stack.engine.keys, stack.ledger().pool)
            seeded = await seed_demo(stack.engine, catalog)
        console.print("seeded the demo catalog" if seeded else "warehouses exist; not seeding")
        return 0

    _run(main())


def main() -> None:  # pragma: no cover - console entry point
    app(prog_name="onhand")


if __name__ == "__main__":  # pragma: no cover
    main()
