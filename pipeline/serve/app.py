"""`pipeline serve`'s web app (FastAPI, pages rendered on the server from pipeline/templates/): the run list with
the report's sections, a run's page (metrics, figures, params, query forms), search from any modality the run
embeds to any other, and explain pictures drawn by the run's task. Bad input gets its message on the page with a
4xx status; nothing a user sends ends in a 500."""
from __future__ import annotations

import base64
import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import yaml
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from starlette.exceptions import HTTPException

from ..config import PipelineConfig
from .state import NAME, ServeError, Server, inside

log = logging.getLogger(__name__)

MAX_UPLOAD = 50 * 1024 * 1024  # bytes; a larger query is refused (413) before it is read
SUFFIXES = {"image": (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif"),
            "audio": (".wav", ".flac", ".mp3", ".ogg", ".m4a", ".aac", ".opus", ".webm", ".mp4")}


def create_app(config: PipelineConfig, dataset: str | None = None, run: Path | None = None,
               device: str = "cpu", max_upload: int = MAX_UPLOAD) -> Any:
    """The app over the runs in `config`'s cache (only `dataset`'s, given); `run`: the page `/` opens on."""
    from ..query import QueryError
    from ..report import collect, page_parts, templates

    server = Server(config, dataset, run, device)
    env = templates()
    app = FastAPI(title="avpipeline serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server

    def page(name: str, code: int = 200, **context: Any) -> HTMLResponse:
        return HTMLResponse(env.get_template(name).render(**context), status_code=code)

    def error_page(status: int, message: str) -> HTMLResponse:
        return page("serve_error.html", status, title=f"{status}: avpipeline serve", status=status, message=message)

    @app.exception_handler(ServeError)
    async def _serve_error(request: Request, e: ServeError) -> HTMLResponse:
        return error_page(e.status, e.message)

    @app.exception_handler(QueryError)
    async def _query_error(request: Request, e: QueryError) -> HTMLResponse:
        return error_page(400, str(e))

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, e: HTTPException) -> HTMLResponse:
        return error_page(e.status_code, str(e.detail))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> HTMLResponse:
        what = "; ".join(f"{'.'.join(str(x) for x in err.get('loc', ())[1:])}: {err.get('msg')}" for err in e.errors())
        return error_page(422, f"the request is missing something or has a wrong value ({what})")

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception) -> HTMLResponse:  # a bug of ours: logged whole, said briefly
        log.exception("%s %s failed", request.method, request.url.path)
        return error_page(500, f"this request hit a bug in pipeline serve ({type(e).__name__}: {e}); the server log "
                               "has the traceback: please report it")

    @app.middleware("http")
    async def _limit(request: Request, call_next: Any) -> Any:
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_upload + 64 * 1024):
            return error_page(413, f"the query is over {max_upload // (1024 * 1024)} MB; send a shorter recording "
                                   "or a smaller picture")
        return await call_next(request)

    # -- pages -------------------------------------------------------------------------------------------------

    parts_memo: dict[Any, dict[str, list[str]]] = {}

    @app.get("/", response_class=HTMLResponse)
    def runs_page() -> Any:
        if server.start is not None:
            return RedirectResponse(f"/runs/{server.start.parent.name}/{server.start.name}", status_code=307)
        return list_page()

    @app.get("/runs", response_class=HTMLResponse)
    def list_page() -> HTMLResponse:
        rows = collect(server.cache, server.dataset)
        memo = tuple((r["run_dir"], r["completed"]) for r in rows)
        if memo not in parts_memo:
            charts = server.cache / "serve" / "charts"
            charts.mkdir(parents=True, exist_ok=True)
            parts_memo.clear()
            parts_memo[memo] = page_parts(rows, charts)
        # an evaluate stage's row of a model trained elsewhere is no run directory of its own: no link
        home = {r["dataset"]: (server.runs_root / r["dataset"]).resolve() for r in rows}
        runs = [{**r, "url": _run_url(server, Path(r["run_dir"]))
                 if Path(r["run_dir"]).parent.resolve() == home[r["dataset"]] else None} for r in rows]
        parts = parts_memo[memo]
        return page("serve_runs.html", title="avpipeline runs", rows=runs, parts=parts["parts"], charts=parts["charts"])

    @app.get("/runs/{dataset}/{name}", response_class=HTMLResponse)
    def run_page(dataset: str, name: str) -> HTMLResponse:
        d = server.run_dir(dataset, name)
        info, metrics = server.info(d)
        task = _task(metrics)
        kinds: dict[str, str] = {}
        note = None
        try:
            kinds = server.model(d).kinds()
        except ServeError as e:
            note = e.message
        mods = server.modalities(d)
        samples = {m: _samples(server, d, m) for m in mods}
        figures = sorted(p.name for p in d.glob("*.png"))
        return page("serve_run.html", title=f"{info['stage']} on {info['dataset']}", info=info, metrics=metrics,
                    line=task.line(metrics) if task else "", params=yaml.safe_dump(info.get("params") or {},
                                                                                    sort_keys=False),
                    url=_run_url(server, d), kinds=kinds, modalities=mods, samples=samples, figures=figures,
                    explains=task.explains if task else (), note=note,
                    words=task.explain_items(d, 6) if task and "word" in task.explains else [],
                    scopes=list(server.gallery(d, mods[0]).scopes) if mods else ["all"],
                    random=any(v.get("random_weights") for v in (info.get("upstream") or {}).values()))

    @app.get("/runs/{dataset}/{name}/files/{path:path}")
    def run_file(dataset: str, name: str, path: str) -> FileResponse:
        d = server.run_dir(dataset, name)
        f = inside(d / path, d)
        if not f.is_file():
            raise ServeError(404, f"run {name} has no file {path}")
        return FileResponse(f)

    @app.get("/media/{dataset}")
    def media(dataset: str, id: str, role: str) -> FileResponse:
        if not NAME.match(dataset):
            raise ServeError(400, f"'{dataset}' is not a dataset name")
        return FileResponse(server.media_path(dataset, id, role))

    @app.get("/runs/{dataset}/{name}/search", response_class=HTMLResponse)
    def search_get(dataset: str, name: str, to: str, q: str | None = None, item: str | None = None,
                   source: str | None = None, scope: str = "test", k: int = 10) -> HTMLResponse:
        d = server.run_dir(dataset, name)
        info, metrics = server.info(d)
        if item is not None:
            if not source:
                raise ServeError(400, "an item query names the modality it starts from (source=...)")
            vector, clip = server.item_query(d, source, item)
            query = {"kind": "item", "modality": source, "clip": clip, "id": item}
            truth = server.truth_of(clip)
        elif q is not None:
            if not q.strip():
                raise ServeError(400, "the sentence is empty: type some words")
            if len(q) > 2000:
                raise ServeError(400, "the sentence is over 2000 characters")
            vector = server.model(d).texts([q])[0]
            query = {"kind": "text", "text": q}
            truth = server.truth_of_text(info["dataset"], q)
        else:
            raise ServeError(400, "nothing to search with: type a sentence (q=...) or pick an item (item=...)")
        return results(d, info, metrics, query, vector, to, scope, k, truth)

    @app.post("/runs/{dataset}/{name}/search", response_class=HTMLResponse)
    def search_post(dataset: str, name: str, kind: Annotated[str, Form()], to: Annotated[str, Form()],
                    file: Annotated[UploadFile, File()], scope: Annotated[str, Form()] = "test",
                    k: Annotated[int, Form()] = 10) -> HTMLResponse:
        d = server.run_dir(dataset, name)
        info, metrics = server.info(d)
        if kind not in SUFFIXES:
            raise ServeError(400, f"an upload is an image or an audio query, not '{kind}'")
        model = server.model(d)
        model.check(kind)
        with _saved(file, kind, max_upload) as path:
            vector = model.embed(kind, [path])[0]
        query = {"kind": kind, "name": file.filename or "upload"}
        return results(d, info, metrics, query, vector, to, scope, k, None)

    def results(d: Path, info: dict[str, Any], metrics: dict[str, Any], query: dict[str, Any], vector: np.ndarray,
                to: str, scope: str, k: int, truth: Any) -> HTMLResponse:
        t0 = time.perf_counter()
        found = server.search(d, to, vector, scope, k, truth)
        took = 1000 * (time.perf_counter() - t0)
        task = _task(metrics)
        explain = query["kind"] in (task.explains if task else ()) and to == "image"
        first_right = next((r.rank for r in found if r.right), None)
        return page("serve_results.html", title=f"search {info['stage']}", info=info, query=query, to=to,
                    scope=scope, k=k, results=found, took=took, url=_run_url(server, d), dataset=info["dataset"],
                    truth=truth is not None, first_right=first_right, explain=explain, roles=_roles)

    @app.get("/runs/{dataset}/{name}/explain", response_class=HTMLResponse)
    def explain_item(dataset: str, name: str, item: str, q: str | None = None, word: str | None = None) -> HTMLResponse:
        d = server.run_dir(dataset, name)
        info, metrics = server.info(d)
        picture = server.media_path(info["dataset"], item, "image")
        if word is not None:
            return explain(d, info, metrics, "word", word, picture, f"item {item}", item)
        if q is None:
            raise ServeError(400, "explain what: a phrase (q=...) or a spoken word's number (word=...)")
        return explain(d, info, metrics, "text", q, picture, f"item {item}")

    @app.post("/runs/{dataset}/{name}/explain", response_class=HTMLResponse)
    def explain_upload(dataset: str, name: str, q: Annotated[str, Form()],
                       file: Annotated[UploadFile, File()]) -> HTMLResponse:
        d = server.run_dir(dataset, name)
        info, metrics = server.info(d)
        with _saved(file, "image", max_upload) as path:
            return explain(d, info, metrics, "text", q, path, file.filename or "upload")

    def explain(d: Path, info: dict[str, Any], metrics: dict[str, Any], kind: str, q: str, picture: Path,
                source: str, item: str | None = None) -> HTMLResponse:
        task = _task(metrics)
        if task is None or kind not in task.explains:
            what = "a typed phrase" if kind == "text" else "a spoken word"
            raise ServeError(400, f"{info['implementation']} runs draw no explain picture for {what}")
        if not q.strip():
            raise ServeError(400, "the phrase is empty: type some words")
        model = server.model(d)
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "explain.png"
            try:
                facts = task.explain(model, q, out, picture=picture, item=item)
            except QueryError:  # a ValueError with its own message and handler
                raise
            except (OSError, ValueError) as e:
                raise ServeError(400, f"{source}: cannot draw on it ({e})") from None
            png = base64.b64encode(out.read_bytes()).decode()
        return page("serve_explain.html", title=f"explain: {q}", info=info, q=facts.get("word", q), kind=kind,
                    source=source, png=png, facts=facts, url=_run_url(server, d))

    return app


def _run_url(server: Server, run_dir: Path) -> str:
    return f"/runs/{run_dir.parent.name}/{run_dir.name}"


def _task(metrics: dict[str, Any]) -> Any:
    from ..registry import TASKS
    from ..training.base import TrainError, task_name

    try:
        return TASKS.get(task_name(metrics.get("task")))()
    except TrainError:
        return None


def _roles(clip: Any, modality: str) -> list[tuple[str, str]]:
    """What to show of an item in a modality: (html kind, media role) pairs."""
    if clip is None:
        return []
    media = clip.media
    if modality in ("image", "visual"):
        return [("img", "image")] if "image" in media else [("video", "video")] if "video" in media else []
    if modality == "text":
        return []
    return [("audio", "audio")] if "audio" in media else [("video", "video")] if "video" in media else []


def _samples(server: Server, run_dir: Path, modality: str, n: int = 6) -> list[Any]:
    """A few items of a modality's first scope to start a search from."""
    try:
        g = server.gallery(run_dir, modality)
    except ServeError:
        return []
    rows = np.flatnonzero(next(iter(g.scopes.values())))[:n]
    return [(g.index.ids[int(i)], g.clips[int(i)]) for i in rows]


class _saved:
    """An upload copied to a temporary file (its size checked as it streams, refused past the limit), removed
    after use."""

    def __init__(self, upload: Any, kind: str, limit: int) -> None:
        self.upload, self.kind, self.limit = upload, kind, limit

    def __enter__(self) -> Path:
        name = Path(self.upload.filename or "upload").name
        suffix = Path(name).suffix.lower()
        if suffix not in SUFFIXES[self.kind]:
            suffix = SUFFIXES[self.kind][0] if self.kind == "image" else ".bin"
        self.dir = tempfile.mkdtemp(prefix="avserve-")
        path = Path(self.dir) / f"query{suffix}"
        size = 0
        with open(path, "wb") as f:
            while chunk := self.upload.file.read(1 << 20):
                size += len(chunk)
                if size > self.limit:
                    self.__exit__()
                    raise ServeError(413, f"the query is over {self.limit // (1024 * 1024)} MB; send a shorter "
                                          "recording or a smaller picture")
                f.write(chunk)
        if size == 0:
            self.__exit__()
            raise ServeError(400, f"{name} is empty: choose a {self.kind} file")
        return path

    def __exit__(self, *exc: Any) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
