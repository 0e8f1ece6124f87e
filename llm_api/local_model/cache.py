"""Converted-weight caches: built once into a scratch folder, then renamed into place atomically."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

MARKER = "llm_api_converted.json"


def cached_build(target: Path, build: Callable[[Path], None], provenance: dict[str, str]) -> Path:
    """Return ``target``, running ``build(scratch)`` first unless a complete copy is already there.

    Several workers may race to build it: each builds its own scratch copy and the first rename wins.
    """
    if (target / MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".converting-", dir=target.parent))
    try:
        build(scratch)
        (scratch / MARKER).write_text(json.dumps(provenance))
        try:
            os.rename(scratch, target)
        except OSError:  # another worker finished first
            if not (target / MARKER).is_file():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target
