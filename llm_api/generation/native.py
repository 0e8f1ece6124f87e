"""Real OS threads and locks, even in a process gevent has monkey-patched.

Under the gunicorn gevent worker ``threading`` and ``_thread`` are patched, so a
``threading.Thread`` would be a greenlet and torch would block the event loop.
These helpers always reach the original primitives; :class:`ModelThread` is the life of a model on
such a thread.
"""

from __future__ import annotations

import logging
import time
from _thread import LockType
from collections.abc import Callable
from typing import TypeVar

from gevent import monkey

T = TypeVar("T")

log = logging.getLogger(__name__)

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


class ModelThread:
    """The life of a model on an OS thread of its own, shared by the local engines (chat and embedding).

    :meth:`start` (once) starts the thread; it runs :meth:`_load`, then :meth:`_serve` until :meth:`stop`
    wakes it. A load that raises leaves its reason in ``load_error`` (what ``/readyz`` reports), calls
    ``on_load_failure`` with it on the thread (the gunicorn worker stops the server) and ends the thread.
    Subclasses set ``ready`` when loaded and call ``super().__init__()``.
    """

    _kind = "model"  # how the log names what failed to load

    def __init__(self) -> None:
        self._wake = NativeSignal()  # set by callers (new work, stop); waited on by the thread
        self._lock = native_lock()  # guards _started, and whatever a subclass counts under it
        self._started = False
        self._stopping = False
        self._stopped = NativeSignal()
        self._on_load_failure: Callable[[str], None] | None = None
        self.ready = False
        self.load_error: str | None = None

    def start(self, on_load_failure: Callable[[str], None] | None = None) -> None:
        """Start loading on the model's thread (idempotent, returns at once).

        ``on_load_failure`` runs on that thread with the reason if loading fails; without it the engine
        keeps answering not-ready with the reason."""
        with self._lock:
            if self._started:
                return
            self._started = True
            self._on_load_failure = on_load_failure
        start_native_thread(self._run)

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the thread to end and wait for it (at most ``timeout`` seconds)."""
        self._stopping = True
        self._wake.set()
        if self._started:
            self._stopped.wait(timeout)

    def wait_ready(self, timeout: float) -> bool:
        """Block (cooperatively) until the model is ready or failed; for tools and tests."""
        import gevent

        deadline = time.monotonic() + timeout
        while not self.ready and self.load_error is None and time.monotonic() < deadline:
            gevent.sleep(0.05)
        return self.ready

    def _run(self) -> None:
        try:
            try:
                self._load()
            except Exception as exc:  # keep serving /healthz; /readyz reports the reason
                self.load_error = self._load_failure(exc)
                log.error("%s load failed: %s", self._kind, self.load_error)
                if self._on_load_failure is not None:
                    self._on_load_failure(self.load_error)
                return
            self._serve()
        finally:
            self._stopped.set()

    def _load(self) -> None:
        raise NotImplementedError

    def _load_failure(self, exc: Exception) -> str:
        """The one-line reason a load failed, for ``load_error``."""
        raise NotImplementedError

    def _serve(self) -> None:
        """Serve until ``_stopping``, then finish whatever is left."""
        raise NotImplementedError
