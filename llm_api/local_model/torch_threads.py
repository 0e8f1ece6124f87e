"""How many threads a model's thread runs torch (and llama.cpp) with, set so that engines on other threads of
the same process cannot change it.

torch and llama.cpp share one OpenMP runtime here (torch's ``libgomp.so.1`` is loaded first and satisfies
llama.cpp's). libgomp spins in its barriers only while it manages no more threads than there are cores;
past that it sleeps and wakes on every barrier, and a decode step has hundreds. A second team of two
beside the chat engine's (the embedding engine's) made chat decoding 2.4× slower on llama.cpp (78 → 32
tok/s) and 1.6× slower on torch (27 → 16) on 2 cores. So the chat engine's thread takes every core and
an embedding engine's thread one, unless LLM_API_TORCH_THREADS says otherwise.

torch gives each OS thread its OpenMP thread count when that thread first runs a parallel operation, from
the last ``torch.set_num_threads`` of any thread; :func:`use_threads` makes that first time happen before
it sets this thread's own count, so a later call on another thread leaves this one alone.

"One per core" counts the cores the process may run on (its CPU affinity: a container's cpuset,
``taskset``), not the machine's: a team larger than that would sleep and wake on every barrier too.
"""

from __future__ import annotations

import os

import torch


def usable_cores() -> int:
    """The cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # no affinity to read outside Linux


def use_threads(count: int) -> None:
    """This OS thread runs torch's parallel operations on ``count`` threads from now on."""
    torch.get_num_threads()  # this thread's first use: it takes the process-wide count now, not later
    torch.set_num_threads(count)
