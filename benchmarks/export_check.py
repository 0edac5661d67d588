"""Every exit's standalone exports against famflow's own branch, on held-out prompts.

For each exit of a run, famflow's branch (``RUN/export/exit-E``, famflow's adapters) decodes
greedily from held-out prompts of the demo's data. A process that never imports famflow loads
the exit's ``hf`` export and its GGUF files (f16, q8_0) and does the same. The table gives the
largest |logit difference| of the ``hf`` export over the prompts, and per format the share of
prompts whose greedy continuation is identical to famflow's. Where some differ, "(tie)" is the
largest of famflow's own gaps between its two best logits at the first differing token: how
near a tie every divergence was. Missing exports are written first
(``famflow export RUN --format hf,gguf``).

    .venv/bin/python benchmarks/export_check.py [runs/federation] [--prompts 8]
        [--prompt-tokens 32] [--max-new-tokens 24]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from collab_inference import held_out_prompts

from famflow.familial.export_origin import read_origin
from famflow.familial.inference import generate
from famflow.familial.local_training import load_trained_branch
from famflow.familial.presets import resolve_model

OUTSIDE = """
import json, sys
import torch
from transformers import AutoModelForCausalLM

exported, inputs, out = sys.argv[1:4]
prompts, new = torch.load(inputs)
greedy = dict(max_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=0)
models = {"hf": AutoModelForCausalLM.from_pretrained(exported + "/hf").eval()}
for name in json.load(open(exported + "/gguf/export.json"))["files"]:
    kind = name.rsplit("-", 1)[1].removesuffix(".gguf")
    models["gguf " + kind] = AutoModelForCausalLM.from_pretrained(
        exported + "/gguf", gguf_file=name).eval()
seen = {"logits": [], **{k: [] for k in models}}
with torch.no_grad():
    for prompt in prompts:
        seen["logits"].append(models["hf"](prompt).logits)
        for kind, model in models.items():
            seen[kind].append(model.generate(prompt, **greedy)[0].tolist())
assert not [m for m in sys.modules if m.split(".")[0] == "famflow"], "famflow was imported"
torch.save(seen, out)
"""


@torch.no_grad()
def tie_gap(branch: torch.nn.Module, depth: int, mine: list[int], theirs: list[int]) -> float:
    """famflow's top-2 logit gap where two greedy continuations first differ."""
    first = next(i for i, (a, b) in enumerate(zip(mine, theirs, strict=True)) if a != b)
    logits = branch(torch.tensor([mine[:first]]), exits=[depth]).logits[depth][0, -1]
    best = logits.topk(2).values
    return float(best[0] - best[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", nargs="?", type=Path, default=Path("runs/federation"))
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    args = parser.parse_args()

    prompts = [p.reshape(1, -1) for p in held_out_prompts(args.prompts, args.prompt_tokens)]
    work = Path(tempfile.mkdtemp(prefix="famflow-export-check-"))
    torch.save((prompts, args.max_new_tokens), work / "inputs.pt")
    rows = []
    for exported in sorted((args.run / "export").glob("exit-*"), key=lambda p: int(p.name[5:])):
        origin = read_origin(exported)
        assert origin is not None, f"{exported} has no export.json"
        depth = int(origin["exit"])
        if not ((exported / "hf").is_dir() and (exported / "gguf").is_dir()):
            command = ["famflow", "export", str(args.run), "--exit", str(depth)]
            subprocess.run([*command, "--format", "hf,gguf"], check=True)
        branch = load_trained_branch(resolve_model(origin["model"]), depth, exported, [depth])
        with torch.no_grad():
            ours = [generate(branch, p, depth, args.max_new_tokens)[0].tolist() for p in prompts]
            logits = [branch(p, exits=[depth]).logits[depth] for p in prompts]
        out = work / f"exit-{depth}.pt"
        script = [sys.executable, "-c", OUTSIDE, str(exported), str(work / "inputs.pt"), str(out)]
        subprocess.run(script, check=True, capture_output=True)
        seen = torch.load(out)
        gap = max(float((a - b).abs().max()) for a, b in zip(seen["logits"], logits, strict=True))
        same = {
            kind: sum(a == b for a, b in zip(seen[kind], ours, strict=True)) / len(ours)
            for kind in seen
            if kind != "logits"
        }
        ties = {
            kind: max(
                (
                    tie_gap(branch, depth, mine, theirs)
                    for mine, theirs in zip(ours, seen[kind], strict=True)
                    if mine != theirs
                ),
                default=None,
            )
            for kind in same
        }
        rows.append((depth, gap, same, ties))

    kinds = list(rows[0][2])
    print(
        f"{args.run}: {args.prompts} held-out prompts of {args.prompt_tokens} tokens, "
        f"{args.max_new_tokens} greedy tokens; exports loaded in a process without famflow"
    )
    header = " ".join(f"{k + ' same (tie)':>24}" for k in kinds)
    print(f"{'exit':>4} {'hf max|dlogit|':>15} {header}")
    for depth, gap, same, ties in rows:
        cells = " ".join(f"{_cell(same[k], ties[k]):>24}" for k in kinds)
        print(f"{depth:>4} {gap:>15.2e} {cells}")


def _cell(share: float, tie: float | None) -> str:
    return f"{share:.0%}" + (f" ({tie:.2g})" if tie is not None else "")


if __name__ == "__main__":
    main()
