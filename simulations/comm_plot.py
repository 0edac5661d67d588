"""PNG charts for ``famflow comm``: bytes per client per scheme (log scale), cumulative bytes of
a run per tier (measured against analytic)."""

from __future__ import annotations

from itertools import accumulate
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from famflow.familial.presets import resolve_model
from famflow.server.run_plots import save_png
from famflow.simulations.comm_run import RunSettings, analytic_message
from famflow.simulations.comm_schemes import TOTAL, CommRow
from famflow.simulations.comm_wire import FamilyShapes


def plot_schemes(rows: list[CommRow], title: str, path: Path) -> None:
    """Horizontal bars: per scheme, each tier's uplink per client per round (log scale)."""
    tiers = list(dict.fromkeys(r.tier for r in rows if r.tier != TOTAL))
    schemes = list(dict.fromkeys((r.scheme, r.rule, r.codec) for r in rows))
    by_key = {(r.scheme, r.rule, r.codec, r.tier): r.up_per_client for r in rows}
    height = 0.8 / len(tiers)
    figure = Figure(figsize=(9, 0.9 + 0.32 * len(schemes) * max(1, len(tiers) / 2)))
    axes = figure.subplots()
    for i, tier in enumerate(tiers):
        positions = [s + (i - (len(tiers) - 1) / 2) * height for s in range(len(schemes))]
        values = [by_key.get((*scheme, tier)) or 0 for scheme in schemes]
        axes.barh(positions, values, height=height, label=tier)
    labels = [" ".join(p for p in scheme if p != "-") for scheme in schemes]
    axes.set_yticks(range(len(schemes)), labels, fontsize=8)
    axes.invert_yaxis()
    axes.set_xscale("log")
    axes.set_xlabel("bytes up per client per round (log scale; the same comes down)")
    axes.set_title(title, fontsize=10)
    axes.grid(axis="x", which="major", alpha=0.3)
    axes.legend(title="tier", fontsize=8)
    save_png(figure, path)


def plot_cumulative(rows: list[dict[str, Any]], settings: RunSettings, path: Path) -> None:
    """Cumulative bytes over the training rounds per tier: measured (solid) vs payload (dashed)."""
    shapes = FamilyShapes(resolve_model(settings.model))
    tiers = sorted({(n["exit"], n["tier"]) for row in rows for n in row["nodes"].values()})
    rounds = [int(row["round"]) for row in rows]
    figure = Figure(figsize=(10, 4))
    panels = figure.subplots(1, 2, sharey=True)
    for panel, direction in zip(panels, ("up", "down"), strict=True):
        for tier in [*(name for _, name in tiers), TOTAL]:
            measured, analytic = [], []
            for row in rows:
                nodes = [n for n in row["nodes"].values() if tier in (TOTAL, n["tier"])]
                sent = [n for n in nodes if n[f"bytes_{direction}"] > 0]
                measured.append(sum(n[f"bytes_{direction}"] for n in sent) / 1e6)
                analytic.append(
                    sum(
                        analytic_message(shapes, settings, n["exit"], n["rank"]).payload
                        for n in sent
                    )
                    / 1e6
                )
            color = "black" if tier == TOTAL else None
            (line,) = panel.plot(
                rounds, list(accumulate(measured)), marker="o", label=tier, color=color
            )
            panel.plot(rounds, list(accumulate(analytic)), linestyle="--", color=line.get_color())
        panel.set_title(f"{direction}link (dashed: analytic payload)", fontsize=10)
        panel.set_xlabel("round")
        panel.set_xticks(rounds)
        panel.grid(alpha=0.3)
    panels[0].set_ylabel("cumulative MB")
    panels[0].legend(title="tier", fontsize=8)
    figure.suptitle(f"{settings.model}: rule {settings.rule}, codec {settings.codec}", fontsize=10)
    save_png(figure, path)
