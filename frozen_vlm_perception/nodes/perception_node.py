"""Perception node: camera frames + IMU -> an activity label and the scene latents, per processed frame.

Node name ``perception``; with the default names its interfaces are::

    subscribes  /camera/image_raw     sensor_msgs/Image      (parameter camera.topic, remappable)
                /imu/data             sensor_msgs/Imu        (parameter imu.topic, remappable)
                /reasoning/answered   AnsweredQuestion       (parameter overlay.answers_topic): overlay text
    publishes   /perception/activity  ActivityLabel          stamp + frame_id = the camera frame's
                /perception/latents   SceneLatents           what the reasoning node feeds the LM
                /perception/overlay   sensor_msgs/Image      rgb8: the frame, labelled, with the latest
                                                             answer; only drawn while subscribed
                /diagnostics          diagnostic_msgs/DiagnosticArray, every diagnostics_period_s

How a frame flows (the executor arrangement: docs/ARCHITECTURE.md sections 2 and 5): the image callback
only drops the message into a one-slot mailbox (a frame still waiting there is replaced and counted
``superseded``), the IMU callback converts one sample into the ImuBuffer. A worker thread of the
node's own takes the newest frame, waits at most ``sync.max_wait_s`` for IMU samples up to the frame's
stamp, pairs the frame with the IMU window ending at that stamp, runs the pipeline and publishes.
So a slow model costs labels, never latency: no backlog is ever processed.

Modes (parameter ``fusion.mode``): ``fused`` uses both and falls back to vision-only, saying so in
``source``, when the IMU is silent (no sample for ``sync.imu_silence_s`` by the node's clock) or the
window cannot be trusted (the reason is counted); ``vision`` ignores the IMU; ``imu`` still needs
the camera topic, whose frames then only provide the timing (pixels are not even converted): one
label per frame, from the IMU window ending at the frame's stamp.

Failures are counted, never fatal (``drop:<reason>`` in /diagnostics): bad images and IMU samples by
conversion reason, messages DDS reports lost before any callback saw them
(``drop:<camera|imu>:lost_in_transport``), model errors (``drop:inference_error``). A CUDA
out-of-memory error drops the frame (``drop:inference_error:oom``) and empties the CUDA cache; after
``oom_cpu_fallback_after`` of them in a row the model is reloaded on the CPU and labelling goes on there.

QoS: ``camera.qos_reliability`` / ``imu.qos_reliability`` default to ``auto``: the subscription is
best effort while a publisher on its topic is best effort (a driver using SensorDataQoS), reliable
otherwise, re-checked every ``AUTO_QOS_CHECK_S`` so that drivers started after the node are heard too;
the choice is logged and reported in /diagnostics (``camera_qos_reliability``, ``imu_qos_reliability``).
``reliable`` / ``best_effort`` fix it; a publisher that cannot reach a fixed setting is logged once,
naming the parameter.

Lifecycle: configure loads the model and creates the publishers and subscriptions; activate starts
the worker (reloading the model if a deactivate released it); deactivate stops the worker and frees
the model; cleanup and shutdown release everything. Parameters are read at configure, except
``fusion.mode`` and ``fusion.alpha``, which apply to the next frame when changed. Both default to
the model folder's own values (``model`` / ``-1``): alpha is chosen on the model's validation split,
and a model trained with a gate weighs each frame itself (an explicit alpha overrides the gate).
/diagnostics reports the share of vision the fused frames got (``period_vision_weight_*``).
"""

from __future__ import annotations

import array
import gc
import threading
import time
from typing import Any

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from sensor_msgs.msg import Image, Imu

from frozen_vlm_perception.config import (
    FUSION_MODES,
    ConfigError,
    FusionConfig,
    ImuConfig,
    SyncConfig,
    from_dict,
)
from frozen_vlm_perception.conversions import (
    ConversionError,
    image_to_rgb,
    imu_to_sample,
    rgb_to_image,
    stamp_to_seconds,
    to_time_msg,
)
from frozen_vlm_perception.nodes.device import free_cuda_cache, is_out_of_memory
from frozen_vlm_perception.nodes.diagnostics import Counters, delta, diagnostic_array
from frozen_vlm_perception.nodes.gc_pauses import GcPauses
from frozen_vlm_perception.nodes.lifecycle import TeardownReleases, log_transition_errors, spin_lifecycle_main
from frozen_vlm_perception.nodes.parameters import (
    ParamSpec,
    apply_torch_threads,
    check_topic_names,
    dataclass_specs,
    declare_parameters,
    parameter_values,
    refusal,
    section,
    torch_threads_spec,
)
from frozen_vlm_perception.nodes.qos import (
    AUTO_QOS_CHECK_S,
    RELIABILITY_AUTO,
    SUBSCRIPTION_RELIABILITY_CHOICES,
    FollowingSubscription,
)
from frozen_vlm_perception.overlay import DEFAULT_SCALE as OVERLAY_DEFAULT_SCALE
from frozen_vlm_perception.overlay import SCALE_RANGE as OVERLAY_SCALE_RANGE
from frozen_vlm_perception.overlay import OverlayText, render_overlay
from frozen_vlm_perception.paths import DEFAULT_MODEL_DIR, resolve_model_dir
from frozen_vlm_perception.sync import ImuBuffer, WindowUnavailable
from frozen_vlm_perception_interfaces.msg import ActivityLabel, AnsweredQuestion, SceneLatents

NODE_NAME = "perception"

FROM_MODEL = "model"
ALPHA_FROM_MODEL = -1.0
_SYNC_DOCS = {  # the defaults and ranges are SyncConfig's
    "buffer_s": "Seconds of IMU history kept for pairing.",
    "max_wait_s": "Longest a frame waits for IMU samples up to its stamp before falling back.",
    "max_lag_s": "The newest IMU sample may be this much older than the frame (its value is held): the frame "
                 "does not wait for the sample that follows it.",
    "max_gap_s": "A window with a larger hole between IMU samples is not trusted (seconds).",
    "min_coverage": "Share of the IMU window that samples must cover.",
    "imu_silence_s": "No IMU sample for this long (node clock, so sim time works): vision-only fallback.",
}

# Subscription QoS defaults. Reliability auto: best effort when a publisher on the topic is best
# effort (SensorDataQoS drivers; a reliable subscription would receive nothing from them), reliable
# otherwise, since over loopback best-effort lost about 30% of 900 KB images (resolve_reliability in
# nodes/qos.py; followed while the node runs). Camera depth 2: the mailbox keeps only the newest
# frame anyway, a deeper DDS queue would only hold frames that are superseded on arrival. IMU depth
# 100 (0.5 s at 200 Hz): an executor hiccup must not lose samples, every one of them is used.
PARAMS: list[ParamSpec] = [
    ParamSpec("autostart", True, "Configure and activate at start (console script and runner)."),
    ParamSpec("model_dir", DEFAULT_MODEL_DIR,
              "Model folder (config.json + model.safetensors); relative paths are tried in the working "
              "directory, then in the package's data folder. Read at configure."),
    ParamSpec("device", "auto", "Torch device: auto (CUDA when available), cpu, cuda, cuda:1, ..."),
    torch_threads_spec(),
    # Fusion belongs to the model (alpha is chosen on its validation split): the node takes the model
    # folder's values unless these are set to something else.
    ParamSpec("fusion.mode", FROM_MODEL, "model: the model folder's mode; fused: camera + IMU; vision: "
              "camera only; imu: IMU only (camera frames then only give the timing).",
              choices=(FROM_MODEL, *FUSION_MODES)),
    ParamSpec("fusion.alpha", ALPHA_FROM_MODEL, "Weight of vision in the fusion (the IMU gets 1 - alpha); "
              f"{ALPHA_FROM_MODEL:g}: the model folder's (its alpha chosen on validation data, or its "
              "per-frame gate).", (ALPHA_FROM_MODEL, 1.0)),
    ParamSpec("camera.topic", "/camera/image_raw", "sensor_msgs/Image input."),
    ParamSpec("camera.qos_depth", 2, "Keep-last depth of the camera subscription.", (1, 1000)),
    ParamSpec("camera.qos_reliability", RELIABILITY_AUTO,
              "Camera subscription reliability. auto: best_effort while a publisher on the topic is best "
              "effort (e.g. SensorDataQoS drivers, also ones started later), else reliable; reliable | "
              "best_effort: fixed.", choices=SUBSCRIPTION_RELIABILITY_CHOICES),
    ParamSpec("imu.topic", "/imu/data", "sensor_msgs/Imu input."),
    ParamSpec("imu.qos_depth", 100, "Keep-last depth of the IMU subscription.", (1, 10000)),
    ParamSpec("imu.qos_reliability", RELIABILITY_AUTO,
              "IMU subscription reliability: auto (follow the publishers, as camera.qos_reliability), "
              "reliable or best_effort.", choices=SUBSCRIPTION_RELIABILITY_CHOICES),
    *dataclass_specs("sync", SyncConfig, _SYNC_DOCS),
    ParamSpec("diagnostics_period_s", 1.0, "Period of /diagnostics and of the drop summary log.",
              (0.1, 3600.0)),
    ParamSpec("oom_cpu_fallback_after", 3,
              "After this many consecutive CUDA out-of-memory errors, reload the model on the CPU and go on "
              "there (slower, but labels continue); 0: never, keep trying on CUDA. Every out-of-memory frame "
              "is counted as drop:inference_error:oom.", (0, 1_000_000)),
    # The overlay image (/perception/overlay) costs nothing unless something subscribes to it.
    ParamSpec("overlay.scale", OVERLAY_DEFAULT_SCALE,
              "Size of /perception/overlay relative to the camera frame (1.0: a 640x480 frame gives a "
              "640x480 overlay; 0.5 quarters its bytes). Read at configure.", OVERLAY_SCALE_RANGE),
    ParamSpec("overlay.answers_topic", "reasoning/answered",
              "AnsweredQuestion input: the latest answered question is drawn on the overlay (relative: "
              "inside the namespace)."),
]
PARAM_NAMES = frozenset(s.name for s in PARAMS)

# Drops logged at most this often (the counters keep every one).
LOG_THROTTLE_S = 5.0


class LatestFrame:
    """One-slot mailbox between the image callback and the worker: put() replaces, take() empties."""

    def __init__(self):
        self._cond = threading.Condition()
        self._item: Any = None

    def put(self, item: Any) -> bool:
        """Store ``item``; True when it replaced a frame the worker had not taken yet."""
        with self._cond:
            replaced = self._item is not None
            self._item = item
            self._cond.notify()
        return replaced

    def take(self, timeout: float) -> Any:
        """The newest item (None after ``timeout`` seconds without one)."""
        with self._cond:
            if self._item is None:
                self._cond.wait(timeout)
            item, self._item = self._item, None
        return item

    def clear(self) -> None:
        with self._cond:
            self._item = None
            self._cond.notify_all()


class PerceptionNode(TeardownReleases, LifecycleNode):
    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any):
        super().__init__(node_name, **kwargs)
        # Every parameter first, with its descriptor, before any publisher or subscription.
        declare_parameters(self, PARAMS)
        self.add_on_set_parameters_callback(self._on_set_parameters)

        self.pipeline = None  # PerceptionPipeline while configured/active (None after deactivate)
        self.counters = Counters()
        self._values: dict[str, Any] = {}
        self._imu_config: ImuConfig | None = None
        self._sync: SyncConfig | None = None
        self._fusion = FusionConfig()  # what the worker runs; the model's values once configured
        self._fusion_request = {"mode": self.get_parameter("fusion.mode").value,
                                "alpha": self.get_parameter("fusion.alpha").value}
        self._model_path = None
        self._imu: ImuBuffer | None = None
        self._imu_event = threading.Event()  # set by every accepted IMU sample
        self._last_imu_ns: int | None = None  # node clock at the last accepted IMU sample
        self._mailbox = LatestFrame()
        self._active = False
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._pub_activity = self._pub_latents = self._pub_diagnostics = None
        self._sub_camera = self._sub_imu = None  # FollowingSubscription (reliability may follow publishers)
        self._qos_timer = None
        self._diag_timer = None
        self._pub_overlay = self._sub_answers = None
        self._latest_answer: AnsweredQuestion | None = None  # drawn on the overlay; one attribute swap
        self.counters.add("overlays_published", 0)  # in /diagnostics from the start: a zero reads as zero
        self._last_counts: dict[str, int] = {}
        self._stage_ms: dict[str, float] = {}  # summed per stage since the last diagnostics
        self._latency_ms: list[float] = []  # mailbox -> published, since the last diagnostics
        self._vision_weights: list[float] = []  # share of vision per fused frame, since the last diagnostics
        self._stats_lock = threading.Lock()
        self._oom_streak = 0  # consecutive out-of-memory errors of the worker
        self._gc_pauses = GcPauses().install()  # collections stop every thread: reported per period
        self._fallback_note = ""  # set when the model was moved to the CPU after CUDA out-of-memory

    # ----------------------------------------------------------------------------------------------
    # Lifecycle

    @log_transition_errors
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            values = parameter_values(self, PARAMS)
            check_topic_names(values, ("camera.topic", "imu.topic", "overlay.answers_topic"))
            self._sync = from_dict(SyncConfig, section(values, "sync"), where="sync")
            self._sync.validate()
            self._model_path = resolve_model_dir(values["model_dir"])
        except (ValueError, ConfigError, FileNotFoundError) as err:
            self.get_logger().error(f"configure failed: {err}")
            return TransitionCallbackReturn.FAILURE
        self._values = values
        self._fusion_request = {"mode": values["fusion.mode"], "alpha": values["fusion.alpha"]}
        apply_torch_threads(self, values["torch_threads"])
        if not self._load_model():
            return TransitionCallbackReturn.FAILURE
        try:
            self._fusion = effective_fusion(self._fusion_request, self.pipeline.config.fusion)
        except ConfigError as err:
            self.get_logger().error(f"configure failed: {err}")
            self._release_model()
            return TransitionCallbackReturn.FAILURE
        fusion = self._fusion
        self._imu = ImuBuffer.from_config(self._imu_config, self._sync)

        self._pub_activity = self.create_lifecycle_publisher(ActivityLabel, "~/activity", 10)
        self._pub_latents = self.create_lifecycle_publisher(SceneLatents, "~/latents", 10)
        # The overlay: drawn only while this publisher has a subscriber (_publish_overlay). Depth 1: a
        # viewer wants the newest picture, never a queue of 1 MB images.
        self._pub_overlay = self.create_lifecycle_publisher(Image, "~/overlay", 1)
        self._latest_answer = None
        self._sub_answers = self.create_subscription(
            AnsweredQuestion, values["overlay.answers_topic"], self._on_answered, 10)
        # Diagnostics are an ordinary publisher: an inactive node still says that it is inactive.
        self._pub_diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        # Reliability 'auto' follows the publishers on the topic (nodes/qos.py FollowingSubscription).
        self._sub_camera = FollowingSubscription(
            self, Image, values["camera.topic"], self._on_image, values["camera.qos_depth"],
            values["camera.qos_reliability"], "camera.qos_reliability", on_lost=self._lost_counter("camera"),
        )
        self._sub_imu = FollowingSubscription(
            self, Imu, values["imu.topic"], self._on_imu, values["imu.qos_depth"],
            values["imu.qos_reliability"], "imu.qos_reliability", on_lost=self._lost_counter("imu"),
        )
        if self._sub_camera.auto or self._sub_imu.auto:
            self._qos_timer = self.create_timer(AUTO_QOS_CHECK_S, self._follow_publishers_qos)
        self._diag_timer = self.create_timer(values["diagnostics_period_s"], self._publish_diagnostics)
        self.get_logger().info(
            f"configured: model {self._model_path}, fusion {fusion.mode} alpha {fusion.alpha:g}, camera "
            f"{self._sub_camera.topic_name} ({self._sub_camera.reliability}), imu {self._sub_imu.topic_name} "
            f"({self._sub_imu.reliability})"
        )
        return super().on_configure(state)

    @log_transition_errors
    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.pipeline is None and not self._load_model():  # released by a deactivate
            return TransitionCallbackReturn.FAILURE
        self._mailbox.clear()
        self._imu.clear()  # samples from before the pause would only pair with stale frames
        self._last_imu_ns = None
        self._oom_streak = 0
        self._fallback_note = ""
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._run_worker, args=(self._stop,), name="perception-worker",
                                        daemon=True)
        self._active = True
        self._worker.start()
        return super().on_activate(state)

    @log_transition_errors
    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._stop_worker()
        self._release_model()
        return super().on_deactivate(state)

    def release(self) -> None:
        """Stop the worker and free the model (safe in any state, also after rclpy shut down)."""
        self._stop_worker()
        self._release_model()

    def destroy_node(self) -> None:
        self._gc_pauses.remove()
        super().destroy_node()

    def _load_model(self) -> bool:
        from frozen_vlm_perception.pipeline import PerceptionPipeline

        start = time.perf_counter()
        try:
            self.pipeline = PerceptionPipeline.from_model_dir(
                self._model_path, device=self._values["device"], load_language=False
            )
        except Exception as err:  # wrong shapes, missing weights, bad device: say it, stay unconfigured
            self.get_logger().error(f"cannot load the model from {self._model_path}: {err}")
            return False
        self._imu_config = self.pipeline.config.imu
        self.get_logger().info(
            f"model loaded in {time.perf_counter() - start:.1f} s on {self.pipeline.device} "
            f"({self.pipeline.config.vision.backend}, {self.pipeline.config.adapter.kind})"
        )
        return True

    def _release_model(self) -> None:
        if self.pipeline is None:
            return
        device = self.pipeline.device
        self.pipeline = None
        gc.collect()  # the pipeline holds reference cycles (torch modules): free the weights now
        if device.type == "cuda":
            import torch

            torch.cuda.empty_cache()
        if self.context.ok():  # after Ctrl-C the context is gone and so is /rosout
            self.get_logger().info("model released")

    def _stop_worker(self) -> None:
        self._active = False
        self._stop.set()
        self._mailbox.clear()  # wakes the worker
        self._imu_event.set()
        worker, self._worker = self._worker, None
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout=30.0)  # at most one inference in flight
            if worker.is_alive():
                self.get_logger().error("the worker did not stop within 30 s")

    def _destroy_entities(self) -> None:
        if self._qos_timer is not None:
            self.destroy_timer(self._qos_timer)
            self._qos_timer = None
        for sub in (self._sub_camera, self._sub_imu):
            if sub is not None:
                sub.destroy()
        if self._sub_answers is not None:
            self.destroy_subscription(self._sub_answers)
        for pub in (self._pub_activity, self._pub_latents, self._pub_overlay):
            if pub is not None:
                self.destroy_lifecycle_publisher(pub)
        self._sub_answers = self._pub_overlay = None
        if self._pub_diagnostics is not None:
            self.destroy_publisher(self._pub_diagnostics)
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
        self._sub_camera = self._sub_imu = self._pub_activity = self._pub_latents = None
        self._pub_diagnostics = self._diag_timer = None
        self._imu = None

    def _on_set_parameters(self, params) -> SetParametersResult:
        """Refuse values outside their choices; fusion settings take effect on the next frame."""
        problem = refusal(params, PARAMS)
        if problem:
            return SetParametersResult(successful=False, reason=problem)
        request = dict(self._fusion_request)
        for param in params:
            if param.name.startswith("fusion."):
                request[param.name.split(".", 1)[1]] = param.value
        pipeline = self.pipeline
        model_fusion = pipeline.config.fusion if pipeline is not None else FusionConfig()
        try:
            candidate = effective_fusion(request, model_fusion)
        except ConfigError as err:
            return SetParametersResult(successful=False, reason=str(err))
        self._fusion_request = request
        self._fusion = candidate  # one attribute swap: the worker reads a consistent pair
        return SetParametersResult(successful=True)

    # ----------------------------------------------------------------------------------------------
    # Callbacks: convert or buffer, and return (they run on the executor; the worker does the rest)

    def _on_image(self, msg) -> None:
        self.counters.add("frames_received")
        if not self._active:
            self.counters.add("drop:inactive")
            return
        # Conversion waits for the worker: a frame that gets superseded is never converted at all.
        if self._mailbox.put((msg, time.perf_counter())):
            self._drop("superseded")

    def _on_imu(self, msg) -> None:
        imu = self._imu
        if not self._active or imu is None:
            return
        try:
            t, sample = imu_to_sample(msg)
        except ConversionError as err:
            self._drop(f"imu:{err.reason}", str(err))
            return
        if imu.add(t, sample):  # its own drops (out of order, duplicates) are in imu.drops
            self._last_imu_ns = self.get_clock().now().nanoseconds
            self._imu_event.set()

    # ----------------------------------------------------------------------------------------------
    # Worker

    def _run_worker(self, stop: threading.Event) -> None:
        while not stop.is_set():
            item = self._mailbox.take(timeout=0.2)
            if item is None or stop.is_set():
                continue
            out_of_memory = None
            try:
                self._process(*item, stop)
            except Exception as err:  # a model error on odd input must not end the worker
                if is_out_of_memory(err):
                    out_of_memory = str(err)  # handled below, once the traceback (and its tensors) is freed
                else:
                    self._drop("inference_error", f"{type(err).__name__}: {err}")
            if out_of_memory is not None:
                self._on_out_of_memory(out_of_memory, stop)

    def _on_out_of_memory(self, err: str, stop: threading.Event) -> None:
        """Count and log the dropped frame, free the CUDA cache, and after ``oom_cpu_fallback_after``
        consecutive CUDA out-of-memory errors move the model to the CPU (the worker goes on there)."""
        pipeline = self.pipeline
        device = pipeline.device if pipeline is not None else None
        self._oom_streak += 1
        self.counters.add("drop:inference_error:oom")
        free_cuda_cache(device)
        text = f"out of memory on {device} ({self._oom_streak} in a row); frame dropped: {err}"
        if self._oom_streak == 1:  # the first of a run always shows; repeats are throttled
            self.get_logger().error(text)
        else:
            self.get_logger().error(text, throttle_duration_sec=LOG_THROTTLE_S)
        limit = int(self._values.get("oom_cpu_fallback_after", 0))
        if device is None or device.type != "cuda" or limit == 0 or self._oom_streak < limit:
            return
        self.get_logger().error(
            f"{self._oom_streak} consecutive CUDA out-of-memory errors: reloading the model on the CPU "
            "(labels continue, slower; deactivate + activate to try CUDA again)"
        )
        from frozen_vlm_perception.pipeline import PerceptionPipeline

        try:
            cpu = PerceptionPipeline.from_model_dir(
                self._model_path, device="cpu", load_language=False
            )
        except Exception as load_err:  # e.g. the host is out of memory too
            self.counters.add("device_fallback_failed")
            self.get_logger().error(
                f"cannot fall back to the CPU ({type(load_err).__name__}: {load_err}); frames keep being "
                "tried on CUDA and dropped while memory is short"
            )
            self._oom_streak = 0  # try CUDA for another round before attempting the fallback again
            return
        if stop.is_set() or self.pipeline is not pipeline:  # deactivated meanwhile: keep nothing
            return
        self.pipeline = cpu
        self._oom_streak = 0
        self._fallback_note = f"running on the CPU after repeated out-of-memory errors on {device}"
        self.counters.add("device_fallback:cpu")
        del pipeline
        gc.collect()
        free_cuda_cache(device)

    def _process(self, msg, received: float, stop: threading.Event) -> None:
        pipeline, fusion = self.pipeline, self._fusion
        if pipeline is None:
            return
        stamp = msg.header.stamp
        node_ms: dict[str, float] = {}  # the worker's own steps around the pipeline, for /diagnostics
        started = time.perf_counter()
        frame = None
        if fusion.mode != "imu":
            try:
                frame = image_to_rgb(msg)
            except ConversionError as err:
                self._drop(f"camera:{err.reason}", str(err))
                return
        node_ms["node:convert"] = (time.perf_counter() - started) * 1000.0
        window = None
        if fusion.mode != "vision":
            started = time.perf_counter()
            window, reason = self._imu_window(stamp_to_seconds(stamp), stop)
            node_ms["node:imu_window"] = (time.perf_counter() - started) * 1000.0
            if window is None:
                if fusion.mode == "imu":
                    self._drop(f"imu_window:{reason}")
                    return
                self.counters.add(f"vision_fallback:{reason}")
        scene = pipeline.encode_one(
            frame,
            None if window is None else window.data,
            mode=fusion.mode,
            alpha=fusion.alpha if fusion.weighting == "fixed" else None,  # None: the model's gate
        )
        if stop.is_set():
            return  # deactivating: the lifecycle publishers are about to be disabled
        started = time.perf_counter()
        self._publish(msg.header, scene, window)
        node_ms["node:publish"] = (time.perf_counter() - started) * 1000.0
        with self._stats_lock:
            for name, ms in (*scene.timings_ms.items(), *node_ms.items()):
                self._stage_ms[name] = self._stage_ms.get(name, 0.0) + ms
            self._latency_ms.append((time.perf_counter() - received) * 1000.0)
            if scene.source == "fused":
                self._vision_weights.append(scene.vision_weight)
        self.counters.add("frames_labelled")
        self.counters.add(f"source:{scene.source}")
        self._oom_streak = 0
        if not stop.is_set():  # after the label is out: the overlay never delays it
            self._publish_overlay(msg, frame, scene)

    def _imu_window(self, t_end: float, stop: threading.Event):
        """(window, None) or (None, reason). Waits at most max_wait_s for samples up to ``t_end``."""
        sync = self._sync
        last = self._last_imu_ns
        if last is None or self.get_clock().now().nanoseconds - last > sync.imu_silence_s * 1e9:
            return None, "imu_silent"  # don't wait max_wait_s on every frame for an IMU that is gone
        deadline = time.monotonic() + sync.max_wait_s
        while True:
            self._imu_event.clear()  # before looking: a sample arriving after the look wakes the wait
            try:
                return self._imu.window(t_end, self._imu_config, sync), None
            except WindowUnavailable as err:
                remaining = deadline - time.monotonic()
                if err.reason != "not_yet" or remaining <= 0 or stop.is_set():
                    return None, err.reason
            self._imu_event.wait(remaining)

    def _publish(self, header, scene, window) -> None:
        label = ActivityLabel()
        label.header = header  # the camera frame's stamp and frame_id, not the time of inference
        label.label = scene.label
        label.confidence = scene.confidence
        label.candidate_labels = list(scene.labels)
        label.scores = _floats(scene.scores)
        label.source = scene.source
        self._pub_activity.publish(label)

        latents = SceneLatents()
        latents.header = header
        latents.num_latents, latents.dim = (int(n) for n in scene.latents.shape)
        latents.data = _floats(scene.latents)
        latents.pooled = _floats(scene.pooled)
        latents.modalities = list(scene.modalities)
        if window is not None:
            latents.imu_window_start = to_time_msg(window.start)
            latents.imu_window_end = header.stamp  # exactly the frame's stamp, no float round trip
        self._pub_latents.publish(latents)

    def _on_answered(self, msg: AnsweredQuestion) -> None:
        self._latest_answer = msg

    def _publish_overlay(self, msg, frame, scene) -> None:
        """Draw and publish /perception/overlay for this frame, only while something subscribes to it.

        With no subscriber this is one get_subscription_count() call per frame: nothing is converted,
        scaled or drawn. A drawing failure is counted (``overlay_error``), never raised."""
        pub = self._pub_overlay
        if pub is None or pub.get_subscription_count() == 0:
            return
        try:
            if frame is None:  # fusion.mode imu: the pixels were not needed for the label
                frame = image_to_rgb(msg)
            answer = self._latest_answer
            text = OverlayText(scene.label, float(scene.confidence), scene.source)
            if answer is not None:
                text = OverlayText(scene.label, float(scene.confidence), scene.source, answer.question,
                                   answer.answer, answer.grounding, answer.flagged)
            image = render_overlay(frame, text, self._values["overlay.scale"])
            out = rgb_to_image(image, stamp=msg.header.stamp, frame_id=msg.header.frame_id)
        except Exception as err:  # e.g. an odd frame: the label is out already, the overlay is skipped
            self.counters.add("overlay_error")
            self.get_logger().warning(f"overlay not drawn: {type(err).__name__}: {err}",
                                      throttle_duration_sec=LOG_THROTTLE_S)
            return
        pub.publish(out)
        self.counters.add("overlays_published")

    def _follow_publishers_qos(self) -> None:
        """Timer: 'auto' subscriptions take the reliability the publishers now offer (logged on change)."""
        for sub in (self._sub_camera, self._sub_imu):
            if sub is not None:
                sub.check()

    def _lost_counter(self, kind: str):
        """Counts messages DDS lost before they reached a callback (``drop:<kind>:lost_in_transport``)."""

        def lost(n: int) -> None:
            self.counters.add(f"drop:{kind}:lost_in_transport", n)
            self.get_logger().warning(
                f"{n} {kind} message(s) lost in transport (counted as drop:{kind}:lost_in_transport)",
                throttle_duration_sec=LOG_THROTTLE_S,
            )

        return lost

    def _drop(self, reason: str, detail: str = "") -> None:
        self.counters.add(f"drop:{reason}")
        if reason != "superseded":  # superseded frames are the design working, not a problem
            self.get_logger().warning(
                f"dropped a message ({reason}){': ' + detail if detail else ''}",
                throttle_duration_sec=LOG_THROTTLE_S,
            )

    # ----------------------------------------------------------------------------------------------
    # Diagnostics

    def diagnostics(self) -> tuple[str, str, list[tuple[str, Any]]]:
        """(level, message, key/values): totals since start plus what happened in the last period."""
        counts = self.counters.snapshot()
        imu = self._imu
        if imu is not None:  # the buffer counts its own drops (out of order, duplicate stamps, ...)
            for reason, n in imu.drop_counts().items():
                counts[f"drop:imu:{reason}"] = counts.get(f"drop:imu:{reason}", 0) + n
        with self._stats_lock:
            stage_ms, self._stage_ms = self._stage_ms, {}
            latency, self._latency_ms = self._latency_ms, []
            vision_weights, self._vision_weights = self._vision_weights, []
        new, self._last_counts = delta(counts, self._last_counts), counts
        received, labelled = new.get("frames_received", 0), new.get("frames_labelled", 0)
        pipeline = self.pipeline
        values: list[tuple[str, Any]] = [
            ("state", "active" if self._active else "inactive"),
            ("model_loaded", pipeline is not None),
            ("device", str(pipeline.device) if pipeline is not None else ""),
            ("fusion_mode", self._fusion.mode),
            ("fusion_alpha", self._fusion.alpha),
            ("fusion_weighting", self._fusion.weighting),  # gate: the model weighs each frame itself
            # What the subscriptions use now ('auto' follows the publishers on the topic).
            ("camera_qos_reliability", self._sub_camera.reliability if self._sub_camera else ""),
            ("imu_qos_reliability", self._sub_imu.reliability if self._sub_imu else ""),
            # Bounded buffers, reported so that a soak test can see that they stay bounded.
            ("imu_buffer_samples", len(imu) if imu is not None else 0),
            ("period_frames_received", received),
            ("period_frames_labelled", labelled),
        ]
        if latency:  # frame taken from the subscription -> label published (the node's own share)
            values += [("period_latency_ms_p50", float(np.percentile(latency, 50))),
                       ("period_latency_ms_p99", float(np.percentile(latency, 99))),
                       ("period_latency_ms_max", float(np.max(latency)))]
        values += GcPauses.summary(self._gc_pauses.take())
        if vision_weights:  # which sensor the robot trusted (fused frames; 1 = vision only)
            values += [("period_vision_weight_mean", float(np.mean(vision_weights))),
                       ("period_vision_weight_min", float(np.min(vision_weights))),
                       ("period_vision_weight_max", float(np.max(vision_weights)))]
        values += [(f"period_stage_ms_mean:{k}", v / max(labelled, 1)) for k, v in sorted(stage_ms.items())]
        values += sorted(counts.items())  # totals: frames, drops by reason, sources, fallbacks

        level, message = "ok", "labelling frames" if self._active else "inactive"
        if self._active and received and not labelled:
            level, message = "warn", "frames arrive but none was labelled in the last period"
        fallbacks = {k: v for k, v in new.items() if k.startswith("vision_fallback:")}
        if fallbacks and level == "ok":
            level, message = "warn", f"IMU unusable, vision-only fallback: {fallbacks}"
        if new.get("drop:inference_error:oom"):
            level, message = "error", f"out of memory: {new['drop:inference_error:oom']} frame(s) dropped"
        elif self._fallback_note and level == "ok":
            level, message = "warn", self._fallback_note
        drops = {k: v for k, v in new.items() if k.startswith("drop:") and k != "drop:superseded"}
        if drops:
            self.get_logger().info(f"drops in the last period: {drops}", throttle_duration_sec=LOG_THROTTLE_S)
        return level, message, values

    def _publish_diagnostics(self) -> None:
        level, message, values = self.diagnostics()
        if self._pub_diagnostics is not None:
            self._pub_diagnostics.publish(diagnostic_array(
                self.get_clock().now().to_msg(), f"{self.get_name()}: perception", level, message, values))


def effective_fusion(request: dict[str, Any], model: FusionConfig) -> FusionConfig:
    """The fusion the node runs: the requested mode/alpha, or the model folder's where the request
    says FROM_MODEL / ALPHA_FROM_MODEL (then a gated model weighs each frame with its gate; an explicit
    alpha overrides the gate). Raises ConfigError when the result is not valid."""
    from_model = request["alpha"] == ALPHA_FROM_MODEL
    fusion = FusionConfig(
        mode=model.mode if request["mode"] == FROM_MODEL else request["mode"],
        alpha=model.alpha if from_model else float(request["alpha"]),
        weighting=model.weighting if from_model else "fixed",
    )
    fusion.validate()
    return fusion


def _floats(values: np.ndarray) -> array.array:
    """float32 array -> array('f'): the form rclpy copies into a float32[] field without a Python loop."""
    out = array.array("f")
    out.frombytes(np.ascontiguousarray(values, dtype=np.float32).tobytes())
    return out


def main(args: list[str] | None = None) -> int:
    return spin_lifecycle_main(PerceptionNode, args)


if __name__ == "__main__":
    raise SystemExit(main())


