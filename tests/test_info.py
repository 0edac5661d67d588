import json
import re
from pathlib import Path

import pytest

from famflow.__main__ import main
from famflow.familial.sizing import model_info

RUYI_BRANCHES_B = {12: 3.89, 16: 4.82, 20: 5.75, 24: 6.68, 28: 7.62}
LORA_PER_QWEN25_7B_LAYER = 90_112


@pytest.mark.parametrize("rank", [4, 16])
def test_ruyi_7b_branch_sizes_match_the_published_family(rank):
    info = model_info("ruyi-7b", rank=rank)
    assert info["num_hidden_layers"] == 28 and info["exit_style"] == "ruyi"
    for branch in info["branches"]:
        expected = RUYI_BRANCHES_B[branch["exit"]] * 1e9
        assert abs(branch["parameters"] - expected) / expected < 0.01
        assert branch["layers"] == branch["exit"]
        assert branch["lora_parameters"] == rank * LORA_PER_QWEN25_7B_LAYER * branch["layers"]
        assert branch["full_gradient_fp32_bytes"] == 4 * branch["parameters"]
        assert branch["weight_bytes"] == 2 * branch["parameters"]  # bfloat16
    assert info["full_gradient_fp32_bytes"] == 4 * info["full_model_parameters"]
    assert abs(info["full_model_parameters"] - 7.62e9) / 7.62e9 < 0.01


LORA_PER_QWEN3_14B_LAYER = 100_352  # r x (q 10,240 + k, v 6,144 each + o 10,240 + MLP 3 x 22,528)


def test_ruyi2_14b_prints_three_branches_on_qwen3_layers(capsys):
    assert main(["info", "ruyi2-14b", "--rank", "8"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ruyi2-14b: qwen3, 40 layers, exit style ruyi")
    assert "3 (exit point 2)" in out and "22 (exit point 21)" in out and "40 (exit point 39)" in out
    info = model_info("ruyi2-14b", rank=8)
    branches = {branch["exit"]: branch for branch in info["branches"]}
    assert sorted(branches) == [3, 22, 40]
    for depth, branch in branches.items():
        assert branch["layers"] == depth
        assert branch["lora_parameters"] == 8 * LORA_PER_QWEN3_14B_LAYER * depth
    # The deepest branch is Qwen3-14B with its own (untied) head: 14.8B parameters.
    assert abs(branches[40]["parameters"] - 14.77e9) / 14.77e9 < 0.01


def test_info_json_fields_are_documented_in_docs_info(capsys):
    assert main(["info", "tiny", "--json", "--rank", "2"]) == 0
    info = json.loads(capsys.readouterr().out)
    readme = (Path(__file__).parent.parent / "docs" / "info.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_0-9]+)` \|", readme, flags=re.MULTILINE))
    fields = set(info) | set(info["branches"][0])
    assert fields <= documented, sorted(fields - documented)


def test_info_table_lists_every_exit(capsys):
    assert main(["info", "qwen2.5-0.5b"]) == 0
    out = capsys.readouterr().out
    for depth in (8, 16, 24):
        assert re.search(rf"^\s+{depth}\s+{depth}\s", out, flags=re.MULTILINE)
