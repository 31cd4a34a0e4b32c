"""API keys (admin): create (the key is shown once), list, revoke."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Path, Request
from starlette.responses import Response

from onhand.api.apikeys import ApiKey
from onhand.api.problems import Problem, documented
from onhand.api.schemas import KeyCreate, KeyCreated, KeyList, KeyOut
from onhand.api.services import (
    IdempotencyKey,
    RequireScope,
    get_services,
    idempotent,
    json_response,
)

router = APIRouter(prefix="/v1", tags=["api keys"])
Admin = Annotated[ApiKey, Depends(RequireScope("admin"))]
_PROBLEMS = documented(400, 401, 403, 404, 413, 422, s404="No such key")


@router.post(
    "/api-keys",
    status_code=201,
    response_model=KeyCreated,
    responses=_PROBLEMS,
    summary="Create an API key (its token is in this answer only)",
)
async def create_key(
    body: KeyCreate, request: Request, key: Admin, idempotency_key: IdempotencyKey
) -> Response:
    async def work() -> Response:
        new = await get_services(request).api_keys.create(
            body.client_id,
            body.scopes,
            name=body.name,
            max_line_qty=body.max_line_qty,
            max_active_holds=body.max_active_holds,
        )
        return json_response({**new.key.as_dict(), "token": new.token}, 201)

    return await idempotent(
        request, key, idempotency_key, body.model_dump_json().encode(), work, redact=_no_token
    )


def _no_token(body: bytes) -> bytes:
    """The stored (replayable) answer keeps the key's metadata, never its secret."""
    return orjson.dumps({**orjson.loads(body), "token": None})


@router.get("/api-keys", response_model=KeyList, responses=_PROBLEMS, summary="List API keys")
async def list_keys(request: Request, key: Admin) -> Response:
    keys = await get_services(request).api_keys.list()
    return json_response({"items": [k.as_dict() for k in keys]})


@router.post(
    "/api-keys/{key_id}:revoke",
    response_model=KeyOut,
    responses=_PROBLEMS,
    summary="Revoke an API key (at once here, within the key cache TTL elsewhere)",
)
async def revoke_key(
    key_id: Annotated[str, Path(pattern=r"^[0-9a-f]{16}$")],
    request: Request,
    key: Admin,
    idempotency_key: IdempotencyKey,
) -> Response:
    async def work() -> Response:
        store = get_services(request).api_keys
        if not await store.revoke(key_id):
            raise Problem(404, "not-found", "Not found", "no such key")
        found = [k for k in await store.list() if k.key_id == key_id]
        return json_response(found[0].as_dict())

    return await idempotent(request, key, idempotency_key, b"", work)
