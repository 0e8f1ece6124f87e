"""A Java okhttp client (Debian's okhttp 3.13 jars) against the real server, compiled and run by the test."""

from __future__ import annotations

import json
import subprocess

import pytest
import requests

from tests.browser import require
from tests.servers import ROOT

pytestmark = pytest.mark.e2e

JARS = "/usr/share/java/okhttp.jar:/usr/share/java/okio.jar"
SOURCE = ROOT / "examples" / "java" / "plain" / "ChatStreamPlain.java"


@pytest.fixture(scope="module")
def java_classes(tmp_path_factory):
    require("javac", "java", "/usr/share/java/okhttp.jar", "/usr/share/java/okio.jar")
    classes = tmp_path_factory.mktemp("java")
    subprocess.run(["javac", "-encoding", "UTF-8", "-d", str(classes), "-cp", JARS, str(SOURCE)], check=True,
                   capture_output=True, timeout=180)
    return classes


def run_java(classes, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["java", "-Dfile.encoding=UTF-8", "-Dsun.stdout.encoding=UTF-8",
                           "-Dsun.stderr.encoding=UTF-8", "-cp", f"{classes}:{JARS}", "ChatStreamPlain", *args],
                          capture_output=True, text=True, encoding="utf-8", timeout=180)


@pytest.mark.parametrize("question", ["What is the capital of France?", "Write the word café three times."])
def test_java_client_prints_the_same_text_as_the_non_streamed_answer(java_classes, live_server, question):
    expected = requests.post(f"{live_server.url}/chat/new/message", timeout=120, data=json.dumps(
        {"prompt": question, "temperature": 0, "max_tokens": 40})).json()
    result = run_java(java_classes, live_server.url, question, "0", "40")
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected["response"]
    assert result.stderr.startswith("[finish ") and f'"finish_reason":"{expected["finish_reason"]}"' in result.stderr


def test_java_client_reports_an_http_error(java_classes, live_server):
    result = run_java(java_classes, live_server.url, "hello", "7")  # temperature out of range → 422
    assert result.returncode == 1
    assert "HTTP 422" in result.stderr and "temperature" in result.stderr


TOOLS_SOURCE = ROOT / "examples" / "java" / "plain" / "ToolsAndJson.java"
WEATHER_PARAMETERS = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 24},
                                                       "unit": {"enum": ["celsius", "fahrenheit"]}},
                      "required": ["city", "unit"], "additionalProperties": False}
CITY_SCHEMA = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 24},
                                                "country": {"type": "string", "maxLength": 24},
                                                "population_millions": {"type": "number", "minimum": 0, "maximum": 40}},
               "required": ["name", "country", "population_millions"], "additionalProperties": False}


def test_java_client_calls_a_tool_sends_the_result_and_gets_json(java_classes, live_server):
    import jsonschema

    subprocess.run(["javac", "-encoding", "UTF-8", "-d", str(java_classes), "-cp", JARS, str(TOOLS_SOURCE)],
                   check=True, capture_output=True, timeout=180)
    result = subprocess.run(["java", "-Dfile.encoding=UTF-8", "-cp", f"{java_classes}:{JARS}", "ToolsAndJson",
                             live_server.url], capture_output=True, text=True, encoding="utf-8", timeout=600)
    assert result.returncode == 0, result.stderr
    call, answer, city = result.stdout.splitlines()
    _, call_id, name, arguments = call.split(" ", 3)
    assert call_id.startswith("call_") and name == "get_weather"
    jsonschema.validate(json.loads(arguments), WEATHER_PARAMETERS)
    _, finish, text = answer.split(" ", 2)
    assert finish in ("stop", "length") and text.strip()
    _, finish, content = city.split(" ", 2)
    assert finish == "stop"
    jsonschema.validate(json.loads(content), CITY_SCHEMA)
