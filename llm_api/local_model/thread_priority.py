"""The model thread's CPU priority: below the HTTP (gevent) thread's.

The model's thread and its team of worker threads (llama.cpp's or torch's, which it creates and which
inherit its priority) keep every core busy while they decode. At the same priority, the gevent thread that
writes each token, answers ``/healthz`` and reads new requests waits its turn behind them. One nice level
per thread (Linux) lets it run as soon as it is woken; it needs little CPU, so the model loses little.
"""

from __future__ import annotations

import os
import sys
import threading

LOWEST = 19  # the largest nice value


def lower_priority(increment: int) -> None:
    """Raise this OS thread's nice value by ``increment`` (at most to 19), for it and the threads it starts
    from now on. Nothing happens at 0, or off Linux, where a nice value belongs to the whole process."""
    if increment <= 0 or not sys.platform.startswith("linux"):
        return
    thread = threading.get_native_id()
    os.setpriority(os.PRIO_PROCESS, thread, min(LOWEST, os.getpriority(os.PRIO_PROCESS, thread) + increment))
