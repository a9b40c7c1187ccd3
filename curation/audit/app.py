"""`curate browse`: a read-only web app over one run's manifests and shards.

Pages: the funnel (each drop reason links to its samples), the sample table (paging, filters,
instruction search), a sample (images with RoE masks and boxes, turns, annotation JSON, scores,
lineage up to the source file, one click each), its shard view (members, and the examples the
trainer makes of it), and the run's files (e.g. the static report). Every route is GET; queries
run on the Parquet manifests in place (`catalog.py`); all text is escaped by Jinja's autoescape and
the pages carry a CSP that allows no script at all.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route

from curation.audit import media, shard_view
from curation.audit.catalog import RunCatalog, SampleFilter
from curation.audit.security import SecurityHeaders, TokenGuard, file_under
from curation.core.schema import scores_of

PER_PAGE = 50
MAX_ID = 200            # longer "sample ids" are not ids: 404 without a query
REFRESH_EVERY_S = 2.0   # a run in progress grows; re-list its files at most this often
ROW_CACHE = 8           # whole rows kept (a session row holds its frames and masks: ~1 MB)


class Browser:
    """The app's state: the run's catalog and the filter menus (recomputed when the run changes)."""

    def __init__(self, run_dir: str):
        self.catalog = RunCatalog(run_dir)
        self.root = Path(self.catalog.run_dir)
        self._checked = time.monotonic()
        self._menus: dict[str, Any] | None = None
        self._rows: OrderedDict[tuple[str, str], dict[str, Any] | None] = OrderedDict()
        self._rows_lock = threading.Lock()  # pages are served from a thread pool
        self.env = Environment(loader=PackageLoader("curation.audit", "templates"),
                               autoescape=select_autoescape(["html"], default=True))
        self.env.filters["pretty_json"] = _pretty_json
        self.env.filters["short"] = lambda s, n=160: s if s is None or len(s) <= n else s[: n - 1] + "…"
        self.env.filters["num"] = _num

    def fresh(self) -> RunCatalog:
        if time.monotonic() - self._checked > REFRESH_EVERY_S:
            self._checked = time.monotonic()
            if self.catalog.refresh():
                self._menus = None
                with self._rows_lock:
                    self._rows.clear()
        return self.catalog

    def row(self, stage: str, sample_id: str, hit: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """A whole manifest row; the last few are kept, since a sample page's images all need its row."""
        key = (stage, sample_id)
        with self._rows_lock:
            if key in self._rows:
                self._rows.move_to_end(key)
                return self._rows[key]
        row = self.catalog.row(stage, sample_id, hit)
        with self._rows_lock:
            self._rows[key] = row
            while len(self._rows) > ROW_CACHE:
                self._rows.popitem(last=False)
        return row

    def menus(self) -> dict[str, Any]:
        if self._menus is None:
            c = self.catalog
            self._menus = {"stages": [s.label for s in c.stages], "statuses": ["ok", "dropped", "error"],
                           "reasons": c.distinct("reason_key"), "kinds": c.distinct("kind"),
                           "categories": c.distinct("category"), "scores": sorted(c.score_keys())}
        return self._menus

    def page(self, request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        html = self.env.get_template(template).render(request=request, run_dir=str(self.root), **context)
        return HTMLResponse(html, status_code=status_code)

    def not_found(self, request: Request, message: str) -> HTMLResponse:
        return self.page(request, "error.html", status_code=404, message=message)


def _pretty_json(text: Any) -> str:
    if text is None:
        return ""
    try:
        return json.dumps(json.loads(text) if isinstance(text, str) else text, indent=2, ensure_ascii=False, default=str)
    except ValueError:
        return str(text)


def _num(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return "" if value is None else str(value)


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except ValueError:
        return None


# ------------------------------------------------------------------------------------------ pages


def overview(request: Request) -> Response:
    b: Browser = request.app.state.browser
    c = b.fresh()
    runs = [(s, s.run) for s in c.stages if not s.is_listing]
    random = sorted({f"{s.name}: {', '.join(r.get('random_weights') or [])}" for s, r in runs if r.get("random_weights")})
    report = (b.root / "report" / "index.html").is_file()
    return b.page(request, "index.html", funnel=c.funnel(), runs=runs, random_weights=random, report=report)


def samples(request: Request) -> Response:
    b: Browser = request.app.state.browser
    c = b.fresh()
    q = request.query_params
    menus = b.menus()
    stage = q.get("stage") or None
    if stage is not None and c.stage(stage) is None:
        return b.not_found(request, f"no stage manifest {stage!r} in this run")
    score = q.get("score") or None
    filters = SampleFilter(stage=stage, status=q.get("status") or None, reason=q.get("reason") or None,
                           kind=q.get("kind") or None, category=q.get("category") or None, text=q.get("q") or None,
                           score=score if score in menus["scores"] else None,
                           score_min=_float(q.get("min")), score_max=_float(q.get("max")))
    try:
        page = max(0, int(q.get("page", "0")))
    except ValueError:
        page = 0
    total, rows = c.page(filters, page, PER_PAGE)
    pages = max(1, math.ceil(total / PER_PAGE))
    links = {"prev": str(request.url.include_query_params(page=page - 1)) if page > 0 else None,
             "next": str(request.url.include_query_params(page=page + 1)) if page + 1 < pages else None}
    return b.page(request, "samples.html", f=filters, menus=menus, total=total, rows=rows, page=page, pages=pages,
                  links=links, shown_score=filters.score)


def sample(request: Request) -> Response:
    b: Browser = request.app.state.browser
    c = b.fresh()
    sample_id = request.path_params["sample_id"]
    history = c.locate([sample_id]) if len(sample_id) <= MAX_ID else []
    if not history:
        return b.not_found(request, f"sample {sample_id} is in no manifest of this run")
    wanted = request.query_params.get("stage")
    # By default the newest row that still has the sample's media (the shard stage drops them).
    with_media = [h for h in history if c.stage(h["stage"]).columns & media.MEDIA_COLUMNS]
    chosen = next((h for h in history if h["stage"] == wanted), (with_media or history)[-1])
    row = b.row(chosen["stage"], sample_id, chosen)
    if row is None:
        return b.not_found(request, f"sample {sample_id} is not in {chosen['stage']}")
    items = media.sample_media(row)
    lineage = _lineage(c, row.get("parent_ids") or [])
    shard = shard_view.lookup(c.cursor(), _shards_dir(c), sample_id)
    scalars = {k: v for k, v in row.items() if _is_scalar(v) and k not in _SHOWN}
    return b.page(request, "sample.html", row=row, stage=chosen["stage"], history=history, items=items,
                  lineage=lineage, shard=shard, scalars=scalars, scores=scores_of(row))


def media_image(request: Request) -> Response:
    b: Browser = request.app.state.browser
    c = b.fresh()
    stage, sample_id, name = (request.path_params[k] for k in ("stage", "sample_id", "name"))
    row = b.row(stage, sample_id) if c.stage(stage) is not None and len(sample_id) <= MAX_ID else None
    data = media.render(row, name) if row is not None else None
    if data is None:
        return Response("not found", status_code=404, media_type="text/plain")
    return Response(data, media_type="image/jpeg")


def shard_page(request: Request) -> Response:
    b: Browser = request.app.state.browser
    c = b.fresh()
    sample_id = request.path_params["sample_id"]
    shards = _shards_dir(c)
    entry = shard_view.lookup(c.cursor(), shards, sample_id) if len(sample_id) <= MAX_ID else None
    if entry is None:
        return b.not_found(request, f"sample {sample_id} is in no shard of this run")
    view = shard_view.trainer_view(shards, entry)
    return b.page(request, "shard.html", entry=entry, members=shard_view.member_rows(shard_view.read_members(shards, entry)),
                  examples=view.examples, problem=view.problem)


def shard_image(request: Request) -> Response:
    b: Browser = request.app.state.browser
    c = b.fresh()
    sample_id, name = request.path_params["sample_id"], request.path_params["name"]
    shards = _shards_dir(c)
    entry = shard_view.lookup(c.cursor(), shards, sample_id) if len(sample_id) <= MAX_ID else None
    data = None
    if entry is not None:
        if name.startswith("example-") and name[len("example-"):].isdigit():
            images = shard_view.trainer_view(shards, entry).images
            index = int(name[len("example-"):])
            data = images[index] if index < len(images) else None
        elif name.startswith("member-"):
            data = shard_view.member_jpeg(shard_view.read_members(shards, entry), name[len("member-"):])
    if data is None:
        return Response("not found", status_code=404, media_type="text/plain")
    return Response(data, media_type="image/jpeg")


def run_file(request: Request) -> Response:
    """A file under the run directory (the report, its PNGs, _run.json, ...); anything else is 404."""
    b: Browser = request.app.state.browser
    path = file_under(b.root, request.path_params["path"])
    if path is None:
        return Response("not found", status_code=404, media_type="text/plain")
    return FileResponse(path)


def no_favicon(request: Request) -> Response:
    return Response(status_code=204)


def stylesheet(request: Request) -> Response:
    return FileResponse(Path(__file__).parent / "static" / "style.css", media_type="text/css")


# ------------------------------------------------------------------------------------------ helpers

# Shown in their own sections of the sample page, not in the table of other columns.
_SHOWN = {"sample_id", "parent_ids", "kind", "status", "reason", "stage", "instruction", "scores"}


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


def _shards_dir(c: RunCatalog) -> str:
    """Where the run's sink wrote its shards: the stage whose `_run.json` records a `shards_dir`."""
    sink = next((s for s in reversed(c.stages) if s.run.get("shards_dir")), None)
    return shard_view.shards_dir(c.run_dir, sink.run if sink else {})


def _lineage(c: RunCatalog, parent_ids: list[str], max_depth: int = 12) -> list[list[dict[str, Any]]]:
    """Ancestors level by level (parents, grandparents, ... the source listing), newest row of each."""
    levels, frontier, seen = [], list(parent_ids), set()
    while frontier and len(levels) < max_depth:
        rows = c.locate(frontier)
        newest: dict[str, dict[str, Any]] = {}
        for r in rows:
            newest[r["sample_id"]] = r
        level = [newest.get(pid, {"sample_id": pid, "missing": True}) for pid in frontier]
        levels.append(level)
        seen.update(frontier)
        frontier = [p for r in level for p in (r.get("parent_ids") or []) if p not in seen]
    return levels


def build_app(run_dir: str, token: str | None = None) -> Starlette:
    """The app for one run; `token` (required off loopback) guards every route."""
    routes = [
        Route("/", overview, methods=["GET", "HEAD"]),
        Route("/samples", samples, methods=["GET", "HEAD"]),
        Route("/sample/{sample_id}", sample, methods=["GET", "HEAD"]),
        Route("/media/{stage:path}/{sample_id}/{name}.jpg", media_image, methods=["GET", "HEAD"]),
        Route("/shard/{sample_id}", shard_page, methods=["GET", "HEAD"]),
        Route("/shard/{sample_id}/{name}.jpg", shard_image, methods=["GET", "HEAD"]),
        Route("/files/{path:path}", run_file, methods=["GET", "HEAD"]),
        Route("/static/style.css", stylesheet, methods=["GET", "HEAD"]),
        Route("/favicon.ico", no_favicon, methods=["GET", "HEAD"]),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(TokenGuard, token=token), Middleware(SecurityHeaders)])
    app.state.browser = Browser(run_dir)
    return app
