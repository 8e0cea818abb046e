"""A tiny frozen LM and stage 1 trained once on the tiny recordings (test/tiny_recordings.py), so
training tests run in seconds.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tiny_recordings import tiny_data_config, tiny_model_config

from frozen_vlm_perception.config import LanguageConfig


@pytest.fixture(scope="session")
def tiny_lm_folder(tmp_path_factory) -> Path:
    """A random-weight 2-layer Llama (width 64) with SmolLM2's tokenizer and chat template: the same
    prompt code path as the real LM at a fraction of its cost."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from frozen_vlm_perception.nn.language import ensure_smollm2_cache

    source = ensure_smollm2_cache()
    folder = tmp_path_factory.mktemp("tiny_lm")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        if (source / name).is_file():
            shutil.copyfile(source / name, folder / name)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=49152,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        # Larger than Llama's 0.02: a random LM that small outputs near-uniform logits whatever its
        # input, so pseudo-tokens could not move its loss; at 0.2 they can (12.5 -> 7.6 in 30 steps).
        initializer_range=0.2,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_lm(tiny_lm_folder, torch_threads):
    from frozen_vlm_perception.nn.language import FrozenLanguageModel

    return FrozenLanguageModel(config=LanguageConfig(source=str(tiny_lm_folder), max_new_tokens=8))


@pytest.fixture(scope="session")
def embedding_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("embedding_cache")


@pytest.fixture(scope="session")
def aligned(tiny_bags, tiny_lm_folder, embedding_cache, torch_threads):
    """Stage 1 trained once on the tiny train bag, validated on the held-out bag (shared by tests)."""
    from frozen_vlm_perception.training.align import train_align
    from frozen_vlm_perception.training.config import AlignTrainConfig

    train_bag, val_bag = tiny_bags
    out = tiny_lm_folder.parent / "stage1_model"
    settings = AlignTrainConfig(
        epochs=12, batch_size=16, lr=2e-3, warmup_steps=5, patience=12, device="cpu", progress=False, seed=0
    )
    return train_align(
        data=tiny_data_config(train_bag, val_bag, embedding_cache),
        model_config=tiny_model_config(tiny_lm_folder),
        train=settings,
        out_dir=out,
    )
