"""Converted-weight caches: keyed by the source files' content, built once into a scratch folder, then renamed
into place atomically. Every checkout and virtual environment that uses the same cache folder shares them, and
workers that start together build each one once: the others wait on its lock file."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

MARKER = "llm_api_converted.json"
DIGESTS = "source-digests.json"  # file identity (path, size, inode, mtime) -> sha256 of its bytes
SCRATCH_PREFIX = ".converting-"
LOCK_PREFIX = ".building-"
_CHUNK = 1 << 20


def content_key(paths: Iterable[Path], cache_dir: Path, *salt: str) -> str:
    """A short key for the bytes of ``paths`` (plus ``salt``, e.g. the converter's version): the same files
    give the same key wherever they are installed, so one conversion serves every checkout."""
    parts = [*salt, *(f"{path.name}:{file_digest(path, cache_dir)}" for path in paths)]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def file_digest(path: Path, cache_dir: Path) -> str:
    """sha256 of ``path``'s bytes. Hashing a large file takes a while, so the digest is remembered in
    ``cache_dir`` under the file's identity and computed again only when the file changes."""
    stat = path.stat()
    identity = f"{path.resolve()}:{stat.st_size}:{stat.st_ino}:{stat.st_mtime_ns}"
    memo_path = cache_dir / DIGESTS
    memo = _read_json(memo_path)
    digest = memo.get(identity)
    if isinstance(digest, str):
        return digest
    sha = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(_CHUNK):
            sha.update(chunk)
    digest = sha.hexdigest()
    memo = {**_read_json(memo_path), identity: digest}  # re-read: another worker may have added to it
    _write_json_atomically(memo_path, memo)
    return digest


def remove_converted(cache_dir: Path) -> list[Path]:
    """Delete every converted copy (and abandoned scratch folders) in ``cache_dir``; the next start converts
    once more. Returns what was removed."""
    removed = []
    for entry in sorted(cache_dir.iterdir()) if cache_dir.is_dir() else []:
        if entry.is_dir() and ((entry / MARKER).is_file() or entry.name.startswith(SCRATCH_PREFIX)):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
        elif entry.is_file() and entry.name.startswith(LOCK_PREFIX):
            entry.unlink(missing_ok=True)
    (cache_dir / DIGESTS).unlink(missing_ok=True)
    return removed


def _read_json(path: Path) -> dict[str, object]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json_atomically(path: Path, data: dict[str, object]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, scratch = tempfile.mkstemp(prefix=".digests-", dir=path.parent)
    with os.fdopen(fd, "w") as out:
        json.dump(data, out)
    os.replace(scratch, path)


def cached_build(target: Path, build: Callable[[Path], None], provenance: dict[str, str]) -> Path:
    """Return ``target``, running ``build(scratch)`` first unless a complete copy is already there.

    Processes that want the same ``target`` at once (gunicorn's workers at start) take turns on a lock file
    beside it: one builds, the others then find it built. The lock is the kernel's (``flock``), so a process
    that dies while building releases it. Where a file system cannot lock, each builds its own scratch copy
    and the first rename wins.
    """
    if (target / MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{LOCK_PREFIX}{target.name}", "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # the GIL is released while it waits
        except OSError:
            pass
        return _build_unless_built(target, build, provenance)  # closing the file releases the lock


def _build_unless_built(target: Path, build: Callable[[Path], None], provenance: dict[str, str]) -> Path:
    if (target / MARKER).is_file():  # built while this process waited
        return target
    scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=target.parent))
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


def main(argv: list[str]) -> int:
    """``python -m llm_api.local_model.cache clean``: empty the converted-weights cache of LLM_API_CACHE_DIR
    (``make clean-cache``)."""
    from ..config import Settings  # the same resolution as the service's

    if argv != ["clean"]:
        print("usage: python -m llm_api.local_model.cache clean", file=sys.stderr)
        return 2
    cache_dir = Path(Settings.from_env().resolved_cache_dir)
    for entry in remove_converted(cache_dir):
        print(f"removed {entry}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
