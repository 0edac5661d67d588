"""``famflow comm`` output: aligned tables on screen, CSV rows, JSON documents."""

from __future__ import annotations

import csv
from collections.abc import Callable, Sequence
from dataclasses import asdict, fields
from itertools import pairwise
from pathlib import Path
from typing import Any

from famflow.familial.errors import FamflowError
from famflow.simulations.comm_run import MeasuredRow, RunSettings
from famflow.simulations.comm_schemes import CommRow, TierNodes

Column = tuple[str, Callable[[Any], str]]


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:,.2f} {unit}"
    return f"{n:,.0f} B"


def exact_bytes(n: float | None) -> str:
    return "-" if n is None else f"{n:,.0f}"


def ratio(value: float) -> str:
    return f"{value:.1f}x" if value < 10 else f"{value:,.0f}x"


def _dash(value: object) -> str:
    return "-" if value is None else str(value)


def table(columns: Sequence[Column], rows: Sequence[Any], group: int = 0, left: int = 0) -> str:
    """The first ``left`` columns left-aligned, the rest right-aligned; the first ``group``
    cells are left blank where they repeat the row above."""
    cells = [[render(row) for _, render in columns] for row in rows]
    for above, line in reversed(list(pairwise(cells))):
        if line[:group] == above[:group]:
            line[:group] = [""] * group
    header = [name for name, _ in columns]
    widths = [max(len(c) for c in column) for column in zip(header, *cells, strict=True)]
    lines = [header, *cells]
    return "\n".join(
        "  ".join(
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(line, widths, strict=True))
        ).rstrip()
        for line in lines
    )


ANALYTIC_COLUMNS: list[Column] = [
    ("scheme", lambda r: r.scheme),
    ("rule", lambda r: r.rule),
    ("codec", lambda r: r.codec),
    ("tier", lambda r: r.tier),
    ("exit", lambda r: _dash(r.exit)),
    ("rank", lambda r: _dash(r.rank)),
    ("clients", lambda r: str(r.clients)),
    ("up/client", lambda r: human_bytes(r.up_per_client)),
    ("down/client", lambda r: human_bytes(r.down_per_client)),
    ("+framing", lambda r: human_bytes(r.framing_per_client)),
    ("up/round", lambda r: human_bytes(r.up_per_round)),
    ("down/round", lambda r: human_bytes(r.down_per_round)),
    ("x smaller", lambda r: ratio(r.full_gradient_ratio)),
]

MEASURED_COLUMNS: list[Column] = [
    ("dir", lambda r: r.direction),
    ("tier", lambda r: r.tier),
    ("exit", lambda r: _dash(r.exit)),
    ("rank", lambda r: _dash(r.rank)),
    ("clients", lambda r: str(r.clients)),
    ("msgs", lambda r: str(r.messages)),
    ("measured/client", lambda r: exact_bytes(r.measured_per_client)),
    ("payload/client", lambda r: exact_bytes(r.payload_per_client)),
    ("framing/client", lambda r: exact_bytes(r.framing_per_client)),
    ("measured/round", lambda r: exact_bytes(r.measured_per_round)),
    ("payload/round", lambda r: exact_bytes(r.payload_per_round)),
    ("difference", lambda r: exact_bytes(r.difference_per_round)),
    ("diff %", lambda r: f"{r.difference_percent:.3f}"),
    ("unexplained", lambda r: exact_bytes(r.unexplained_per_round)),
]


def analytic_text(header: dict[str, Any], nodes: list[TierNodes], rows: list[CommRow]) -> str:
    mix = "; ".join(
        f"{n.tier} x{n.clients}: exit {n.label} ({n.weights}), rank {n.rank}" for n in nodes
    )
    adapters = "exchanged" if header["exit_adapters"] else "not exchanged"
    lines = [
        f"{header['model']} ({header['dtype']}): dense model {header['dense_parameters']:,} "
        f"parameters, full-gradient FedAvg {human_bytes(header['full_gradient_bytes'])} "
        "per client per round",
        f"tiers: {mix}",
        f"famflow exit adapters: {adapters}; nodes train the exits their branch "
        f"{'holds' if header['branch_exits'] == 'held' else 'ends at (own path only)'}; "
        "bytes per round, payload as encoded by the codec "
        "(+framing: Flower's .npy headers and keys)",
        "x smaller = full-gradient FedAvg uplink / this uplink (tiers: per client; total: round)",
        "",
        table(ANALYTIC_COLUMNS, rows, group=3, left=4),
    ]
    return "\n".join(lines)


def measured_text(run_dir: Path, settings: RunSettings, rows: list[MeasuredRow]) -> str:
    adapters = "exchanged" if settings.exit_adapters else "not exchanged"
    rounds = rows[0].rounds if rows else 0
    lines = [
        f"{run_dir}: {settings.model}, rule {settings.rule}, codec {settings.codec}, exit "
        f"adapters {adapters}, branch exits {'own' if settings.own_exit else 'held'} "
        f"(settings from {settings.source}); {rounds} training round(s)",
        "measured: ArrayRecord.count_bytes() of the train messages; payload: the encoded arrays "
        "and framing: .npy headers + keys (both analytic);",
        "difference = measured - payload (per round); unexplained = difference - framing",
        "",
        table(MEASURED_COLUMNS, rows, group=1, left=2),
    ]
    return "\n".join(lines)


def write_csv(path: Path, rows: Sequence[CommRow] | Sequence[MeasuredRow]) -> None:
    names = [f.name for f in fields(rows[0])] if rows else []
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=names)
            writer.writeheader()
            for row in rows:
                writer.writerow(asdict(row))
    except OSError as error:
        raise FamflowError(f"Cannot write {path} ({error.strerror}): pick another path.") from None


def document(header: dict[str, Any], rows: Sequence[CommRow] | Sequence[MeasuredRow]) -> dict:
    return {**header, "rows": [asdict(row) for row in rows]}
