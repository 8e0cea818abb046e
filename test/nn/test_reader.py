"""The question reader: tokens from the scene and the question, padding ignored, zero at the start."""

from __future__ import annotations

import pytest
import torch

from frozen_vlm_perception.config import ConfigError, ModelConfig, ReaderConfig
from frozen_vlm_perception.nn.model import SceneModel
from frozen_vlm_perception.nn.reader import QuestionReader, YesNoDecision

H = 32


def reader(**kw) -> QuestionReader:
    torch.manual_seed(0)
    config = ReaderConfig(num_tokens=3, dim=16, heads=2, dim_head=8, **kw)
    module = QuestionReader(config=config, lm_dim=H, num_labels=4)
    return module.eval()


def trained(module: QuestionReader) -> QuestionReader:
    """As if trained: a non-zero output projection (a new reader writes zeros)."""
    with torch.no_grad():
        module.out_proj.weight.normal_(0, 0.5)
    return module


def test_a_new_reader_writes_zeros_and_shapes_follow_the_docstring():
    scene, question = torch.randn(2, 5, H), torch.randn(2, 7, H)
    module = reader()
    tokens = module(scene, question)
    assert tokens.shape == (2, 3, H) and module.num_tokens == 3
    assert not tokens.any()  # added to a trained model, it starts from that model's answers
    with pytest.raises(ValueError, match="must share B"):
        module(scene, question[:1])


def test_tokens_depend_on_the_question_and_the_scene():
    module = trained(reader())
    scene, question = torch.randn(1, 5, H), torch.randn(1, 7, H)
    base = module(scene, question)
    assert not torch.allclose(base, module(scene, torch.randn(1, 7, H)))
    assert not torch.allclose(base, module(torch.randn(1, 5, H), question))


def test_padding_of_a_short_question_changes_nothing():
    module = trained(reader())
    scene, question = torch.randn(1, 5, H), torch.randn(1, 4, H)
    alone = module(scene, question)
    padded = torch.cat([question, torch.randn(1, 6, H) * 10], dim=1)  # garbage where the padding is
    mask = torch.tensor([[True] * 4 + [False] * 6])
    torch.testing.assert_close(module(scene, padded, mask), alone, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(module(scene, padded), alone)  # unmasked, the garbage is read


def test_scene_model_has_a_reader_only_when_configured():
    plain = SceneModel(config=ModelConfig(), vision_dim=16, vision_tokens=4, lm_dim=H)
    assert plain.reader is None and not any(k.startswith("reader.") for k in plain.state_dict())
    config = ModelConfig(reader=ReaderConfig(num_tokens=2, dim=16))
    with_reader = SceneModel(config=config, vision_dim=16, vision_tokens=4, lm_dim=H)
    assert with_reader.reader is not None and with_reader.reader.num_tokens == 2
    with pytest.raises(ConfigError, match="reader.num_tokens"):
        ModelConfig(reader=ReaderConfig(num_tokens=-1)).validate()


def deciding(**kw) -> QuestionReader:
    module = trained(reader(decision=True, **kw))
    with torch.no_grad():
        module.yes_tokens.normal_(0, 1)
        module.no_tokens.normal_(0, 1)
    return module


def test_a_decision_picks_the_yes_or_the_no_tokens_by_its_gate():
    module = deciding()
    scene, question = torch.randn(2, 5, H), torch.randn(2, 7, H)
    plain = reader()
    plain.load_state_dict(module.state_dict(), strict=False)  # the same weights, without a decision
    free = plain(scene, question)
    tokens, logits = module.read(scene, question)
    assert logits.shape == (2, 2)
    torch.testing.assert_close(module(scene, question), tokens)
    forced = {
        (gate, yes): module(scene, question, decision=torch.tensor([[gate, yes]] * 2))
        for gate in (0.0, 1.0)
        for yes in (0.0, 1.0)
    }
    torch.testing.assert_close(forced[(0.0, 1.0)], free)  # gate shut: the free tokens alone
    torch.testing.assert_close(forced[(0.0, 0.0)], free)
    torch.testing.assert_close(forced[(1.0, 1.0)], free + module.yes_tokens)
    torch.testing.assert_close(forced[(1.0, 0.0)], free + module.no_tokens)
    # Its own decision is taken whole: gate and yes by the sign of their logits.
    for row, (gate, yes) in enumerate((logits > 0).tolist()):
        want = forced[(float(gate), float(yes))][row] if gate else free[row]
        torch.testing.assert_close(tokens[row], want)


def test_a_question_that_may_not_be_decided_reads_the_free_tokens_alone():
    module = deciding()
    with torch.no_grad():
        module.decision.asks.bias.fill_(5.0)  # the learned gate opens for every question
    scene, question = torch.randn(2, 5, H), torch.randn(2, 7, H)
    free = module(scene, question, decision=torch.zeros(2, 2))
    tokens, logits = module.read(scene, question, may_decide=torch.tensor([False, True]))
    assert logits[0, 0] == float("-inf") and logits[1, 0] > 0
    torch.testing.assert_close(tokens[0], free[0])
    assert not torch.allclose(tokens[1], free[1])


def test_the_decision_starts_the_answer_only_where_its_gate_opens():
    from frozen_vlm_perception.nn.reader import decided_answer_starts

    class Words:  # the one method decided_answer_starts asks of the language model
        def first_token_id(self, text):
            return {"Yes": 7, "No": 9}[text.split(",")[0]]

    logits = torch.tensor([[2.0, 1.0], [2.0, -1.0], [-1.0, 3.0], [float("-inf"), 3.0]])
    assert decided_answer_starts(Words(), logits) == [[7], [9], [], []]
    assert reader(decision=True).decision_starts_answer
    assert not reader(decision=True, decision_starts_answer=False).decision_starts_answer
    assert not reader().decision_starts_answer  # no decision, nothing to start an answer with


def test_a_reader_without_a_decision_has_no_decision_parameters():
    plain = reader()
    assert not plain.decides and plain.read(torch.randn(1, 5, H), torch.randn(1, 7, H))[1] is None
    assert not any(k.startswith(("decision", "yes_tokens", "no_tokens")) for k in plain.state_dict())
    assert {"decision.asks.weight", "yes_tokens", "no_tokens"} <= set(deciding().state_dict())
    with pytest.raises(ValueError, match="num_labels"):
        QuestionReader(config=ReaderConfig(num_tokens=2, decision=True), lm_dim=H)


def test_p_yes_is_the_scene_probability_of_the_labels_the_question_asks_about():
    torch.manual_seed(1)
    decision = YesNoDecision(lm_dim=H, num_labels=4)
    scene, question = torch.randn(3, 5, H), torch.randn(3, 7, H)
    mask = torch.tensor([[True] * 7, [True] * 3 + [False] * 4, [True] * 5 + [False] * 2])
    logits = decision(scene, question, mask)
    p_label = decision.activity(scene).softmax(dim=-1)
    for b in range(3):
        scores = decision.asks(decision.question_norm(question[b, mask[b]]))  # padding never read
        asks = torch.logsumexp(scores, dim=0) - torch.log(mask[b].sum().float())  # a soft maximum
        p_yes = (p_label[b] * torch.sigmoid(asks[1:])).sum()
        want = torch.stack([asks[0], torch.logit(p_yes)])
        torch.testing.assert_close(logits[b], want, rtol=1e-4, atol=1e-5)
    # The gate reads the question alone: another scene moves only the yes.
    other = decision(torch.randn(3, 5, H), question, mask)
    torch.testing.assert_close(other[:, 0], logits[:, 0])
    assert not torch.allclose(other[:, 1], logits[:, 1])
