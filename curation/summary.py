"""Human-readable tables: the end-of-stage summary and `curate status`."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.table import Table

# Not a terminal (CI logs, pipes): rich would wrap at 80 columns and fold every reason.
console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def _reasons(counts: dict[str, int]) -> str:
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
            f"{sum(counts.get('dropped', {}).values())}  {_reasons(counts.get('dropped', {}))}",
            f"{sum(counts.get('error', {}).values())}  {_reasons(counts.get('error', {}))}",
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
                      f"{sum(row['dropped'].values())}  {_reasons(row['dropped'])}",
                      f"{sum(row['error'].values())}  {_reasons(row['error'])}")
    return table


def print_stage_summary(result: Any) -> None:
    rate = result.processed / result.wall_s if result.wall_s > 0 and result.processed else None
    extra = {"processed": result.processed, "wall_s": result.wall_s, "samples_per_s": rate}
    note = f"{result.done_fragments} fragment(s) done, {result.skipped_fragments} already complete"
    console.print(outcome_table(f"{result.name} -> {result.stage_dir}  ({note})", [(result.name, result.counts, extra)]))
    listing = result.extra.get("listing")
    if listing:
        skipped = listing.get("skipped") or {}
        console.print(f"  adapter {listing.get('dataset')}: {listing.get('rows_listed')} edits listed from "
                      f"{listing.get('rows_read')} metadata rows; skipped {sum(skipped.values())} {_reasons(skipped)}; "
                      f"by category {_reasons(listing.get('by_category') or {})}")
        if listing.get("unknown_categories"):
            console.print(f"  [yellow]categories no mapping knows (listed as other):[/] {_reasons(listing['unknown_categories'])}")
    vlm = result.extra.get("vlm")
    if vlm:
        usage = vlm["usage"]
        console.print(f"  VLM {vlm['model']}: {usage['requests']} requests, {usage['cache_hits']} cache hits, "
                      f"{usage['prompt_tokens']}+{usage['completion_tokens']} tokens, ${usage['usd']:.4f}"
                      + (f" (budget ${vlm['budget_max_usd']:g})" if vlm.get("budget_max_usd") is not None else ""))
        if vlm.get("budget_exhausted"):
            console.print(f"  [bold red]BUDGET EXHAUSTED:[/] {vlm['budget_exhausted']} sample(s) were not sent "
                          "(status=error, reason budget_exhausted). Raise budget.max_usd and rerun with retry_errors=true.")
    if result.random_weights:
        console.print(f"[bold white on red] RANDOM WEIGHTS [/] stage {result.name} ran tiny randomly initialised "
                      f"model(s) for {', '.join(result.random_weights)} (models=tiny): its outputs are meaningless "
                      "placeholders that only exercise the pipeline. Use the default models profile for real data.")
