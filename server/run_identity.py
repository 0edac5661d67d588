"""Which run a run directory, a checkpoint and a metrics row belong to.

A run has an id, drawn when it starts fresh and kept by every resume, and an identity: the
fields that make its checkpoints mean something (model, exits, rule, codec, tier plan, global
rank). The fingerprint is a short hash of that identity. A resume whose identity differs from
its checkpoint's is refused, naming what differs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from famflow.familial.errors import FamflowError
from famflow.familial.presets import resolve_model
from famflow.federation.config import FederationConfig
from famflow.server.records import METRICS_FILE
from famflow.strategies.familial_strategy import NodePlan

logger = logging.getLogger("famflow.server")

# What a used run directory holds; a fresh run claims a directory holding none of them.
RUN_FILES = (METRICS_FILE, "checkpoints", "tensorboard", "export")


@dataclass(frozen=True)
class RunIdentity:
    run_id: str
    fields: dict[str, Any]

    @property
    def fingerprint(self) -> str:
        canonical = json.dumps(self.fields, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    def stamp(self) -> dict[str, Any]:
        """What every checkpoint and metrics row carries."""
        return {"run_id": self.run_id, "fingerprint": self.fingerprint}

    def state(self) -> dict[str, Any]:
        """What a checkpoint's state file carries, read back by ``from_state``."""
        return {**self.stamp(), "identity": self.fields}

    @classmethod
    def of_checkpoint(cls, state: dict[str, Any], checkpoint: str) -> RunIdentity:
        """The identity a checkpoint's state recorded."""
        if "run_id" not in state or "identity" not in state:
            raise FamflowError(
                f"The checkpoint {checkpoint} records no run identity (an older famflow wrote "
                "it): start a fresh run instead of resuming it."
            )
        return cls(str(state["run_id"]), dict(state["identity"]))


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def identity_fields(
    config: FederationConfig, plans: dict[int, NodePlan], rank: int
) -> dict[str, Any]:
    """The fields a checkpoint is only valid under. The tier plan is each tier's (exit, rank):
    which node holds which tier may change between a run and its resume."""
    tiers = {plan.tier: {"exit": plan.exit, "rank": plan.rank} for plan in plans.values()}
    return {
        "model": config.model,
        "exits": list(resolve_model(config.model).family.exits),
        "rule": config.rule,
        "codec": config.codec,
        "tier plan": dict(sorted(tiers.items())),
        "global rank": rank,
        "exit adapters": config.train_exit_adapters,
    }


def differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"rule: fedit -> ffa"`` for each field whose value differs."""
    return [
        f"{name}: {saved.get(name)} -> {current.get(name)}"
        for name in sorted(set(saved) | set(current))
        if saved.get(name) != current.get(name)
    ]


def check_resumable(saved: RunIdentity, current: dict[str, Any], checkpoint: str) -> None:
    """Refuse to resume a checkpoint whose run differs from this one, naming what differs."""
    changed = differences(saved.fields, current)
    if changed:
        raise FamflowError(
            f"Cannot resume {checkpoint}: this run differs from the checkpoint's in "
            f"{'; '.join(changed)}. Resume with the checkpoint's settings or start a fresh run."
        )


def run_id_in(out: Path) -> str | None:
    """The run id of the rows already in ``out/metrics.jsonl``, if any."""
    path = out / METRICS_FILE
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        try:
            return str(json.loads(line).get("run_id") or "") or None
        except (json.JSONDecodeError, AttributeError):
            return None
    return None


def used(out: Path) -> list[str]:
    return [name for name in RUN_FILES if (out / name).exists()]


def claim_out_dir(out: Path, move_old_run: bool, resuming: str | None = None) -> None:
    """Make ``out`` this run's directory. A fresh run refuses a directory an earlier run used,
    or with ``move_old_run`` moves that run aside; a resume may continue its own run's
    directory (``resuming`` is its run id) and nobody else's."""
    held = used(out) if out.is_dir() else []
    if not held:
        out.mkdir(parents=True, exist_ok=True)
        return
    owner = run_id_in(out)
    if resuming is not None and owner == resuming:
        return
    if not move_old_run:
        whose = f"run {owner}" if owner else "an earlier run"
        raise FamflowError(
            f"out-dir {out} already holds {whose} ({', '.join(held)}): pass another out-dir, or "
            "set move-old-run = true to move the old run aside."
        )
    aside = out.with_name(f"{out.name}.{owner or 'old'}")
    suffix = 1
    while aside.exists():
        aside = out.with_name(f"{out.name}.{owner or 'old'}.{suffix}")
        suffix += 1
    out.rename(aside)
    logger.warning("moved the earlier run in %s aside to %s", out, aside)
    out.mkdir(parents=True)
