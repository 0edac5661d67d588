from famflow.federation.config import FederationConfig
from famflow.server.report import format_report


def row(server_round, perplexity, seconds, train_seconds):
    node = {"tier": "device", "exit": 10, "rank": 4, "bytes_up": 2000, "bytes_down": 3000}
    return {
        "round": server_round,
        "exits": {"10": {"perplexity": perplexity}},
        "nodes": {"1": node},
        "seconds": seconds,
        "train_seconds_sum": train_seconds,
        "startup_seconds_sum": 6.5 if server_round else 0.0,
        "load_seconds_sum": 1.5 if server_round else 0.0,
    }


def test_report_shows_perplexity_bytes_and_the_share_of_the_round_in_training():
    lines = format_report([row(0, 500.0, 0.0, 0.0), row(1, 200.0, 100.0, 88.0)], FederationConfig())
    assert lines.splitlines()[1] == (
        "round | ppl@10 | device up/down KB | seconds | in training | process start + load s"
    )
    assert lines.splitlines()[2] == "0 | 500 | 2/3 | 0.0 | - | -"
    assert lines.splitlines()[3] == "1 | 200 | 2/3 | 100.0 | 88% | 8.0"
