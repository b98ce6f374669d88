"""The FastAPI app: thin HTTP handlers over ``SearchService`` plus the static search page.

Routes: ``POST /search``, ``GET /images/{id}``, ``GET /gallery``, ``GET /health``,
``GET /openapi.json`` and the page at ``/``. Every request first passes the access
checks (``access.py``: Host, origin, token) and the body bounds (size, stalls). Model
work (decoding an upload, encoding, searching) runs in worker threads, by lane
(``workers.py``), so the event loop keeps answering other requests meanwhile and cheap
searches never wait behind large uploads or expensive methods; searches that arrive
while the model is busy are answered together as one batch (``batching.py``). Every
error is JSON ``{"detail": message}``.
"""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Callable, Optional, Sequence
from urllib.parse import quote

import anyio
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import HTTPException, RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..errors import CirlabError
from ..imaging import ImageError
from ..methods import list_methods
from ..retrieval import Retriever
from .access import AccessMiddleware, ServeAccess
from .batching import MicroBatcher
from .errors import RequestError
from .images import ThumbnailCache, decode_upload, upload_pixels
from .limits import ServeLimits
from .memory import ByteBudget, trim_heap
from .service import SearchQuery, SearchResult, SearchService
from .workers import WorkerLanes

log = logging.getLogger("cirlab.serve")

STATIC_DIR = Path(__file__).parent / "static"

#: the page loads nothing from anywhere but this server
CSP = ("default-src 'self'; img-src 'self' blob: data:; script-src 'self'; style-src 'self'; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")


# ---- response models (they make the OpenAPI schema) ------------------------------------
class ResultItem(BaseModel):
    rank: int = Field(description="1-based rank")
    id: str = Field(description="gallery image id")
    score: float = Field(description="similarity score (higher is better)")
    thumbnail: str = Field(description="URL of a thumbnail of the image")
    image: str = Field(description="URL of the full image")


class UploadInfo(BaseModel):
    filename: Optional[str] = None
    width: int
    height: int


class ReferenceInfo(BaseModel):
    id: Optional[str] = Field(None, description="gallery id of the reference, when it was given by id")
    thumbnail: Optional[str] = None
    upload: Optional[UploadInfo] = Field(None, description="the uploaded reference image, when one was sent")


class SearchResponse(BaseModel):
    method: str
    text: str
    k: int
    reference: ReferenceInfo
    results: list[ResultItem]
    elapsed_ms: float = Field(description="time spent encoding and searching, in milliseconds")


class MethodInfo(BaseModel):
    spec: str
    help: str = ""
    expensive: bool = Field(False, description="runs in the expensive methods' own queue")


class Health(BaseModel):
    status: str
    version: str
    images: int
    backbone: str
    index: str
    default_method: str
    methods: list[MethodInfo]
    unavailable_methods: dict[str, str] = Field(description="registered methods this server does not offer, and why")
    limits: dict[str, int | float]
    searches: dict[str, int] = Field(description="queries answered, batches they ran in, largest batch, pending")


class GalleryItem(BaseModel):
    id: str
    thumbnail: str


class GalleryPage(BaseModel):
    total: int
    offset: int
    items: list[GalleryItem]


class ErrorBody(BaseModel):
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "bad request (empty text, bad id, corrupt image, ...)"},
    404: {"model": ErrorBody, "description": "unknown image id"},
    401: {"model": ErrorBody, "description": "a token is needed (when the server has one)"},
    403: {"model": ErrorBody, "description": "a state-changing request from another origin"},
    408: {"model": ErrorBody, "description": "the request body stalled"},
    413: {"model": ErrorBody, "description": "upload or image too large"},
    415: {"model": ErrorBody, "description": "upload is not a supported image"},
    422: {"model": ErrorBody, "description": "a malformed field (e.g. k=abc)"},
    503: {"model": ErrorBody, "description": "busy: the expensive methods' queue is full"},
}


# ---- ASGI middlewares ------------------------------------------------------------------
class BodyLimitMiddleware:
    """Refuses request bodies over ``max_bytes`` with 413, by header or while they stream in, and drops
    bodies that stall: 408 when no bytes come for ``idle_s`` seconds or the body is not complete within
    ``deadline_s`` (the connection is then closed, since the rest of the body was never read)."""

    def __init__(self, app: Any, max_bytes: int, idle_s: float = 10.0, deadline_s: float = 60.0) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.idle_s = idle_s
        self.deadline_s = deadline_s

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        too_big = f"request body over the limit of {self.max_bytes} bytes"
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await JSONResponse({"detail": too_big}, status_code=413)(scope, receive, send)
            return
        seen = 0
        deadline = anyio.current_time() + self.deadline_s
        done = False

        async def limited_receive() -> dict:
            nonlocal seen, done
            if done:
                return await receive()  # after the body: only the disconnect message is left
            wait = min(self.idle_s, deadline - anyio.current_time())
            with anyio.move_on_after(max(wait, 0)) as scope_:
                message = await receive()
            if scope_.cancelled_caught:
                raise HTTPException(408, f"request body stalled (no complete body within {self.idle_s:g} s of "
                                         f"silence or {self.deadline_s:g} s in all); the connection is closed",
                                    headers={"connection": "close"})
            if message["type"] == "http.request":
                done = not message.get("more_body", False)
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise HTTPException(413, too_big)
            return message

        await self.app(scope, limited_receive, send)


class SecurityHeadersMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [
                    (b"content-security-policy", CSP.encode()), (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer")]
            await send(message)

        await self.app(scope, receive, send_with_headers)


# ---- the app ---------------------------------------------------------------------------
def create_app(retriever: Retriever, methods: Sequence[str] | None = None, limits: ServeLimits | None = None,
               title: str = "cirlab", access: ServeAccess | None = None) -> FastAPI:
    """A FastAPI app serving ``retriever``'s index; ``methods`` are the method specs clients may pick
    (default: every registered method that runs without arguments and is not expensive; the retriever's own
    method is the default). ``access`` says who may use it (default: requests to a loopback host name, no
    token, no cross-origin state changes)."""
    limits = limits or ServeLimits()
    access = access or ServeAccess()
    service = SearchService(retriever, methods, limits)
    thumbs = ThumbnailCache()
    lanes = WorkerLanes(limits)
    run_model, run_decode, run_large = lanes.runner("model"), lanes.runner("decode"), lanes.runner("large")
    batcher = MicroBatcher(service, run_model, workers=limits.model_workers, max_batch=limits.max_batch)
    slow = MicroBatcher(service, lanes.runner("slow"), workers=limits.slow_workers,
                        max_batch=limits.max_batch, max_pending=limits.slow_queue,
                        name="searches with expensive methods")
    budget = ByteBudget(limits.decode_budget_mb * 1024 * 1024, on_empty=trim_heap)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # type: ignore[no-untyped-def]
        await batcher.start()
        await slow.start()
        try:
            yield
        finally:
            await slow.stop()
            await batcher.stop()
            lanes.close()

    app = FastAPI(title=f"{title} composed image retrieval", version=__version__,
                  description="Search a gallery with a reference image (upload or gallery id) plus a "
                              "modification text.",
                  docs_url=None, redoc_url=None,  # the stock docs pages load scripts from a CDN
                  lifespan=lifespan)
    app.state.service = service
    app.state.batcher = batcher
    app.state.slow_batcher = slow
    app.state.budget = budget
    app.state.limits = limits
    app.state.access = access
    app.add_middleware(BodyLimitMiddleware, max_bytes=limits.max_upload_bytes + 64 * 1024,
                       idle_s=limits.body_timeout_s, deadline_s=limits.body_deadline_s)
    app.add_middleware(AccessMiddleware, access=access)
    app.add_middleware(SecurityHeadersMiddleware)

    async def answer(reference: str | Any, text: str, k: int, method: str | None) -> SearchResult:
        queue = slow if service.is_expensive(method) else batcher
        if queue.running:
            return await queue.submit(SearchQuery(reference, text, k), method)
        return await run_model(service.search, reference, text, k, method)  # served without lifespan events

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        headers = {"retry-after": "5"} if exc.status == 503 else None
        return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=headers)

    @app.exception_handler(CirlabError)
    async def _cirlab_error(request: Request, exc: CirlabError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors():
            field = ".".join(str(x) for x in err.get("loc", ())[1:]) or "request"
            got = f" (got {err['input']!r:.60})" if isinstance(err.get("input"), (str, int, float)) else ""
            parts.append(f"{field}: {err.get('msg', 'invalid')}{got}")
        return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error answering %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal server error ({type(exc).__name__}); the server log has the "
                                       "details"}, status_code=500)

    def url_of(request: Request, image_id: str, size: int | None = None) -> str:
        root = request.scope.get("root_path", "").rstrip("/")
        return f"{root}/images/{quote(image_id, safe='')}" + (f"?size={size}" if size else "")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/health", response_model=Health, summary="service status, index size and the offered methods")
    async def health() -> Health:
        described = list_methods()
        return Health(status="ok", version=__version__, images=service.size, backbone=retriever.backbone.spec,
                      index=retriever.index.spec, default_method=service.default_method,
                      methods=[MethodInfo(spec=m, help=described.get(m.partition(":")[0], ""),
                                          expensive=service.is_expensive(m))
                               for m in service.methods],
                      unavailable_methods=service.unavailable,
                      limits={"max_upload_bytes": limits.max_upload_bytes, "max_pixels": limits.max_pixels,
                              "max_aspect": limits.max_aspect, "max_text_chars": limits.max_text_chars,
                              "max_k": limits.max_k, "default_k": limits.default_k},
                      searches={**batcher.stats.as_dict(), "pending": batcher.pending,
                                "expensive_queries": slow.stats.queries, "expensive_pending": slow.pending,
                                "uploads_waiting_for_memory": budget.waiting,
                                "decoded_bytes_in_flight": budget.used, "decoded_bytes_peak": budget.peak})

    @app.get("/gallery", response_model=GalleryPage, responses=ERRORS,
             summary="a page of gallery ids with thumbnail URLs")
    async def gallery(request: Request, offset: int = Query(0, ge=0), limit: int = Query(24, ge=1, le=200)
                      ) -> GalleryPage:
        ids = service.gallery_ids()
        return GalleryPage(total=len(ids), offset=offset,
                           items=[GalleryItem(id=i, thumbnail=url_of(request, i, limits.thumbnail_size))
                                  for i in ids[offset:offset + limit]])

    @app.get("/images/{image_id:path}", name="image",
             responses={200: {"content": {"image/png": {}}}, **ERRORS,
                        500: {"model": ErrorBody, "description": "the gallery file cannot be read"}},
             response_class=Response, summary="a gallery image (by id only), optionally as a thumbnail")
    async def image(image_id: str, size: Optional[int] = Query(None, ge=16, le=limits.max_thumbnail_size,
                                                               description="fit into size x size pixels")
                    ) -> Response:
        path = service.image_path(image_id)  # ids are looked up, never used as paths
        headers = {"Cache-Control": "public, max-age=3600"}
        if size is None:
            return FileResponse(path, headers=headers)
        try:
            data, media = await run_decode(thumbs.get, path, size, limits.gallery_bounds,
                                           f"gallery image {image_id!r}")
        except ImageError as e:
            log.error("thumbnail of %s (%s): %s", image_id, path, e)
            raise RequestError(500, f"{e} (the server's gallery file cannot be shown)") from None
        return Response(data, media_type=media, headers=headers)

    @app.post("/search", response_model=SearchResponse, responses=ERRORS,
              summary="composed search: a reference (uploaded image or gallery id) plus a modification text")
    async def search(request: Request,
                     text: str = Form("", description="modification text, e.g. 'make it red'"),
                     k: int = Form(limits.default_k, description=f"number of results (1 to {limits.max_k})"),
                     method: Optional[str] = Form(None, description="method spec (see /health); default: the "
                                                                    "server's method"),
                     reference_id: Optional[str] = Form(None, description="gallery id of the reference image"),
                     image: Optional[UploadFile] = File(None, description="reference image (PNG, JPEG, WebP, "
                                                                          "GIF, BMP)"),
                     ) -> SearchResponse:
        if image is not None and not image.filename and not image.size:
            image = None  # an empty file field from an HTML form
        if (image is None) == (not reference_id):
            raise RequestError(400, "give exactly one reference: an uploaded 'image' or a 'reference_id'")
        service.check_query(text, k)  # cheap checks first, before reading any upload
        if reference_id:
            service.check_id(reference_id, "reference_id")
        service.check_method(method)
        upload: UploadInfo | None = None
        if image is not None:
            name = f"image {image.filename or 'image'!r}"
            # the header gives the decoded size; the upload waits (spooled on disk) until that much memory is free
            pixels = await run_decode(upload_pixels, image.file, limits, name)
            async with budget.hold(limits.decode_cost(pixels)):
                decode = run_large if pixels > limits.large_pixels else run_decode  # large ones do not hold up small
                decoded = await decode(decode_upload, image.file, limits, name)
                upload = UploadInfo(filename=image.filename, width=decoded.width, height=decoded.height)
                result = await answer(decoded, text, k, method)
                del decoded
        else:
            assert reference_id is not None
            result = await answer(reference_id, text, k, method)
        ref = ReferenceInfo(id=reference_id, upload=upload,
                            thumbnail=url_of(request, reference_id, limits.thumbnail_size) if reference_id else None)
        return SearchResponse(
            method=result.method, text=text.strip(), k=k, reference=ref, elapsed_ms=round(result.elapsed_ms, 3),
            results=[ResultItem(rank=n, id=h.id, score=h.score, thumbnail=url_of(request, h.id, limits.thumbnail_size),
                                image=url_of(request, h.id)) for n, h in enumerate(result.hits, 1)])

    return app
