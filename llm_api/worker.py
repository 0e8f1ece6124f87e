"""The gunicorn worker: gevent, plus a graceful shutdown that drains the worker's answers.

gunicorn's own gevent worker, on SIGTERM, closes its listening socket at once and
waits up to ``graceful_timeout`` for open connections; the master kills it after
that. Streams still running are then cut off without an end, and their answers
are never stored. This worker instead, on SIGTERM:

1. marks the application as draining (:meth:`Services.begin_drain`): from then on
   ``/readyz`` and every new request answer 503 ``shutting_down`` with
   ``Retry-After``, ``/healthz`` stays 200, and every response closes its connection;
2. keeps accepting connections, so that probes and clients get that answer
   instead of a refused connection;
3. waits until no answer is being generated, or until the graceful timeout minus
   a margin (:func:`llm_api.shutdown.drain_plan`);
4. interrupts the answers still running: each ends with an error event
   ``shutting_down`` and is stored as ``cancelled`` with its text so far;
5. closes idle keep-alive connections and leaves through gunicorn's normal exit
   path (stop accepting, wait for open connections, the ``worker_exit`` hook);
6. if a connection is still open :data:`LINGER_SECONDS` later (a client that
   stopped reading a response, say), logs what its handler is waiting on and
   shuts the connection down, so that one stuck client cannot hold the exit for
   the rest of the graceful timeout.

SIGQUIT and SIGINT are gunicorn's quick shutdown: the worker interrupts running
answers at once, gives them :data:`~llm_api.shutdown.QUICK_FLUSH_SECONDS` to be
stored, then exits as gunicorn's worker does.

Signal handlers only set flags and spawn a greenlet: the waiting, logging and
storing happen on the event loop, never inside the handler.

gunicorn's master imports this module to find the worker class, so it imports
gevent and gunicorn only: whatever the master imports before the fork, the
worker inherits before it patches (see :mod:`llm_api`).
"""

from __future__ import annotations

import os
import socket
import traceback
import warnings
from dataclasses import dataclass
from typing import Any

import gevent
from gunicorn.workers.base import Worker
from gunicorn.workers.ggevent import GeventWorker

# Connection states, for closing idle keep-alive connections at the end of a drain.
_NEW, _BUSY, _IDLE = "new", "busy", "idle"
# After the drain, how long connections still open may take to close by themselves: longer than gunicorn's
# keep-alive timeout (5 s here), which ends a connection that sends no request.
LINGER_SECONDS = 10.0


@dataclass
class _Connection:
    """A client connection the worker serves: its state, and the greenlet handling it."""

    state: str
    handler: Any


class DrainingGeventWorker(GeventWorker):
    """``worker_class = "llm_api.worker.DrainingGeventWorker"``: gunicorn's gevent worker with a drain on SIGTERM."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.draining = False
        self._quitting = False
        self._connections: dict[Any, _Connection] = {}

    def patch(self) -> None:
        # gevent's thread patching inspects every live object, which trips a torch deprecation warning
        # where torch is already imported (the master's preflight of a ChatGLM3 folder imports it).
        warnings.filterwarnings("ignore", message=r".*torch\.distributed\.reduce_op.*")
        super().patch()

    # ---- signals (run inside the signal handler: flags and a spawn only) ---------------------------
    def handle_exit(self, sig: int, frame: Any) -> None:
        """SIGTERM: drain instead of closing the listening socket at once."""
        if self.draining:
            return  # a second SIGTERM changes nothing
        state = self._services()
        if state is None:  # the application is not loaded yet (or is not ours): gunicorn's own behaviour
            super().handle_exit(sig, frame)
            return
        self.draining = True
        state.begin_drain()
        gevent.spawn(self._drain, state)

    def handle_quit(self, sig: int, frame: Any) -> None:
        """SIGQUIT/SIGINT: gunicorn's quick shutdown, after interrupting and storing the running answers."""
        if self._quitting:
            return  # Ctrl-C reaches the worker twice (from the terminal and from the master)
        self._quitting = True
        state = self._services()
        if state is None:
            super().handle_quit(sig, frame)
            return
        self.draining = True
        state.begin_drain()
        gevent.spawn(self._quick_exit, state, sig, frame)

    # ---- the drain (greenlets) ---------------------------------------------------------------------
    def _drain(self, state: Any) -> None:
        from .shutdown import drain, drain_plan

        try:
            drain(state, drain_plan(self.cfg.graceful_timeout))
        except Exception:
            self.log.exception("graceful shutdown failed")
        finally:
            self._close_idle_connections()
            self.alive = False  # the run loop now stops accepting, waits for open connections, and exits
            gevent.spawn_later(LINGER_SECONDS, self._end_lingering_connections)

    def _quick_exit(self, state: Any, sig: int, frame: Any) -> None:
        from .shutdown import QUICK_FLUSH_SECONDS, interrupt_running

        try:
            interrupt_running(state, QUICK_FLUSH_SECONDS)
        except Exception:
            self.log.exception("quick shutdown: could not interrupt the running answers")
        finally:
            Worker.handle_quit(self, sig, frame)  # gunicorn's: worker_int hook, then exit

    def _services(self) -> Any:
        """The application's :class:`llm_api.state.Services`, or None before it is loaded."""
        extensions = getattr(getattr(self, "wsgi", None), "extensions", None)
        if not isinstance(extensions, dict):
            return None
        from .state import EXTENSION_KEY  # the loaded app has imported it: a lookup, not an import

        return extensions.get(EXTENSION_KEY)

    # ---- connections -------------------------------------------------------------------------------
    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        self._connections[client] = _Connection(_NEW, gevent.getcurrent())
        try:
            super().handle(listener, client, addr)
        finally:
            self._connections.pop(client, None)

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> Any:
        if self.draining:
            req.must_close = True  # "Connection: close": a client does not reuse a connection to a leaving worker
        connection = self._connections.setdefault(sock, _Connection(_BUSY, gevent.getcurrent()))
        connection.state = _BUSY
        try:
            keep_alive = super().handle_request(listener_name, req, sock, addr)
        finally:
            connection.state = _IDLE
        if self.draining:
            # A request that began before the drain was busy when the drain shut the idle connections down:
            # its connection closes now (gunicorn's keep-alive loop stops on StopIteration) instead of waiting
            # for a next request, which would hold the worker's exit for gunicorn's keep-alive timeout (5 s).
            raise StopIteration
        return keep_alive

    def _close_idle_connections(self) -> None:
        """End keep-alive connections waiting for their next request, so the exit does not wait for them.

        The connection is shut down through a duplicate of its descriptor: gevent's own ``shutdown`` on the
        socket object would cancel the waiting reader with "File descriptor was closed in another greenlet",
        which gunicorn logs as an error with a traceback. Shut down at the OS level, the reader simply sees
        the end of the stream and the connection closes quietly."""
        for client, connection in list(self._connections.items()):
            if connection.state == _IDLE:
                _shut_down(client)

    def _end_lingering_connections(self) -> None:
        """Shut down the connections still open :data:`LINGER_SECONDS` after the drain, each logged with the
        stack its handler waits in: their reads and writes then fail, and the handlers end. A handler that
        waits on something else is killed a second later, as gunicorn kills them after its graceful timeout."""
        lingering = list(self._connections.items())
        for client, connection in lingering:
            frame = getattr(connection.handler, "gr_frame", None)
            stack = "".join(traceback.format_stack(frame)).rstrip() if frame is not None else "(no stack)"
            self.log.warning("graceful shutdown: a %s connection is still open %.0fs after the drain; shutting it "
                             "down. Its handler waits in:\n%s", connection.state, LINGER_SECONDS, stack)
            _shut_down(client)
        if lingering:
            gevent.sleep(1.0)
        for client, connection in lingering:
            if client in self._connections:
                connection.handler.kill(block=False)


def _shut_down(client: Any) -> None:
    """Shut ``client``'s connection down through a duplicate of its descriptor (see
    :meth:`DrainingGeventWorker._close_idle_connections`)."""
    try:
        with socket.socket(fileno=os.dup(client.fileno())) as duplicate:
            duplicate.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
