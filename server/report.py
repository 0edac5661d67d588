"""The table printed at the end of a run: per-round perplexity per exit and bytes per tier."""

from __future__ import annotations

from typing import Any

from famflow.federation.config import FederationConfig


def format_report(rows: list[dict[str, Any]], config: FederationConfig) -> str:
    exits = sorted({depth for row in rows for depth in row["exits"]}, key=int)
    tiers = sorted({node["tier"] for row in rows for node in row["nodes"].values()})
    header = ["round"] + [f"ppl@{d}" for d in exits]
    header += [f"{tier} up/down KB" for tier in tiers]
    header += ["seconds", "in training", "process start + load s"]
    lines = [
        f"famflow: {config.model}, rule {config.rule}, codec {config.codec}, "
        f"{config.num_server_rounds} rounds x {config.local_steps} local steps"
        + (f" ({config.tier_local_steps})" if config.tier_local_steps else ""),
        " | ".join(header),
    ]
    for row in rows:
        cells = [str(row["round"])]
        cells += [f"{row['exits'].get(d, {}).get('perplexity', float('nan')):.4g}" for d in exits]
        for tier in tiers:
            nodes = [n for n in row["nodes"].values() if n["tier"] == tier]
            up = sum(n["bytes_up"] for n in nodes) / 1e3
            down = sum(n["bytes_down"] for n in nodes) / 1e3
            cells.append(f"{up:,.0f}/{down:,.0f}")
        cells.append(f"{row['seconds']:.1f}")
        # Clients of a simulation on a small machine run one after another: the share of the
        # round spent inside client training, the rest being evaluation, transfers and server.
        busy = row.get("train_seconds_sum", 0.0) / row["seconds"] if row["seconds"] else 0.0
        cells.append(f"{busy:.0%}" if row["round"] else "-")
        # Summed over the nodes: in deployment every message starts a ClientApp process.
        overhead = row.get("startup_seconds_sum", 0.0) + row.get("load_seconds_sum", 0.0)
        cells.append(f"{overhead:.1f}" if row["round"] else "-")
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def print_report(rows: list[dict[str, Any]], config: FederationConfig) -> None:
    print(format_report(rows, config))
