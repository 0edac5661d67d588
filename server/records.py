"""Per-round records: one ``metrics.jsonl`` row and TensorBoard scalars per round."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter

METRICS_FILE = "metrics.jsonl"
BYTES = ("bytes_up", "bytes_down")


class RoundRecorder:
    """Appends to ``OUT/metrics.jsonl`` and writes TensorBoard events under ``OUT/tensorboard``."""

    def __init__(
        self, out_dir: Path, stamp: dict[str, Any] | None = None, keep_through: int | None = None
    ) -> None:
        """``stamp`` (the run id and fingerprint) goes into every row. A resume after round
        ``keep_through`` keeps the rows up to it and drops any later ones, which the resumed
        rounds write again."""
        out_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_file = out_dir / METRICS_FILE
        self.stamp = dict(stamp or {})
        self.writer = SummaryWriter(log_dir=str(out_dir / "tensorboard"))
        earlier = read_rows(out_dir)
        if keep_through is not None:
            earlier = [row for row in earlier if int(row["round"]) <= keep_through]
            self.metrics_file.write_text("".join(json.dumps(row) + "\n" for row in earlier))
        # Bytes since the run began, continued from the rows already there (resume).
        self.cumulative = {name: sum(r.get(name, 0) for r in earlier) for name in BYTES}

    def record(self, row: dict[str, Any]) -> None:
        row = {**self.stamp, **row}
        with self.metrics_file.open("a") as file:
            file.write(json.dumps(row) + "\n")
        step = int(row["round"])
        for depth, metrics in row.get("exits", {}).items():
            for name, value in metrics.items():
                self.writer.add_scalar(f"{name}/exit-{depth}", value, step)
        for depth, loss in row.get("train_loss", {}).items():
            self.writer.add_scalar(f"train-loss/exit-{depth}", loss, step)
        for name in (
            "bytes_up",
            "bytes_down",
            "seconds",
            "train_seconds_max",
            "dp_epsilon_max",
            "central_dp_epsilon",
        ):
            if name in row:
                self.writer.add_scalar(f"round/{name}", row[name], step)
        for name in BYTES:
            self.cumulative[name] += row.get(name, 0)
            self.writer.add_scalar(f"cumulative/{name}", self.cumulative[name], step)
        for node, entry in row.get("nodes", {}).items():
            for name in ("dp_epsilon", "tokens", "train_seconds"):
                if name in entry:
                    tag = name.replace("_", "-")
                    self.writer.add_scalar(f"{tag}/node-{node}", entry[name], step)
        # Replies dropped per reason (strategies.validation.REASONS), and in all.
        reasons = row.get("dropped_reasons", {})
        self.writer.add_scalar("round/dropped", sum(reasons.values()), step)
        for reason, count in reasons.items():
            self.writer.add_scalar(f"dropped/{reason}", count, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def read_rows(out_dir: Path) -> list[dict[str, Any]]:
    path = out_dir / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
