"""Loads with a ``config`` override, as Triton 2.51 handles them (checked against the
reference; see the issue-13 notes): overrides that cannot be used get Triton's message,
a plain load keeps the running override while the files are unchanged, and a failed
override leaves the serving version serving."""

from __future__ import annotations

import base64
import json
import re
import time

import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.conftest import EXAMPLES, NaiadProcess, copy_example

POLL_FAILED = "failed to load 'add_sub', failed to poll from model repository"

OVERRIDE = json.dumps({
    "backend": "python", "max_batch_size": 8,
    "input": [{"name": "INPUT0", "data_type": "TYPE_FP32", "dims": [4]},
              {"name": "INPUT1", "data_type": "TYPE_FP32", "dims": [4]}],
    "output": [{"name": "OUTPUT0", "data_type": "TYPE_FP32", "dims": [4]},
               {"name": "OUTPUT1", "data_type": "TYPE_FP32", "dims": [4]}]})
MODEL_PY = (EXAMPLES / "add_sub" / "1" / "model.py").read_bytes()


@pytest.fixture
def server(repo):
    copy_example(repo, "add_sub")
    with NaiadProcess(repo, "--model-control-mode=explicit", "--load-model=add_sub") as proc:
        yield proc


def _max_batch(client) -> int:
    return client.get_model_config("add_sub").get("max_batch_size", 0)


def _serves(server) -> None:
    """add_sub is ready, indexed READY and answers (a batch of 1 under max_batch_size 8)."""
    client = httpclient.InferenceServerClient(server.http_url)
    assert client.is_model_ready("add_sub")
    index = {m["name"]: m for m in client.get_model_repository_index()}
    assert index["add_sub"]["state"] == "READY", index
    shape = [1, 4] if _max_batch(client) else [4]
    a = np.ones(shape, np.float32)
    inputs = [httpclient.InferInput("INPUT0", shape, "FP32"),
              httpclient.InferInput("INPUT1", shape, "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(a)
    assert client.infer("add_sub", inputs).as_numpy("OUTPUT0").reshape(-1).tolist() == [2] * 4


BAD_OVERRIDES = [
    # (config, files, the reason naiad adds after Triton's message)
    ("{not json", None, "Invalid config override: failed to parse model configuration JSON"),
    (json.dumps({"max_batch_size": "many"}), None, "Invalid config override"),
    (OVERRIDE, {"file:1/" + "a" * 300: b"x"}, "File name too long"),
    (OVERRIDE, {"file:../../etc/naiad_x": b"x"}, "must stay within model directory"),
    (OVERRIDE, {"file:1": b"x", "file:1/model.py": MODEL_PY}, "Invalid file parameter"),
]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_overrides_that_cannot_be_used_get_tritons_message(server, protocol):
    if protocol == "http":
        client = httpclient.InferenceServerClient(server.http_url)
    else:
        client = grpcclient.InferenceServerClient(server.grpc_url)
    for config, files, reason in BAD_OVERRIDES:
        with pytest.raises(InferenceServerException) as info:
            client.load_model("add_sub", config=config, files=files)
        message = info.value.message()
        assert message.startswith(POLL_FAILED + ": "), message
        assert reason in message, message
        assert "Errno" not in message and "/tmp/" not in message, message
        # a client's mistake: 400 / INVALID_ARGUMENT (Triton: 500 / INTERNAL)
        assert info.value.status() in ("400", "StatusCode.INVALID_ARGUMENT"), info.value.status()
    _serves(server)  # nothing was unloaded
    out = server.output()
    assert re.search(r"\] \"Poll failed for model directory 'add_sub': Invalid config override: ",
                     out), out


def test_plain_load_keeps_the_running_override(server, repo):
    client = httpclient.InferenceServerClient(server.http_url)
    assert _max_batch(client) == 0
    client.load_model("add_sub", config=OVERRIDE)
    assert _max_batch(client) == 8
    client.load_model("add_sub")  # no override, no file changed: the override stays
    assert _max_batch(client) == 8
    _serves(server)
    grpcclient.InferenceServerClient(server.grpc_url).load_model("add_sub")
    assert _max_batch(client) == 8
    client.unload_model("add_sub")
    deadline = time.monotonic() + 30
    while client.is_model_ready("add_sub") and time.monotonic() < deadline:
        time.sleep(0.05)
    client.load_model("add_sub")  # after an unload: config.pbtxt again
    assert _max_batch(client) == 0
    # a file override is not kept: a plain load goes back to the repository
    client.load_model("add_sub", config=OVERRIDE, files={"file:1/model.py": MODEL_PY})
    assert _max_batch(client) == 8
    client.load_model("add_sub")
    assert _max_batch(client) == 0
    # a change in the model's files: the repository's config wins
    client.load_model("add_sub", config=OVERRIDE)
    config = repo / "add_sub" / "config.pbtxt"
    config.write_text(config.read_text() + "\n# edited\n")
    client.load_model("add_sub")
    assert _max_batch(client) == 0
    _serves(server)


def test_failed_override_keeps_the_serving_version(server):
    client = httpclient.InferenceServerClient(server.http_url)
    client.load_model("add_sub", config=OVERRIDE)
    broken_py = b"def broken(:\n"
    failures = [
        ({"config": "{bad"}, POLL_FAILED),
        ({"config": json.dumps({"backend": "nosuch"})}, "unable to find backend 'nosuch'"),
        ({"config": OVERRIDE.replace('"max_batch_size": 8', '"max_batch_size": 4'),
          "file:1/model.py": base64.b64encode(broken_py).decode()},
         "failed to import python model file"),
    ]
    for params, message in failures:
        r = requests.post(server.base + "/v2/repository/models/add_sub/load",
                          json={"parameters": params}, timeout=60)
        assert r.status_code == 400, r.text
        assert r.json()["error"].startswith(message), r.text
        _serves(server)
        assert _max_batch(client) == 8  # still the running override
    client.load_model("add_sub")  # and a plain load still keeps it
    assert _max_batch(client) == 8
    _serves(server)
