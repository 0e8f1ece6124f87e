"""Start-up failures are loud: one clear line, a non-zero exit, never a server stuck at 503."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.isolation import home_env
from tests.servers import ROOT, free_port, gunicorn_command


@pytest.fixture
def gunicorn(tmp_path):
    """Runs gunicorn to its end with ``env`` and nothing else of ours (but the test home), its data folder in
    the test's own."""
    def run(env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            gunicorn_command(free_port()), cwd=ROOT,
            env={"PATH": "/usr/bin:/bin", **home_env(), "LLM_API_DATA_DIR": str(tmp_path / "data"), **env},
            capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture
def chatglm_folder(tmp_path):
    folder = tmp_path / "chatglm"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "chatglm", "num_layers": 2}))
    return folder


def test_a_chatglm_folder_the_converter_cannot_serve_says_what_is_missing(gunicorn, chatglm_folder):
    result = gunicorn({"LLM_API_MODEL": str(chatglm_folder)})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"llm_api: cannot serve the model: {chatglm_folder} has no tokenizer.model; "
        "set LLM_API_TRUST_REMOTE_CODE=1 to run its own code")


def test_chatglm_remote_code_on_a_transformers_it_cannot_run_names_the_versions_that_work(gunicorn,
                                                                                       chatglm_folder):
    import transformers

    result = gunicorn({"LLM_API_MODEL": str(chatglm_folder), "LLM_API_TRUST_REMOTE_CODE": "1"})
    assert result.returncode == 2
    line = result.stderr.strip()
    assert "\n" not in line
    assert f"does not run on transformers {transformers.__version__}" in line
    assert "4.40.x and 4.41.x" in line


def test_a_model_that_fails_to_load_stops_the_server(gunicorn, tmp_path):
    folder = tmp_path / "llama"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))  # no weights, no tokenizer
    result = gunicorn({"LLM_API_MODEL": str(folder)})
    assert result.returncode != 0
    assert f"cannot serve the model: cannot load {folder}" in result.stdout + result.stderr
    assert "App failed to load" in result.stdout + result.stderr


def test_an_unsupported_database_url_is_one_configuration_line(gunicorn):
    result = gunicorn({"LLM_API_DATABASE_URL": "mysql://root@localhost/chat"})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "llm_api: invalid configuration: LLM_API_DATABASE_URL must be sqlite:///PATH or "
        "postgresql://USER:PASSWORD@HOST:PORT/DB (got 'mysql://root@localhost/chat')")


def test_an_unreachable_database_stops_start_up_with_one_line(gunicorn):
    result = gunicorn({"LLM_API_DATABASE_URL": f"postgresql://nobody@127.0.0.1:{free_port()}/chat"})
    assert result.returncode == 2
    line = result.stderr.strip()
    assert line.startswith("llm_api: cannot open the database: ") and "\n" not in line
    assert "127.0.0.1" in line
