"""The logging extension: settings read and changed at run time take effect on what the server
(and pb_utils.Logger in python models) writes."""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient

from tests.conftest import NaiadProcess
from tests.models import write_logger

DEFAULTS = {"log_file": "", "log_info": True, "log_warning": True, "log_error": True,
            "log_verbose_level": 0, "log_format": "default"}


def _log_lines(client, tag: str) -> None:
    inp = httpclient.InferInput("TAG", [1], "BYTES")
    inp.set_data_from_numpy(np.array([tag.encode()], dtype=np.object_))
    client.infer("logger", [inp])


def _wait_for(read, needle: str, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        text = read()
        if needle in text or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


@pytest.fixture
def server(tmp_path):
    write_logger(tmp_path)
    with NaiadProcess(tmp_path) as proc:
        yield proc


def test_log_settings_take_effect(server, tmp_path):
    client = httpclient.InferenceServerClient(server.http_url)
    assert client.get_log_settings() == DEFAULTS
    assert "logging" in client.get_server_metadata()["extensions"]

    _log_lines(client, "a")
    out = _wait_for(server.output, "end-a")
    # Triton 2.51's line: the model file's line, the message as a JSON string
    line = re.compile(r'^I\d{4} \d\d:\d\d:\d\d\.\d{6} \d+ model\.py:\d+\] "info-a"$', re.M)
    assert line.search(out), out
    assert re.search(r'^W\d{4} .*\] "warn-a"$', out, re.M)
    assert re.search(r'^E\d{4} .*\] "error-a"$', out, re.M)
    assert "leveled-a" in out
    assert "verbose-a" not in out  # verbose is off by default

    new = client.update_log_settings({"log_info": False, "log_verbose_level": 1})
    assert new == {**DEFAULTS, "log_info": False, "log_verbose_level": 1}
    _log_lines(client, "b")
    out = _wait_for(server.output, "end-b")
    assert "warn-b" in out and "verbose-b" in out
    assert "info-b" not in out and "leveled-b" not in out

    client.update_log_settings({"log_info": True, "log_error": False,
                                "log_verbose_level": 0, "log_format": "ISO8601"})
    _log_lines(client, "c")
    out = _wait_for(server.output, "end-c")
    assert re.search(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ I \d+ model\.py:\d+\] "info-c"$', out,
                     re.M), out
    assert re.search(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ W \d+ model\.py:\d+\] "warn-c"$', out,
                     re.M)
    assert "error-c" not in out and "verbose-c" not in out

    log_file = tmp_path / "server.log"
    got = client.update_log_settings({"log_file": str(log_file), "log_error": True,
                                      "log_format": "default"})
    assert got["log_file"] == str(log_file)
    _log_lines(client, "d")
    text = _wait_for(log_file.read_text, "end-d")
    assert "info-d" in text and "warn-d" in text and "error-d" in text
    assert "info-d" not in server.output() and "end-d" not in server.output()  # file, not stderr
    client.update_log_settings({"log_file": ""})
    _log_lines(client, "e")
    assert "info-e" in _wait_for(server.output, "end-e")
    assert "info-e" not in log_file.read_text()


def test_bad_log_settings_are_refused(server):
    url = server.base + "/v2/logging"
    for body, text in [
        ({"log_verbose_level": -1}, "log_verbose_level"),
        ({"log_verbose_level": "1"}, "log_verbose_level"),
        ({"log_info": "true"}, "log_info"),
        ({"log_format": "xml"}, "log_format"),
        ({"log_file": "/no/such/dir/x.log"}, "unable to open log file"),
    ]:
        r = requests.post(url, json=body, timeout=10)
        assert r.status_code == 400, (body, r.text)
        assert text in r.json()["error"]
    r = requests.post(url, data=b"{", timeout=10)
    assert r.status_code == 400
    assert requests.delete(url, timeout=10).status_code == 405
    assert requests.get(url, timeout=10).json() == DEFAULTS  # nothing changed
