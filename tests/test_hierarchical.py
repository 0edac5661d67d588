"""One-box hierarchical decoding: the top exit's greedy output, whatever drafts and filters it."""

import pytest
import torch

from famflow.collab import RouteModels, build_nodes
from famflow.collab.hierarchical import hierarchical_generate
from famflow.familial.errors import FamflowError
from famflow.familial.inference import generate
from tests.test_collab_decoding import EXITS, agreeable_family, prompts


@pytest.fixture(scope="module", params=["shared-head", "ruyi"])
def family(request):
    return agreeable_family(request.param)


@pytest.mark.parametrize(
    ("exits", "lookahead"),
    [([2, 6], [1]), ([2, 6], [4]), ([2, 4, 6], [2, 3]), ([2, 4, 6], [1, 1]), ([4, 6], [6])],
)
def test_output_equals_the_top_exits_greedy_output(family, exits, lookahead):
    nodes = build_nodes(RouteModels(family), exits)
    judged = accepted = 0
    for prompt in prompts(count=6, seed=4):
        expected = generate(family, prompt, exits[-1], max_new_tokens=15)
        result = hierarchical_generate(nodes, prompt, 15, lookahead)
        assert torch.equal(result.tokens, expected)
        assert result.new_tokens == 15
        top = result.levels[-1]
        judged, accepted = judged + top.judged, accepted + top.accepted
    # Drafts were both accepted and rejected, so rollbacks ran.
    assert 0 < accepted < judged


def test_a_draft_vocabulary_changes_the_drafts_not_the_output(family):
    nodes = build_nodes(RouteModels(family), EXITS)
    vocabulary = torch.arange(0, 128, 2)  # half the tiny vocabulary
    for node in nodes[:-1]:
        node.restrict_drafts(vocabulary)
    try:
        for prompt in prompts(count=4, seed=5):
            expected = generate(family, prompt, EXITS[-1], max_new_tokens=12)
            result = hierarchical_generate(nodes, prompt, 12, [2, 2])
            assert torch.equal(result.tokens, expected)
        device = nodes[0]
        device.reset()
        drafts = device.run(prompts(count=1)[0], 0, greedy_from=0).tokens
        assert drafts is not None and bool((drafts % 2 == 0).all())
    finally:
        for node in nodes[:-1]:
            node.restrict_drafts(None)


def test_end_of_text_stops_every_level(family):
    nodes = build_nodes(RouteModels(family), EXITS)
    prompt = prompts(count=1, seed=2)[0]
    full = generate(family, prompt, EXITS[-1], max_new_tokens=12)
    eos = int(full[0, prompt.shape[1] + 4])
    expected = generate(family, prompt, EXITS[-1], max_new_tokens=12, eos_token_id=eos)
    result = hierarchical_generate(nodes, prompt, 12, [3, 2], eos_token_id=eos)
    assert torch.equal(result.tokens, expected)
    assert result.tokens[0, -1] == eos


def test_bad_routes_are_refused(family):
    nodes = build_nodes(RouteModels(family), EXITS)
    with pytest.raises(FamflowError, match="one lookahead"):
        hierarchical_generate(nodes, prompts(count=1)[0], 4, [2])
    with pytest.raises(FamflowError, match="continue"):
        hierarchical_generate([nodes[0], nodes[2]], prompts(count=1)[0], 4, [2])
