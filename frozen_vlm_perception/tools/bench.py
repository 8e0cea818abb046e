"""`fvp bench`: where the time goes, measured on this machine, printed as tables.

Two parts. The pipeline part times each stage inside this process and the throughput against batch
size, and the frozen LM's decoding speed. The system part (:mod:`frozen_vlm_perception.tools.system_bench`,
skipped with ``--no-system``) runs the real nodes in their own processes against a 30 Hz camera and
200 Hz IMU stream and reports what ROS adds: ``ros_overhead_ratio``, ``answer_overhead_ratio``, and
every process's peak memory.

Stages are timed inside one process with the real frozen parts (MobileNetV2 with its ImageNet
weights, SmolLM2-135M-Instruct). The trainable parts come from the model folder when there is
one, else they are freshly initialised: their cost does not depend on their values.
Reported numbers are medians over ``--repeats`` runs after a warm-up; compare ratios within one
run, not absolute numbers across runs, on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from frozen_vlm_perception.config import ModelConfig
from frozen_vlm_perception.paths import MODEL_CONFIG_FILE, default_model_dir, package_file
from frozen_vlm_perception.pipeline import PerceptionPipeline
from frozen_vlm_perception.questions import STANDARD_QUESTION
from frozen_vlm_perception.tables import format_table

STAGES = ("preprocess", "vision", "imu", "fusion_resampler", "head")


def synthetic_inputs(
    batch: int, config: ModelConfig, seed: int = 0
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Camera-sized frames (480x640 rgb8) and IMU windows; content does not change the cost."""
    rng = np.random.default_rng(seed)
    frames = [rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8) for _ in range(batch)]
    windows = [
        rng.normal(size=(config.imu.window_samples, config.imu.channels)).astype(np.float32)
        for _ in range(batch)
    ]
    return frames, windows


def time_stages(pipeline: PerceptionPipeline, batch: int, repeats: int) -> dict[str, float]:
    """Median ms per stage (and in total) for one encode of ``batch`` samples."""
    frames, windows = synthetic_inputs(batch, pipeline.config)
    for _ in range(2):
        pipeline.encode(frames, windows)
    samples: dict[str, list[float]] = {name: [] for name in (*STAGES, "total")}
    for _ in range(repeats):
        start = time.perf_counter()
        scene = pipeline.encode(frames, windows)[0]
        samples["total"].append((time.perf_counter() - start) * 1000.0)
        for name in STAGES:
            samples[name].append(scene.timings_ms.get(name, 0.0))
    return {name: statistics.median(values) for name, values in samples.items()}


def time_fusion_weighting(pipeline: PerceptionPipeline, repeats: int) -> dict[str, float]:
    """Median ms of the fused forward of the trainable part (batch 1, cached-size inputs) with a fixed
    alpha and with a learned gate of the configured width (a fresh gate when the model has none):
    what ``fusion.weighting: gate`` adds to every frame."""
    from frozen_vlm_perception.nn.fusion import ModalityGate

    model = pipeline.scene_model
    fusion = model.fusion
    inputs = dict(
        vision_tokens=torch.randn(1, model.vision_tokens, model.vision_dim, device=pipeline.device),
        vision_pooled=torch.randn(1, model.vision_dim, device=pipeline.device),
        imu_windows=torch.randn(1, pipeline.config.imu.window_samples, pipeline.config.imu.channels,
                                device=pipeline.device),
    )
    saved = fusion.gate
    gate = saved or ModalityGate(
        dim=model.vision_dim, hidden=pipeline.config.fusion.gate_hidden, alpha=fusion.alpha
    ).to(pipeline.device).eval()
    times: dict[str, list[float]] = {"fixed": [], "gate": []}
    try:
        with torch.inference_mode():
            for _ in range(3):
                model(**inputs)
            for _ in range(max(repeats, 20)):
                for name in ("fixed", "gate"):
                    fusion.gate = gate if name == "gate" else None
                    started = time.perf_counter()
                    model(**inputs)
                    times[name].append((time.perf_counter() - started) * 1000.0)
    finally:
        fusion.gate = saved
    fixed, gated = statistics.median(times["fixed"]), statistics.median(times["gate"])
    return {"fixed_ms": fixed, "gate_ms": gated, "gate_added_ms": gated - fixed}


def time_language(pipeline: PerceptionPipeline, repeats: int, max_new_tokens: int = 20) -> dict[str, float]:
    frames, windows = synthetic_inputs(1, pipeline.config)
    scene = pipeline.encode(frames, windows)[0]
    pipeline.answer(scene, STANDARD_QUESTION, max_new_tokens=max_new_tokens)  # warm-up
    rates, seconds, tokens = [], [], []
    for _ in range(max(3, repeats // 3)):
        # Never stop at EOS here: a fixed token count measures decoding speed, not the answer's length.
        result = pipeline.language.generate(
            torch.from_numpy(scene.latents),
            STANDARD_QUESTION,
            max_new_tokens=max_new_tokens,
            stop_at_eos=False,
        )
        rates.append(result.num_tokens / result.seconds)
        seconds.append(result.seconds * 1000.0)
        tokens.append(result.num_tokens)
    return {
        "lm_tokens_per_s": statistics.median(rates),
        "lm_answer_ms": statistics.median(seconds),
        "lm_tokens": statistics.median(tokens),
    }


def time_first_token(pipeline: PerceptionPipeline, repeats: int) -> dict[str, float]:
    """Median ms to the first answer token: the whole prompt through the LM (as before the prefix
    cache) vs only the scene and question after the cached system/template prefix."""
    language = pipeline.language
    frames, windows = synthetic_inputs(1, pipeline.config)
    encoded = pipeline.encode(frames, windows)[0]
    scene = torch.from_numpy(encoded.latents)
    with torch.inference_mode():
        prompt = language.build_prompt(scene, STANDARD_QUESTION)

    def full_prompt():  # what generate did before the prefix cache: build the prompt, run all of it
        with torch.inference_mode():
            embeds = language.build_prompt(scene, STANDARD_QUESTION)
        return language.generate_from_embeds(embeds, max_new_tokens=1, stop_at_eos=False)

    runs = {
        "full_prompt": full_prompt,
        "cached_prefix": lambda: language.generate(
            scene, STANDARD_QUESTION, max_new_tokens=1, stop_at_eos=False
        ),
    }
    if pipeline.scene_model.reader is not None:  # with the question reader's tokens, as the node answers
        runs["with_reader"] = lambda: pipeline.answer(encoded, STANDARD_QUESTION, max_new_tokens=1)
        runs["reader_only"] = lambda: pipeline.read_question(scene[None], [STANDARD_QUESTION])
    out = {"prompt_tokens": int(prompt.shape[1])}
    for name, run in runs.items():
        run()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append((time.perf_counter() - start) * 1000.0)
        out[f"{name}_ms"] = statistics.median(times)
    return out


def time_stage2(pipeline: PerceptionPipeline, repeats: int, lm_batch_size: int = 8) -> dict[str, float]:
    """Median seconds of one stage-2 LM step (forward + backward of ``lm_batch_size`` samples through
    the frozen LM into the pseudo-tokens), with the cached prefix and with the full prompt."""
    import random

    from frozen_vlm_perception.questions import make_qa

    language = pipeline.language
    rng = random.Random(0)
    labels, places = list(pipeline.config.labels), ["coffee", "cat", "astronaut", "rocket", "motorcycle"]
    pairs = [
        make_qa(rng.choice(labels), rng.choice(places), has_vision=True, rng=rng)
        for _ in range(lm_batch_size)
    ]
    questions, answers = [p.question for p in pairs], [p.answer for p in pairs]
    frames, windows = synthetic_inputs(1, pipeline.config)
    base = torch.from_numpy(pipeline.encode(frames, windows)[0].latents)
    base = base.expand(lm_batch_size, -1, -1).contiguous()
    out: dict[str, float] = {"lm_batch_size": lm_batch_size}
    for name, loss_fn in (
        ("full_prompt", language.answer_loss_full_prompt),
        ("cached_prefix", language.answer_loss),
    ):
        times = []
        for i in range(repeats + 1):
            scene = base.clone().requires_grad_(True)
            start = time.perf_counter()
            loss_fn(scene, questions, answers).backward()
            if i:  # the first is a warm-up
                times.append(time.perf_counter() - start)
        out[f"{name}_s_per_step"] = statistics.median(times)
        out[f"{name}_steps_per_s"] = 1.0 / out[f"{name}_s_per_step"]
        out[f"{name}_samples_per_s"] = lm_batch_size / out[f"{name}_s_per_step"]
    return out


def time_vision_paths(pipeline: PerceptionPipeline, repeats: int) -> dict[str, float] | None:
    """Median ms of the frozen vision network, eager vs its CPU fast path (None: no fast path here)."""
    vision = pipeline.vision
    fast = getattr(vision, "_cpu_features", ())
    if not fast or pipeline.device.type != "cpu":
        return None
    frames, _ = synthetic_inputs(1, pipeline.config)
    pixels = vision.preprocess(frames, pipeline.device)
    out = {}
    with torch.inference_mode():
        for name, network in (("eager_ms", vision.features), ("prepacked_ms", fast[0])):
            for _ in range(3):
                network(pixels)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                network(pixels)
                times.append((time.perf_counter() - start) * 1000.0)
            out[name] = statistics.median(times)
    return out


def load_pipeline(model: str | None, device: str, with_language: bool) -> tuple[PerceptionPipeline, str]:
    folder = Path(model) if model else default_model_dir()
    if folder is not None and (folder / MODEL_CONFIG_FILE).is_file():
        return PerceptionPipeline.from_model_dir(folder, device=device, load_language=with_language), str(
            folder
        )
    if model:
        raise FileNotFoundError(f"model folder not found: {model}")
    config = ModelConfig()
    if with_language:
        return PerceptionPipeline.from_config(config, device=device), "fresh trainable parts"
    return PerceptionPipeline.from_config(config, device=device, lm_dim=576), "fresh trainable parts"


def main_bench(args: argparse.Namespace) -> int:
    torch.set_num_threads(max(1, min(os.cpu_count() or 1, 16)))
    batch_sizes = [int(b) for b in str(args.batch_sizes).split(",") if b.strip()]
    pipeline, source = load_pipeline(args.model, args.device, with_language=not args.no_lm)
    print(
        f"# fvp bench on {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"device {pipeline.device}, torch {torch.__version__}"
    )
    print(
        f"# model: {source}; vision {pipeline.config.vision.backend}, adapter {pipeline.config.adapter.kind}"
    )

    per_batch = {b: time_stages(pipeline, b, args.repeats) for b in batch_sizes}
    single = per_batch.get(1) or time_stages(pipeline, 1, args.repeats)
    print("\n## Per-stage latency, batch 1 (median ms)\n")
    print(format_table(["stage", "ms"], [[name, single[name]] for name in (*STAGES, "total")]))
    print("\n## Throughput against batch size\n")
    rows = [
        [b, per_batch[b]["total"], per_batch[b]["total"] / b, 1000.0 * b / per_batch[b]["total"]]
        for b in batch_sizes
    ]
    print(format_table(["batch", "ms per batch", "ms per frame", "frames/s"], rows))

    paths = time_vision_paths(pipeline, args.repeats)
    if paths:
        print("\n## Frozen vision network on the CPU: eager (batch norms folded) vs pre-packed for oneDNN\n")
        print(
            format_table(
                ["eager ms", "pre-packed ms", "speed-up"],
                [[paths["eager_ms"], paths["prepacked_ms"], paths["eager_ms"] / paths["prepacked_ms"]]],
            )
        )

    weighting = time_fusion_weighting(pipeline, args.repeats)
    print("\n## Fusion weighting: trainable part (IMU encoder, fusion, resampler, head), batch 1\n")
    print(format_table(["fixed alpha ms", "learned gate ms", "gate adds ms"],
                       [[weighting["fixed_ms"], weighting["gate_ms"], weighting["gate_added_ms"]]]))

    result: dict[str, Any] = {
        "device": str(pipeline.device),
        "fusion_weighting_ms": weighting,
        "model": source,
        "stages_ms": {name: single[name] for name in STAGES},
        "encode_total_ms": single["total"],
        "vision_paths_ms": paths,
        "throughput": {
            str(b): {
                "ms_per_batch": per_batch[b]["total"],
                "frames_per_s": 1000.0 * b / per_batch[b]["total"],
            }
            for b in batch_sizes
        },
    }
    if pipeline.language is not None:
        lm = time_language(pipeline, args.repeats)
        print("\n## Frozen language model (greedy, KV cache)\n")
        print(
            format_table(
                ["tokens", "ms per answer", "tokens/s"],
                [[int(lm["lm_tokens"]), lm["lm_answer_ms"], lm["lm_tokens_per_s"]]],
            )
        )
        result.update(lm)
        first = time_first_token(pipeline, args.repeats)
        print("\n## Time to first answer token (median ms)\n")
        print(
            format_table(
                ["prompt tokens", "full prompt ms", "cached prefix ms", "speed-up"],
                [[first["prompt_tokens"], first["full_prompt_ms"], first["cached_prefix_ms"],
                  first["full_prompt_ms"] / first["cached_prefix_ms"]]],
            )
        )  # fmt: skip
        if "with_reader_ms" in first:
            print(
                f"\nwith the question reader (as the node answers): {first['with_reader_ms']:.1f} ms, "
                f"of which the reader {first['reader_only_ms']:.1f} ms"
            )
        result["first_token"] = first
        step = time_stage2(pipeline, max(3, args.repeats // 3))
        print(f"\n## Stage-2 LM step ({step['lm_batch_size']} samples, forward + backward, median)\n")
        print(
            format_table(
                ["prompt", "s per step", "steps/s", "samples/s"],
                [
                    [name.replace("_", " "), step[f"{name}_s_per_step"], step[f"{name}_steps_per_s"],
                     step[f"{name}_samples_per_s"]]
                    for name in ("full_prompt", "cached_prefix")
                ],
            )
        )  # fmt: skip
        result["stage2"] = step
    if not args.no_system:
        result["system"] = run_system(args, pipeline, source)
        headline = ("ros_overhead_ratio", "answer_overhead_ratio", "peak_rss_mb")
        result.update({k: v for k, v in result["system"].items() if k in headline})
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwrote {args.json}")
    return 0


def run_system(args: argparse.Namespace, pipeline: PerceptionPipeline, source: str) -> dict[str, Any]:
    """The nodes against a live sensor stream (system_bench); needs a model folder the nodes can load."""
    import tempfile

    from frozen_vlm_perception.nodes.ros_domain import default_ros_domain
    from frozen_vlm_perception.tools.system_bench import SystemSettings, format_system, measure_system

    default_ros_domain()
    threads = args.node_threads if args.node_threads is not None else shipped_torch_threads()
    with tempfile.TemporaryDirectory(prefix="fvp-bench-") as tmp:
        model_dir = source
        if not (Path(source) / MODEL_CONFIG_FILE).is_file():  # fresh trainable parts: save them for the nodes
            model_dir = str(Path(tmp) / "model")
            pipeline.save(model_dir)
        settings = SystemSettings(
            model_dir=model_dir,
            device=str(pipeline.device),
            torch_threads=threads,
            seconds=args.seconds,
            camera_hz=args.camera_hz,
            imu_hz=args.imu_hz,
            questions=0 if args.no_lm else args.questions,
            answering_s=args.answering_seconds,
            node_params=tuple(args.node_param),
        )
        result = measure_system(settings, pipeline=pipeline, log=lambda line: print(line, flush=True))
    print(format_system(result))
    return result


def shipped_torch_threads() -> int:
    """The nodes' ``torch_threads`` in the shipped config/perception.yaml (what `fvp run` uses)."""
    import yaml

    from frozen_vlm_perception.nodes.runner import DEFAULT_PARAMS_FILE

    document = yaml.safe_load(package_file(DEFAULT_PARAMS_FILE).read_text())
    return int(document["/**/perception"]["ros__parameters"]["torch_threads"])
