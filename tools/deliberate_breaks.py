#!/usr/bin/env python3
"""Do the tests bite? Break the implementation on purpose, run the test that names the bug, restore.

Each case edits one package file (exact text replacements), runs its test with pytest and expects it
to FAIL (pytest exit status 1); the file is restored whatever happens. A case whose test still passes
is a test that cannot catch its bug. Run from the repository root, with nothing else editing the
package meanwhile (the broken file is live for every process importing the package):

    .venv/bin/python tools/deliberate_breaks.py            # every case (6 minutes on 2 idle cores)
    .venv/bin/python tools/deliberate_breaks.py --list
    .venv/bin/python tools/deliberate_breaks.py sync_compaction_shifts_samples

A file with uncommitted changes is refused (the restore would otherwise be the only copy of them).
The end-to-end module's tests run in file order on one system, so its cases run the two tests that
start the sensor stream first.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = "frozen_vlm_perception/"
E2E = "test/nodes/test_end_to_end.py"
E2E_START = "before_any or labels_carry"  # the module's first two tests: system up, stream started


@dataclass(frozen=True)
class Break:
    path: str
    edits: tuple[tuple[str, str], ...]  # (exact text, replacement); each text must occur once
    tests: tuple[str, ...]  # pytest arguments


CASES: dict[str, Break] = {
    "sync_compaction_shifts_samples": Break(
        PKG + "sync.py",
        (
            (
                "self._x[:n] = self._x[self._lo : self._hi]",
                "self._x[: n - 1] = self._x[self._lo + 1 : self._hi]",
            ),
        ),
        ("test/test_sync.py::test_concurrent_add_and_window",),
    ),
    "sync_window_reads_samples_outside_the_lock": Break(
        PKG + "sync.py",
        (
            (
                "            t_src = times[i0:i1].copy()\n"
                "            x_src = self._x[self._lo + i0 : self._lo + i1].copy()\n",
                "            t_src = times[i0:i1].copy()\n            lo = self._lo\n"
                "        threading.Event().wait(0.0002)\n        x_src = self._x[lo + i0 : lo + i1].copy()\n",
            ),
        ),
        ("test/test_sync.py::test_concurrent_add_and_window",),
    ),
    "evaluate_swaps_vision_and_imu": Break(
        PKG + "evaluation/evaluate.py",
        (
            (
                "outputs = {mode: run_scene_model(pipeline, samples, mode) for mode in MODES}",
                "outputs = {mode: run_scene_model(pipeline, samples, "
                "{'vision': 'imu', 'imu': 'vision'}.get(mode, mode))"
                " for mode in MODES}",
            ),
        ),
        ("test/evaluation/test_evaluate.py::test_evaluate_counts_what_the_pipeline_predicts",),
    ),
    "evaluate_drops_one_sample": Break(
        PKG + "evaluation/evaluate.py",
        (
            (
                "    samples = embeddings.subset(keep)\n",
                "    keep = keep[1:]\n    samples = embeddings.subset(keep)\n",
            ),
        ),
        ("test/evaluation/test_evaluate.py::test_evaluate_counts_what_the_pipeline_predicts",),
    ),
    "pipeline_answer_ignores_the_scene": Break(
        PKG + "pipeline.py",
        (
            (
                "scene_tokens = torch.from_numpy(np.asarray(scene.latents, dtype=np.float32))"
                ".to(self.device)",
                "scene_tokens = torch.zeros(np.shape(scene.latents)).to(self.device)",
            ),
        ),
        ("test/test_pipeline.py::test_answer_uses_the_frozen_language_model",),
    ),
    "pipeline_vision_mode_keeps_the_imu_but_says_vision": Break(
        PKG + "pipeline.py",
        (
            ('if imu_windows is not None and mode != "vision" else', "if imu_windows is not None else"),
            ("(MODALITY_IMU, has_imu[i])", '(MODALITY_IMU, has_imu[i] and mode != "vision")'),
        ),
        ("test/test_pipeline.py::test_mode_overrides_drop_a_modality",),
    ),
    "sync_default_changed": Break(
        PKG + "config.py",
        (("max_gap_s: float = 0.25", "max_gap_s: float = 0.3"),),
        ("test/nodes/test_static.py::test_parameter_defaults_are_the_documented_values",),
    ),
    "stage2_saves_the_last_step": Break(
        PKG + "training/adapter.py",
        (
            (
                '    scene_model.load_state_dict(best["state"], strict=False)\n    head_record',
                "    pass\n    head_record",
            ),
        ),
        ("test/training/test_adapter.py::test_stage2_saves_the_best_validation_step_not_the_last",),
    ),
    "unpickler_maps_a_name_to_the_wrong_object": Break(
        PKG + "data/hapt.py",
        (('("numpy", "dtype"): ("numpy", "dtype")', '("numpy", "dtype"): ("numpy", "ndarray")'),),
        (
            "test/reliability/test_security.py::test_hapt_unpickler_resolves_each_allowed_name_to_the_intended_object",
        ),
    ),
    "answer_seconds_is_a_constant": Break(
        PKG + "nn/language.py",
        (
            (
                "        return dataclasses.replace(result, seconds=time.perf_counter() - start)\n",
                "        return dataclasses.replace(result, seconds=0.001)\n",
            ),
        ),
        ("test/nn/test_language.py::test_streaming_is_prefix_consistent_and_ends_with_the_answer",),
    ),
    "action_partials_lag_one_character": Break(
        PKG + "nodes/reasoning_node.py",
        (("AskScene.Feedback(partial_answer=text,", "AskScene.Feedback(partial_answer=text[:-1],"),),
        (E2E, "-k", f"{E2E_START} or action_streams"),
    ),
    "service_latency_is_a_clock_reading": Break(
        PKG + "nodes/reasoning_node.py",
        (
            (
                "        response.latency = time.perf_counter() - start\n",
                "        response.latency = time.perf_counter()\n",
            ),
        ),
        (E2E, "-k", f"{E2E_START} or answers_from_another"),
    ),
    "scene_label_only_from_the_stamp_map": Break(
        PKG + "nodes/reasoning_node.py",
        (("            if record.activity is not None:\n                return record.activity\n", ""),),
        (
            "test/nodes/test_node_inprocess.py::test_a_scene_keeps_its_activity_label_after_the_label_map_forgets_its_stamp",
        ),
    ),
    "failed_cpu_fallback_does_not_start_a_new_round": Break(
        PKG + "nodes/perception_node.py",
        (
            (
                "            self._oom_streak = 0  # try CUDA for another round before attempting "
                "the fallback again\n",
                "",
            ),
        ),
        (
            "test/reliability/test_faults.py::test_a_failed_cpu_fallback_is_counted_and_tried_again_after_another_round",
        ),
    ),
    "answering_oom_not_counted": Break(
        PKG + "nodes/reasoning_node.py",
        (('                    self.counters.add("failed:oom")\n', ""),),
        (
            "test/reliability/test_faults.py::test_out_of_memory_while_answering_fails_that_question_and_the_next_is_answered",
        ),
    ),
    "validation_answers_meet_another_scenes_truth": Break(
        PKG + "training/adapter.py",
        (
            (
                "for row, generation in zip(rows, generations, strict=True):",
                "for row, generation in zip(rows[::-1], generations, strict=True):",
            ),
        ),
        ("test/training/test_adapter.py::test_validation_answers_are_scored_against_their_own_scenes_truth",),
    ),
}


def uncommitted(path: str) -> bool:
    status = subprocess.run(
        ["git", "status", "--porcelain", "--", path], cwd=ROOT, capture_output=True, text=True
    )
    return bool(status.stdout.strip())


def run_case(name: str, case: Break) -> bool:
    """True when the test failed on the break (it bites)."""
    path = ROOT / case.path
    if uncommitted(case.path):
        sys.exit(f"{case.path} has uncommitted changes: commit or stash them first")
    original = path.read_text()
    broken = original
    for old, new in case.edits:
        if broken.count(old) != 1:
            sys.exit(
                f"{name}: the text to break occurs {broken.count(old)} times in {case.path} (the code moved?)"
            )
        broken = broken.replace(old, new)
    start = time.monotonic()
    try:
        path.write_text(broken)
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--no-header",
             *case.tests],
            cwd=ROOT, capture_output=True, text=True,
        )  # fmt: skip
    finally:
        if path.read_text() != broken:
            print(
                f"WARNING: {case.path} changed during the run; restoring the original anyway", file=sys.stderr
            )
        path.write_text(original)
    bites = proc.returncode == 1
    print(
        f"{'bites' if bites else 'DOES NOT BITE'}  {name}  ({time.monotonic() - start:.0f} s, pytest exit "
        f"{proc.returncode})",
        flush=True,
    )
    for line in [ln for ln in proc.stdout.splitlines() if ln.startswith(("E ", "FAILED", "ERROR"))][:4]:
        print(f"    {line[:200]}", flush=True)
    return bites


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cases", nargs="*", help="case names (default: all)")
    parser.add_argument("--list", action="store_true", help="print the cases and the tests they break")
    args = parser.parse_args(argv)
    if args.list:
        for name, case in CASES.items():
            print(f"{name}: {case.path} -> {' '.join(case.tests)}")
        return 0
    unknown = [n for n in args.cases if n not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; see --list")
    results = {name: run_case(name, CASES[name]) for name in args.cases or CASES}
    blunt = [name for name, bites in results.items() if not bites]
    print(
        f"{len(results) - len(blunt)} of {len(results)} breaks caught"
        + (f"; not caught: {blunt}" if blunt else "")
    )
    return 1 if blunt else 0


if __name__ == "__main__":
    sys.exit(main())
