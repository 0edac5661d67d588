"""Bytes measured in a finished run (``metrics.jsonl``) next to the analytic figure, per tier.

Each train round's row records per node its tier, exit, rank and the bytes of the train
message down and of the reply up, as ``ArrayRecord.count_bytes()`` measured them. The analytic
figure for the same branch, rank, rule and codec is split into payload and framing; the
difference measured - payload should be exactly the framing (``unexplained`` = 0). Round 0
(evaluation before training) is not a training round and is left out.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from famflow.familial.codecs import CODECS
from famflow.familial.errors import FamflowError
from famflow.familial.presets import resolve_model
from famflow.server.checkpoints import checkpoint_states
from famflow.simulations.comm_schemes import TOTAL
from famflow.simulations.comm_wire import FamilyShapes, Wire, message_bytes
from famflow.strategies.rules import RULES

METRICS_FILE = "metrics.jsonl"  # server.records.METRICS_FILE
DIRECTIONS = ("up", "down")


@dataclass(frozen=True)
class RunSettings:
    """What decides a message's size; read from the run's checkpoint state or given."""

    model: str
    rule: str
    codec: str
    exit_adapters: bool
    source: str
    own_exit: bool = False


@dataclass
class MeasuredRow:
    """One tier's (or the ``total``'s) messages in one direction, measured against analytic."""

    tier: str
    exit: int | None
    rank: int | None
    direction: str
    clients: int
    messages: int
    rounds: int
    measured_per_client: float | None
    payload_per_client: int | None
    framing_per_client: int | None
    measured_per_round: float
    payload_per_round: float
    framing_per_round: float
    difference_per_round: float  # measured - payload
    difference_percent: float  # of the payload
    unexplained_per_round: float  # measured - payload - framing


def read_run(run_dir: Path) -> list[dict[str, Any]]:
    """Every row of the run's ``metrics.jsonl``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FamflowError(f"No run directory at {run_dir}: pass the out-dir of a finished run.")
    path = run_dir / METRICS_FILE
    if not path.is_file():
        raise FamflowError(f"{run_dir} has no {METRICS_FILE}: pass the out-dir of a finished run.")
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except json.JSONDecodeError as error:
        raise FamflowError(f"{path} is not a famflow metrics file ({error}): rerun.") from None
    if not all(_is_round_row(row) for row in rows):
        raise FamflowError(
            f"{path} has rows without round and per-node tier/exit/rank/bytes: pass the "
            "out-dir of a famflow run."
        )
    return rows


def _is_round_row(row: Any) -> bool:
    node_fields = {"tier", "exit", "rank", "bytes_down", "bytes_up"}
    return (
        isinstance(row, dict)
        and isinstance(row.get("round"), int)
        and isinstance(row.get("nodes"), dict)
        and all(isinstance(n, dict) and node_fields <= set(n) for n in row["nodes"].values())
    )


def training_rounds(rows: list[dict[str, Any]], run_dir: Path) -> list[dict[str, Any]]:
    """The rows of training rounds (round >= 1)."""
    train = [row for row in rows if row["round"] >= 1 and row["nodes"]]
    if not train:
        raise FamflowError(f"{run_dir} has no training round yet: let the run finish a round.")
    return train


def setup_bytes(rows: list[dict[str, Any]]) -> int:
    """Bytes moved before round 1 (round 0: e.g. calibration), not compared."""
    return sum(
        int(r.get("bytes_up", 0)) + int(r.get("bytes_down", 0)) for r in rows if not r["round"]
    )


def _checkpoint_state(run_dir: Path) -> tuple[str, dict[str, Any]] | None:
    states = checkpoint_states(run_dir / "checkpoints")
    if not states:
        return None
    try:
        return states[-1].name, json.loads(states[-1].read_text())["config"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise FamflowError(f"{states[-1]} is corrupt ({error}): pass the settings.") from None


def run_settings(
    run_dir: Path,
    model: str | None = None,
    rule: str | None = None,
    codec: str | None = None,
    exit_adapters: bool | None = None,
    own_exit: bool | None = None,
) -> RunSettings:
    """The run's settings from its latest checkpoint state; given values take precedence."""
    found = _checkpoint_state(Path(run_dir))
    config = found[1] if found else {}
    settings = {
        "model": model or config.get("model"),
        "rule": rule or config.get("rule"),
        "codec": codec or config.get("codec"),
        "exit_adapters": config.get("train_exit_adapters", True)
        if exit_adapters is None
        else exit_adapters,
    }
    branch_exits = own_exit if own_exit is not None else config.get("branch_exits") == "own"
    missing = [name for name, value in settings.items() if value is None]
    if missing:
        raise FamflowError(
            f"{run_dir} has no checkpoints/round-N.json to read {', '.join(missing)} from: "
            "pass MODEL, --rule and --codec."
        )
    if settings["rule"] not in RULES or settings["codec"] not in CODECS:
        raise FamflowError(
            f"Rule {settings['rule']!r} / codec {settings['codec']!r} unknown: use a rule of "
            f"{', '.join(RULES)} and a codec of {', '.join(CODECS)}."
        )
    source = f"checkpoints/{found[0]}" if found else "command line"
    return RunSettings(**settings, source=source, own_exit=branch_exits)


def analytic_message(
    shapes: FamilyShapes, settings: RunSettings, exit_depth: int, rank: int
) -> Wire:
    exchanged = shapes.exchanged(
        exit_depth,
        rank,
        lora_a=RULES[settings.rule].exchanges_a,
        exit_adapters=settings.exit_adapters,
        own_exit=settings.own_exit,
    )
    return message_bytes(exchanged, settings.codec)


def measured_rows(rows: list[dict[str, Any]], settings: RunSettings) -> list[MeasuredRow]:
    """Per tier and direction, and in total: measured bytes against payload and framing.

    Messages of 0 bytes (a node not sampled, a reply dropped) are left out.
    """
    shapes = FamilyShapes(resolve_model(settings.model))
    # (tier, exit, rank, direction) -> [node ids, messages, measured, payload, framing]
    groups: dict[tuple[str, int | None, int | None, str], list[Any]] = {}
    for row in rows:
        for node_id, node in row["nodes"].items():
            wire = analytic_message(shapes, settings, int(node["exit"]), int(node["rank"]))
            for direction in DIRECTIONS:
                measured = int(node[f"bytes_{direction}"])
                if measured == 0:
                    continue
                tier = (str(node["tier"]), int(node["exit"]), int(node["rank"]), direction)
                for key in (tier, (TOTAL, None, None, direction)):
                    group = groups.setdefault(key, [set(), 0, 0, 0, 0])
                    group[0].add(node_id)
                    group[1] += 1
                    group[2] += measured
                    group[3] += wire.payload
                    group[4] += wire.framing
    order = sorted(groups, key=lambda k: (k[3] == "down", k[0] == TOTAL, k[1] or 0, k[0]))
    return [_row(*key, len(groups[key][0]), *groups[key][1:], len(rows)) for key in order]


def _row(
    tier: str,
    exit_depth: int | None,
    rank: int | None,
    direction: str,
    clients: int,
    messages: int,
    measured: float,
    payload: float,
    framing: float,
    rounds: int,
) -> MeasuredRow:
    """Totals over the run -> per client (one message) and per round."""
    per_message = tier != TOTAL and messages > 0
    return MeasuredRow(
        tier=tier,
        exit=exit_depth,
        rank=rank,
        direction=direction,
        clients=clients,
        messages=messages,
        rounds=rounds,
        measured_per_client=measured / messages if per_message else None,
        payload_per_client=round(payload / messages) if per_message else None,
        framing_per_client=round(framing / messages) if per_message else None,
        measured_per_round=measured / rounds,
        payload_per_round=payload / rounds,
        framing_per_round=framing / rounds,
        difference_per_round=(measured - payload) / rounds,
        difference_percent=100 * (measured - payload) / payload if payload else 0.0,
        unexplained_per_round=(measured - payload - framing) / rounds,
    )
