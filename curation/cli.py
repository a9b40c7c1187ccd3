"""`curate`: run stages and pipelines, list stages, and inspect runs."""

from __future__ import annotations

import json
import sys
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import typer
from omegaconf import OmegaConf
from rich.markup import escape

from curation.backends.vllm_server import ServerStartError
from curation.core import layout, media_store, storage
from curation.core.config import ConfigError, compose, group_specs, groups, pipelines, validate
from curation.core.runinfo import count_outcomes, run_spend
from curation.core.stage import registry
from curation.core.summary import console, funnel, funnel_table, outcome_table

app = typer.Typer(
    help="curate: turn raw videos, image pairs and edit triplets into WebDataset training shards.\n\n"
    "Every stage reads and writes Parquet manifests (one row per sample, with lineage, scores and drop "
    "reasons) under a run directory; reruns resume where a run stopped.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},  # inherited by every subcommand
)


def _print_version(value: bool) -> None:
    if value:
        from curation import __version__

        typer.echo(f"curate {__version__}")
        raise typer.Exit


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="print curate's version and exit"),
) -> None:
    """Options of `curate` itself (the app's help text is Typer's help= above)."""


RUN_HELP = """Run one stage or a whole pipeline. Arguments are `key=value` overrides:

\b
  curate run pipeline=sessions input=examples/media output=runs/demo
  curate run stage=scene_split input=runs/demo/01-ingest output=runs/demo scene_split.detector=adaptive
  curate run stage=ingest input='videos/**/*.mp4' output=runs/x cluster.address=auto

\b
Run keys: stage, pipeline, input, output, retry_errors, stream, progress, cluster.address, cluster.num_cpus,
cluster.dashboard (true: a local run also starts Ray's dashboard on 127.0.0.1 and prints its URL;
no effect with cluster.address). Logs: <output>/logs/.
Groups: resources=auto|local|gpu (auto: GPU shares for model stages when the Ray cluster has GPUs),
models=real|tiny, vlm=local|openai|gemini|vllm.
Stage keys: <stage>.<option>, e.g. sample_frames.interval_s=2 (see `curate stages`).
Unknown keys are errors. The resolved config and the git SHA go into each stage's _run.json.
\b
Rerunning the same command skips finished fragments; retry_errors=true redoes only error rows.
A rerun whose stage config changed stops and names the keys: on_change=recompute redoes that stage and
every later one (old outputs move to <output>/_replaced/), on_change=keep keeps the finished parts.
budget.max_usd caps the whole run's paid API spend (all stages and attempts; <output>/_spend.json).
--dry-run shows fragments, API checks and the cost estimate without running anything."""


@app.command(help=RUN_HELP, context_settings={"allow_extra_args": True})
def run(
    overrides: list[str] | None = typer.Argument(None, help="key=value overrides", show_default=False),
    print_config: bool = typer.Option(False, "--print-config", help="print the resolved config and exit"),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="say what the run would do and spend, and exit: per stage the fragments it would run "
        "and skip, whether its API key is set and its endpoint answers, and requests, tokens and cost estimated from "
        "measured or configured use per row. Starts no Ray and writes nothing; exit code 1 when the run would fail"),
) -> None:
    from curation.core import run_logs
    from curation.core.runner import compose_for_cluster, preflight
    from curation.core.runner import run as run_config

    try:
        cfg = compose(overrides or [])
        validate(cfg)  # every value typed and in range, also when only printing
    except (ConfigError, KeyError) as e:
        console.print(f"[red]config error:[/red] {escape(str(e))}", soft_wrap=True, highlight=False)
        raise typer.Exit(2) from None
    if print_config:
        typer.echo(OmegaConf.to_yaml(cfg))
        return
    if dry_run:
        _dry_run(cfg)
        return
    try:
        preflight(cfg)  # input, manifests and optional packages, before Ray starts or output= is made
    except (ValueError, KeyError) as e:
        console.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True, highlight=False)
        raise typer.Exit(2) from None
    try:
        with run_logs.capture(cfg):  # <output>/logs/: the driver's log and Ray's worker output
            run_config(compose_for_cluster(overrides or []))  # resources=auto: gpu when the cluster has GPUs
    except (ValueError, FileNotFoundError, ServerStartError) as e:  # the message names the cause; no traceback
        console.print(f"[red]error:[/red] {e}")
        raise typer.Exit(2) from None


def _dry_run(cfg: Any) -> None:
    from curation.core.dry_run import plan, render

    try:
        result = plan(cfg)
    except (ValueError, KeyError) as e:
        console.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True, highlight=False)
        raise typer.Exit(2) from None
    table, lines = render(result)
    console.print(table)
    for line in lines:
        console.print(escape(line), soft_wrap=True, highlight=False)
    for problem in result.problems:
        console.print(f"[red]would fail:[/red] {escape(problem)}", soft_wrap=True, highlight=False)
    if result.problems:
        raise typer.Exit(1)


@app.command()
def stages(name: str | None = typer.Argument(None, help="show only this stage")) -> None:
    """List stages with their one-line docs and options (defaults from curation/config/stage/*.yaml)."""
    cfg = compose([])  # resolved defaults: some stage keys point at run-level ones (`vlm: ${vlm}`)
    for stage_name, cls in registry().items():
        if name and stage_name != name:
            continue
        defaults = OmegaConf.to_container(cfg[stage_name], resolve=True)
        typer.secho(f"{stage_name}  (v{cls.version})", bold=True)
        typer.echo(f"    {cls.summary()}")
        for field_name, info in cls.model_fields.items():
            value = json.dumps(defaults.get(field_name)) if field_name in defaults else "(required)"
            typer.echo(f"    {stage_name}.{field_name} = {value}")
            if info.description:
                typer.echo(f"        {info.description}")
        typer.echo("")
    typer.secho("pipelines", bold=True)
    for pipe_name, path in pipelines().items():
        stages_list = OmegaConf.load(path).get("stages", [])
        typer.echo(f"    {pipe_name}: {' -> '.join(stages_list)}")
    typer.secho("config groups (select with key=<name>)", bold=True)
    for group in group_specs():
        typer.echo(f"    {group}: {', '.join(groups(group))}  (files in curation/config/{group}/)")


def _stage_dirs(run_dir: str) -> list[str]:
    dirs = layout.stage_dirs(run_dir)
    if not dirs:
        console.print(f"[red]error:[/red] {run_dir} holds no stage outputs (NN-<stage>/ directories)")
        raise typer.Exit(2)
    return dirs


@app.command()
def status(run_dir: str = typer.Argument(..., help="a run directory (the output= of `curate run`)")) -> None:
    """Per-stage counts by status and by drop/error reason, with wall time and throughput."""
    rows = []
    for d in _stage_dirs(run_dir):
        stage_dir = storage.join(run_dir, d)
        counts = count_outcomes(stage_dir)
        run_json = layout.run_json(stage_dir)
        info: dict[str, Any] = storage.read_json(run_json) if storage.exists(run_json) else {}
        label = d if info else f"{d} (incomplete)"
        rows.append((label, counts, {"processed": info.get("processed_total", ""), "wall_s": info.get("wall_s"),
                                     "samples_per_s": info.get("samples_per_s")}))
    console.print(outcome_table(f"run {run_dir}", rows))
    if len(rows) > 1:
        console.print(funnel_table("funnel", funnel([(label, counts) for label, counts, _ in rows])))
    spend = run_spend(run_dir)
    if spend is not None:
        by_stage = ", ".join(f"{stage} ${usd:.4f}" for stage, usd in sorted(spend.get("by_stage", {}).items()))
        console.print(f"paid API calls: spent so far: ${spend['spent_usd']:.4f}" + (f" ({by_stage})" if by_stage else "")
                      + f", as of {spend.get('updated_at', '?')}", highlight=False)


def _printable(row: dict[str, Any]) -> dict[str, Any]:
    """Binary columns (frames, masks) are shown as sizes, long lists are shortened."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, bytes):
            out[key] = f"<{len(value)} bytes>"
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            out[key] = [f"<{len(v)} bytes>" for v in value]
        elif isinstance(value, list) and len(value) > 12:
            out[key] = value[:6] + [f"... {len(value) - 6} more"]
        else:
            out[key] = value
    return out


def _find(run_dir: str, dirs: list[str], sample_id: str) -> tuple[str, dict[str, Any]] | None:
    """The newest stage row for `sample_id` (also looks at the ingest source listing)."""
    for d in reversed(dirs):
        for where in (storage.join(run_dir, d), layout.input_dir(storage.join(run_dir, d))):
            if not layout.manifest_parts(where):
                continue
            table = storage.read_table(where, filter=pc.field("sample_id") == sample_id)
            if table.num_rows:
                row = _with_media_sizes(table.slice(table.num_rows - 1), run_dir)
                return (d if where.endswith(d) else f"{d}/{layout.INPUT_DIR}"), row
    return None


def _with_media_sizes(table: pa.Table, run_dir: str) -> dict[str, Any]:
    """The table's one row with each media reference shown as `<N bytes> <reference>`: the size of
    the file it names (listed, not read), or `<missing>` when there is none."""
    rows = table.to_pylist()
    found = media_store.sizes(media_store.references(rows, table.schema), run_dir)

    def describe(value: bytes | str, _ext: str) -> bytes | str:
        if isinstance(value, bytes):
            return value  # a manifest from before references; `_printable` shows its size
        return f"<{found[value]} bytes> {value}" if value in found else f"<missing> {value}"

    media_store.map_media(rows, table.schema, describe)
    return rows[0]


def _statuses(run_dir: str, dirs: list[str], sample_id: str) -> list[tuple[str, str]]:
    """(stage dir, status) of every stage whose manifest holds `sample_id`, oldest first."""
    out = []
    for d in dirs:
        where = storage.join(run_dir, d)
        if layout.manifest_parts(where):
            table = storage.read_table(where, columns=["status"], filter=pc.field("sample_id") == sample_id)
            out.extend((d, status) for status in table.column("status").to_pylist()[-1:])
    return out


@app.command()
def show(
    run_dir: str = typer.Argument(..., help="a run directory"),
    sample_id: str = typer.Argument(..., help="the sample_id to show"),
) -> None:
    """Show a sample's newest row and its lineage back to the source file."""
    dirs = _stage_dirs(run_dir)
    found = _find(run_dir, dirs, sample_id)
    if found is None:
        console.print(f"[red]error:[/red] sample {sample_id} is in no manifest under {run_dir}")
        raise typer.Exit(1)
    where, row = found
    typer.secho(f"{sample_id} in {where}", bold=True)
    typer.echo(json.dumps(_printable(row), indent=2, default=str))
    typer.secho("lineage", bold=True)
    depth, frontier = 0, row.get("parent_ids") or []
    # Stages that enrich a sample (annotate, ground, ...) keep its id: list each one it went through.
    typer.echo(f"  {row['kind']} {sample_id} [{_history(run_dir, dirs, sample_id)}]"
               + (f" ({row['reason']})" if row.get("reason") else ""))
    while frontier:
        depth += 1
        next_frontier = []
        for parent_id in frontier:
            parent = _find(run_dir, dirs, parent_id)
            if parent is None:
                typer.echo(f"  {'  ' * depth}<- {parent_id} (not in this run)")
                continue
            pwhere, prow = parent
            history = _history(run_dir, dirs, parent_id) if pwhere in dirs else f"{pwhere} {prow['status']}"
            typer.echo(f"  {'  ' * depth}<- {prow['kind']} {parent_id} [{history}]  {prow['source_uri']}")
            next_frontier.extend(prow.get("parent_ids") or [])
        frontier = next_frontier


@app.command()
def report(
    run_dir: str = typer.Argument(..., help="a run directory (the output= of `curate run`)"),
    out: str | None = typer.Option(None, "--out", help="where to write index.html and the PNGs [default: RUN_DIR/report]"),
) -> None:
    """Write a static, shareable report: the funnel by stage and drop reason, score histograms with
    their thresholds, category and duration distributions, API tokens and cost, wall time per stage."""
    from curation.audit.report import write_report

    _stage_dirs(run_dir)
    index = write_report(run_dir, out)
    console.print(f"report: {index}")


@app.command()
def browse(
    run_dir: str = typer.Argument(..., help="a run directory (the output= of `curate run`)"),
    port: int = typer.Option(8765, help="port to listen on"),
    host: str = typer.Option("127.0.0.1", help="address to bind; anything but loopback requires a token"),
    token: str | None = typer.Option(None, help="token for a non-loopback host [default: random, or $CURATE_BROWSE_TOKEN]"),
) -> None:
    """Browse a run in a local, read-only web app: the funnel (click a drop reason to see its samples),
    the sample table with filters and instruction search, each sample's frames with region-of-edit
    masks and boxes, turns, scores and lineage back to the source file, and its shard members as the
    trainer sees them. Queries run on the Parquet manifests in place (DuckDB)."""
    import uvicorn

    from curation.audit.app import build_app
    from curation.audit.security import is_loopback, new_token

    _stage_dirs(run_dir)
    if is_loopback(host):
        token = None
    else:
        token = token or new_token()
        console.print(f"[bold yellow]warning:[/] serving {run_dir} on {host}, reachable from other machines; "
                      "every request needs the token below. The app is read-only, but the manifests are your data.")
    web = build_app(run_dir, token)
    shown = "localhost" if is_loopback(host) else host
    console.print(f"curate browse: http://{shown}:{port}/" + (f"?token={token}" if token else "") + "  (Ctrl-C stops)")
    uvicorn.run(web, host=host, port=port, log_level="warning")


def _train_help() -> str:
    from curation.train.cli import TRAIN_HELP

    return TRAIN_HELP


@app.command(help=_train_help(), context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(overrides: list[str] | None = typer.Argument(None, help="key=value overrides", show_default=False)) -> None:
    from curation.train.cli import main as train_main

    code = train_main(overrides or [])
    if code:
        raise typer.Exit(code)


def _history(run_dir: str, dirs: list[str], sample_id: str) -> str:
    """Every stage a sample went through with its status there, e.g. `02-scene_split ok -> 03-filter_quality dropped`."""
    return " -> ".join(f"{d} {status}" for d, status in _statuses(run_dir, dirs, sample_id))


def main() -> None:  # pragma: no cover - console entry
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
