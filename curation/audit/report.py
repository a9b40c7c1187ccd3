"""`curate report <run_dir>`: a static page that says what a run kept and why it dropped the rest.

Someone who never ran the pipeline opens `report/index.html` (no server, no JavaScript, PNGs beside
it) and sees the funnel by stage and reason, each score's distribution against the threshold that
cut it, categories before and after filtering, the samples' licences, datasets and generators, clip
durations, API spend and wall time per stage.
Every number is read through `RunCatalog`, so it is the number `curate status` and `curate browse`
show. `report_data` is the same content as plain data, for tests and for the browser.
"""

from __future__ import annotations

import datetime
import io
import math
import re
from pathlib import Path
from typing import Any

import duckdb
import jinja2
import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from curation.audit.catalog import RunCatalog, StageManifest
from curation.core import storage
from curation.core.runinfo import run_spend

TEMPLATES = Path(__file__).parent / "templates"
DPI = 120
# Every plot the report writes matches one of these; a rerun removes the ones it no longer writes.
_PLOT_FILES = ("funnel.png", "score_*.png", "categories.png", "durations.png", "wall_time.png", "api_cost.png")
# Untrusted text (reasons, categories) must not be parsed as mathtext: "$x_" would raise.
_PLOT_STYLE = {"text.parse_math": False, "font.size": 10, "axes.spines.top": False, "axes.spines.right": False}
_STATUS_SERIES = {"ok": "kept", "dropped": "dropped", "error": "error"}
_SERIES_COLORS = {"kept": "#4caf50", "dropped": "#ff9800", "error": "#d32f2f"}
_MAX_CATEGORIES = 25  # a longer list is cut to the largest, with the rest summed, so labels stay legible


# ------------------------------------------------------------------------------------- thresholds

def thresholds(catalog: RunCatalog, score: str) -> list[dict[str, Any]]:
    """The cuts in force on a score in this run: [{setting, value, stage}], as each stage recorded
    them in its `_run.json` (`thresholds`: a stage says which cuts it applies; the report names none)."""
    return [{"setting": cut["setting"], "value": float(cut["value"]), "stage": stage.label}
            for stage in _pipeline(catalog) for cut in stage.run.get("thresholds") or [] if cut.get("score") == score]


def _column_scores(catalog: RunCatalog) -> list[tuple[str, StageManifest]]:
    """Scores a stage keeps in a manifest column of its own (e.g. a similarity), as its `_run.json` says."""
    return [(cut["score"], stage) for stage in _pipeline(catalog) for cut in stage.run.get("thresholds") or []
            if cut.get("column") and cut.get("score") in stage.columns]


# ------------------------------------------------------------------------------------- data

def _pipeline(catalog: RunCatalog) -> list[StageManifest]:
    """The stage manifests, without ingest's source listing (not a stage)."""
    return [s for s in catalog.stages if not s.is_listing]


def _last(catalog: RunCatalog) -> StageManifest | None:
    """The stage whose kept rows are the run's result so far (None while ingest has written only its listing)."""
    stages = _pipeline(catalog)
    return stages[-1] if stages else None


def _values_by_status(cur: duckdb.DuckDBPyConnection, sql: str, params: list[Any]) -> dict[str, np.ndarray]:
    """Finite values of `sql` (columns status, v) grouped into kept / dropped / error."""
    got = cur.execute(f"SELECT status, CAST(v AS DOUBLE) AS v FROM ({sql}) WHERE v IS NOT NULL", params).fetchnumpy()
    status, values = np.asarray(got["status"], dtype=object), np.asarray(got["v"], dtype=float)
    finite = np.isfinite(values)
    series = {name: values[finite & (status == s)] for s, name in _STATUS_SERIES.items()}
    return {name: v for name, v in series.items() if v.size}


def histogram(series: dict[str, np.ndarray], max_bins: int = 40) -> dict[str, Any] | None:
    """Counts per series over shared bin edges (so stacked bars line up); None without values."""
    if not series:
        return None
    values = np.concatenate(list(series.values()))
    lo, hi = float(values.min()), float(values.max())
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, int(np.clip(np.ceil(np.sqrt(values.size)), 5, max_bins)) + 1)
    return {"n": int(values.size), "edges": edges.tolist(),
            "counts": {name: np.histogram(v, edges)[0].tolist() for name, v in series.items()}}


def _scores(catalog: RunCatalog) -> list[dict[str, Any]]:
    """Each score where it was first written (that stage's dropped rows included), with its cuts."""
    cur = catalog.cursor()
    found: list[tuple[str, StageManifest, dict[str, np.ndarray]]] = []
    for name, label in catalog.score_keys().items():
        stage = catalog.stage(label)
        found.append((name, stage, _values_by_status(
            cur, f"SELECT status, element_at(scores, ?)[1] AS v FROM {stage.view}", [name])))
    for name, stage in dict.fromkeys(_column_scores(catalog)):
        found.append((name, stage, _values_by_status(cur, f'SELECT status, "{name}" AS v FROM {stage.view}', [])))
    return [{"name": name, "stage": stage.label, "thresholds": thresholds(catalog, name), **hist}
            for name, stage, series in found if (hist := histogram(series))]


def _category_counts(cur: duckdb.DuckDBPyConnection, stage: StageManifest, kept_only: bool) -> dict[str, int]:
    where = " WHERE status = 'ok'" if kept_only else ""
    rows = cur.execute(f"SELECT coalesce(CAST(category AS VARCHAR), '(none)'), count(*) FROM {stage.view}{where} "
                       "GROUP BY 1 ORDER BY 2 DESC, 1").fetchall()
    return dict(rows)


def _categories(catalog: RunCatalog) -> dict[str, Any] | None:
    """Categories of every row of the first manifest that has them, and of the last stage's kept rows."""
    first = next((s for s in catalog.stages if "category" in s.columns), None)
    if first is None:
        return None
    cur, last = catalog.cursor(), _last(catalog)
    after = _category_counts(cur, last, kept_only=True) if last and "category" in last.columns else None
    return {"before_stage": first.label, "before": _category_counts(cur, first, kept_only=False),
            "after_stage": last.label if last else None, "after": after}


# Where samples came from, per column: a row without a value counts as this. An unstated licence is
# `unknown` (curation/sources/licences.py); no generator means the sample has no generated media.
_PROVENANCE_COLUMNS = {"licence": "unknown", "dataset": "(none)", "category_native": "(none)", "generator": "(none)"}


def _value_counts(cur: duckdb.DuckDBPyConnection, stage: StageManifest, column: str, missing: str,
                  kept_only: bool) -> dict[str, int]:
    where = " WHERE status = 'ok'" if kept_only else ""
    rows = cur.execute(f'SELECT coalesce(CAST("{column}" AS VARCHAR), ?), count(*) FROM {stage.view}{where} '
                       "GROUP BY 1 ORDER BY 2 DESC, 1", [missing]).fetchall()
    return dict(rows)


def _sample_provenance(catalog: RunCatalog) -> dict[str, dict[str, Any]]:
    """Per provenance column: counts over every row of the first manifest that has it (the licence
    filter's input) and over the last stage's kept rows (what the run delivers, e.g. its shards)."""
    cur, last = catalog.cursor(), _last(catalog)
    found = {}
    for column, missing in _PROVENANCE_COLUMNS.items():
        first = next((s for s in catalog.stages if column in s.columns), None)
        if first is None:
            continue
        after = _value_counts(cur, last, column, missing, kept_only=True) if last and column in last.columns else None
        found[column] = {"before_stage": first.label, "before": _value_counts(cur, first, column, missing, kept_only=False),
                         "after_stage": last.label if last else None, "after": after}
    return found


def _durations(catalog: RunCatalog) -> dict[str, Any] | None:
    """Durations of the last stage's kept rows against every row any stage dropped or failed (a removed
    row stays only in the manifest of the stage that removed it)."""
    last = _last(catalog)
    if last is None:
        return None
    series = _values_by_status(
        catalog.cursor(),
        "SELECT status, duration_s AS v FROM light WHERE position > 0 AND (status <> 'ok' OR stage = ?)", [last.label])
    hist = histogram(series)
    return {"stage": last.label, **hist} if hist else None


_USAGE_FIELDS = ("requests", "cache_hits", "prompt_tokens", "completion_tokens", "retries", "usd")


def _usage_records(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The parts of a `_run.json` that account for API calls (`vlm`, or any other with a usage)."""
    return [v for v in run.values() if isinstance(v, dict) and isinstance(v.get("usage"), dict)
            and {"prompt_tokens", "completion_tokens", "usd"} <= v["usage"].keys()]


def _usage(catalog: RunCatalog) -> list[dict[str, Any]]:
    rows = []
    for stage in _pipeline(catalog):
        records = _usage_records(stage.run)
        if records:
            row: dict[str, Any] = {"stage": stage.label,
                                   "model": ", ".join(sorted({str(r["model"]) for r in records if r.get("model")}))}
            row.update({f: sum(r["usage"].get(f) or 0 for r in records) for f in _USAGE_FIELDS})
            rows.append(row)
    return rows


def _timing(catalog: RunCatalog) -> list[dict[str, Any]]:
    return [{"stage": s.label, "wall_s": s.run.get("wall_s"), "samples_per_s": s.run.get("samples_per_s"),
             "processed_total": s.run.get("processed_total")} for s in _pipeline(catalog)]


def _provenance(catalog: RunCatalog, key: str) -> dict[str, list[str]]:
    """value -> the stages that ran with it (a resumed run may mix commits or configs)."""
    found: dict[str, list[str]] = {}
    for s in _pipeline(catalog):
        if s.run.get(key):
            found.setdefault(str(s.run[key]), []).append(s.label)
    return found


def _reason_examples(catalog: RunCatalog) -> dict[str, dict[str, str]]:
    """stage label -> reason key -> one full reason (the text after ':' says by how much a check failed)."""
    rows = catalog.cursor().execute(
        "SELECT stage, reason_key, min(reason) FROM light WHERE position > 0 AND status <> 'ok' "
        "AND reason IS NOT NULL GROUP BY ALL ORDER BY ALL").fetchall()
    examples: dict[str, dict[str, str]] = {}
    for stage, key, reason in rows:
        examples.setdefault(stage, {})[key] = reason
    return examples


def report_data(catalog: RunCatalog) -> dict[str, Any]:
    """Everything the report shows, as plain data (lists, dicts, numbers, strings)."""
    usage = _usage(catalog)
    return {
        "run_dir": catalog.run_dir,
        "git_sha": _provenance(catalog, "git_sha"),
        "config_hash": _provenance(catalog, "config_hash"),
        "random_weights": {s.label: s.run["random_weights"] for s in _pipeline(catalog) if s.run.get("random_weights")},
        "funnel": catalog.funnel(),
        "reason_examples": _reason_examples(catalog),
        "scores": _scores(catalog),
        "categories": _categories(catalog),
        "provenance": _sample_provenance(catalog),
        "durations": _durations(catalog),
        "usage": usage,
        "usage_total": {f: sum(r[f] for r in usage) for f in _USAGE_FIELDS} if usage else None,
        # The run's ledger: every paid call of every stage and attempt, including those of parts a
        # killed attempt never wrote, which the manifests' usage cannot count.
        "spend": run_spend(catalog.run_dir),
        "timing": _timing(catalog),
    }


# ------------------------------------------------------------------------------------- plots

def _figure(width: float, height: float) -> Figure:
    """A figure on its own Agg canvas: no pyplot, so no global backend switch and no figure registry."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _bars_height(bars: int, extra: float = 0.0) -> float:
    """Figure height (inches) for horizontal bars: legible for one bar, and for fifty."""
    return max(2.6, 1.4 + 0.45 * bars) + extra


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _short(text: str, limit: int = 32) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _usd(value: float) -> str:
    """Dollars with three significant digits but never in exponent notation ($0.000048, not $4.8e-05)."""
    if value >= 0.995 or value <= 0:
        return f"${value:,.2f}"
    return f"${value:.{2 - math.floor(math.log10(value))}f}"


def _label_bars(ax: Any, bars: Any, texts: list[str]) -> None:
    """Write each bar's count just past its end (horizontal bars)."""
    for bar, text in zip(bars, texts):
        ax.annotate(text, (bar.get_x() + bar.get_width(), bar.get_y() + bar.get_height() / 2), xytext=(4, 0),
                    textcoords="offset points", va="center", fontsize=8)


def _reason_colors(funnel: list[dict[str, Any]]) -> dict[tuple[str, str], tuple[Any, str]]:
    """(status, reason) -> (colour, hatch); one colour per reason across stages, errors hatched red."""
    keys = list(dict.fromkeys((status, reason) for row in funnel for status in ("dropped", "error")
                              for reason in row[status]))
    drop_palette = [c for i, c in enumerate(matplotlib.colormaps["tab20"].colors) if i not in (4, 5, 6, 7)]  # no green/red
    error_palette = matplotlib.colormaps["Reds"](np.linspace(0.45, 0.9, 4))
    colors, n_drop, n_error = {}, 0, 0
    for status, reason in keys:
        if status == "dropped":
            colors[(status, reason)] = (drop_palette[n_drop % len(drop_palette)], "")
            n_drop += 1
        else:
            colors[(status, reason)] = (error_palette[n_error % len(error_palette)], "//")
            n_error += 1
    return colors


def plot_funnel(funnel: list[dict[str, Any]]) -> Figure:
    """One horizontal bar per stage: its rows, stacked as kept + each drop reason + each error reason."""
    colors = _reason_colors(funnel)
    fig = _figure(10, _bars_height(len(funnel), extra=0.25 * (len(colors) // 3 + 1)))
    ax = fig.subplots()
    y = np.arange(len(funnel))
    xmax = max([row["rows"] for row in funnel] + [1])
    segments = [("kept", _SERIES_COLORS["kept"], "", [row["kept"] for row in funnel])]
    segments += [(f"{status}: {_short(reason, 28)}", color, hatch, [row[status].get(reason, 0) for row in funnel])
                 for (status, reason), (color, hatch) in colors.items()]
    left = np.zeros(len(funnel))
    for label, color, hatch, widths in segments:
        ax.barh(y, widths, left=left, color=color, hatch=hatch, edgecolor="white", label=label)
        for yi, (start, width) in enumerate(zip(left, widths)):
            text = f"{width:,}"
            if width and width >= max(0.04, 0.012 * len(text)) * xmax:  # only where the number fits inside
                ax.text(start + width / 2, yi, text, ha="center", va="center", fontsize=8)
        left += widths
    for yi, row in enumerate(funnel):
        ax.annotate(f"{row['entered']:,} in → {row['rows']:,} rows → {row['kept']:,} kept", (row["rows"], yi),
                    xytext=(5, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_yticks(y, labels=[_short(row["label"]) for row in funnel])
    ax.invert_yaxis()
    ax.set_xlim(0, xmax * 1.45)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("rows in the stage's manifest")
    ax.set_title("Funnel: each stage's rows by outcome and reason")
    fig.legend(loc="outside lower center", ncol=min(3, len(segments)), fontsize=8, frameon=False)
    return fig


def plot_histogram(hist: dict[str, Any], title: str, xlabel: str, cuts: list[dict[str, Any]]) -> Figure:
    """Stacked kept / dropped / error bars over shared bins, each configured cut a dashed line."""
    fig = _figure(7.5, 4)
    ax = fig.subplots()
    edges = np.asarray(hist["edges"])
    bottom = np.zeros(len(edges) - 1)
    for name, counts in hist["counts"].items():
        ax.bar(edges[:-1], counts, width=np.diff(edges), align="edge", bottom=bottom, color=_SERIES_COLORS[name],
               edgecolor="white", linewidth=0.5, label=f"{name} ({sum(counts):,})")
        bottom += counts
    upright = len(bottom) > 15  # narrow bins: vertical counts, so neighbours do not overlap
    for left, width, total in zip(edges[:-1], np.diff(edges), bottom):
        if total:
            ax.text(left + width / 2, total, f" {int(total):,}", ha="center", va="bottom", fontsize=7,
                    rotation=90 if upright else 0)
    for cut, style in zip(cuts, ("--", ":", "-.", "--")):
        ax.axvline(cut["value"], color="black", linestyle=style, linewidth=1.5,
                   label=f"{cut['setting'].rsplit('.', 1)[-1]} = {cut['value']:g}")
    span = [edges[0], edges[-1], *(c["value"] for c in cuts)]
    pad = 0.03 * (max(span) - min(span) or 1.0)
    ax.set_xlim(min(span) - pad, max(span) + pad)
    ax.set_ylim(0, max(bottom.max(), 1) * (1.3 if upright else 1.15))
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel("samples")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return fig


def _cut(names: list[str], counts: dict[str, int], limit: int) -> dict[str, int]:
    """`counts` over the first `limit` names, the rest summed into one bar (the same cut for every series)."""
    if len(names) <= limit:
        return {n: counts.get(n, 0) for n in names}
    shown, rest = names[: limit - 1], names[limit - 1:]
    return {**{n: counts.get(n, 0) for n in shown}, f"({len(rest)} others)": sum(counts.get(n, 0) for n in rest)}


def plot_categories(categories: dict[str, Any]) -> Figure:
    """Per category: rows before filtering next to rows kept at the end."""
    order = list(dict.fromkeys([*categories["before"], *(categories["after"] or {})]))
    before = _cut(order, categories["before"], _MAX_CATEGORIES)
    after = _cut(order, categories["after"] or {}, _MAX_CATEGORIES)
    names = list(before)
    fig = _figure(9, _bars_height(len(names)))
    ax = fig.subplots()
    y = np.arange(len(names))
    for offset, label, counts, color in ((-0.2, f"before ({categories['before_stage']}, all rows)", before, "#90a4ae"),
                                         (0.2, f"after ({categories['after_stage']}, kept)", after, _SERIES_COLORS["kept"])):
        values = list(counts.values())
        bars = ax.barh(y + offset, values, height=0.4, color=color, label=label)
        _label_bars(ax, bars, [f"{v:,}" for v in values])
    ax.set_yticks(y, labels=[_short(n) for n in names])
    ax.set_ylim(len(names) - 0.4, -0.6)  # first category on top, no empty band around the pairs
    ax.set_xlim(0, max([*before.values(), *after.values(), 1]) * 1.15)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("samples")
    ax.set_title("Categories before and after filtering")
    fig.legend(loc="outside lower center", ncol=2, fontsize=8, frameon=False)
    return fig


def plot_wall_time(timing: list[dict[str, Any]]) -> Figure:
    rows = [t for t in timing if t["wall_s"] is not None]
    fig = _figure(9, _bars_height(len(rows)))
    ax = fig.subplots()
    bars = ax.barh(np.arange(len(rows)), [t["wall_s"] for t in rows], color="#5c6bc0")
    _label_bars(ax, bars, [f"{t['wall_s']:.1f} s" + (f" · {t['samples_per_s']:.2f} samples/s" if t["samples_per_s"] else "")
                           for t in rows])
    ax.set_yticks(np.arange(len(rows)), labels=[_short(t["stage"]) for t in rows])
    ax.invert_yaxis()
    ax.set_xlim(0, max([t["wall_s"] for t in rows] + [1e-9]) * 1.4)
    ax.set_xlabel("wall time (s)")
    ax.set_title("Wall time per stage")
    return fig


def plot_api_cost(usage: list[dict[str, Any]]) -> Figure:
    """Tokens (prompt + completion) and estimated USD per stage that called an API."""
    fig = _figure(11, _bars_height(len(usage)))
    tokens_ax, usd_ax = fig.subplots(1, 2, sharey=True)
    y = np.arange(len(usage))
    prompt = [u["prompt_tokens"] for u in usage]
    tokens_ax.barh(y, prompt, color="#42a5f5")
    bars = tokens_ax.barh(y, [u["completion_tokens"] for u in usage], left=prompt, color="#1565c0")
    _label_bars(tokens_ax, bars, [f"{u['prompt_tokens']:,} + {u['completion_tokens']:,}" for u in usage])
    tokens_ax.set_xlim(0, max([u["prompt_tokens"] + u["completion_tokens"] for u in usage] + [1]) * 1.5)
    tokens_ax.set_xlabel("tokens: prompt (light) + completion (dark)")
    tokens_ax.set_title("API tokens per stage")
    bars = usd_ax.barh(y, [u["usd"] for u in usage], color="#ef6c00")
    _label_bars(usd_ax, bars, [_usd(u["usd"]) for u in usage])
    usd_ax.set_xlim(0, max([u["usd"] for u in usage] + [1e-9]) * 1.4)
    usd_ax.set_xlabel("estimated cost (USD)")
    usd_ax.set_title("API cost per stage")
    tokens_ax.set_yticks(y, labels=[_short(u["stage"]) for u in usage])
    tokens_ax.invert_yaxis()
    return fig


def _score_files(scores: list[dict[str, Any]]) -> list[str]:
    """`score_<name>.png`, with characters a file name should not hold replaced (names come from manifests)."""
    files: list[str] = []
    for score in scores:
        stem = "score_" + re.sub(r"[^A-Za-z0-9_.-]", "_", score["name"])
        name, n = f"{stem}.png", 1
        while name in files:
            n += 1
            name = f"{stem}_{n}.png"
        files.append(name)
    return files


def render_plots(data: dict[str, Any], score_files: list[str]) -> dict[str, bytes]:
    """File name -> PNG, for every plot the data has something to show in."""
    with matplotlib.rc_context(_PLOT_STYLE):
        plots = {"funnel.png": _png(plot_funnel(data["funnel"]))}
        for score, name in zip(data["scores"], score_files):
            plots[name] = _png(plot_histogram(score, f"{score['name']} at {score['stage']} (n={score['n']:,})",
                                              score["name"], score["thresholds"]))
        if data["categories"]:
            plots["categories.png"] = _png(plot_categories(data["categories"]))
        if data["durations"]:
            plots["durations.png"] = _png(plot_histogram(
                data["durations"], f"Durations: kept at {data['durations']['stage']} vs removed at any stage",
                "duration (s)", []))
        if any(t["wall_s"] is not None for t in data["timing"]):
            plots["wall_time.png"] = _png(plot_wall_time(data["timing"]))
        if data["usage"]:
            plots["api_cost.png"] = _png(plot_api_cost(data["usage"]))
    return plots


# ------------------------------------------------------------------------------------- page

def _environment() -> jinja2.Environment:
    """Autoescape on: reasons, categories, instructions and file names in manifests are untrusted."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(count=lambda n: "" if n is None else f"{n:,}", usd=_usd,
                       num=lambda x, fmt=".2f": "" if x is None else format(x, fmt))
    return env


def render_html(data: dict[str, Any], plots: dict[str, bytes], score_files: list[str]) -> str:
    return _environment().get_template("report.html").render(
        data=data, plots=plots, scores=list(zip(data["scores"], score_files)),
        generated=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"))


def _out_dir(run_dir: str, out_dir: str | None) -> Path:
    if out_dir is not None:
        return Path(out_dir)
    if "://" in run_dir:
        raise ValueError(f"{run_dir} is not a local directory: pass a local out_dir for its report")
    return Path(run_dir) / "report"


def write_report(run_dir: str, out_dir: str | None = None) -> Path:
    """Write index.html and its PNGs into `out_dir` (default `<run_dir>/report/`); return index.html's path.

    Each file is written then renamed, the page last, so a reader never sees a page whose plots are
    missing; a rerun overwrites, and removes plots the run no longer has (e.g. a score that is gone)."""
    catalog = RunCatalog(run_dir)
    out = _out_dir(catalog.run_dir, out_dir)
    data = report_data(catalog)
    score_files = _score_files(data["scores"])
    plots = render_plots(data, score_files)
    page = render_html(data, plots, score_files).encode()
    out.mkdir(parents=True, exist_ok=True)
    for name, png in plots.items():
        storage.write_bytes_atomic(str(out / name), png)
    index = out / "index.html"
    storage.write_bytes_atomic(str(index), page)
    for pattern in _PLOT_FILES:
        for stale in out.glob(pattern):
            if stale.name not in plots:
                stale.unlink()
    return index
