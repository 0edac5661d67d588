"""The table printed at the end of a run: per-round perplexity per exit and bytes per tier."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from flwr.app import Message

from famflow.federation.config import FederationConfig
from famflow.strategies.familial_strategy import NodePlan


def tier_counts(messages: Iterable[Message], plans: dict[int, NodePlan]) -> str:
    """``6 nodes (device 2, edge 2, cloud 2)``: the nodes a round's messages go to, per tier."""
    nodes = [message.metadata.dst_node_id for message in messages]
    tiers = Counter(plans[node].tier for node in nodes if node in plans)
    total = sum(tiers.values())
    counts = ", ".join(f"{tier} {count}" for tier, count in tiers.items())
    return f"{total} node{'s' if total != 1 else ''} ({counts})"


def perplexity(row: dict[str, Any], depth: str) -> str:
    return f"{row['exits'].get(depth, {}).get('perplexity', float('nan')):.4g}"


def kilobytes(value: float) -> str:
    return f"{value / 1e3:,.0f}"


def round_line(row: dict[str, Any], rounds: int) -> str:
    """One round in one line, with the final table's numbers: ``round 2/3: ppl@10 186,
    ppl@20 121 | up/down 1,204/3,310 KB | dropped 0 | 63.1 s``."""
    parts = [f"round {row['round']}/{rounds}:"]
    depths = sorted(row["exits"], key=int)
    if depths:
        parts.append(", ".join(f"ppl@{depth} {perplexity(row, depth)}" for depth in depths))
    else:
        parts.append("not evaluated this round")
    if row.get("train_loss"):
        losses = sorted(row["train_loss"].items(), key=lambda item: int(item[0]))
        parts.append("| train loss " + ", ".join(f"@{d} {loss:.3f}" for d, loss in losses))
    parts.append(f"| up/down {kilobytes(row['bytes_up'])}/{kilobytes(row['bytes_down'])} KB")
    parts.append(f"| dropped {len(row.get('dropped', {}))}")
    if row["round"]:
        parts.append(f"| {row['seconds']:.1f} s")
    return " ".join(parts)


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
        cells += [perplexity(row, depth) for depth in exits]
        for tier in tiers:
            nodes = [n for n in row["nodes"].values() if n["tier"] == tier]
            up = sum(n["bytes_up"] for n in nodes)
            down = sum(n["bytes_down"] for n in nodes)
            cells.append(f"{kilobytes(up)}/{kilobytes(down)}")
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
