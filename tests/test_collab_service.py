"""The edge/cloud tier as an HTTP service on 127.0.0.1: round trips, refusals, shutdown."""

import socket
import urllib.error
import urllib.request

import pytest
import torch

from famflow.collab import (
    ProtocolError,
    RouteModels,
    TierService,
    UpperTier,
    build_nodes,
    early_exit_generate,
    http_chain,
    speculative_generate,
)
from famflow.collab.protocol import HiddenRequest, TierReply
from famflow.collab.transport import HIDDEN_PATH, HttpTransport
from famflow.familial.inference import generate
from tests.test_collab_decoding import EXITS, agreeable_family, prompts


@pytest.fixture(scope="module")
def family():
    return agreeable_family("ruyi")


def _post(url: str, body: bytes) -> tuple[int, bytes]:
    request = urllib.request.Request(url + HIDDEN_PATH, data=body, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_service_round_trips_hidden_states(family):
    """The cloud tier over HTTP answers what the same tier answers in process."""
    nodes = build_nodes(RouteModels(family), [EXITS[0], EXITS[-1]])
    device, cloud = nodes
    prompt = prompts(count=1)[0]
    hidden = device.run(prompt, 0).hidden[0]
    drafts = generate(family, prompt, EXITS[0], max_new_tokens=1)[0, -1:].tolist()
    rows = torch.cat([hidden, device.run(torch.tensor([drafts]), device.length).hidden[0]])
    frame = HiddenRequest("verify", 0, rows, "fp32", drafts).encode()
    with TierService(UpperTier(cloud)) as service:
        assert service.url.startswith("http://127.0.0.1:")
        status, answer = _post(service.url, frame)
    assert status == 200
    over_http = TierReply.decode(answer)
    local = TierReply.decode(
        UpperTier(build_nodes(RouteModels(family), EXITS[::2])[1]).handle(frame)
    )
    assert over_http.tokens == local.tokens and over_http.accepted == local.accepted
    full = generate(family, prompt, EXITS[-1], max_new_tokens=len(over_http.tokens))
    assert over_http.tokens == full[0, prompt.shape[1] :].tolist()


def test_decoding_through_http_chain_equals_full_greedy(family):
    nodes = build_nodes(RouteModels(family), EXITS)
    with http_chain(nodes, timeout=10) as upstream:
        for prompt in prompts(count=3, seed=4):
            expected = generate(family, prompt, EXITS[-1], max_new_tokens=10)
            result = speculative_generate(nodes[0], upstream, prompt, 10, draft_tokens=3)
            assert torch.equal(result.tokens, expected)
            result = early_exit_generate(nodes[0], upstream, prompt, 10, threshold=2.0)
            assert torch.equal(result.tokens, expected)
            assert result.device_bytes > 0


def test_malformed_request_gets_400_with_one_sentence(family):
    cloud = build_nodes(RouteModels(family), EXITS)[-1]
    with TierService(UpperTier(cloud)) as service:
        status, body = _post(service.url, b"not a frame")
        assert status == 400
        text = body.decode().strip()
        assert text.endswith(".") and text.count(". ") == 0 and "header" in text
        # Hidden states of the wrong width, and positions the tier never saw.
        status, body = _post(
            service.url, HiddenRequest("verify", 0, torch.ones(2, 3), "fp32").encode()
        )
        assert status == 400 and b"hidden states of 32 values per row" in body
        frame = HiddenRequest("verify", 5, torch.ones(2, 32), "fp32").encode()
        with pytest.raises(ProtocolError, match="send the positions from 0 on"):
            HttpTransport(service.url, timeout=10).exchange(frame)
        status, _ = _post(service.url, b"")
        assert status == 400
        with urllib.request.urlopen(service.url + "/v1/health", timeout=10) as response:
            assert response.read() == b"ok\n"


def test_service_shuts_down_cleanly(family):
    cloud = build_nodes(RouteModels(family), EXITS)[-1]
    service = TierService(UpperTier(cloud)).start()
    port = int(service.url.rsplit(":", 1)[1])
    service.close()
    with socket.socket() as probe, pytest.raises(OSError):
        probe.settimeout(2)
        probe.connect(("127.0.0.1", port))
