"""Every Redis key onhand uses is built here, and nowhere else.

Layout (``ns`` is the namespace, ``p`` the partition number)::

    ns:{pP}:stock:<sku>:<wh>   hash    on, he, co, ss, v, low        one stock record
    ns:{pP}:sku:<sku>          hash    policy fields, pv, bey        SKU policy + exposure
    ns:{pP}:whs:<sku>          set     warehouse ids with a record of the SKU
    ns:{pP}:holds:<sku>        zset    reservation header key -> deadline_ms (pending)
    ns:{pP}:events             stream  the partition's events
    ns:{pR}:res:<id>           hash    reservation header (status, allocations, ...)
    ns:{pR}:deadlines          zset    reservation header key -> deadline_ms (pending)
    ns:{pN}:ready              string  '<epoch>:<run_id>': the partition is open (fencing)
    ns:catalog:warehouses      hash    warehouse id -> JSON (the API's warehouse catalog)
    ns:catalog:version         string  bumped on every catalog change
    ns:client:<c>:holds        zset    reservation id -> deadline_ms (anti-hoarding, API)
    ns:idem:<c>:<sha256>       string  one Idempotency-Key record of client <c> (API)

A SKU's keys live in partition ``crc32(sku) % partitions``; a reservation header and
its deadline entry live in ``crc32(reservation_id) % partitions``. The hash tag
``{pN}`` comes first, so it alone decides the cluster slot: every key of one
partition shares a slot, and no id can move a key (ids are allow-listed and contain
neither braces nor colons, so distinct ids always give distinct keys). The API's
catalog, admission and idempotency keys are outside the partitions (each is used on
its own, by one command or a one-key script). Scripts never
compose key names: they get them in KEYS or read them from data written from here.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["Keys", "SkuKeys"]

_NAMESPACE = re.compile(r"[A-Za-z0-9_-]{1,32}")


class SkuKeys(NamedTuple):
    """A SKU's keys from one partition computation (:meth:`Keys.sku_keys`): the first
    five are a reserve line's SKU keys (:meth:`Keys.line_keys`); ``stock_head + wh`` is
    the key of the SKU's stock record in warehouse ``wh`` (:meth:`Keys.stock`)."""

    sku: str
    warehouses: str
    holds: str
    stream: str
    ready: str
    stock_head: str


@dataclass(frozen=True, slots=True)
class Keys:
    """Key builder for one namespace with a fixed number of partitions."""

    namespace: str = "onhand"
    partitions: int = 16

    def __post_init__(self) -> None:
        if _NAMESPACE.fullmatch(self.namespace) is None:
            raise ValueError("namespace must match [A-Za-z0-9_-]{1,32}")
        if not 1 <= self.partitions <= 16384:
            raise ValueError("partitions must be in 1..16384")

    def partition(self, ident: str) -> int:
        """The stable partition of a SKU or reservation id (CRC-32, not ``hash()``)."""
        return zlib.crc32(ident.encode()) % self.partitions

    def prefix(self, partition: int) -> str:
        return f"{self.namespace}:{{p{partition}}}:"

    def stock(self, sku: str, warehouse: str) -> str:
        return f"{self.prefix(self.partition(sku))}stock:{sku}:{warehouse}"

    def sku(self, sku: str) -> str:
        return f"{self.prefix(self.partition(sku))}sku:{sku}"

    def warehouses(self, sku: str) -> str:
        return f"{self.prefix(self.partition(sku))}whs:{sku}"

    def holds(self, sku: str) -> str:
        return f"{self.prefix(self.partition(sku))}holds:{sku}"

    def sku_stream(self, sku: str) -> str:
        return self.stream(self.partition(sku))

    def stream(self, partition: int) -> str:
        return f"{self.prefix(partition)}events"

    def stream_partition(self, key: str) -> int:
        """The partition of a key built here (inverse of :meth:`prefix`)."""
        head = f"{self.namespace}:{{p"
        if not key.startswith(head):
            raise ValueError(f"not a key of namespace {self.namespace!r}")
        return int(key[len(head) : key.index("}", len(head))])

    def reservation(self, reservation_id: str) -> str:
        return f"{self.prefix(self.partition(reservation_id))}res:{reservation_id}"

    def reservation_keys(self, reservation_id: str) -> tuple[str, str, str]:
        """(:meth:`reservation`, :meth:`reservation_deadlines`, :meth:`reservation_ready`)
        with one partition computation."""
        prefix = self.prefix(self.partition(reservation_id))
        return f"{prefix}res:{reservation_id}", f"{prefix}deadlines", f"{prefix}ready"

    def sku_keys(self, sku: str) -> SkuKeys:
        """Every key of one SKU (see :class:`SkuKeys`) with one partition computation."""
        prefix = self.prefix(self.partition(sku))
        return SkuKeys(
            f"{prefix}sku:{sku}",
            f"{prefix}whs:{sku}",
            f"{prefix}holds:{sku}",
            f"{prefix}events",
            f"{prefix}ready",
            f"{prefix}stock:{sku}:",
        )

    def line_keys(self, sku: str) -> tuple[str, str, str, str, str]:
        """(:meth:`sku`, :meth:`warehouses`, :meth:`holds`, :meth:`sku_stream`,
        :meth:`sku_ready`) with one partition computation: a reserve line's SKU keys."""
        keys = self.sku_keys(sku)
        return keys.sku, keys.warehouses, keys.holds, keys.stream, keys.ready

    def stocks(self, sku: str, warehouses: Sequence[str]) -> list[str]:
        """[:meth:`stock` (sku, wh) for wh in warehouses] with one partition computation."""
        head = f"{self.prefix(self.partition(sku))}stock:{sku}:"
        return [head + wh for wh in warehouses]

    def reservation_stream(self, reservation_id: str) -> str:
        return self.stream(self.partition(reservation_id))

    def deadlines(self, partition: int) -> str:
        return f"{self.prefix(partition)}deadlines"

    def reservation_deadlines(self, reservation_id: str) -> str:
        return self.deadlines(self.partition(reservation_id))

    def ready(self, partition: int) -> str:
        return f"{self.prefix(partition)}ready"

    def sku_ready(self, sku: str) -> str:
        return self.ready(self.partition(sku))

    def reservation_ready(self, reservation_id: str) -> str:
        return self.ready(self.partition(reservation_id))

    def all_ready(self) -> list[str]:
        return [self.ready(p) for p in range(self.partitions)]

    def all_streams(self) -> list[str]:
        return [self.stream(p) for p in range(self.partitions)]

    def warehouse_catalog(self) -> str:
        return f"{self.namespace}:catalog:warehouses"

    def catalog_version(self) -> str:
        return f"{self.namespace}:catalog:version"

    def client_holds(self, client_id: str) -> str:
        return f"{self.namespace}:client:{client_id}:holds"

    def idempotency(self, client_id: str, key_sha256: str) -> str:
        return f"{self.namespace}:idem:{client_id}:{key_sha256}"

    def pattern(self) -> str:
        """A SCAN pattern matching every partition key (stock state) of this namespace."""
        return f"{self.namespace}:{{p*"
