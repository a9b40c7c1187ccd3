"""Human-readable tables: the end-of-stage summary and `curate status`."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.table import Table

# Not a terminal (CI logs, pipes): rich would wrap at 80 columns and fold every reason.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def format_counts(counts: dict[str, int]) -> str:
    """`a=3, b=1`, or `-` for none."""
    return ", ".join(f"{k}={v}" for k, v in counts.items()) or "-"


def outcome_table(title: str, rows: list[tuple[str, dict[str, Any], dict[str, Any]]]) -> Table:
    """rows: (stage label, counts from count_outcomes, extra fields such as wall_s / samples_per_s)."""
    table = Table(title=title, show_lines=False)
    for column in ("stage", "total", "kept", "dropped (by reason)", "errors (by reason)", "processed", "wall s", "samples/s"):
        table.add_column(column, overflow="fold")
    for label, counts, extra in rows:
        table.add_row(
            label,
            str(counts.get("total", 0)),
            str(counts.get("ok", 0)),
            f"{sum(counts.get('dropped', {}).values())}  {format_counts(counts.get('dropped', {}))}",
            f"{sum(counts.get('error', {}).values())}  {format_counts(counts.get('error', {}))}",
            str(extra.get("processed", "")),
            f"{extra['wall_s']:.1f}" if extra.get("wall_s") is not None else "",
            f"{extra['samples_per_s']:.2f}" if extra.get("samples_per_s") else "",
        )
    return table


def funnel(stages: list[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per stage of a run, in order: how many samples entered (the previous stage's kept rows; all
    listed sources for the first), how many rows it wrote, how many it kept, and what it dropped or
    failed, by reason.
    The equivalent of Kiwi-Edit's 3.7M -> 477K figure, one row per stage."""
    rows = []
    previous_kept: int | None = None
    for label, counts in stages:
        entered = counts.get("total", 0) if previous_kept is None else previous_kept
        kept, written = counts.get("ok", 0), counts.get("total", 0)
        # A stage may fan out (one video -> many clips), so the kept share is of the rows it wrote.
        rows.append({"stage": label, "entered": entered, "rows": written, "kept": kept,
                     "kept_pct": round(100.0 * kept / written, 1) if written else None,
                     "dropped": counts.get("dropped", {}), "error": counts.get("error", {})})
        previous_kept = kept
    return rows


def funnel_table(title: str, rows: list[dict[str, Any]]) -> Table:
    table = Table(title=title, show_lines=False)
    for column in ("stage", "entered", "rows", "kept", "kept % of rows", "dropped (by reason)", "errors (by reason)"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row["stage"], str(row["entered"]), str(row["rows"]), str(row["kept"]),
                      "" if row["kept_pct"] is None else f"{row['kept_pct']:.1f}",
                      f"{sum(row['dropped'].values())}  {format_counts(row['dropped'])}",
                      f"{sum(row['error'].values())}  {format_counts(row['error'])}")
    return table


def print_stage_summary(result: Any) -> None:
    """A finished stage's counts table, its own notes (API spend, listing facts) and the random-weights warning."""
    rate = result.processed / result.wall_s if result.wall_s > 0 and result.processed else None
    extra = {"processed": result.processed, "wall_s": result.wall_s, "samples_per_s": rate}
    note = f"{result.done_fragments} fragment(s) done, {result.skipped_fragments} already complete"
    console.print(outcome_table(f"{result.name} -> {result.stage_dir}  ({note})", [(result.name, result.counts, extra)]))
    for line in result.notes:
        console.print(f"  {line}")
    if result.random_weights:
        console.print(f"[bold white on red] RANDOM WEIGHTS [/] stage {result.name} ran tiny randomly initialised "
                      f"model(s) for {', '.join(result.random_weights)} (models=tiny): its outputs are meaningless "
                      "placeholders that only exercise the pipeline. Use the default models profile for real data.")
