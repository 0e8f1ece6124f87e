"""The converted-weights cache is keyed by content, so every checkout and virtual environment shares one copy."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
from pathlib import Path

from llm_api.local_model import cache
from llm_api.local_model.cache import DIGESTS, MARKER, cached_build, content_key, file_digest, remove_converted


def _source(folder: Path, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.gguf"
    path.write_bytes(data)
    return path


def test_the_same_bytes_in_two_installs_share_one_key(tmp_path):
    cache_dir = tmp_path / "cache"
    first = _source(tmp_path / "venv-a", b"weights" * 1000)
    second = _source(tmp_path / "venv-b", b"weights" * 1000)
    os.utime(second, ns=(1, 1))  # another install: another inode and modification time
    assert content_key([first], cache_dir, "v1") == content_key([second], cache_dir, "v1")
    assert content_key([first], cache_dir, "v1") != content_key([first], cache_dir, "v2")


def test_changed_bytes_change_the_key(tmp_path):
    cache_dir = tmp_path / "cache"
    source = _source(tmp_path / "src", b"old weights")
    before = content_key([source], cache_dir)
    source.write_bytes(b"new weights!")
    assert content_key([source], cache_dir) != before


def test_a_digest_is_computed_once_per_file_identity(tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    source = _source(tmp_path / "src", b"x" * 5000)
    digest = file_digest(source, cache_dir)
    remembered = json.loads((cache_dir / DIGESTS).read_text())
    assert list(remembered.values()) == [digest]
    monkeypatch.setattr(cache.hashlib, "sha256", lambda: (_ for _ in ()).throw(AssertionError("hashed again")))
    assert file_digest(source, cache_dir) == digest


def test_clean_removes_converted_copies_and_scratch_folders_only(tmp_path):
    cache_dir = tmp_path / "cache"
    built = cached_build(cache_dir / "model-abc", lambda scratch: (scratch / "w.bin").write_bytes(b"w"), {})
    assert (built / MARKER).is_file()
    (cache_dir / ".converting-x1").mkdir()
    (cache_dir / "not-ours").mkdir()
    assert (cache_dir / ".building-model-abc").is_file()  # the lock file the build took
    file_digest(_source(tmp_path / "src", b"abc"), cache_dir)
    removed = remove_converted(cache_dir)
    assert sorted(p.name for p in removed) == [".converting-x1", "model-abc"]
    assert sorted(p.name for p in cache_dir.iterdir()) == ["not-ours"]
    shutil.rmtree(cache_dir)
    assert remove_converted(cache_dir) == []


def _build_slowly(target: str, log: str) -> None:
    def build(scratch: Path) -> None:
        with open(log, "a") as out:
            out.write(f"{os.getpid()}\n")
        time.sleep(1.0)  # long enough that the other process asks while this one builds
        (scratch / "w.bin").write_bytes(b"w")

    assert (cached_build(Path(target), build, {}) / "w.bin").read_bytes() == b"w"


def test_processes_that_start_together_build_once(tmp_path):
    """gunicorn's workers start at once: one converts (or re-quantizes), the others wait and reuse it."""
    target, log = tmp_path / "cache" / "model-abc", tmp_path / "builds.log"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_build_slowly, args=(str(target), str(log))) for _ in range(3)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert [worker.exitcode for worker in workers] == [0, 0, 0]
    assert len(log.read_text().split()) == 1
    assert sorted(p.name for p in target.parent.iterdir()) == [".building-model-abc", "model-abc"]
