"""Listening sockets for ``onhand serve``: one per worker process, on the same port.

uvicorn's own multi-worker mode binds one socket in its supervisor and every worker
accepts from it. Which worker takes a new connection is then a race, and the worker
that wins it accepts every connection waiting at that moment: a load generator or a
proxy that opens its pool at once can land entirely on one worker (the benchmark has
seen 64 of 64 connections on one of two workers), and long-lived connections keep
that split. With ``SO_REUSEPORT`` (Linux) each worker listens on a socket of its own
and the kernel spreads new connections over the sockets by a hash of their addresses,
so every worker gets a share whatever the timing.

Contract: :func:`listen_reuse_port` returns a socket bound to ``(host, port)`` with
``SO_REUSEADDR`` and ``SO_REUSEPORT``, listening with ``backlog``; other sockets of
the same user can join the port the same way, so :func:`ensure_free` is called first
(by the supervisor): it fails, as a plain bind would, when anything listens there
already.
"""

from __future__ import annotations

import socket
import sys

__all__ = ["ensure_free", "listen_reuse_port", "reuse_port_supported"]


def reuse_port_supported() -> bool:
    """True where ``SO_REUSEPORT`` spreads connections over sockets (Linux ≥ 3.9); on
    other systems it exists with different meanings, and uvicorn's mode is used."""
    return sys.platform == "linux" and hasattr(socket, "SO_REUSEPORT")


def _bound(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except BaseException:
        sock.close()
        raise
    return sock


def ensure_free(host: str, port: int) -> None:
    """Raise ``OSError`` (``EADDRINUSE``) if something listens on ``(host, port)``."""
    _bound(host, port, reuse_port=False).close()


def listen_reuse_port(host: str, port: int, backlog: int) -> socket.socket:
    """A listening socket of this process's own on ``(host, port)`` (module docstring)."""
    sock = _bound(host, port, reuse_port=True)
    sock.listen(backlog)
    return sock
