"""Each model thread keeps its own torch thread count, whichever thread sets its count last; "one per core"
counts the cores the process may run on, as ``make test``'s workers set them."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import torch

from llm_api.local_model.torch_threads import usable_cores, use_threads
from tests.servers import ROOT


def _on_new_thread(action) -> None:
    thread = threading.Thread(target=action)
    thread.start()
    thread.join()


def test_a_later_count_on_another_thread_leaves_a_thread_alone():
    seen: dict[str, int] = {}
    chat_set, embedder_set = threading.Event(), threading.Event()

    def chat() -> None:
        use_threads(2)
        chat_set.set()
        embedder_set.wait(10)
        torch.ones(4096).sum()  # a parallel operation after the other thread's call
        seen["chat"] = torch.get_num_threads()

    def embedder() -> None:
        chat_set.wait(10)
        use_threads(1)
        embedder_set.set()
        seen["embedder"] = torch.get_num_threads()

    threads = [threading.Thread(target=chat), threading.Thread(target=embedder)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert seen == {"chat": 2, "embedder": 1}


def test_without_it_a_new_thread_takes_the_last_count_set_anywhere():
    """Why use_threads exists: torch's count is taken from the process-wide value at a thread's first use."""
    seen: list[int] = []
    previous = torch.get_num_threads()
    try:
        _on_new_thread(lambda: torch.set_num_threads(1))
        _on_new_thread(lambda: seen.append(torch.get_num_threads()))
    finally:
        torch.set_num_threads(previous)
    assert seen == [1]


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux's")
def test_one_per_core_counts_the_cores_the_process_may_run_on():
    """A container's cpuset or ``taskset`` limits the cores; the machine's count would oversize the team."""
    seen: list[int] = []

    def pinned() -> None:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # this thread only
        seen.append(usable_cores())

    _on_new_thread(pinned)
    assert seen == [1]
    assert usable_cores() == len(os.sched_getaffinity(0))


def _cores_of_test_worker(worker: int, workers: int) -> set[int]:
    code = "import os; from tests.workers import pin_this_worker; pin_this_worker(); print(*os.sched_getaffinity(0))"
    env = dict(os.environ, PYTEST_XDIST_WORKER=f"gw{worker}", PYTEST_XDIST_WORKER_COUNT=str(workers))
    shown = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True)
    return {int(core) for core in shown.stdout.split()}


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="CPU affinity is Linux's")
def test_each_test_worker_runs_on_its_own_share_of_the_cores():
    cores = os.sched_getaffinity(0)
    shares = [_cores_of_test_worker(worker, 2) for worker in range(2)]
    assert shares[0] | shares[1] == cores and all(shares)
    if len(cores) >= 2:
        assert not shares[0] & shares[1]
