"""Entry point for ASGI servers: ``uvicorn --factory onhand.api.asgi:app_from_env``."""

from __future__ import annotations

from fastapi import FastAPI

from onhand.api.app import create_app
from onhand.settings import Settings

__all__ = ["app_from_env"]


def app_from_env() -> FastAPI:
    """The app with settings read from ``ONHAND_*`` now (each worker calls this once)."""
    return create_app(Settings(), freeze_gc=True)
