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
from onhand.errors import OnhandError

__all__ = ["HEADER", "Admission", "Idempotency", "Stored", "Ticket", "fingerprint", "parse_key"]

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


@dataclass(slots=True)
class Admission:
    """An anti-hoarding admission (``lua/admit.lua`` ``add``) to make in the same call
    as :meth:`Idempotency.begin`, only if that call starts a new request.

    ``begin`` fills in the outcome: ``admitted`` (the hold counts against ``limit``) or
    ``retry_after_ms`` (the client is at its limit; nothing was admitted).
    """

    holds_key: str
    reservation_id: str
    ttl_ms: int
    limit: int
    admitted: bool = False
    retry_after_ms: int | None = None


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

    async def begin(
        self, client_id: str, key: str, fp: str, *, admit: Admission | None = None
    ) -> Ticket | Stored:
        """Take the key's record for this request (a :class:`Ticket`), or answer from it:
        the stored answer, or a 422/409 problem. With ``admit``, a new request is also
        admitted in the same script call (one round trip instead of two) and ``admit``
        holds the outcome; a stored answer or a problem admits nothing."""
        redis_key = self.engine.keys.idempotency(
            client_id, hashlib.sha256(key.encode()).hexdigest()
        )
        token = f"{self._token_prefix}{next(self._tokens):x}"
        lock_ms = str(self.lock_ms)
        if admit is None:
            code, _, out = await self.engine.script(
                "idempotency", [redis_key], ["begin", fp, token, lock_ms]
            )
        else:
            args = [admit.reservation_id, str(admit.ttl_ms), str(admit.limit), fp, token, lock_ms]
            code, _, out = await self.engine.script(
                "admit",
                [admit.holds_key, redis_key],
                ["begin", *args],
            )
            if code == "OK":
                admit.admitted = True
            elif code == "FULL":
                admit.retry_after_ms = int(out[0])
            elif code != "FOUND":
                raise OnhandError(f"admit begin: unexpected reply {code}")
        if code in ("NEW", "OK", "FULL"):
            return Ticket(redis_key, fp, token)
        state, stored_fp, rest = out[0].split("|", 2)
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
