"""The model thread runs below the HTTP thread: its nice value goes up, and the threads it starts afterwards
(llama.cpp's and torch's workers) inherit it, while the thread that started it keeps its own."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from llm_api.local_model.thread_priority import LOWEST, lower_priority

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice values are Linux's")


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


def _on_new_thread(action):
    result = []
    thread = threading.Thread(target=lambda: result.append(action()))
    thread.start()
    thread.join()
    return result[0]


def test_the_thread_and_the_threads_it_starts_later_run_lower_and_its_caller_does_not():
    caller = _nice()

    def model_thread() -> tuple[int, int]:
        lower_priority(3)
        return _nice(), _on_new_thread(_nice)  # a worker thread started afterwards

    own, worker = _on_new_thread(model_thread)
    assert own == worker == min(LOWEST, caller + 3)
    assert _nice() == caller


def test_zero_changes_nothing_and_the_value_stops_at_the_lowest_priority():
    caller = _nice()
    assert _on_new_thread(lambda: (lower_priority(0), _nice())[1]) == caller
    assert _on_new_thread(lambda: (lower_priority(100), _nice())[1]) == LOWEST
