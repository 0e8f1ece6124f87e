"""How ``make test`` shares the machine between its pytest-xdist workers (``-n 2 --dist loadfile``).

Each worker, and every server and subprocess it starts, runs on its own share of the cores. Two workers that
both ran a model on every core made each other's thread teams sleep and wake on every barrier: the suite took
as long on two workers as on one. On a share of their own, the engines size their teams to it (they count the
cores the process may run on), and the two workers take the whole machine between them.

Each test file runs whole in one worker, so that its module-scoped server or model starts once. What files in
different workers share is built so that either may come first: folders are renamed into place whole, and a
compile cache is filled by one process at a time (:func:`taking_turns`).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def pin_this_worker() -> None:
    """Under pytest-xdist, run this process (and what it starts) on worker N's share of the cores: every
    ``count``-th one from the N-th. Before torch is imported, which sizes its thread pool then."""
    name = os.environ.get("PYTEST_XDIST_WORKER", "")  # gw0, gw1, ...
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if not name.startswith("gw") or not hasattr(os, "sched_setaffinity"):
        return
    share = sorted(os.sched_getaffinity(0))[int(name[2:])::count]
    if share:  # with fewer cores than workers, those past the cores stay on all of them
        os.sched_setaffinity(0, share)


def run_folder(basetemp: Path) -> Path:
    """The folder the whole test run shares: under xdist, the parent of this worker's ``basetemp``."""
    return basetemp.parent if os.environ.get("PYTEST_XDIST_WORKER") else basetemp


@contextmanager
def taking_turns(folder: Path) -> Iterator[None]:
    """Held by one process at a time (of this run's workers and the servers they start)."""
    with open(folder / ".turn", "a") as turn:
        fcntl.flock(turn, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(turn, fcntl.LOCK_UN)
