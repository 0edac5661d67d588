"""``famflow report RUN_DIR``: PNG plots of a run's metrics.jsonl and a markdown summary.

- ``perplexity.png``: held-out perplexity per exit over the evaluated rounds (log scale);
- ``bytes.png``: cumulative bytes up and down per tier;
- ``time.png``: each round's seconds split into client training, ClientApp process start and
  branch load, and the rest (server, evaluation, transfers);
- ``report.md``: the run, its final figures and the per-round table, linking the plots.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from itertools import accumulate
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from famflow.familial.errors import FamflowError
from famflow.federation.config import FederationConfig
from famflow.server.checkpoints import checkpoint_states
from famflow.server.records import METRICS_FILE, read_rows
from famflow.server.report import format_report

PLOTS = ("perplexity.png", "bytes.png", "time.png")
SUMMARY = "report.md"


def save_png(figure: Figure, path: Path) -> None:
    """Write a PNG (no pyplot: no GUI backend, no global figure state)."""
    figure.tight_layout()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, format="png", dpi=110)
    except OSError as error:
        raise FamflowError(f"Cannot write {path} ({error.strerror}): pick another path.") from None


@dataclass(frozen=True)
class TimeSplit:
    """One round's seconds: wall, and the nodes' summed training and start + load."""

    training: float
    start_and_load: float
    rest: float


def time_split(row: dict[str, Any]) -> TimeSplit:
    training = float(row.get("train_seconds_sum", 0.0))
    start_and_load = float(row.get("startup_seconds_sum", 0.0) + row.get("load_seconds_sum", 0.0))
    return TimeSplit(training, start_and_load, max(0.0, row["seconds"] - training - start_and_load))


def plot_perplexity(rows: list[dict[str, Any]], path: Path) -> None:
    figure = Figure(figsize=(7, 4))
    axes = figure.subplots()
    depths = sorted({depth for row in rows for depth in row["exits"]}, key=int)
    for depth in depths:
        points = [
            (r["round"], r["exits"][depth]["perplexity"]) for r in rows if depth in r["exits"]
        ]
        axes.plot(*zip(*points, strict=True), marker="o", label=f"exit {depth}")
    axes.set(xlabel="round (0: before training)", ylabel="held-out perplexity", yscale="log")
    axes.set_xticks(sorted({row["round"] for row in rows}))
    axes.set_title("Held-out perplexity per exit")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    save_png(figure, path)


def tier_bytes(rows: list[dict[str, Any]], tier: str, direction: str) -> list[float]:
    per_round = [
        sum(node[direction] for node in row["nodes"].values() if node["tier"] == tier)
        for row in rows
    ]
    return [total / 1e6 for total in accumulate(per_round)]


def plot_bytes(rows: list[dict[str, Any]], path: Path) -> None:
    figure = Figure(figsize=(7, 4))
    axes = figure.subplots()
    rounds = [row["round"] for row in rows]
    tiers = sorted({node["tier"] for row in rows for node in row["nodes"].values()})
    for tier in tiers:
        (line,) = axes.plot(
            rounds, tier_bytes(rows, tier, "bytes_up"), marker="o", label=f"{tier} up"
        )
        down = tier_bytes(rows, tier, "bytes_down")
        axes.plot(rounds, down, linestyle="--", color=line.get_color(), label=f"{tier} down")
    axes.set(xlabel="round", ylabel="cumulative MB (all of the tier's nodes)", xticks=rounds)
    axes.set_title("Bytes on the wire per tier (ArrayRecords sent)")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small", ncol=2)
    save_png(figure, path)


def plot_time(rows: list[dict[str, Any]], path: Path) -> None:
    trained = [row for row in rows if row["round"] > 0]
    rounds = [row["round"] for row in trained]
    splits = [time_split(row) for row in trained]
    figure = Figure(figsize=(9, 4))
    axes = figure.subplots()
    bottom = [0.0] * len(rounds)
    parts = {
        "training (summed over nodes)": [s.training for s in splits],
        "process start + branch load (summed)": [s.start_and_load for s in splits],
        "server, evaluation, transfers": [s.rest for s in splits],
    }
    for label, values in parts.items():
        axes.bar(rounds, values, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    wall = [row["seconds"] for row in trained]
    axes.plot(rounds, wall, "ko", label="round wall time")
    axes.set(xlabel="round", ylabel="seconds", xticks=rounds)
    axes.set_title("Where each round's time went")
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    save_png(figure, path)


def run_config_of(run_dir: Path) -> FederationConfig | None:
    """The run config its latest checkpoint recorded (None without one)."""
    states = checkpoint_states(run_dir / "checkpoints")
    if not states:
        return None
    try:
        saved = json.loads(states[-1].read_text()).get("config", {})
        known = {f.name for f in fields(FederationConfig)}
        return FederationConfig(**{k: v for k, v in saved.items() if k in known})
    except (json.JSONDecodeError, TypeError, FamflowError):
        return None


def summary(rows: list[dict[str, Any]], config: FederationConfig | None) -> str:
    evaluated = [row for row in rows if row["exits"]]
    first, last = evaluated[0], evaluated[-1]
    lines = [f"# famflow run {rows[0].get('run_id', '(no run id)')}", ""]
    if config is not None:
        lines.append(
            f"{config.model}, rule {config.rule}, codec {config.codec}, tier mix "
            f"{config.tier_mix}, {config.num_server_rounds} rounds x {config.local_steps} steps."
        )
        lines.append("")
    lines.append(f"| exit | perplexity round {first['round']} | round {last['round']} |")
    lines.append("|---|---|---|")
    for depth in sorted(last["exits"], key=int):
        before = first["exits"].get(depth, {}).get("perplexity", float("nan"))
        lines.append(f"| {depth} | {before:.4g} | {last['exits'][depth]['perplexity']:.4g} |")
    up = sum(row["bytes_up"] for row in rows) / 1e6
    down = sum(row["bytes_down"] for row in rows) / 1e6
    dropped = sum(len(row.get("dropped", {})) for row in rows)
    seconds = sum(row["seconds"] for row in rows)
    lines += [
        "",
        f"Bytes: {up:.2f} MB up, {down:.2f} MB down. Replies dropped: {dropped}. "
        f"Training rounds took {seconds:.0f} s.",
        "",
    ]
    lines += [f"![{name}]({name})" for name in PLOTS]
    if config is not None:
        lines += ["", "```", format_report(rows, config), "```"]
    return "\n".join(lines) + "\n"


def write_report(run_dir: Path, out: Path | None = None) -> list[Path]:
    """Write the plots and ``report.md`` into ``out`` (default ``RUN_DIR/report``)."""
    try:
        rows = read_rows(run_dir)
    except (json.JSONDecodeError, KeyError) as error:
        raise FamflowError(
            f"{run_dir / METRICS_FILE} is corrupt ({error}): report on an intact run."
        ) from None
    if not rows:
        raise FamflowError(
            f"{run_dir} holds no {METRICS_FILE}: pass a run's out-dir (runs/federation)."
        )
    if not any(row["exits"] for row in rows):
        raise FamflowError(f"{run_dir} has no evaluated round yet: report after round 0.")
    out = out or run_dir / "report"
    plot_perplexity(rows, out / PLOTS[0])
    plot_bytes(rows, out / PLOTS[1])
    plot_time(rows, out / PLOTS[2])
    (out / SUMMARY).write_text(summary(rows, run_config_of(run_dir)))
    return [out / name for name in (*PLOTS, SUMMARY)]
