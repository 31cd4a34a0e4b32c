"""Idempotency-Key (draft-ietf-httpapi-idempotency-key-header) for every POST.

Per client and key, one record in Redis (``lua/idempotency.lua``):

* first request: the record is taken as *pending* for ``lock_ms`` and the request runs;
  its final status and body are stored for ``ttl_ms`` (24 h) — error answers too;
* a retry with the same key and the same request (same method, path and canonical
  body — the *fingerprint*) gets the stored answer again, marked
  ``Idempotent-Replayed: true``;
* the same key with a different request → 422; while the first one is still running
  → 409; keys of different clients never meet.

Answers that say "nothing happened, retry" (503 from a fenced or unreachable engine)
are not stored: the record is released so the retry runs again. What cannot be
promised is documented in docs/api.md: a request whose process dies mid-flight keeps
its key *pending* until ``lock_ms`` passes; records live in Redis, so a Redis loss
forgets them (reservations stay idempotent anyway: their id is derived from the
client's order id, which the ledger keeps).
"""

from __future__ import annotations

import hashlib
import itertools
import re
import secrets
from dataclasses import dataclass

import orjson

from onhand.api.problems import Problem
from onhand.engine.redis import RedisEngine

__all__ = ["HEADER", "Idempotency", "Stored", "Ticket", "fingerprint", "parse_key"]

HEADER = "Idempotency-Key"
_KEY = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,255}")


def parse_key(raw: str | None) -> str:
    """The key from the header (a structured-field string, quoted or not), or a 400."""
    if raw is None:
        raise Problem(
            400,
            "idempotency-key-missing",
            "Idempotency-Key header required",
            "every POST needs an Idempotency-Key (e.g. a UUID)",
        )
    value = raw.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    if _KEY.fullmatch(value) is None:
        raise Problem(
            400,
            "idempotency-key-malformed",
            "Malformed Idempotency-Key",
            "1..255 printable ASCII characters without quotes or backslashes",
        )
    return value


def fingerprint(method: str, path: str, body: bytes) -> str:
    return hashlib.sha256(b"%s %s\n%s" % (method.encode(), path.encode(), body)).hexdigest()


@dataclass(frozen=True, slots=True)
class Ticket:
    """The right to run one request and store its answer."""

    redis_key: str
    fingerprint: str
    token: str


@dataclass(frozen=True, slots=True)
class Stored:
    status: int
    body: bytes
    media_type: str
    headers: dict[str, str]


class Idempotency:
    """Begin, finish or abandon the record of one key (see the module docstring)."""

    def __init__(
        self, engine: RedisEngine, *, ttl_ms: int = 86_400_000, lock_ms: int = 60_000
    ) -> None:
        self.engine = engine
        self.ttl_ms, self.lock_ms = ttl_ms, lock_ms
        # Owner tokens: unique per record owner, without a syscall per request.
        self._token_prefix = secrets.token_hex(6) + "-"
        self._tokens = itertools.count(1)

    async def begin(self, client_id: str, key: str, fp: str) -> Ticket | Stored:
        """Take the key's record for this request (a :class:`Ticket`), or answer from it:
        the stored answer, or a 422/409 problem."""
        redis_key = self.record_key(client_id, key)
        token = self.new_token()
        code, _, out = await self.engine.script(
            "idempotency", [redis_key], ["begin", fp, token, str(self.lock_ms)]
        )
        if code == "NEW":
            return Ticket(redis_key, fp, token)
        return self.found(out[0], fp)

    def record_key(self, client_id: str, key: str) -> str:
        """The Redis key of ``client_id``'s record for Idempotency-Key ``key``."""
        return self.engine.keys.idempotency(client_id, hashlib.sha256(key.encode()).hexdigest())

    def new_token(self) -> str:
        """A token no other record owner of any process has."""
        return f"{self._token_prefix}{next(self._tokens):x}"

    @staticmethod
    def found(value: str, fp: str) -> Stored:
        """The answer for a request whose key has the record ``value``: the stored
        answer, or a 422 (another request used the key) or 409 (still in flight) problem."""
        state, stored_fp, rest = value.split("|", 2)
        if stored_fp != fp:
            raise Problem(
                422,
                "idempotency-key-reused",
                "Idempotency-Key reused",
                "this key was used with a different request",
            )
        if state == "P":
            raise Problem(
                409,
                "idempotency-request-in-flight",
                "Request still in flight",
                "a request with this key is still being processed; retry later",
                headers={"Retry-After": "1"},
            )
        record = orjson.loads(rest)
        return Stored(record["s"], record["b"].encode(), record["m"], record["h"])

    async def finish(self, ticket: Ticket, answer: Stored) -> None:
        record = orjson.dumps(
            {
                "s": answer.status,
                "b": answer.body.decode(),
                "m": answer.media_type,
                "h": answer.headers,
            }
        )
        value = f"D|{ticket.fingerprint}|{record.decode()}"
        await self.engine.script(
            "idempotency", [ticket.redis_key], ["finish", ticket.token, value, str(self.ttl_ms)]
        )

    async def abandon(self, ticket: Ticket) -> None:
        await self.engine.script("idempotency", [ticket.redis_key], ["abandon", ticket.token])
