"""gunicorn settings for llm_api; each comes from an LLM_API_* variable (see the README).

Importing this file only reads the settings: gunicorn imports it again on every reload (HUP). The
start-up work runs in the ``on_starting`` hook, once per master and before it binds or forks a worker:
the model's preflight, the database migrations, the API-key checks and the Prometheus directory. Its
messages go to gunicorn's error log.

The master imports nothing heavy, here or in its hooks: each worker patches the standard library with
gevent after the fork, and modules the master had imported (``ssl`` users among them) would stay
unpatched in every worker. Flask, torch and the rest are imported by the worker, once it is patched.

A ``-b HOST:PORT`` on the command line overrides ``bind`` here.
"""

import sys

from llm_api.config import ConfigError, Settings

# Exit status of a worker whose app cannot load: gunicorn's master then stops instead of respawning it.
APP_LOAD_ERROR = 4
# Exit status of a start-up that is refused: invalid settings, a model that cannot be served, a database
# that cannot be opened, LLM_API_REQUIRE_KEYS without a key.
START_REFUSED = 2

try:
    _settings = Settings.from_env()
except ConfigError as _error:  # one clear line, then stop: gunicorn cannot be set up without the settings
    print(f"llm_api: invalid configuration: {_error}", file=sys.stderr)
    raise SystemExit(START_REFUSED) from None

# --- server socket ---
bind = [_settings.bind]

# --- workers: gevent, one model copy per worker, never preloaded (patching and CUDA happen after fork) ---
# gunicorn's gevent worker, plus a drain on SIGTERM: readiness 503, new requests 503 shutting_down, running
# answers finish until shortly before graceful_timeout, then are interrupted and stored (llm_api/worker.py).
worker_class = "llm_api.worker.DrainingGeventWorker"
workers = _settings.workers
worker_connections = _settings.worker_connections
preload_app = False
timeout = _settings.timeout
graceful_timeout = _settings.graceful_timeout
keepalive = 5

# --- limits: long prompts in a GET query string (browser EventSource) need a long request line ---
limit_request_line = 16384

# --- logging: stdout/stderr; the app writes one `llm_api.request` line per request, so no access log ---
accesslog = None
errorlog = "-"
loglevel = _settings.log_level

# --- control socket (gunicorn 25.1+): off. Its default place is ~/.gunicorn/ (or $XDG_RUNTIME_DIR), outside
# the service's folders, and two instances on one machine would share it. Nothing here uses `gunicornc`. ---
control_socket_disable = True


# --- hooks ---
def on_starting(server):
    """Once per master, before it binds or forks a worker (not again on HUP): check the model, migrate the
    database, check the API keys, prepare the Prometheus directory. A refusal is one line on gunicorn's
    log, then exit status 2."""
    from llm_api import model_spec
    from llm_api.local_model.embedding_spec import EmbeddingSpec, preflight_embedding
    from llm_api.local_model.errors import ModelLoadError
    from llm_api.local_model.spec import preflight
    from llm_api.storage import StorageError, key_counts, prepare_database

    def refuse(message):
        server.log.error("llm_api: %s", message)
        if server.pidfile is not None:
            server.pidfile.unlink()
        raise SystemExit(START_REFUSED)

    try:
        if _settings.local_model is not None:  # every engine may be an upstream: then no model is loaded here
            preflight(model_spec(_settings))
        for target in _settings.embedding_models:
            preflight_embedding(EmbeddingSpec(target.name, target.source))
    except ModelLoadError as error:
        refuse(f"cannot serve the model: {error}")
    try:
        prepare_database(_settings.resolved_database_url)  # here once, not in every worker
        keys = key_counts(_settings.resolved_database_url)
    except StorageError as error:
        refuse(f"cannot open the database: {error}")
    if _settings.require_keys and keys.active == 0:
        refuse("LLM_API_REQUIRE_KEYS is on but no active API key exists: create one with "
               "`flask --app wsgi keys create --name NAME`")
    if keys.created == 0:
        server.log.warning("llm_api: warning: no API key exists, so every route is open; create one with "
                           "`flask --app wsgi keys create --name NAME`")
    _prepare_metrics_dir()
    server.log.info("llm_api: start-up checks passed (model %s, database at the newest revision, "
                    "%d active API key(s))", _settings.local_model or "none: upstream engines only", keys.active)


def _prepare_metrics_dir():
    """Give the workers one directory for their Prometheus values, before any of them forks.

    Each worker writes its values to files in PROMETHEUS_MULTIPROC_DIR, and /metrics on any worker adds
    up the files of all of them. A given directory is emptied of earlier runs' ``*.db`` files; without
    one, a fresh temporary directory is made and removed when the master exits. Once per master (from
    ``on_starting``): a reload (HUP) keeps the values of the workers still finishing.
    """
    import atexit
    import glob
    import os
    import shutil
    import tempfile

    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path and path != os.environ.get("_LLM_API_METRICS_TMPDIR"):  # the operator's directory
        os.makedirs(path, exist_ok=True)
        for stale in glob.glob(os.path.join(path, "*.db")):
            os.remove(stale)
        return
    # None given, or the temporary one of a master that re-executed this one (USR2): a fresh one.
    path = tempfile.mkdtemp(prefix="llm_api-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ["_LLM_API_METRICS_TMPDIR"] = path
    master = os.getpid()

    def remove_in_master():  # workers inherit atexit handlers; only the master removes the directory
        if os.getpid() == master:
            shutil.rmtree(path, ignore_errors=True)

    atexit.register(remove_in_master)


def post_worker_init(worker):
    """Start loading the models (chat and embedding) on their engine threads as soon as the worker is patched
    and running; /readyz answers 200 once every one has loaded."""
    import os

    from llm_api import start_engine

    def stop_server(reason):
        worker.log.error("llm_api: cannot serve the model: %s", reason)
        os._exit(APP_LOAD_ERROR)

    start_engine(worker.wsgi, on_load_failure=stop_server, embedders=True)


def child_exit(server, worker):
    """In the master, when a worker is gone: drop its live gauges (queue, batch, streams) from /metrics."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def worker_exit(server, worker):
    """Stop the engine thread, then leave at once.

    Interpreter shutdown under gevent waits for the event loop to have no live
    watchers; watchers created for cross-thread wake-ups can keep it waiting
    forever, so the worker flushes its logs and exits directly.
    """
    import logging
    import os

    from llm_api import stop_engine

    app = getattr(worker, "wsgi", None)
    if app is not None:
        stop_engine(app)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
