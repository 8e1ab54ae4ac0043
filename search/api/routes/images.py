"""Images by catalog id: similar images, metadata, thumbnail and the original file; and
search by an uploaded image. No path from a request ever reaches the filesystem."""

from __future__ import annotations

import mimetypes

from fastapi import APIRouter, Depends, File, HTTPException, Query, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, Response

from encoder import ImageLoadError

from ...engine import Hit
from ..deps import EngineDep, PagingDep, image_error, plain_image_id, require_token
from ..fast_lane import similar_body
from ..schemas import NOT_FOUND, HitOut, ImageOut, Responses, SearchOut, error

router = APIRouter(dependencies=[Depends(require_token), Depends(plain_image_id)])

#: An upload Pillow cannot read is the client's to fix, and each way of failing says what to send instead.
UPLOAD_ERRORS: Responses = {
    400: error("The upload could not be decoded (empty, truncated, corrupt), or the form could not be parsed."),
    413: error("The image has more pixels than the server's limit (LOOKALIKE_MAX_PIXELS), or the body is too large."),
    415: error("The upload is not an image format Pillow can read."),
}


def _out(hits: list[Hit]) -> list[HitOut]:
    return [HitOut(**h.as_dict()) for h in hits]


@router.post("/search", response_model=SearchOut, summary="Images like an uploaded one", responses=UPLOAD_ERRORS)
def search_upload(
    engine: EngineDep,
    paging: PagingDep,
    file: UploadFile = File(..., description="The query image."),
) -> SearchOut:
    content = file.file.read()
    try:
        hits, indexed = engine.query_image(content, **paging.kwargs())
    except ImageLoadError as exc:
        raise image_error(exc) from None
    # An upload that is an indexed image (the same bytes) is left out of its own results: say so.
    query = {"upload": file.filename, "bytes": len(content), "indexed": [{"id": i, "path": p} for i, p in indexed]}
    return SearchOut(query=query, k=paging.k, offset=paging.offset, results=_out(hits))


@router.get(
    "/images/{image_id}/similar", response_model=SearchOut, summary="Images like an indexed one", responses=NOT_FOUND
)
async def similar(image_id: int, engine: EngineDep, paging: PagingDep) -> Response:
    # The hot path. From the precomputed neighbour table and the published hit rows it
    # is two lookups in memory, so it runs on the event loop: a threadpool hop would cost more.
    # A live search (a page past the table, a path filter) takes milliseconds and
    # releases the GIL, so it goes to the threadpool, where searches use every core.
    # JSON is returned directly: the response model documents the shape, and
    # re-validating it would cost as much as the lookup. Plain queries seldom get
    # here: the fast lane (search/fast_lane.py) answers them first, with the same bytes.
    kw = paging.kwargs()
    hits = engine.precomputed(image_id, **kw)
    if hits is None:
        hits = await run_in_threadpool(engine.search_id, image_id, **kw)
    return Response(similar_body(image_id, paging.k, paging.offset, hits), media_type="application/json")


@router.get(
    "/images/{image_id}", response_model=ImageOut, summary="What the catalog knows of an image", responses=NOT_FOUND
)
def image_meta(image_id: int, engine: EngineDep) -> ImageOut:
    rec = engine.get(image_id).as_dict()
    return ImageOut(**{k: rec[k] for k in ImageOut.model_fields})


@router.get(
    "/images/{image_id}/thumbnail",
    summary="A small JPEG of an image",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}, **NOT_FOUND},
)
def thumbnail(image_id: int, engine: EngineDep, size: int = Query(256, ge=16, le=1024)) -> Response:
    try:
        body = engine.thumbnail(image_id, size)
    except ImageLoadError as exc:
        raise HTTPException(404, f"image {image_id} can no longer be decoded: {exc.reason}") from None
    return Response(body, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=3600"})


@router.get(
    "/images/{image_id}/file",
    summary="The original file",
    response_class=FileResponse,
    # Whatever type the file is (guessed from its name): the schema cannot name one.
    responses={200: {"content": {"*/*": {}}}, **NOT_FOUND},
)
def original(image_id: int, engine: EngineDep) -> FileResponse:
    path = engine.file_path(image_id)
    media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media, content_disposition_type="inline", filename=path.name)
