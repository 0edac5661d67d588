"""``famflow generate --route`` and the collaborative inference benchmark on the tiny preset."""

import re

import pytest
import torch

from famflow.__main__ import main
from famflow.familial.presets import resolve_model
from tests.conftest import load_benchmark


def test_generate_along_a_route_prints_text_rounds_bytes_and_latency(capsys):
    argv = ["generate", "--model", "tiny", "--route", "device,cloud", "--max-new-tokens", "8"]
    argv += ["--codec", "fp32", "--draft-tokens", "3", "--transport", "http"]
    argv += ["--link", "10e6,0.05", "--link", "100e6,0.01"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.startswith("[speculative along device=2, cloud=4] ")
    assert re.search(r"\d\.\d\d accepted tokens per round trip, acceptance rate", out)
    bytes_per_token = re.search(r"bytes over the device link per token: ([\d,]+) ", out)
    assert bytes_per_token and int(bytes_per_token[1].replace(",", "")) > 0
    assert "identical to cloud-only greedy output: yes" in out
    assert "latency over 10 Mbit/s, 50 ms RTT: collaborative" in out
    assert "latency over 100 Mbit/s, 10 ms RTT: collaborative" in out


def test_generate_early_exit_mode(capsys):
    argv = ["generate", "tiny", "--route", "2,4", "--mode", "early-exit", "--threshold", "2"]
    assert main([*argv, "--max-new-tokens", "4", "--codec", "fp32"]) == 0
    out = capsys.readouterr().out
    assert "tokens decided by exit 2: 0, exit 4: 4; 4 hand-ups" in out
    assert "identical to cloud-only greedy output: yes" in out


def test_generate_per_exit_still_works(capsys):
    assert main(["generate", "tiny", "--exit", "2", "--max-new-tokens", "3"]) == 0
    assert capsys.readouterr().out.startswith("[exit 2, loaded in ")


def test_generate_raw_continues_the_prompt_without_the_chat_template(capsys):
    from famflow.familial.inference import generate
    from famflow.familial.loading import load_branch
    from famflow.familial.tokenizer import load_tokenizer

    prompt = "ROMEO:\nBut soft"
    assert main(["generate", "tiny", "--exit", "4", "--raw", "--prompt", prompt]) == 0
    printed = capsys.readouterr().out.split("] ", 1)[1].strip()
    spec = resolve_model("tiny")
    tokenizer = load_tokenizer(spec)
    input_ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
    branch = load_branch(spec, 4, exits=[4]).eval()
    tokens = generate(branch, input_ids, 4, 24, tokenizer.eos_token_id)
    expected = tokenizer.decode(tokens[0, input_ids.shape[1] :], skip_special_tokens=True)
    assert printed == expected.strip()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["tiny", "--mode", "early-exit"], "--mode need --route: add --route device,edge,cloud."),
        (["tiny", "--draft-tokens", "0"], "--draft-tokens need --route"),
        (["tiny", "--route", "device,cloud", "--exit", "2"], "--exit and --route exclude"),
        (["tiny", "--model", "other"], "Two models named"),
        ([], "Name the model"),
        (["tiny", "--route", "device,cloud", "--link", "fast"], "BANDWIDTH,RTT"),
    ],
)
def test_generate_mistakes_are_one_sentence(capsys, argv, message):
    assert main(["generate", *argv]) == 1
    assert message in capsys.readouterr().err


def test_benchmark_core_on_the_tiny_preset():
    bench = load_benchmark("collab_inference")
    result = bench.benchmark(
        resolve_model("tiny"),
        route="device,cloud",
        prompts=(bench.PROMPTS[0], torch.tensor([5, 6, 7, 8])),  # chat text, then token ids
        draft_tokens=(2,),
        thresholds=(0.5,),
        codec="fp32",
        max_new_tokens=6,
        agreement_texts=(torch.tensor([5, 6, 7, 8, 9]),),
    )
    speculative, early = result["rows"]
    assert speculative["identical"] == 2 and speculative["prompts"] == 2
    assert 0 <= speculative["acceptance_rate"] <= 1 and speculative["tokens_per_round_trip"] >= 1
    assert early["acceptance_rate"] is None and sum(early["decided_per_tier"]) == 12
    for row in result["rows"]:
        assert set(row["latency"]) == {"10 Mbit/s, 50 ms RTT", "100 Mbit/s, 10 ms RTT"}
        slow = row["latency"]["10 Mbit/s, 50 ms RTT"]
        assert slow["speedup_vs_cloud"] == pytest.approx(
            slow["cloud_only_s"] / slow["collaborative_s"]
        )
    need = speculative["latency"]["10 Mbit/s, 50 ms RTT"]["acceptance_for_target"]
    assert speculative["target_speedup"] == 1.25 and need > 0
    assert "acceptance_for_target" not in early["latency"]["10 Mbit/s, 50 ms RTT"]
    assert result["prompts"][0] == bench.PROMPTS[0] and isinstance(result["prompts"][1], str)
    hf = result["hf_assisted"]
    assert hf["assistant_early_exit"] == 2 and hf["identical"] == 2
    table = bench.format_table(result)
    assert "speculative k=2" in table and "early exit p>=0.5" in table
    assert "transformers assisted generation (assistant_early_exit=2" in table
    agreement = result["exit_agreement"]
    assert agreement["positions"] == 5 and set(agreement["per_exit"]) == {2}
    assert "teacher-forced agreement with exit 4's greedy token on 1 held-out texts" in table


def test_cli_choices_match_the_library():
    """The parser reads the library's registries, and builds without importing torch."""
    import subprocess
    import sys

    import famflow.commands.model as cli
    from famflow.collab import protocol, settings

    assert cli.HIDDEN_CODECS == protocol.HIDDEN_CODECS
    assert cli.MODES == settings.MODES and cli.TRANSPORTS == settings.TRANSPORTS
    probe = "import sys, famflow.__main__ as m; m.build_parser(); print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert done.stdout.strip() == "False", done.stderr
