"""gunicorn settings for llm_api; each comes from an LLM_API_* variable (see the README).

A ``-b HOST:PORT`` on the command line overrides ``bind`` here.
"""

import sys
import warnings

from llm_api import model_spec
from llm_api.config import ConfigError, Settings
from llm_api.engine.errors import ModelLoadError
from llm_api.engine.loader import preflight
from llm_api.storage import StorageError, prepare_database

# Exit status of a worker whose app cannot load: gunicorn's master then stops instead of respawning it.
APP_LOAD_ERROR = 4

try:
    _settings = Settings.from_env()
    preflight(model_spec(_settings))
    prepare_database(_settings.resolved_database_url)  # migrations run once here, not in every worker
except ConfigError as _error:  # one clear line, then stop before any worker starts
    print(f"llm_api: invalid configuration: {_error}", file=sys.stderr)
    raise SystemExit(2) from None
except ModelLoadError as _error:
    print(f"llm_api: cannot serve the model: {_error}", file=sys.stderr)
    raise SystemExit(2) from None
except StorageError as _error:
    print(f"llm_api: cannot open the database: {_error}", file=sys.stderr)
    raise SystemExit(2) from None

# gevent's thread patching inspects every live object, which trips a torch deprecation warning.
warnings.filterwarnings("ignore", message=r".*torch\.distributed\.reduce_op.*")

# --- server socket ---
bind = [_settings.bind]

# --- workers: gevent, one model copy per worker, never preloaded (patching and CUDA happen after fork) ---
worker_class = "gevent"
workers = _settings.workers
worker_connections = _settings.worker_connections
preload_app = False
timeout = _settings.timeout
graceful_timeout = _settings.graceful_timeout
keepalive = 5

# --- limits: long prompts in a GET query string (browser EventSource) need a long request line ---
limit_request_line = 16384

# --- logging: stdout/stderr ---
accesslog = "-"
errorlog = "-"
loglevel = _settings.log_level


# --- hooks ---
def post_worker_init(worker):
    """Start loading the model on the engine thread as soon as the worker is patched and running."""
    import os

    from llm_api import start_engine

    def stop_server(reason):
        worker.log.error("llm_api: cannot serve the model: %s", reason)
        os._exit(APP_LOAD_ERROR)

    start_engine(worker.wsgi, on_load_failure=stop_server)


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
