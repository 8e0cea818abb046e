"""Reasoning node: answers questions about perceived scenes with the frozen language model.

Node name ``reasoning``; with the default names its interfaces are::

    subscribes  /perception/latents  SceneLatents   (parameter latents_topic, relative: follows the namespace)
                /perception/activity ActivityLabel  (parameter activity_topic)
    serves      /reasoning/query     QueryScene     question -> answer, in one response
                /reasoning/ask       AskScene       the same as an action, partial answers as feedback,
                                                    cancelable
    publishes   /reasoning/answers   std_msgs/String every answer given (the text only)
                /reasoning/answered  AnsweredQuestion every answer with its question, scene stamp,
                                                    activity and grounding (drawn on /perception/overlay)
                /diagnostics         diagnostic_msgs/DiagnosticArray

The scene subscription only stores the latents in a bounded history (``history_size``), so a long
answer never holds it up. Answers are generated one at a time by a worker thread of the node's own;
questions wait in a bounded queue (``queue_size``) and are refused with "busy" when it is full.

Resent questions: a client whose reply was lost (or slow) sends its QueryScene request again. With the
same non-empty ``request_id`` the resent request joins the question already waiting or being answered,
or gets the answer of one answered recently (the last ``REMEMBERED_REQUESTS``), so a retry never costs
a second generation nor takes a queue slot from another caller (counted as ``retries_joined``).

Executor arrangement (measured, see latency_probe and the package notes): with the default
single-threaded executor the service and action callbacks are coroutines that *await* the worker's
result, so the executor keeps serving scenes, lifecycle requests and further questions while an
answer is generated; two questions in flight are two suspended coroutines, not two blocked threads.
The rejected alternative (plain callbacks that block on the result, in their own callback groups,
on a MultiThreadedExecutor) is gone from the code; its numbers are in docs/BENCHMARKS.md.

Which scene: a zero stamp asks about the latest scene (the latest whose ActivityLabel has arrived,
if one lies within ``stamp_tolerance_s`` of the newest, so that the answer can be checked); otherwise
the scene whose camera stamp is nearest, refused when none lies within ``stamp_tolerance_s``.

Grounding: every answer is checked against the activity head of the scene it was given (the
ActivityLabel with the scene's stamp, all its per-label probabilities) with
:func:`frozen_vlm_perception.answers.check_grounding`; an answer naming an activity the head gave
less than ``grounding_min_probability`` is flagged (``grounding`` "contradicts", ``flagged`` true,
counted as ``answers_flagged``). Without an ActivityLabel for that stamp the answer is "unchecked".
"""

from __future__ import annotations

import collections
import gc
import os
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.msg import SetParametersResult
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.task import Future
from std_msgs.msg import String

from frozen_vlm_perception.answers import DEFAULT_GROUNDING_MIN_PROBABILITY, Grounding, check_grounding
from frozen_vlm_perception.config import LanguageConfig
from frozen_vlm_perception.conversions import stamp_to_ns
from frozen_vlm_perception.nodes.device import free_cuda_cache, is_out_of_memory
from frozen_vlm_perception.nodes.diagnostics import Counters, delta, diagnostic_array
from frozen_vlm_perception.nodes.lifecycle import TeardownReleases, log_transition_errors, spin_lifecycle_main
from frozen_vlm_perception.nodes.parameters import (
    ParamSpec,
    apply_torch_threads,
    check_topic_names,
    declare_parameters,
    parameter_values,
    refusal,
    torch_threads_spec,
)
from frozen_vlm_perception.paths import DEFAULT_MODEL_DIR, resolve_model_dir
from frozen_vlm_perception.pipeline import Scene
from frozen_vlm_perception_interfaces.action import AskScene
from frozen_vlm_perception_interfaces.msg import ActivityLabel, AnsweredQuestion, SceneLatents
from frozen_vlm_perception_interfaces.srv import QueryScene

NODE_NAME = "reasoning"

PARAMS: list[ParamSpec] = [
    ParamSpec("autostart", True, "Configure and activate at start (console script and runner)."),
    ParamSpec("model_dir", DEFAULT_MODEL_DIR,
              "Model folder (config.json + model.safetensors) naming the language model; relative paths "
              "are tried in the working directory, then in the package's data folder."),
    ParamSpec("device", "auto", "Torch device: auto (CUDA when available), cpu, cuda, cuda:1, ..."),
    torch_threads_spec(),
    ParamSpec("latents_topic", "perception/latents", "SceneLatents input (relative: inside the namespace)."),
    ParamSpec("activity_topic", "perception/activity", "ActivityLabel input (to report the scene's label)."),
    ParamSpec("qos_depth", 10, "Keep-last depth of the two subscriptions.", (1, 1000)),
    ParamSpec("history_size", 300, "Recent scenes kept for questions about a given stamp (300 = 10 s at "
              "30 Hz; one SmolLM2-sized scene is about 20 kB).", (1, 100_000)),
    ParamSpec("stamp_tolerance_s", 0.1, "A question about a stamp uses the nearest scene within this "
              "many seconds, else it is refused; a question about the latest scene takes one this recent "
              "whose activity label has arrived, if any.", (0.0, 3600.0)),
    ParamSpec("max_new_tokens", LanguageConfig().max_new_tokens,
              "Tokens generated when a request asks for 0 (its default).", (1, 4096)),
    ParamSpec("queue_size", 2, "Questions that may wait behind the one being answered; more are refused "
              "with 'busy'.", (1, 1000)),
    ParamSpec("answer_timeout_s", 60.0, "A question not answered within this time (waiting included) "
              "fails with 'timed out'.", (0.1, 3600.0)),
    ParamSpec("generation_nice", 19,
              "Niceness added to the thread that generates answers (Linux; 0: none). On a 2-core CPU at "
              "30 Hz, 19 lost 1.6-21.5 points of labelled frames while answering (mean 12, five runs) "
              "against 19-20 with 0 or 10; answers took about 25% longer (docs/BENCHMARKS.md). With "
              "torch_threads 1 all of generation runs in that thread.", (0, 19)),
    ParamSpec("diagnostics_period_s", 1.0, "Period of /diagnostics.", (0.1, 3600.0)),
    ParamSpec("grounding_min_probability", DEFAULT_GROUNDING_MIN_PROBABILITY,
              "Grounding check: an answer that names an activity the activity head of the same scene gave "
              "less than this probability, or says yes/no to a question about an activity predicate "
              "('Is the person moving?') where the head gives that answer less, is flagged (grounding "
              "'contradicts' in the response).", (0.0, 1.0)),
]
PARAM_NAMES = frozenset(s.name for s in PARAMS)

ANSWERS_HISTORY = 1000  # latencies kept for diagnostics
# QueryScene request ids remembered (with their question and answer) so that a resent request joins
# or replays its question. A client resends within its own timeout (seconds to a minute), while at
# most 1 + queue_size questions are in flight: 64 covers any realistic retry window.
REMEMBERED_REQUESTS = 64


@dataclass(frozen=True)
class SceneActivity:
    """The activity head's output for one scene (one ActivityLabel)."""

    label: str
    confidence: float
    probabilities: dict[str, float]  # every candidate label -> its probability


NO_ACTIVITY = SceneActivity("", 0.0, {})


@dataclass
class SceneRecord:
    stamp: Time
    stamp_ns: int
    scene: Scene
    # Its ActivityLabel once arrived. Held here too so that a question keeps its scene's label while it
    # waits and generates: the stamp -> label map forgets old stamps (beside another make test one
    # answer took 104 s, over 3000 labels at 30 Hz).
    activity: SceneActivity | None = None


@dataclass
class Outcome:
    """What the worker made of one question."""

    success: bool
    message: str = ""
    answer: str = ""
    cancelled: bool = False


@dataclass
class Job:
    question: str
    record: SceneRecord
    max_new_tokens: int
    deadline: float  # time.monotonic()
    asked: tuple = ()  # (question, stamp sec, nanosec, max_new_tokens) as requested: a resent request's match
    on_text: Callable[[str], None] | None = None
    cancel_requested: Callable[[], bool] | None = None
    outcome: Outcome | None = None
    future: Future | None = None  # completed when set: wakes the awaiting coroutine

    def finish(self, outcome: Outcome) -> None:
        self.outcome = outcome
        if self.future is not None:
            self.future.set_result(outcome)


# Set at run time (`ros2 param set /reasoning answer_timeout_s 120.0`), these apply from the next
# question on; the others are read at configure (model, topics, sizes of the history and the queue).
LIVE_PARAMS = ("answer_timeout_s", "max_new_tokens", "stamp_tolerance_s", "grounding_min_probability")


class ReasoningNode(TeardownReleases, LifecycleNode):
    def __init__(self, node_name: str = NODE_NAME, **kwargs: Any):
        super().__init__(node_name, **kwargs)
        declare_parameters(self, PARAMS)
        self.add_on_set_parameters_callback(self._on_set_parameters)
        self.pipeline = None
        self.counters = Counters()
        self.counters.add("answers_flagged", 0)  # in /diagnostics from the start, so a zero reads as zero
        # Re-read at configure; set now so that a scene arriving before then has somewhere to go.
        self._values: dict[str, Any] = {s.name: self.get_parameter(s.name).value for s in PARAMS}
        self._model_path = None
        self._history: collections.deque[SceneRecord] = collections.deque(maxlen=self._values["history_size"])
        self._activities: collections.OrderedDict[int, SceneActivity] = collections.OrderedDict()
        self._history_lock = threading.Lock()
        self._jobs: queue.Queue[Job] = queue.Queue(maxsize=1)
        # request_id -> its Job (waiting, being answered or answered); only the executor thread uses it.
        self._requests: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self._active = False
        self._answering = False
        self._worker_nice: int | None = None  # the generating thread's niceness (diagnostics)
        self._worker: threading.Thread | None = None
        self._stop = threading.Event()
        self._latencies: collections.deque[float] = collections.deque(maxlen=ANSWERS_HISTORY)
        self._last_counts: dict[str, int] = {}
        self._subs: list = []
        self._pub_answers = self._pub_answered = self._pub_diagnostics = None
        self._service = self._action = self._diag_timer = None

    def _on_set_parameters(self, params) -> SetParametersResult:
        """Refuse values outside their ranges; LIVE_PARAMS apply from the next question on, the
        others at the next configure."""
        problem = refusal(params, PARAMS)
        if problem:
            return SetParametersResult(successful=False, reason=problem)
        live = {param.name: param.value for param in params if param.name in LIVE_PARAMS}
        if live:
            self._values = {**self._values, **live}  # one attribute swap: a reader sees old or new
        return SetParametersResult(successful=True)

    # ----------------------------------------------------------------------------------------------
    # Lifecycle

    @log_transition_errors
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        try:
            self._values = values = parameter_values(self, PARAMS)
            check_topic_names(values, ("latents_topic", "activity_topic"))
            self._model_path = resolve_model_dir(values["model_dir"])
        except (ValueError, FileNotFoundError) as err:
            self.get_logger().error(f"configure failed: {err}")
            return TransitionCallbackReturn.FAILURE
        apply_torch_threads(self, values["torch_threads"])
        if not self._load_model():
            return TransitionCallbackReturn.FAILURE
        with self._history_lock:
            self._history = collections.deque(maxlen=values["history_size"])
            self._activities.clear()
        self._jobs = queue.Queue(maxsize=values["queue_size"])

        self._pub_answers = self.create_lifecycle_publisher(String, "~/answers", 10)
        self._pub_answered = self.create_lifecycle_publisher(AnsweredQuestion, "~/answered", 10)
        self._pub_diagnostics = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._subs = [
            self.create_subscription(SceneLatents, values["latents_topic"], self._on_latents,
                                     values["qos_depth"]),
            self.create_subscription(ActivityLabel, values["activity_topic"], self._on_activity,
                                     values["qos_depth"]),
        ]
        group = ReentrantCallbackGroup()  # several suspended coroutines may be in flight at once
        self._service = self.create_service(QueryScene, "~/query", self._on_query, callback_group=group)
        self._action = ActionServer(
            self, AskScene, "~/ask", self._execute_ask, callback_group=group,
            goal_callback=lambda goal: GoalResponse.ACCEPT,  # refusals come back as a result with a message
            cancel_callback=lambda goal_handle: CancelResponse.ACCEPT,
        )
        self._diag_timer = self.create_timer(values["diagnostics_period_s"], self._publish_diagnostics)
        self.get_logger().info(
            f"configured: model {self._model_path}, scenes from {self._subs[0].topic_name}, "
            f"serving {self._service.service_name}"
        )
        return super().on_configure(state)

    @log_transition_errors
    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.pipeline is None and not self._load_model():
            return TransitionCallbackReturn.FAILURE
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._run_worker, args=(self._stop,), name="reasoning-worker",
                                        daemon=True)
        self._active = True
        self._worker.start()
        return super().on_activate(state)

    @log_transition_errors
    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self.release()
        return super().on_deactivate(state)

    def release(self) -> None:
        """Stop the worker, fail the questions still waiting, free the model (safe in any state)."""
        self._active = False
        self._stop.set()
        worker, self._worker = self._worker, None
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout=30.0)  # should_stop() ends a generation within one token
        self._fail_waiting("the node was deactivated")
        self._requests.clear()  # a model loaded later must answer a resent question itself
        if self.pipeline is not None:
            self.pipeline = None
            gc.collect()  # torch modules hold reference cycles: free the weights now, not later
            if self.context.ok():  # after Ctrl-C the context is gone and so is /rosout
                self.get_logger().info("language model released")

    def _load_model(self) -> bool:
        from frozen_vlm_perception.pipeline import PerceptionPipeline

        start = time.perf_counter()
        try:
            self.pipeline = PerceptionPipeline.from_model_dir(
                self._model_path, device=self._values["device"], load_language=True, load_vision=False
            )
        except Exception as err:  # missing LM files, shape mismatch, bad device: say it, stay unconfigured
            self.get_logger().error(f"cannot load the model from {self._model_path}: {err}")
            return False
        self.get_logger().info(
            f"language model {self.pipeline.config.language.source} loaded in "
            f"{time.perf_counter() - start:.1f} s on {self.pipeline.device}"
        )
        return True

    def _destroy_entities(self) -> None:
        for sub in self._subs:
            self.destroy_subscription(sub)
        self._subs = []
        if self._service is not None:
            self.destroy_service(self._service)
        if self._action is not None:
            self._action.destroy()
        if self._pub_answers is not None:
            self.destroy_lifecycle_publisher(self._pub_answers)
        if self._pub_answered is not None:
            self.destroy_lifecycle_publisher(self._pub_answered)
            self._pub_answered = None
        if self._pub_diagnostics is not None:
            self.destroy_publisher(self._pub_diagnostics)
        if self._diag_timer is not None:
            self.destroy_timer(self._diag_timer)
        self._service = self._action = self._pub_answers = self._pub_diagnostics = self._diag_timer = None

    # ----------------------------------------------------------------------------------------------
    # Scenes: store and return

    def _on_latents(self, msg: SceneLatents) -> None:
        self.counters.add("scenes_received")
        pipeline = self.pipeline
        num, dim = int(msg.num_latents), int(msg.dim)
        data = np.frombuffer(msg.data, dtype=np.float32)  # array('f'): no copy
        if num < 1 or dim < 1 or data.size != num * dim:
            return self._drop("bad_shape", f"{len(msg.data)} values for {num} x {dim} latents")
        if pipeline is not None and dim != pipeline.language.hidden_size:
            return self._drop("wrong_dim", f"latents of width {dim}, the language model expects "
                                           f"{pipeline.language.hidden_size}")
        if not np.isfinite(data).all():
            return self._drop("nonfinite", "latents hold NaN or inf")
        scene = Scene(
            latents=data.reshape(num, dim),
            pooled=np.frombuffer(msg.pooled, dtype=np.float32),
            scores=np.zeros(0, np.float32),
            labels=(),
            modalities=tuple(msg.modalities),
        )
        record = SceneRecord(msg.header.stamp, stamp_to_ns(msg.header.stamp), scene)
        with self._history_lock:
            record.activity = self._activities.get(record.stamp_ns)  # a label may come first
            self._history.append(record)

    def _on_activity(self, msg: ActivityLabel) -> None:
        labels, scores = list(msg.candidate_labels), [float(p) for p in msg.scores]
        if len(labels) != len(scores):  # unusable for grounding; the label itself is still reported
            self.counters.add("activity_bad_scores")
            labels, scores = [], []
        activity = SceneActivity(msg.label, float(msg.confidence), dict(zip(labels, scores, strict=True)))
        stamp_ns = stamp_to_ns(msg.header.stamp)
        with self._history_lock:
            self._activities[stamp_ns] = activity
            while len(self._activities) > 2 * (self._history.maxlen or 1):
                self._activities.popitem(last=False)
            for record in reversed(self._history):  # its scene is nearly always the newest
                if record.stamp_ns == stamp_ns:
                    record.activity = activity
                    break

    def _drop(self, reason: str, detail: str) -> None:
        self.counters.add(f"drop:{reason}")
        self.get_logger().warning(f"dropped a scene ({reason}): {detail}", throttle_duration_sec=5.0)

    def find_scene(self, stamp) -> tuple[SceneRecord | None, str]:
        """(record, "") or (None, why not): for a zero stamp the latest scene (the latest whose
        ActivityLabel has arrived, when one lies within ``stamp_tolerance_s`` of the newest), else
        the nearest within tolerance."""
        with self._history_lock:
            history = list(self._history)
            labelled = set(self._activities)
        if not history:
            return None, "no scene received yet"
        wanted = stamp_to_ns(stamp)
        if wanted == 0:
            # A label travels on its own topic; on a loaded machine the newest scene's label can be
            # late or dropped (keep-last), and an answer about it could not be checked. A scene a
            # frame or two older whose label is here gives an answer the robot can check.
            newest = history[-1]
            window_ns = int(self._values["stamp_tolerance_s"] * 1e9)
            for record in reversed(history):
                if newest.stamp_ns - record.stamp_ns > window_ns:
                    break
                if record.stamp_ns in labelled:
                    return record, ""
            return newest, ""
        nearest = min(history, key=lambda r: abs(r.stamp_ns - wanted))
        off = abs(nearest.stamp_ns - wanted) * 1e-9
        if off > self._values["stamp_tolerance_s"]:
            return None, (f"no scene within {self._values['stamp_tolerance_s']} s of the requested stamp "
                          f"(nearest is {off:.3f} s away; {len(history)} scenes kept)")
        return nearest, ""

    def activity_of(self, record: SceneRecord) -> SceneActivity:
        """The ActivityLabel of the record's scene, or NO_ACTIVITY when none arrived for its stamp."""
        with self._history_lock:
            if record.activity is not None:
                return record.activity
            return self._activities.get(record.stamp_ns, NO_ACTIVITY)

    def grounding_of(self, answer: str, activity: SceneActivity, question: str = "") -> Grounding:
        """How ``answer`` (to ``question``) agrees with the head's probabilities for its scene
        (answers.check_grounding)."""
        if not activity.probabilities:
            why = "no activity label arrived for this scene" if not activity.label else \
                "the scene's activity label carries no per-label probabilities"
            return Grounding("unchecked", (), why)
        return check_grounding(
            answer, activity.probabilities, self._values["grounding_min_probability"], question
        )

    # ----------------------------------------------------------------------------------------------
    # Questions

    def _prepare(self, question: str, stamp, max_new_tokens: int) -> Job | str:
        """A Job ready to submit, or why the question is refused (nothing is generated then)."""
        if not self._active or self.pipeline is None:
            return "the reasoning node is not active"
        question = (question or "").strip()
        limit = self.pipeline.config.language.max_question_chars
        if not question:
            return "the question is empty"
        if len(question) > limit:
            return f"the question has {len(question)} characters, the limit is {limit}"
        record, why = self.find_scene(stamp)
        if record is None:
            return why
        tokens = int(max_new_tokens) or self._values["max_new_tokens"]
        if tokens > 4096:
            return f"max_new_tokens {tokens} is more than 4096"
        return Job(question, record, tokens, time.monotonic() + self._values["answer_timeout_s"])

    def _submit(self, job: Job) -> str:
        """Queue ``job`` for the worker; "" or why not ("busy")."""
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            return f"busy: {self._jobs.maxsize} questions are waiting already; try again later"
        if not self._active:  # release() ran meanwhile: nobody would ever take the job
            self._fail_waiting("the node was deactivated")
        return ""

    def _fill(self, response, job: Job | None, outcome: Outcome, start: float, *, repeat: bool = False):
        """Fill ``response`` (a QueryScene response or AskScene result) with ``outcome`` of ``job``.

        ``repeat``: the same question answered again for a resent request: the response is filled the
        same way, but nothing is counted, logged or published a second time.
        """
        response.success = outcome.success
        response.message = outcome.message
        response.answer = outcome.answer if outcome.success else ""
        if job is not None:
            activity = self.activity_of(job.record)
            response.activity, response.confidence = activity.label, activity.confidence
            response.scene_stamp = job.record.stamp
            if outcome.success:
                grounding = self.grounding_of(outcome.answer, activity, job.question)
                response.grounding, response.flagged = grounding.status, grounding.flagged
                response.grounding_note = grounding.note
        response.latency = time.perf_counter() - start
        if repeat:
            return response
        if job is not None:
            if outcome.success:
                self.counters.add(f"grounding:{grounding.status}")
                self._publish_answered(job, outcome.answer, activity, grounding)
                if grounding.flagged:
                    self.counters.add("answers_flagged")
                    self.get_logger().warning(f"answer flagged: {grounding.note}: {outcome.answer!r}",
                                              throttle_duration_sec=2.0)
        self.counters.add("answered" if outcome.success else "refused" if job is None else "failed")
        if outcome.success:
            self._latencies.append(response.latency)
        else:
            self.get_logger().info(f"question not answered: {outcome.message}", throttle_duration_sec=2.0)
        return response

    def _publish_answered(self, job: Job, answer: str, activity: SceneActivity, grounding: Grounding) -> None:
        """/reasoning/answered: the question with its answer, scene and grounding (for the overlay)."""
        pub = self._pub_answered
        if pub is None or not self._active:
            return
        pub.publish(AnsweredQuestion(
            scene_stamp=job.record.stamp, question=job.question, answer=answer, activity=activity.label,
            confidence=activity.confidence, grounding=grounding.status, flagged=grounding.flagged,
            grounding_note=grounding.note,
        ))

    def _new_future(self) -> Future:
        future = Future(executor=self.executor)
        # A done callback makes set_result (on the worker thread) schedule a task on the executor,
        # which wakes its wait set, so the awaiting coroutine resumes at once instead of at the next
        # unrelated event.
        future.add_done_callback(lambda _: None)
        return future

    async def _on_query(self, request: QueryScene.Request, response: QueryScene.Response):
        start = time.perf_counter()
        request_id = request.request_id.strip()
        earlier = self._earlier_request(request_id, request)
        if isinstance(earlier, str):
            return self._fill(response, None, Outcome(False, earlier), start)
        if earlier is not None:  # a resent request: no second generation, no queue slot
            self.counters.add("retries_joined")
            outcome = earlier.outcome if earlier.outcome is not None else await earlier.future
            return self._fill(response, earlier, outcome, start, repeat=True)
        job = self._prepare(request.question, request.stamp, request.max_new_tokens)
        if isinstance(job, str):
            return self._fill(response, None, Outcome(False, job), start)
        job.future = self._new_future()
        refused = self._submit(job)
        if refused:
            return self._fill(response, None, Outcome(False, refused), start)
        if request_id:
            job.asked = asked_of(request)
            self._requests[request_id] = job
            while len(self._requests) > REMEMBERED_REQUESTS:
                self._requests.popitem(last=False)
        outcome = await job.future
        return self._fill(response, job, outcome, start)

    def _earlier_request(self, request_id: str, request: QueryScene.Request) -> Job | str | None:
        """The Job a resent request joins (waiting, being answered, or answered successfully), None
        for a new question, or why it is refused (the id was used for a different question)."""
        job = self._requests.get(request_id) if request_id else None
        if job is None:
            return None
        if job.asked != asked_of(request):
            return f"request_id {request_id!r} was used for a different question; use a new id per question"
        if job.outcome is not None and not job.outcome.success:  # failed (timed out, ...): ask it anew
            del self._requests[request_id]
            return None
        return job

    def _ask_job(self, goal_handle) -> Job | str:
        goal = goal_handle.request
        job = self._prepare(goal.question, goal.stamp, goal.max_new_tokens)
        if isinstance(job, str):
            return job
        tokens = [0]

        def on_text(text: str) -> None:
            tokens[0] += 1
            goal_handle.publish_feedback(AskScene.Feedback(partial_answer=text, tokens_generated=tokens[0]))

        job.on_text = on_text
        job.cancel_requested = lambda: goal_handle.is_cancel_requested
        return job

    def _ask_result(self, goal_handle, job: Job | None, outcome: Outcome, start: float) -> AskScene.Result:
        result = self._fill(AskScene.Result(), job, outcome, start)
        if outcome.cancelled and goal_handle.is_cancel_requested:
            goal_handle.canceled()
        elif outcome.success:
            goal_handle.succeed()
        else:
            goal_handle.abort()
        return result

    async def _execute_ask(self, goal_handle) -> AskScene.Result:
        start = time.perf_counter()
        job = self._ask_job(goal_handle)
        if isinstance(job, str):
            return self._ask_result(goal_handle, None, Outcome(False, job), start)
        job.future = self._new_future()
        refused = self._submit(job)
        if refused:
            return self._ask_result(goal_handle, None, Outcome(False, refused), start)
        outcome = await job.future
        return self._ask_result(goal_handle, job, outcome, start)

    # ----------------------------------------------------------------------------------------------
    # Worker: one generation at a time

    def _run_worker(self, stop: threading.Event) -> None:
        self._worker_nice = lower_this_thread(self._values["generation_nice"])
        while not stop.is_set():
            try:
                job = self._jobs.get(timeout=0.2)
            except queue.Empty:
                continue
            self._answering = True
            out_of_memory = False
            try:
                job.finish(self._answer(job, stop))
            except Exception as err:  # never leave a caller waiting
                out_of_memory = is_out_of_memory(err)
                if out_of_memory:
                    self.counters.add("failed:oom")
                    self.get_logger().error(f"out of memory while answering: {err}",
                                            throttle_duration_sec=5.0)
                job.finish(Outcome(False, f"failed: {type(err).__name__}: {err}"))
            finally:
                self._answering = False
            if out_of_memory:  # the traceback is gone by now: its tensors can be freed
                pipeline = self.pipeline
                free_cuda_cache(pipeline.device if pipeline is not None else None)

    def _answer(self, job: Job, stop: threading.Event) -> Outcome:
        pipeline = self.pipeline
        if stop.is_set() or pipeline is None:
            return Outcome(False, "the node was deactivated")
        if time.monotonic() > job.deadline:
            return Outcome(False, f"timed out after {self._values['answer_timeout_s']} s waiting for the "
                                  "language model")
        if job.cancel_requested is not None and job.cancel_requested():
            return Outcome(False, "canceled", cancelled=True)

        def should_stop() -> bool:
            return (stop.is_set() or time.monotonic() > job.deadline
                    or (job.cancel_requested is not None and job.cancel_requested()))

        try:
            generation = pipeline.answer(job.record.scene, job.question, max_new_tokens=job.max_new_tokens,
                                         on_text=job.on_text, should_stop=should_stop)
        except ValueError as err:  # the LM's own question/scene checks
            return Outcome(False, str(err))
        if generation.stopped_early:
            if job.cancel_requested is not None and job.cancel_requested():
                return Outcome(False, "canceled", answer=generation.text, cancelled=True)
            if stop.is_set():
                return Outcome(False, "the node was deactivated")
            return Outcome(False, f"timed out after {self._values['answer_timeout_s']} s")
        if self._pub_answers is not None and self._active:
            self._pub_answers.publish(String(data=generation.text))
        return Outcome(True, answer=generation.text)

    def _fail_waiting(self, message: str) -> None:
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            job.finish(Outcome(False, message))

    # ----------------------------------------------------------------------------------------------
    # Diagnostics

    def diagnostics(self) -> tuple[str, str, list[tuple[str, Any]]]:
        counts = self.counters.snapshot()
        new, self._last_counts = delta(counts, self._last_counts), counts
        with self._history_lock:
            kept, activities = len(self._history), len(self._activities)
        latencies = list(self._latencies)
        pipeline = self.pipeline
        values: list[tuple[str, Any]] = [
            ("state", "active" if self._active else "inactive"),
            ("model_loaded", pipeline is not None),
            ("device", str(pipeline.device) if pipeline is not None else ""),
            ("scenes_kept", kept),
            ("activities_kept", activities),
            ("questions_waiting", self._jobs.qsize()),
            ("answering", self._answering),
            ("generation_thread_nice", self._worker_nice),
            ("period_scenes_received", new.get("scenes_received", 0)),
        ]
        if latencies:
            values += [("answer_latency_s_p50", float(np.percentile(latencies, 50))),
                       ("answer_latency_s_max", float(np.max(latencies)))]
        values += sorted(counts.items())
        level, message = "ok", "ready" if self._active else "inactive"
        if self._active and not kept:
            level, message = "warn", "no scene received yet"
        return level, message, values

    def _publish_diagnostics(self) -> None:
        level, message, values = self.diagnostics()
        if self._pub_diagnostics is not None:
            self._pub_diagnostics.publish(diagnostic_array(
                self.get_clock().now().to_msg(), f"{self.get_name()}: reasoning", level, message, values))


def asked_of(request: QueryScene.Request) -> tuple:
    """What a QueryScene request asks, as compared between a request and its resent copy."""
    stamp = request.stamp
    return (request.question or "").strip(), stamp.sec, stamp.nanosec, int(request.max_new_tokens)


def lower_this_thread(increment: int) -> int | None:
    """Add ``increment`` to the calling thread's niceness; returns the niceness it runs at now (None
    where threads have no niceness of their own). On Linux niceness is per thread, and raising it needs
    no privilege; elsewhere the call would change the whole process, so nothing is done."""
    if not sys.platform.startswith("linux"):
        return None
    thread = threading.get_native_id()
    nice = os.getpriority(os.PRIO_PROCESS, thread)
    if increment > 0:
        nice = min(19, nice + increment)
        os.setpriority(os.PRIO_PROCESS, thread, nice)
    return nice


def main(args: list[str] | None = None) -> int:
    return spin_lifecycle_main(ReasoningNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
