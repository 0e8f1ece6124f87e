"""Each model thread keeps its own torch thread count, whichever thread sets its count last."""

from __future__ import annotations

import threading

import torch

from llm_api.local_model.torch_threads import use_threads


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
