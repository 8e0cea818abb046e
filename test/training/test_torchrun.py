"""Both training commands run unchanged under torchrun: 2 CPU processes, gloo, DistributedSampler."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from tiny_recordings import tiny_model_config

from frozen_vlm_perception.checkpoint import read_checkpoint_config
from frozen_vlm_perception.config import to_dict


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(
    module: str, args: list[str], env: dict[str, str], timeout: float = 240
) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        "-m",
        module,
        *args,
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"{' '.join(command)}\nstdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}"
    )
    return result


@pytest.mark.slow
def test_align_and_adapter_under_torchrun_with_two_processes(tiny_bags, tiny_lm_folder, tmp_path):
    train_bag, val_bag = tiny_bags
    config_file = tmp_path / "tiny.json"
    config_file.write_text(json.dumps(to_dict(tiny_model_config(tiny_lm_folder))))
    env = dict(
        os.environ,
        GLOO_SOCKET_IFNAME="lo",
        MASTER_ADDR="127.0.0.1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        FVP_CACHE_DIR=str(tmp_path / "cache"),
        OMP_NUM_THREADS="1",
    )
    model = tmp_path / "model"
    common = ["--bag", str(train_bag), "--val-bag", str(val_bag), "--device", "cpu", "--no-progress"]

    align = torchrun(
        "frozen_vlm_perception.training.align",
        [
            *common,
            "--out",
            str(model),
            "--model-config",
            str(config_file),
            "--epochs",
            "2",
            "--batch-size",
            "16",
        ],
        env,
    )
    assert "x 2 process(es)" in align.stdout and f"wrote {model}" in align.stdout
    assert align.stdout.count("wrote ") == 1  # only rank 0 writes and reports
    _, _, metadata = read_checkpoint_config(model)
    assert metadata["training"]["align"]["run"]["world_size"] == 2
    # Each rank took half of every epoch: 237 samples / (16 x 2) = 7 steps per epoch.
    report = json.loads((model / "train_report.json").read_text())["align"]
    assert [e["step"] for e in report["epochs"]] == [0, 7, 14]
    # Validation metrics were gathered over the whole held-out set, not one rank's shard.
    assert report["epochs"][-1]["val_samples"] == 117

    adapter = torchrun(
        "frozen_vlm_perception.training.adapter",
        [
            *common,
            "--model",
            str(model),
            "--max-steps",
            "4",
            "--val-every",
            "2",
            "--batch-size",
            "8",
            "--lm-batch-size",
            "4",
            "--caption-steps",
            "3",
        ],
        env,
    )
    assert f"wrote {model}" in adapter.stdout
    _, _, metadata = read_checkpoint_config(model)
    assert set(metadata["training"]) == {"align", "adapter"}
    assert metadata["training"]["adapter"]["run"]["world_size"] == 2
    assert (model / "model.safetensors").is_file() and (model / "train_adapter.png").is_file()
