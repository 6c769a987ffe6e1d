"""Uploaded bundles: store one (content-addressed), download one."""

from __future__ import annotations

from fastapi import APIRouter, Request, status
from fastapi.responses import StreamingResponse

from agent.models import Bundle
from agent.server.deps import Bundles
from agent.server.views import not_found

router = APIRouter(prefix="/bundles", tags=["bundles"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    summary="Upload a bundle (a gzipped tar); stored once per sha256 digest",
)
async def upload_bundle(request: Request, store: Bundles) -> Bundle:
    return await store.put(request.stream())


@router.get(
    "/{digest}",
    summary="Download a bundle by its digest",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/gzip": {}}}},
)
async def download_bundle(digest: str, store: Bundles) -> StreamingResponse:
    size = await store.size(digest)
    if size is None:
        raise not_found("bundle", digest)
    # Content-Length: the client knows a download cut short (a bundle deleted under it) from
    # a whole one, and can show progress.
    return StreamingResponse(
        store.stream(digest),
        media_type="application/gzip",
        headers={"Content-Length": str(size)},
    )
