"""Loading the frozen LM and answering with it raise no FutureWarning or DeprecationWarning.

transformers 5.24 (pinned in constraints.txt) renamed the forward pass's ``past_key_values`` to
``cache`` and warns (FutureWarning) on every call that uses the old name; frozen_vlm_perception/nn/
language.py passes ``cache=`` everywhere. Such a warning would reach the terminal of ``fvp demo``,
``fvp query`` and the nodes, so here every warning of those two categories is an error, on every path
the nodes and the tools use: load, answer (with and without a scene, streamed), batched answers, the
training loss with and without the cached prompt prefix.
"""

from __future__ import annotations

import warnings

import torch

from frozen_vlm_perception.config import LanguageConfig
from frozen_vlm_perception.nn.language import FrozenLanguageModel


def test_load_and_answer_without_deprecation_warnings(torch_threads):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        warnings.simplefilter("error", DeprecationWarning)
        warnings.simplefilter("error", PendingDeprecationWarning)
        lm = FrozenLanguageModel(config=LanguageConfig())
        scene = torch.randn(4, lm.hidden_size) * 0.02
        streamed: list[str] = []
        assert lm.generate(scene, "What is the person doing?", max_new_tokens=4, on_text=streamed.append).text
        assert streamed
        assert lm.generate(None, "Hello?", max_new_tokens=3).text
        scenes = torch.stack([scene, scene])
        assert len(lm.generate_batch(scenes, "Where is the person?", max_new_tokens=3)) == 2
        questions, answers = ["What is the person doing?"] * 2, ["Walking.", "Sitting."]
        loss = lm.answer_loss(scenes, questions, answers)
        full = lm.answer_loss_full_prompt(scenes, questions, answers)
    assert torch.isfinite(loss) and torch.allclose(loss, full, atol=1e-4)
