"""``LLM_API_QUANTIZATION=int8`` on the torch backend (CPU): torchao's 8-bit weights and 8-bit per-token
activations, with the decode step compiled by ``torch.compile``.

The float32 decode step of a small model is bound by reading its weights (one row) and by PyTorch's eager
overhead (many rows). 8-bit weights read a quarter of the bytes, and the compiler fuses the quantizing of
activations and the scaling of the integer products into the matrix kernels; uncompiled, torchao's tensors
are slower than float32, so only the compiled step pays. Prompts run uncompiled: there the integer kernels
already match float32, and every prompt length would otherwise be one more shape to compile.

One compiled graph serves every KV length and every batch of two rows or more (``dynamic=True``); a single
row is its own graph (the compiler specialises sizes of one). Both are compiled before the engine reports
ready. Compiling takes minutes on a small CPU; inductor keeps what it generates in ``LLM_API_CACHE_DIR``, so
later starts reuse the generated kernels and only trace the model again.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from .cache import MARKER
from .errors import ModelLoadError

# torchao warns at import that its CUDA libraries do not load on torch's CPU build (transformers may import it
# while loading any model); on the CPU nothing of them is used.
logging.getLogger("torchao").setLevel(logging.ERROR)

INDUCTOR_FOLDER = "torch-inductor"  # under LLM_API_CACHE_DIR; make clean-cache removes it
# Graphs a compiled function may keep before torch falls back to running it uncompiled (torch's default is 8):
# one row and several, each after a first call that only records sizes, leave room for what a batch meets.
_RECOMPILE_LIMIT = 16


def int8_decode_step(model: Any, device: torch.device, dtype: torch.dtype, cache_dir: Path) -> Callable[..., Any]:
    """Quantize ``model``'s linear layers to 8 bits in place and return its forward compiled for decode steps."""
    if device.type != "cpu" or dtype != torch.float32:
        raise ModelLoadError(f"LLM_API_QUANTIZATION=int8 runs on the CPU in float32 (got {device.type}, {dtype}); "
                             "leave it at none, or set LLM_API_DEVICE=cpu and LLM_API_DTYPE=auto")
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError as exc:
        raise ModelLoadError(f"LLM_API_QUANTIZATION=int8 needs torchao ({exc}); install requirements.txt") from exc
    quantize_(model, Int8DynamicActivationInt8WeightConfig())
    use_inductor_cache(cache_dir)
    # Compile in the engine thread itself: a pool of compiling processes would need threads and pipes that, under
    # gevent, belong to the main thread's loop.
    torch._inductor.config.compile_threads = 1
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, _RECOMPILE_LIMIT)
    # Sizes that happen to be equal while compiling (two rows, two KV heads) must not become one size: the graph
    # would then hold only for that batch and compile again for the next.
    torch.fx.experimental._config.use_duck_shape = False
    read_one_row_right()
    compile_in_any_thread()
    return torch.compile(model.forward, dynamic=True)


def read_one_row_right() -> None:
    """Give the compiled code's 8-bit matrix product a real row stride for an input of one row.

    Compiled, a single row's activations reach ``torch._int_mm`` as a view whose leading stride is 0 (any stride
    is valid for a dimension of size 1). oneDNN's product takes the stride as the row length, refuses, and
    leaves the output unwritten: the logits are garbage (pytorch/pytorch#195066, open in torch 2.13). Running
    the product without oneDNN is right but half as fast, so the generated code's ``_int_mm`` (it looks the
    kernel up on inductor's ``extern_kernels`` at every call) gets the same view with the row length as stride.
    """
    from torch._inductor.select_algorithm import extern_kernels

    original: Callable[..., torch.Tensor] = getattr(extern_kernels, "_int_mm")  # noqa: B009 - set at run time
    if getattr(original, "reads_one_row_right", False):
        return

    def int_mm(a: torch.Tensor, b: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
        if a.dim() == 2 and a.size(0) == 1 and a.stride(1) == 1 and a.stride(0) != a.size(1):
            a = a.as_strided(a.shape, (a.size(1), 1))
        return original(a, b, out=out) if out is not None else original(a, b)  # as generated code calls it

    int_mm.reads_one_row_right = True  # type: ignore[attr-defined]
    setattr(extern_kernels, "_int_mm", int_mm)  # noqa: B010


def compile_in_any_thread() -> None:
    """Let the engine thread run the C++ compiler under gunicorn's gevent worker.

    Compiling runs the compiler in a child process through ``subprocess``, which gevent's worker has replaced with
    a version that waits for children only on the main thread's event loop ("child watchers are only available on
    the default loop"); gevent's ``os.close`` also stalls the standard ``subprocess`` outside that thread. So the
    ``subprocess`` functions inductor calls dispatch on the calling thread: the main thread keeps gevent's, any
    other thread runs the standard library's, with the standard ``os.close`` for the length of the call. Nothing
    else in a worker starts processes; without gevent's patches this changes nothing.
    """
    import subprocess
    import threading

    from gevent import monkey

    if not monkey.is_module_patched("subprocess") or getattr(subprocess.run, "compiles_in_any_thread", False):
        return
    native_ident = monkey.get_original("_thread", "get_ident")
    main_ident = threading.main_thread().ident
    native_close = monkey.get_original("os", "close")  # the current one where gevent did not patch it
    close_swap = monkey.get_original("_thread", "allocate_lock")()  # a lock the engine threads really share
    patched_names = [name for name in ("Popen", "_fork_exec", "_USE_POSIX_SPAWN", "_use_posix_spawn")
                     if monkey.is_object_patched("subprocess", name)]
    standard = {name: monkey.get_original("subprocess", name) for name in patched_names}
    swapped_in: list[int | None] = [None]  # the thread that has the standard functions swapped in

    def dispatching(name: str) -> Callable[..., Any]:
        gevents, standards = getattr(subprocess, name), monkey.get_original("subprocess", name)

        def call(*args: Any, **kwargs: Any) -> Any:
            if native_ident() == main_ident:
                return gevents(*args, **kwargs)
            if swapped_in[0] == native_ident():  # check_output calls run: already swapped by this thread
                return standards(*args, **kwargs)
            with close_swap:
                swapped_in[0] = native_ident()
                gevent_close, gevent_module = os.close, {n: getattr(subprocess, n) for n in patched_names}
                os.close = native_close
                for module_name, value in standard.items():
                    setattr(subprocess, module_name, value)
                try:
                    return standards(*args, **kwargs)
                finally:
                    swapped_in[0] = None
                    os.close = gevent_close
                    for module_name, value in gevent_module.items():
                        setattr(subprocess, module_name, value)

        call.compiles_in_any_thread = True  # type: ignore[attr-defined]
        return call

    for name in ("call", "check_call", "check_output", "run"):
        setattr(subprocess, name, dispatching(name))


def use_inductor_cache(cache_dir: Path) -> None:
    """Keep inductor's generated code in ``cache_dir``, beside the converted weights."""
    folder = cache_dir / INDUCTOR_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text('{"contents": "torch.compile\'s generated code"}')
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)  # read by inductor whenever it writes or looks up code
