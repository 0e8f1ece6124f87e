"""Keep the test suite out of the user's own folders.

The app keeps its database (with the API keys) in ``$XDG_DATA_HOME/llm_api`` (``~/.local/share/llm_api``), its
converted models in ``$XDG_CACHE_HOME/llm_api`` (``~/.cache/llm_api``), and gunicorn puts its control socket in
``$XDG_RUNTIME_DIR`` or ``~/.gunicorn``. A test that relied on those defaults would read the user's keys (and
get 401 once the user has created one) and leave its exchanges in the user's database.

conftest.py points all of these variables at one fresh temporary folder, before it imports anything else, so
the app, its libraries and every gunicorn or flask subprocess see that folder. Its fixtures then fail any test
after which :func:`written_by_the_app` finds files where the app or gunicorn would have put them by default.
The test model cache (``LLM_API_TEST_CACHE_DIR``, by default ``.cache/test-models`` in the repository) is the
project's own folder and is not affected.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

HOME_VARIABLES = ("HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_RUNTIME_DIR")


def fresh_home() -> dict[str, str]:
    """A new empty temporary home, removed when this process exits: the values of :data:`HOME_VARIABLES` that
    point into it."""
    home = Path(tempfile.mkdtemp(prefix="llm_api-tests-home-"))
    owner = os.getpid()
    atexit.register(lambda: os.getpid() == owner and shutil.rmtree(home, ignore_errors=True))  # not in a fork
    runtime = home / "run"
    runtime.mkdir(mode=0o700)
    return {"HOME": str(home), "XDG_DATA_HOME": str(home / ".local" / "share"),
            "XDG_CACHE_HOME": str(home / ".cache"), "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_STATE_HOME": str(home / ".local" / "state"), "XDG_RUNTIME_DIR": str(runtime)}


def home_env() -> dict[str, str]:
    """The test home's variables, for a subprocess given an environment of its own instead of a copy of ours."""
    return {name: os.environ[name] for name in HOME_VARIABLES}


def default_locations() -> list[Path]:
    """Where the app and gunicorn write when nothing else is configured."""
    home = Path(os.environ["HOME"])
    places = [Path(os.environ["XDG_DATA_HOME"]) / "llm_api", Path(os.environ["XDG_CACHE_HOME"]) / "llm_api",
              home / ".local" / "share" / "llm_api", home / ".cache" / "llm_api", home / ".gunicorn",
              Path(os.environ["XDG_RUNTIME_DIR"]) / "gunicorn.ctl"]
    return list(dict.fromkeys(places))


def written_by_the_app() -> list[Path]:
    """Every file (or empty folder) found at :func:`default_locations`."""
    found = []
    for place in default_locations():
        if place.is_dir():
            found += [p for p in sorted(place.rglob("*")) if not p.is_dir() or not any(p.iterdir())] or [place]
        elif place.exists() or place.is_symlink():
            found.append(place)
    return found


def clear_default_locations() -> None:
    """Remove whatever is at :func:`default_locations`, so that the next check starts clean."""
    for place in default_locations():
        if place.is_dir() and not place.is_symlink():
            shutil.rmtree(place, ignore_errors=True)
        else:
            place.unlink(missing_ok=True)
