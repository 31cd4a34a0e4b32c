"""Reading a request body once in ASGI middleware and handing it on unchanged."""

from __future__ import annotations

from starlette.types import Message, Receive

__all__ = ["read_body", "replaying"]


async def read_body(receive: Receive, limit: int) -> tuple[bytes, bool] | None:
    """Read the body up to ``limit`` bytes: ``(body, more_body)``; ``more_body`` is true
    only when the limit was passed. ``None`` if the client went away."""
    body, more = b"", True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            return None
        body += message.get("body", b"")
        more = message.get("more_body", False)
        if len(body) > limit:
            return body, more
    return body, False


def replaying(receive: Receive, body: bytes, more: bool = False) -> Receive:
    """A ``receive`` that first returns ``body`` (already read), then the real one."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": more}
        return await receive()

    return replay
