"""The HTTP API (FastAPI): ``create_app(settings)`` builds it; nothing runs at import."""
