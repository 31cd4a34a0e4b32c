"""Events: what every script appends to its partition's stream, in the same script.

One event per affected stock record (plus ``low_stock`` when a record crosses its
reorder point, ``policy_set`` for SKU policies and ``extended`` per allocation for a new deadline).
``event_id`` is derived from the state it describes, so it is stable when events are
replayed or re-drained:

* ``s:<sku>:<warehouse>:<version>`` — a change of one stock record (its new version);
* ``l:<sku>:<warehouse>:<version>`` — the ``low_stock`` edge of that same change;
* ``p:<sku>:<policy_version>`` — a SKU policy change;
* ``x:<reservation_id>:<n>:<sku>:<warehouse>`` — the n-th deadline extension of a
  reservation, once per allocation (in that allocation's stream).

Ids never contain ``:`` (see :data:`onhand.domain.ID_PATTERN`), so these are injective.
On the stream an event is a flat field list with short names (``FIELDS``); integers
are decimal strings. Absent fields are omitted.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, fields

__all__ = ["FIELDS", "Event", "EventType"]


class EventType(enum.StrEnum):
    RECEIVED = "received"
    ADJUSTED = "adjusted"
    COUNTED = "counted"
    TRANSFER_OUT = "transfer_out"
    TRANSFER_IN = "transfer_in"
    SAFETY_STOCK_SET = "safety_stock_set"
    RESERVED = "reserved"
    CONFIRMED = "confirmed"
    RELEASED = "released"
    EXPIRED = "expired"
    FULFILLED = "fulfilled"
    CANCELLED = "cancelled"
    EXTENDED = "extended"
    POLICY_SET = "policy_set"
    LOW_STOCK = "low_stock"
    RECONCILED = "reconciled"


_TYPES = {t.value: t for t in EventType}

# attribute name -> stream field name
FIELDS: dict[str, str] = {
    "event_id": "id",
    "type": "t",
    "at_ms": "ts",
    "sku": "sku",
    "warehouse": "wh",
    "d_on_hand": "don",
    "d_held": "dhe",
    "d_committed": "dco",
    "on_hand": "on",
    "held": "he",
    "committed": "co",
    "safety_stock": "ss",
    "version": "v",
    "low": "low",
    "beyond": "bey",
    "reservation_id": "res",
    "line": "ln",
    "deadline_ms": "dl",
    "max_deadline_ms": "cap",
    "fingerprint": "fp",
    "owner": "own",
    "reason": "rsn",
    "reference": "ref",
    "actor": "act",
    "policy": "pol",
}
_BY_FIELD = {v: k for k, v in FIELDS.items()}
_INT_ATTRS = {
    "at_ms",
    "d_on_hand",
    "d_held",
    "d_committed",
    "on_hand",
    "held",
    "committed",
    "safety_stock",
    "version",
    "low",
    "beyond",
    "line",
    "deadline_ms",
    "max_deadline_ms",
}
_INT_BY_BYTES = {f.encode(): a for a, f in FIELDS.items() if a in _INT_ATTRS}
_STR_BY_BYTES = {f.encode(): a for a, f in FIELDS.items() if a not in _INT_ATTRS}


@dataclass(frozen=True, slots=True)
class Event:
    """One appended event. Resulting levels (``on_hand`` … ``low``) are after the change.

    ``policy`` (``policy_set`` only) is the policy as ``SkuPolicy`` field values joined by
    ``,`` in declaration order, followed by the policy version.
    """

    event_id: str
    type: EventType
    at_ms: int
    sku: str = ""
    warehouse: str = ""
    d_on_hand: int = 0
    d_held: int = 0
    d_committed: int = 0
    on_hand: int = 0
    held: int = 0
    committed: int = 0
    safety_stock: int = 0
    version: int = 0
    low: int = 0
    beyond: int = 0
    reservation_id: str = ""
    line: int = -1
    deadline_ms: int = 0
    max_deadline_ms: int = 0
    fingerprint: str = ""
    owner: str = ""
    reason: str = ""
    reference: str = ""
    actor: str = ""
    policy: str = ""

    @classmethod
    def from_fields(
        cls, raw: Mapping[bytes, bytes] | Mapping[str, str] | Mapping[bytes | str, bytes | str]
    ) -> Event:
        """Parse a stream entry's field map (bytes or str). Unknown fields are ignored.

        Raises ``KeyError``/``ValueError`` for an entry that is not an onhand event.
        """
        values: dict[str, object] = {}
        for key, value in raw.items():
            if isinstance(key, bytes):  # the writer's hot path: no decoded copy of the map
                int_name = _INT_BY_BYTES.get(key)
                if int_name is not None:
                    values[int_name] = int(value)
                    continue
                name = _STR_BY_BYTES.get(key)
                if name is not None:
                    values[name] = value.decode() if isinstance(value, bytes) else value
                continue
            attr = _BY_FIELD.get(key)
            if attr is None:
                continue
            text = value.decode() if isinstance(value, bytes) else value
            values[attr] = int(text) if attr in _INT_ATTRS else text
        values["type"] = _TYPES[str(values["type"])]  # KeyError: not an onhand event type
        return cls(**values)  # type: ignore[arg-type]

    def to_fields(self) -> dict[str, str]:
        """The stream field map for this event (defaults omitted, as the scripts do)."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("event_id", "type", "at_ms") or value != f.default:
                out[FIELDS[f.name]] = str(value)
        return out
