"""Peak memory and time of loading SmolLM2 branches: exit 10 vs full, safetensors cache vs GGUF.

Each case runs in a fresh process so peak RSS is its own; RSS after imports is measured in the
same process and subtracted, so the figures are what loading itself costs. Safetensors tensors
are memory-mapped and become resident when first read, so RSS is also taken after every weight
has been read once ("resident"), and after one 16-token forward pass (weights + activations).

    .venv/bin/python benchmarks/branch_loading.py
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time

CASES = {
    "exit 10 from safetensors cache": "cache:10",
    "exit 30 (full) from safetensors cache": "cache:30",
    "full model from GGUF (transformers)": "gguf:30",
}


def measure(case: str) -> dict[str, float]:
    """Run in the child process: load one case and report RSS and seconds."""
    import torch
    from transformers import AutoModelForCausalLM

    from famflow.familial.loading import checkpoint_dir, load_branch
    from famflow.familial.presets import resolve_model

    spec = resolve_model("smollm2-135m")
    checkpoint_dir(spec)  # make sure the cache exists before timing
    baseline_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kind, depth = case.split(":")
    start = time.perf_counter()
    if kind == "cache":
        model = load_branch(spec, int(depth), exits=[int(depth)])
    else:
        model = AutoModelForCausalLM.from_pretrained(
            str(spec.path.parent), gguf_file=spec.path.name
        )
    seconds = time.perf_counter() - start
    loaded_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():
        for param in model.parameters():
            param.sum()
    resident_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.no_grad():
        model(torch.ones(1, 16, dtype=torch.long))
    used_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "seconds": seconds,
        "load_rss_mb": (loaded_kib - baseline_kib) / 1024,
        "resident_rss_mb": (resident_kib - baseline_kib) / 1024,
        "forward_rss_mb": (used_kib - baseline_kib) / 1024,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def main() -> None:
    results = {}
    for label, case in CASES.items():
        out = subprocess.run(
            [sys.executable, __file__, "--case", case], check=True, capture_output=True, text=True
        ).stdout
        results[label] = json.loads(out.strip().splitlines()[-1])
    full = results["exit 30 (full) from safetensors cache"]
    print(
        f"{'case':<38} {'params':>12} {'load MB':>8} {'resident MB':>12} {'x full':>7} "
        f"{'+forward MB':>12} {'x full':>7} {'seconds':>8}"
    )
    for label, r in results.items():
        print(
            f"{label:<38} {r['parameters']:>12,} {r['load_rss_mb']:>8.1f} "
            f"{r['resident_rss_mb']:>12.1f} {r['resident_rss_mb'] / full['resident_rss_mb']:>7.2f} "
            f"{r['forward_rss_mb']:>12.1f} {r['forward_rss_mb'] / full['forward_rss_mb']:>7.2f} "
            f"{r['seconds']:>8.2f}"
        )
    gguf = results["full model from GGUF (transformers)"]
    print(
        f"cache vs GGUF load time: {full['seconds']:.2f}s vs {gguf['seconds']:.2f}s "
        f"({gguf['seconds'] / full['seconds']:.0f}x faster)"
    )


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--case":
        print(json.dumps(measure(sys.argv[2])))
    else:
        main()
