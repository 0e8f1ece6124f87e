"""The suite runs in a home of its own (tests/isolation.py, set up by conftest.py): the app's default folders
point into it, and what the app leaves there is found and named."""

from __future__ import annotations

import os
from pathlib import Path

from llm_api.config import Settings
from tests.isolation import HOME_VARIABLES, clear_default_locations, written_by_the_app


def test_the_apps_default_folders_are_in_the_sessions_own_home():
    home = Path(os.environ["HOME"])
    assert home.name.startswith("llm_api-tests-home-") and home.is_dir()
    assert all(os.environ[name].startswith(str(home)) for name in HOME_VARIABLES)
    defaults = Settings.from_env({})
    assert defaults.resolved_database_url == f"sqlite:///{home / '.local' / 'share' / 'llm_api' / 'llm_api.sqlite3'}"
    assert defaults.resolved_cache_dir == str(home / ".cache" / "llm_api")


def test_files_left_where_the_app_and_gunicorn_keep_theirs_are_found_and_named():
    home = Path(os.environ["HOME"])
    database = home / ".local" / "share" / "llm_api" / "llm_api.sqlite3"
    database.parent.mkdir(parents=True)
    database.write_bytes(b"")
    (home / ".cache" / "llm_api").mkdir(parents=True)
    control = home / ".gunicorn" / "gunicorn.ctl"
    control.parent.mkdir()
    control.write_bytes(b"")
    unrelated = home / ".cache" / "someone-else" / "file"
    unrelated.parent.mkdir(parents=True)
    unrelated.write_bytes(b"")
    try:
        assert written_by_the_app() == [database, home / ".cache" / "llm_api", control]
    finally:
        clear_default_locations()
    assert written_by_the_app() == [] and unrelated.exists()
