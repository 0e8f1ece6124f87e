"""The engine: ONE native OS thread owns the model and runs a continuous-batching loop.

Callers (greenlets) ``submit`` requests; admission is bounded and counts every
request not yet picked up by the thread. Between decode steps the thread admits
waiting requests (prefill, then merge into the running batch), drops finished
and cancelled ones, and checks each row's cancel flag every step.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..generation.backlog import Backlog, RateMeter
from ..generation.channel import Channel
from ..generation.errors import ContextLengthError, NotReadyError, QueueFullError
from ..generation.features import ALL_FEATURES, SAMPLING_FEATURES, InvalidParameterError, require_features
from ..generation.handle import GenerationHandle
from ..generation.native import ModelThread, off_the_hub
from ..generation.protocol import EngineKind
from ..generation.structured import ToolFunction
from ..generation.tool_calls import ToolCallReader
from ..generation.types import GenerationRequest, SamplingDefaults, SamplingParams
from .batch import RunningBatch, supports_batched_cache
from .errors import ModelLoadError
from .generate_runner import run_with_generate
from .grammar import GrammarCompiler, RowGrammar, apply_masks
from .graphed_batch import GraphedBatch, capture_cuda_graph, no_capture
from .llama_cpp_model import LlamaCppModel
from .loader import LoadedModel, load_model
from .prefix_cache import PrefixCache
from .prompts import Message
from .running import Batch, PendingPrefill
from .sampling import choose_tokens
from .sequence import SequenceState
from .slot_batch import SlotBatch
from .spec import ModelSpec
from .thread_priority import lower_priority
from .torch_threads import usable_cores, use_threads

log = logging.getLogger(__name__)

_IDLE_WAIT_SECONDS = 0.5


@dataclass(frozen=True)
class EngineOptions:
    max_batch: int = 8
    max_queue: int = 256
    prefill_chunk: int = 64  # prompt tokens per step while other sequences decode
    batching: bool = True
    torch_threads: int = 0  # 0: one per core
    prefix_cache_tokens: int = 8192  # KV state of recent sequences kept for prefix reuse; 0: off
    nice: int = 0  # nice levels the engine thread (and the worker threads it starts) runs below its caller's
    decode_graphs: str = "auto"  # auto: CUDA graphs on CUDA | eager: fixed-shape steps, not captured | off


class LocalEngine(ModelThread):
    """Loads a model on its own thread and serves generation requests from greenlets."""

    kind: EngineKind = "local"

    def __init__(self, spec: ModelSpec, options: EngineOptions | None = None) -> None:
        super().__init__()  # self._lock also guards _waiting and _waiting_max_tokens
        self.spec = spec
        self.options = options or EngineOptions()
        self._inbox: deque[GenerationHandle] = deque()
        self._waiting = 0  # submitted but not yet taken into the batch
        self._waiting_max_tokens = 0  # the sum of their max_tokens
        self._running_max_tokens = 0  # engine thread: what the running rows may still generate
        self._free_slots = self.options.max_batch  # engine thread: batch rows free for new requests
        self._meter = RateMeter()  # engine thread writes, greenlets read: decode rate and max_tokens used
        self._cancels = 0  # cancel() calls so far; the engine thread sweeps the inbox when it changes
        self._cancels_swept = 0
        self._model: LoadedModel | None = None
        self._prefills: list[PendingPrefill] = []  # engine thread only: prompts being run into their caches
        self._prefixes = PrefixCache(self.options.prefix_cache_tokens)  # engine thread only
        self._grammar_compiler: GrammarCompiler | None = None  # built on the first constrained request
        self._compiled: dict[int, object] = {}  # id(handle) → its compiled grammar, until the engine takes it
        self.shared_prefills = 0  # requests that joined with another's identical prompt, without a prefill
        self.batched = False
        self.stats: dict[str, int] = {"steps": 0, "tokens": 0, "requests": 0, "cancelled": 0, "running": 0, "errors": 0,
                                      "prefix_hits": 0, "prefix_tokens_reused": 0}

    # ---- caller side (greenlets) -------------------------------------------------

    @property
    def model_name(self) -> str:
        return self._model.name if self._model else ""

    @property
    def context_length(self) -> int:
        return self._model.context_length if self._model else 0

    @property
    def queued(self) -> int:
        return self._waiting

    def backlog(self) -> Backlog:
        """The work ahead of a request submitted now (``llm_api.generation.backlog``)."""
        with self._lock:
            waiting, waiting_max_tokens = self._waiting, self._waiting_max_tokens
        return Backlog(waiting=waiting, waiting_max_tokens=waiting_max_tokens,
                       running_max_tokens=self._running_max_tokens, free_slots=self._free_slots,
                       tokens_per_second=self._meter.tokens_per_second, fill=self._meter.fill)

    @property
    def load_seconds(self) -> float | None:
        """Seconds the model took to load (as logged when it became ready); None until it is ready."""
        return self._model.load_seconds if self.ready and self._model is not None else None

    def encode_chat(self, messages: Sequence[Message], tools: Sequence[ToolFunction] = ()) -> list[int]:
        return self._loaded().prompt_format.build(messages, tools)

    def encode_text(self, text: str) -> list[int]:
        """Plain text → ids, with the tokenizer's usual special tokens (e.g. BOS) but no chat template."""
        return list(self._loaded().tokenizer(text)["input_ids"])

    def stop_token_ids(self) -> frozenset[int]:
        return self._loaded().prompt_format.stop_token_ids

    def sampling_defaults(self) -> SamplingDefaults:
        return self._loaded().sampling_defaults

    @property
    def features(self) -> frozenset[str]:
        """Every sampling feature, and the answer's shape (grammars) where the batched loop runs the model: a
        model that runs its own generate code has no grammar step. Before loading, all of them."""
        return ALL_FEATURES if self.batched or not self.ready else SAMPLING_FEATURES

    def submit(self, request_id: str, prompt_ids: list[int], params: SamplingParams, *,
               messages: Sequence[Message] | None = None, prompt_text: str | None = None,
               trace_headers: Mapping[str, str] | None = None) -> GenerationHandle:
        """Queue a request; raise at once if it cannot be served. ``messages`` and ``prompt_text`` are for
        engines that take text (an upstream server); the ids are what this one generates from."""
        model = self._loaded()
        if len(prompt_ids) + params.max_tokens > model.context_length:
            raise ContextLengthError(len(prompt_ids), params.max_tokens, model.context_length)
        require_features(self.features, params)
        outside = next((token for token, _ in params.logit_bias if token >= model.vocab_limit), None)
        if outside is not None:
            raise InvalidParameterError("logit_bias", f"logit_bias: token id {outside} is not in the model's "
                                                      f"vocabulary (ids 0 to {model.vocab_limit - 1}).")
        request = GenerationRequest(request_id, list(prompt_ids), params, model.prompt_format.stop_token_ids)
        compiled = self._compile(model, params)
        return self._queue(request, compiled, limit=self.options.max_queue)

    def _queue(self, request: GenerationRequest, grammar: object | None = None,
               limit: int | None = None) -> GenerationHandle:
        """Put ``request`` in the inbox (refused when ``limit`` requests already wait)."""
        with self._lock:
            if limit is not None and self._waiting >= limit:
                raise QueueFullError(f"{self._waiting} requests are already waiting")
            self._waiting += 1
            self._waiting_max_tokens += request.params.max_tokens
        handle = GenerationHandle(request, Channel(), on_cancel=self._note_cancel)
        if grammar is not None:
            self._compiled[id(handle)] = grammar
        self._inbox.append(handle)
        self._wake.set()
        return handle

    def _compile(self, model: LoadedModel, params: SamplingParams) -> object | None:
        """The request's grammar (raising :class:`UnsupportedFieldError` for a shape it cannot honour)."""
        structured = params.structured
        if structured is None or not (structured.forces_call or structured.response_format is not None):
            return None
        if self._grammar_compiler is None:  # the vocabulary's table, once (two first requests may both build it)
            built = off_the_hub(lambda: GrammarCompiler.for_tokenizer(
                model.tokenizer, int(model.model.config.vocab_size), sorted(model.prompt_format.stop_token_ids),
                model.prompt_format.tool_syntax))
            self._grammar_compiler = self._grammar_compiler or built
        grammars = self._grammar_compiler
        return off_the_hub(lambda: grammars.compile(structured))  # a new schema takes tens of ms

    def _note_cancel(self) -> None:
        self._cancels += 1  # tells the engine thread to sweep the inbox too
        self._wake.set()

    def _loaded(self) -> LoadedModel:
        if not self.ready or self._model is None:
            raise NotReadyError(self.load_error or "the model is loading")
        return self._model

    # ---- engine thread -----------------------------------------------------------

    def _load_failure(self, exc: Exception) -> str:
        return str(exc) if isinstance(exc, ModelLoadError) else f"model load failed: {exc!r}"

    def _serve(self) -> None:
        model = self._model
        assert model is not None
        batch = self._new_batch(model)
        while not self._stopping:
            try:
                if self.batched:
                    self._batched_iteration(model, batch)
                else:
                    self._sequential_iteration(model)
            except Exception as exc:  # a failed step ends its requests, never the engine
                log.exception("generation step failed")
                self.stats["errors"] += 1
                for seq in [*batch.rows, *(p.seq for p in self._prefills)]:
                    seq.finish("error", error=f"generation failed: {exc}")
                batch.clear()
                self._prefills = []
        for seq in [*batch.rows, *(p.seq for p in self._prefills)]:
            seq.finish("cancelled")
        while self._inbox:
            self._leave_inbox(self._inbox.popleft()).finish("cancelled")
        if isinstance(model.model, LlamaCppModel):
            model.model.close()  # its KV streams were allocated whole: give the memory back now

    def _new_batch(self, model: LoadedModel) -> Batch[Any]:
        if isinstance(model.model, LlamaCppModel):
            return SlotBatch(model.model, model.vocab_limit, reuse_prefixes=self._prefixes.enabled)
        graphs = self.options.decode_graphs
        if model.decode_step is None and (graphs == "eager" or (graphs == "auto" and model.device.type == "cuda")):
            capture = capture_cuda_graph(torch.cuda.graph_pool_handle()) if graphs == "auto" else no_capture
            return GraphedBatch(model.model, model.device, model.vocab_limit, slots=self.options.max_batch,
                                prefixes=self._prefixes, capture=capture)
        pad_head = model.device.type == "cpu" and model.dtype == torch.float32 and model.decode_step is None
        return RunningBatch(model.model, model.device, model.vocab_limit, pad_head_rows=pad_head,
                            prefixes=self._prefixes, decode_step=model.decode_step)

    def _load(self) -> None:
        lower_priority(self.options.nice)  # before llama.cpp or torch starts its worker threads, which inherit it
        threads = self.options.torch_threads or usable_cores()
        use_threads(threads)
        model = load_model(self.spec, slots=self.options.max_batch, threads=threads)
        # llama.cpp has no generate loop of its own here: it is always driven by the batched loop.
        self.batched = isinstance(model.model, LlamaCppModel) or (
            self.options.batching and model.batchable and supports_batched_cache(model.model))
        if model.decode_step is not None and not self.batched:
            raise ModelLoadError(f"LLM_API_QUANTIZATION={self.spec.quantization} compiles the batched loop's decode "
                                 "step, and this model runs its own generate code (or LLM_API_BATCHING is off)")
        self._model = model
        self._warm_up(model)
        if model.decode_step is not None:
            self._compile_decode(model)
        log.info("model %s ready on %s/%s in %.1fs (%s)", model.name, model.device, model.dtype,
                 model.load_seconds, "continuous batching" if self.batched else "sequential generate")
        self.ready = True

    def _warm_up(self, model: LoadedModel) -> None:
        ids = model.prompt_format.build([{"role": "user", "content": "Hi"}])
        if isinstance(model.model, LlamaCppModel):
            model.model.warm_up(ids)
            return
        with torch.inference_mode():
            model.model(input_ids=torch.tensor([ids], device=model.device))

    def _compile_decode(self, model: LoadedModel) -> None:
        """Two short requests through the batched loop, so that the decode step is compiled for one row and for
        several before the engine reports ready; then the counters start again from zero."""
        started = time.monotonic()
        batch = self._new_batch(model)
        ids = model.prompt_format.build([{"role": "user", "content": "Hi"}])
        for tokens in (3, 6):  # the second joins while the first decodes alone, and outlives it
            self._queue(GenerationRequest(f"compile-{tokens}", list(ids), SamplingParams(
                max_tokens=tokens, temperature=0, ignore_eos=True), model.prompt_format.stop_token_ids))
        while self._inbox or self._prefills or batch.rows:
            self._batched_iteration(model, batch)
        for name in self.stats:
            self.stats[name] = 0
        self._meter = RateMeter()
        self._prefixes = PrefixCache(self.options.prefix_cache_tokens)
        seconds = time.monotonic() - started
        model.load_seconds += seconds  # what /readyz and the log report as the time to get ready
        log.info("decode step compiled in %.1fs", seconds)

    def _take_waiting(self, room: int) -> list[SequenceState]:
        """Pop up to ``room`` requests from the inbox; cancelled ones finish at once."""
        self._sweep_cancelled_waiting()
        taken: list[SequenceState] = []
        while len(taken) < room and self._inbox:
            seq = self._leave_inbox(self._inbox.popleft())
            if not seq.check_cancelled():
                taken.append(seq)
        return taken

    def _sweep_cancelled_waiting(self) -> None:
        """Finish requests cancelled while still queued, even when the batch has no room for them."""
        cancels = self._cancels
        if cancels == self._cancels_swept:
            return
        self._cancels_swept = cancels
        for handle in [h for h in list(self._inbox) if h.cancelled]:
            try:
                self._inbox.remove(handle)
            except ValueError:
                continue
            self._leave_inbox(handle).check_cancelled()

    def _leave_inbox(self, handle: GenerationHandle) -> SequenceState:
        with self._lock:
            self._waiting -= 1
            self._waiting_max_tokens -= handle.request.params.max_tokens
        model = self._model
        assert model is not None
        self.stats["requests"] += 1
        compiled = self._compiled.pop(id(handle), None)
        structured = handle.request.params.structured
        reader = None
        if structured is not None and structured.may_call:
            reader = ToolCallReader(model.prompt_format.tool_syntax, frozenset(t.name for t in structured.tools),
                                    forced=structured.forces_call)
        grammar = RowGrammar(compiled) if compiled is not None else None  # type: ignore[arg-type]
        seq = SequenceState(handle, model.decode, model.token_bytes, grammar=grammar, tool_reader=reader,
                            on_finish=self._answer_ended)
        if handle.cancelled:
            self.stats["cancelled"] += 1
        return seq

    def _answer_ended(self, seq: SequenceState) -> None:
        """Answers that ended by themselves teach the meter how much of max_tokens answers use."""
        if seq.finish_reason in ("stop", "length"):
            self._meter.answer(len(seq.generated), seq.request.params.max_tokens)

    def _note_backlog(self, rows: list[SequenceState], free_slots: int) -> None:
        self._running_max_tokens = sum(max(0, s.request.params.max_tokens - len(s.generated)) for s in rows)
        self._free_slots = free_slots

    def _batched_iteration(self, model: LoadedModel, batch: Batch[Any]) -> None:
        """One scheduling round: admit, then one step: the batch's rows decode and waiting prompts run (alone,
        a prompt runs whole; while others decode, in chunks between their steps)."""
        room = self.options.max_batch - len(batch) - len(self._prefills)
        self._prefills.extend(batch.start_prefill(seq) for seq in self._take_waiting(room))
        self.stats["prefix_hits"] = batch.prefixes.hits
        self.stats["prefix_tokens_reused"] = batch.prefixes.reused_tokens
        if not self._prefills and not batch.rows:
            self._wake.wait(_IDLE_WAIT_SECONDS)
            return
        cancelled = [p for p in self._prefills if p.seq.check_cancelled()]
        self._prefills = [p for p in self._prefills if p not in cancelled]
        for prefill in cancelled:
            batch.abandon_prefill(prefill)
        cancelled_rows = [seq for seq in batch.rows if seq.check_cancelled()]
        self.stats["cancelled"] += len(cancelled) + len(cancelled_rows)
        batch.retire(cancelled_rows)
        # A request's n answers share one prompt: only the first runs it, the others join as its twins.
        prompts = [p.seq.request.prompt_ids for p in self._prefills]
        running = [p for i, p in enumerate(self._prefills) if p.started or prompts[i] not in prompts[:i]]
        started = time.perf_counter()
        step = batch.step(running, self.options.prefill_chunk)
        if step.logits is not None:
            self._advance(batch, step.rows, step.logits)
            self._meter.step(len(step.rows), time.perf_counter() - started)
            self.stats["steps"] += 1
        for prefill, logits in step.completed:
            self._prefills.remove(prefill)
            joined = [prefill.seq, *self._join_twins(batch, prefill)]
            self._advance(batch, joined, logits[None, :].repeat(len(joined), 1))
        self.stats["running"] = len(batch)
        self._note_backlog([*batch.rows, *(p.seq for p in self._prefills)],
                           self.options.max_batch - len(batch) - len(self._prefills))

    def _join_twins(self, batch: Batch[Any], prefill: PendingPrefill) -> list[SequenceState]:
        """Waiting requests with the very prompt ``prefill`` has just run (the ``n`` answers of one request)
        join the batch with its keys and values and its next-token logits: the prompt runs once."""
        prompt = prefill.seq.request.prompt_ids
        twins = [p for p in self._prefills if not p.started and p.seq.request.prompt_ids == prompt]
        for twin in twins:
            self._prefills.remove(twin)
            batch.join_twin(twin, prefill)
        self.shared_prefills += len(twins)
        return [twin.seq for twin in twins]

    def _advance(self, batch: Batch[Any], rows: list[SequenceState], logits: torch.Tensor) -> None:
        """Sample one token per row, emit it, and retire the rows that finished."""
        done = []
        grammars = [seq.grammar for seq in rows]
        if any(g is not None for g in grammars):  # constrained rows: what their grammar forbids is never sampled
            logits = apply_masks(logits, grammars, logits.shape[-1])
        for seq, token in zip(rows, choose_tokens(logits, [seq.sampler for seq in rows]), strict=True):
            if isinstance(token, Exception):
                seq.finish("error", error=f"sampling failed: {token}")
                done.append(seq)
                continue
            self.stats["tokens"] += 1
            if seq.grammar is not None and not seq.grammar.advance(token):
                seq.finish("error", error="the grammar rejected the sampled token")
                done.append(seq)
            elif seq.accept(token) or (seq.grammar is not None and seq.grammar.complete):
                seq.finish("stop")  # no-op when accept finished it
                done.append(seq)
        batch.retire(done)

    def _sequential_iteration(self, model: LoadedModel) -> None:
        new = self._take_waiting(1)
        if not new:
            self._wake.wait(_IDLE_WAIT_SECONDS)
            return
        seq = new[0]
        self.stats["running"] = 1
        self._note_backlog([seq], 0)
        started = time.perf_counter()
        try:
            run_with_generate(model.model, model.tokenizer, seq, model.device)
        except Exception as exc:
            log.exception("generation failed")
            self.stats["errors"] += 1
            seq.finish("error", error=f"generation failed: {exc}")
        finally:
            self.stats["running"] = 0
            self._note_backlog([], 1)
        self._meter.step(len(seq.generated), time.perf_counter() - started)
        self.stats["tokens"] += len(seq.generated)
        if seq.handle.cancel_seen_at_token is not None:
            self.stats["cancelled"] += 1
