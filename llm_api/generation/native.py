"""Real OS threads and locks, even in a process gevent has monkey-patched.

Under the gunicorn gevent worker ``threading`` and ``_thread`` are patched, so a
``threading.Thread`` would be a greenlet and torch would block the event loop.
These helpers always reach the original primitives.
"""

from __future__ import annotations

from _thread import LockType
from collections.abc import Callable
from typing import TypeVar

from gevent import monkey

T = TypeVar("T")

_start_new_thread = monkey.get_original("_thread", "start_new_thread")
_allocate_lock = monkey.get_original("_thread", "allocate_lock")


def start_native_thread(target: Callable[[], None]) -> None:
    """Run ``target`` on a new OS thread (not a greenlet)."""
    _start_new_thread(target, ())


def off_the_hub(function: Callable[[], T]) -> T:
    """Run CPU-bound ``function`` on gevent's pool of OS threads when the process is patched, so the event
    loop keeps serving other greenlets meanwhile (exceptions are raised here); else call it directly."""
    if not monkey.is_module_patched("threading"):
        return function()
    import gevent

    result: T = gevent.get_hub().threadpool.apply(function)
    return result


def native_lock() -> LockType:
    """A lock that blocks the OS thread, never yields to gevent."""
    lock: LockType = _allocate_lock()
    return lock


class NativeSignal:
    """A one-slot wake-up flag: any thread may ``set`` it; one OS thread ``wait``s on it."""

    def __init__(self) -> None:
        self._lock = _allocate_lock()
        self._lock.acquire()  # held means "not set"

    def set(self) -> None:
        try:
            self._lock.release()
        except RuntimeError:  # already set
            pass

    def wait(self, timeout: float) -> bool:
        """Block this OS thread until set (then clear it) or until ``timeout`` seconds pass."""
        return bool(self._lock.acquire(timeout=timeout))
