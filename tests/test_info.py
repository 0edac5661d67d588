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
