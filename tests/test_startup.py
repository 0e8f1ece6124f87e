"""Start-up failures are loud: one clear line, a non-zero exit, never a server stuck at 503. The start-up work
runs once in gunicorn's master (not again on a reload), and a normal start logs no warning."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest
import requests

from tests.isolation import home_env
from tests.servers import ROOT, free_port, gunicorn_command, refusal, start_server, stop_server

STARTED = "llm_api: start-up checks passed"
OPEN = "llm_api: warning: no API key exists, so every route is open"


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
    assert refusal(result) == (
        f"llm_api: cannot serve the model: {chatglm_folder} has no tokenizer.model; "
        "set LLM_API_TRUST_REMOTE_CODE=1 to run its own code")


def test_chatglm_remote_code_on_a_transformers_it_cannot_run_names_the_versions_that_work(gunicorn,
                                                                                       chatglm_folder):
    import transformers

    result = gunicorn({"LLM_API_MODEL": str(chatglm_folder), "LLM_API_TRUST_REMOTE_CODE": "1"})
    assert result.returncode == 2
    line = refusal(result)
    assert line.startswith("llm_api: cannot serve the model: ChatGLM3's remote code does not run")
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


def test_the_llama_cpp_backend_on_a_folder_without_a_gguf_file_is_one_line(gunicorn, chatglm_folder):
    result = gunicorn({"LLM_API_MODEL": str(chatglm_folder), "LLM_API_BACKEND": "llama_cpp"})
    assert result.returncode == 2
    assert refusal(result) == (
        f"llm_api: cannot serve the model: LLM_API_BACKEND=llama_cpp runs GGUF files, and {str(chatglm_folder)!r} "
        "is not a folder with a .gguf file")


def test_an_unsupported_database_url_is_one_configuration_line(gunicorn):
    result = gunicorn({"LLM_API_DATABASE_URL": "mysql://root@localhost/chat"})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "llm_api: invalid configuration: LLM_API_DATABASE_URL must be sqlite:///PATH or "
        "postgresql://USER:PASSWORD@HOST:PORT/DB (got 'mysql://root@localhost/chat')")


def test_an_unknown_quantization_is_one_configuration_line(gunicorn):
    result = gunicorn({"LLM_API_BACKEND": "llama_cpp", "LLM_API_QUANTIZATION": "q3_k"})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "llm_api: invalid configuration: LLM_API_QUANTIZATION must be one of none, q8_0, int8 (got 'q3_k')")


def test_an_unreachable_database_stops_start_up_with_one_line(gunicorn):
    result = gunicorn({"LLM_API_DATABASE_URL": f"postgresql://nobody@127.0.0.1:{free_port()}/chat"})
    assert result.returncode == 2
    line = refusal(result)
    assert line.startswith("llm_api: cannot open the database: ")
    assert "127.0.0.1" in line


def healthz_requests(url: str) -> float:
    """``llm_api_requests_total`` of ``GET /healthz`` answered 200, summed over the workers."""
    metrics = requests.get(f"{url}/metrics", timeout=10).text
    pattern = r'^llm_api_requests_total\{(?=[^}]*route="/healthz")(?=[^}]*status="200")[^}]*\} (\S+)$'
    return sum(float(value) for value in re.findall(pattern, metrics, re.MULTILINE))


@pytest.mark.e2e
def test_a_reload_does_not_run_the_start_up_work_again(tmp_path):
    server = start_server(tmp_path)
    try:
        for _ in range(3):
            assert requests.get(f"{server.url}/healthz", timeout=10).status_code == 200
        before = server.log()
        assert before.count(STARTED) == 1 and before.count(OPEN) == 1  # once, from the master
        assert healthz_requests(server.url) >= 3

        server.process.send_signal(signal.SIGHUP)  # the master reads gunicorn.conf.py again, new workers start
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if server.log().count(" ready on ") == 2 and "Hang up: Master" in server.log():
                try:
                    if requests.get(f"{server.url}/readyz", timeout=5).status_code == 200:
                        break
                except (requests.ConnectionError, requests.Timeout):
                    pass
            time.sleep(0.3)
        else:
            raise AssertionError(f"no ready worker after the reload:\n{server.log()[-3000:]}")
        after = server.log()
        assert after.count("Booting worker") == before.count("Booting worker") + 1
        # No preflight, migration, key check or new Prometheus directory on a reload: their log lines are not
        # repeated, and the counters of the worker that left are still added up.
        assert after.count(STARTED) == 1 and after.count(OPEN) == 1
        assert healthz_requests(server.url) >= 3
    finally:
        stop_server(server)


@pytest.mark.e2e
def test_a_normal_start_logs_no_warning_and_leaves_home_alone(tmp_path):
    from llm_api.auth.keys import issue_key
    from llm_api.storage import SqlKeyStore, open_store

    store = open_store(f"sqlite:///{tmp_path / 'data' / 'llm_api.sqlite3'}", 1)
    _, key = issue_key(SqlKeyStore(store.engine), "ops")  # a key exists: the service is not open
    store.engine.dispose()
    home, runtime = tmp_path / "home", tmp_path / "runtime"
    home.mkdir()
    runtime.mkdir()
    server = start_server(tmp_path, {"HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)})  # else the defaults
    keep_alive = requests.Session()  # its connection stays open, idle, while the server stops
    try:
        response = keep_alive.post(f"{server.url}/chat/new/message", timeout=120,
                                   headers={"Authorization": f"Bearer {key}"},
                                   data=json.dumps({"prompt": "Say hello.", "max_tokens": 8, "temperature": 0}))
        assert response.status_code == 200, response.text
    finally:
        stop_server(server)
        keep_alive.close()
    log = server.log()
    assert "llm_api: start-up checks passed" in log and "1 active API key(s)" in log
    assert [line for line in log.splitlines() if "warn" in line.lower()] == []  # gevent's MonkeyPatchWarning too
    assert "Traceback" not in log and "[ERROR]" not in log, log[-3000:]  # an idle connection closes quietly
    assert not (home / ".gunicorn").exists() and os.listdir(runtime) == []  # no gunicorn control socket


def test_a_chat_model_of_llm_api_chat_models_is_checked_at_start_as_llm_api_model_is(gunicorn, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = gunicorn({"LLM_API_CHAT_MODELS": f"second={empty}"})
    assert result.returncode == 2
    assert refusal(result) == f"llm_api: cannot serve the model: {empty} has neither a config.json nor a .gguf file"
    bad = gunicorn({"LLM_API_CHAT_MODELS": "second"})
    assert bad.returncode != 0 and "LLM_API_CHAT_MODELS must be a comma-separated list of ID=SOURCE" in bad.stderr
