"""Model control modes none and explicit, and the repository API (HTTP, tritonclient)."""

from __future__ import annotations

import base64
import json
import os
import time

import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.clients import call, index, infer, states
from tests.conftest import NaiadProcess, write_model
from tests.models import add_model, config_text, model_py

NOT_ALLOWED = "explicit model load / unload is not allowed if polling is enabled"


def test_none_mode_loads_everything_and_refuses_load_and_unload(repo):
    add_model(repo, "a", offset=1)
    add_model(repo, "b", offset=2)
    with NaiadProcess(repo) as server:
        assert states(server.base) == {"a": [("1", "READY")], "b": [("1", "READY")]}
        for action in ("load", "unload"):
            status, body, _ = call(server.base, "POST", f"/v2/repository/models/a/{action}", {})
            assert status == 503
            assert body == {"error": NOT_ALLOWED}
        client = httpclient.InferenceServerClient(server.http_url)
        with pytest.raises(InferenceServerException, match="not allowed if polling"):
            client.load_model("b")
        assert infer(server.base, "a")[:2] == (200, 1)


def test_explicit_mode_loads_only_what_is_asked(repo):
    add_model(repo, "a", offset=1)
    add_model(repo, "b", offset=2)
    add_model(repo, "c", offset=3)
    with NaiadProcess(repo, "--model-control-mode=explicit", "--load-model=a",
                      "--load-model=c") as server:
        assert states(server.base) == {"a": [("1", "READY")], "b": [("", "")],
                                       "c": [("1", "READY")]}
        assert [m["name"] for m in index(server.base, ready=True)] == ["a", "c"]
        assert infer(server.base, "b")[0] == 404
    with NaiadProcess(repo, "--model-control-mode=explicit") as server:
        # nothing loaded: the index lists the folders by name only; ready (nothing to wait for)
        assert index(server.base) == [{"name": "a"}, {"name": "b"}, {"name": "c"}]
        assert index(server.base, ready=True) == []
    with NaiadProcess(repo, "--model-control-mode=explicit", "--load-model=*") as server:
        assert {m["name"] for m in index(server.base, ready=True)} == {"a", "b", "c"}


def test_explicit_load_unload_and_errors_as_triton(repo):
    add_model(repo, "a", offset=1)
    add_model(repo, "broken", fail=True)
    with NaiadProcess(repo, "--model-control-mode=explicit") as server:
        client = httpclient.InferenceServerClient(server.http_url)
        client.load_model("a")
        assert client.is_model_ready("a")
        assert infer(server.base, "a")[:2] == (200, 1)
        # loading again with nothing changed keeps the loaded version (no reload)
        client.load_model("a")
        assert infer(server.base, "a")[:2] == (200, 1)

        status, body, _ = call(server.base, "POST", "/v2/repository/models/nosuch/load", {})
        assert status == 400
        assert body == {"error": "failed to load 'nosuch', failed to poll from model repository"}
        status, body, _ = call(server.base, "POST", "/v2/repository/models/broken/load", {})
        assert status == 400
        assert body["error"].startswith(
            "load failed for model 'broken': version 1 is at UNAVAILABLE state: ")
        assert "initialize failed on purpose" in body["error"]
        # a model that failed to load makes the (strict) server not ready, as in Triton
        assert call(server.base, "GET", "/v2/health/ready")[0] == 400
        # unloading something that is not loaded is not an error (Triton answers 200)
        assert call(server.base, "POST", "/v2/repository/models/nosuch/unload", {})[0] == 200
        assert call(server.base, "POST", "/v2/repository/models/broken/unload", {})[0] == 200
        assert call(server.base, "GET", "/v2/health/ready")[0] == 200

        client.unload_model("a")
        assert not client.is_model_ready("a")
        st = states(server.base)
        assert st["a"] in ([("1", "UNLOADING")], [("1", "UNAVAILABLE")])
        status, body = infer(server.base, "a")[0], infer(server.base, "a")[2]
        assert status == 404
        assert body == {"error": "Request for unknown model: 'a' has no available versions"}
        items = [i for i in index(server.base) if i["name"] == "a"]
        assert items == [{"name": "a", "version": "1", "state": "UNAVAILABLE",
                          "reason": "unloaded"}] or items[0]["state"] == "UNLOADING"
        # and back
        client.load_model("a")
        assert infer(server.base, "a")[:2] == (200, 1)


def test_load_with_config_override(repo):
    add_model(repo, "a", offset=1, count=1)
    with NaiadProcess(repo, "--model-control-mode=explicit", "--load-model=a") as server:
        client = httpclient.InferenceServerClient(server.http_url)
        cfg = json.loads(json.dumps(client.get_model_config("a")))
        assert cfg["instance_group"][0]["count"] == 1
        override = {
            "name": "a", "backend": "python",
            "input": [{"name": "IN", "data_type": "TYPE_FP32", "dims": [-1]}],
            "output": [{"name": "OUT", "data_type": "TYPE_FP32", "dims": [-1]}],
            "instance_group": [{"kind": "KIND_CPU", "count": 3}],
            "parameters": {"marker": {"string_value": "from-the-request"}},
        }
        client.load_model("a", config=json.dumps(override))
        cfg = client.get_model_config("a")
        assert cfg["instance_group"][0]["count"] == 3
        assert cfg["parameters"]["marker"]["string_value"] == "from-the-request"
        assert infer(server.base, "a")[:2] == (200, 1)
        # bad JSON, wrong name: refused with a clear 400, the loaded model untouched
        status, body, _ = call(server.base, "POST", "/v2/repository/models/a/load",
                               {"parameters": {"config": "{not json"}})
        assert status == 400 and "failed to parse model configuration JSON" in body["error"]
        assert body["error"].startswith("failed to load 'a', failed to poll from model repository")
        status, body, _ = call(server.base, "POST", "/v2/repository/models/a/load",
                               {"parameters": {"config": json.dumps({"name": "other"})}})
        assert status == 400 and "'other'" in body["error"]
        assert infer(server.base, "a")[:2] == (200, 1)
        # a load without config keeps the running override (as Triton does) while the
        # files are unchanged; after an unload, config.pbtxt again
        client.load_model("a")
        assert client.get_model_config("a")["instance_group"][0]["count"] == 3
        client.unload_model("a")
        deadline = time.monotonic() + 30
        while client.is_model_ready("a") and time.monotonic() < deadline:
            time.sleep(0.05)
        client.load_model("a")
        assert client.get_model_config("a")["instance_group"][0]["count"] == 1


def test_load_from_request_files(repo, tmp_path):
    with NaiadProcess(repo, "--model-control-mode=explicit") as server:
        client = httpclient.InferenceServerClient(server.http_url)
        cfg = {
            "name": "fresh", "backend": "python",
            "input": [{"name": "IN", "data_type": "TYPE_FP32", "dims": [-1]}],
            "output": [{"name": "OUT", "data_type": "TYPE_FP32", "dims": [-1]}],
        }
        client.load_model("fresh", config=json.dumps(cfg),
                          files={"file:1/model.py": model_py(offset=7).encode()})
        assert infer(server.base, "fresh")[:2] == (200, 7)
        assert {"name": "fresh", "version": "1", "state": "READY"} in index(server.base)
        # new files replace the model
        client.load_model("fresh", config=json.dumps(cfg),
                          files={"file:1/model.py": model_py(offset=8).encode()})
        assert infer(server.base, "fresh")[:2] == (200, 8)

        # a path leaving the model folder is refused before anything is written
        outside = tmp_path / "escaped.py"
        escape = os.path.relpath(outside, "/tmp/naiad-model-x/1")
        status, body, _ = call(server.base, "POST", "/v2/repository/models/evil/load", {
            "parameters": {"config": json.dumps(dict(cfg, name="evil")),
                           "file:1/model.py": base64.b64encode(b"x = 1").decode(),
                           f"file:{escape}": base64.b64encode(b"owned").decode()}})
        assert status == 400
        assert body["error"].startswith(  # Triton's message, then the reason
            "failed to load 'evil', failed to poll from model repository: "
            f"Invalid file parameter 'file:{escape}' with normalized path")
        assert body["error"].endswith("must stay within model directory.")
        for bad in ("../x.py", "/etc/passwd", "1/../../x.py"):
            status, body, _ = call(server.base, "POST", "/v2/repository/models/evil/load", {
                "parameters": {"config": json.dumps(dict(cfg, name="evil")),
                               f"file:{bad}": base64.b64encode(b"owned").decode()}})
            assert status == 400 and "must stay within model directory" in body["error"], bad
        assert not outside.exists()
        assert infer(server.base, "evil")[0] == 404

        # files need a config; base64 must be valid
        status, body, _ = call(server.base, "POST", "/v2/repository/models/fresh/load", {
            "parameters": {"file:1/model.py": base64.b64encode(b"x").decode()}})
        assert (status, body) == (400, {"error": "Load parameter 'config' must be specified "
                                                 "for model file override"})
        status, body, _ = call(server.base, "POST", "/v2/repository/models/fresh/load", {
            "parameters": {"config": json.dumps(cfg), "file:1/model.py": "!!not base64!!"}})
        assert status == 400 and "not valid base64" in body["error"]
        assert infer(server.base, "fresh")[:2] == (200, 8)

        # unloading removes the files written for it
        client.unload_model("fresh")
        assert infer(server.base, "fresh")[0] == 404


ENSEMBLE = """
name: "ens"
platform: "ensemble"
max_batch_size: 0
input [ { name: "IN" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "OUT" data_type: TYPE_FP32 dims: [ -1 ] } ]
ensemble_scheduling {
  step [
    { model_name: "first" model_version: -1
      input_map { key: "IN" value: "IN" } output_map { key: "OUT" value: "mid" } },
    { model_name: "second" model_version: -1
      input_map { key: "IN" value: "mid" } output_map { key: "OUT" value: "OUT" } }
  ]
}
"""


def test_explicit_load_of_an_ensemble_loads_its_steps_first(repo):
    add_model(repo, "first", offset=1)
    add_model(repo, "second", offset=2)
    add_model(repo, "other", offset=3)
    write_model(repo, "ens", ENSEMBLE, {}, versions=(1,))
    with NaiadProcess(repo, "--model-control-mode=explicit") as server:
        # the ensemble itself may not load on this build; its steps must
        call(server.base, "POST", "/v2/repository/models/ens/load", {})
        st = states(server.base)
        assert st["first"] == [("1", "READY")]
        assert st["second"] == [("1", "READY")]
        assert st["other"] == [("", "")]
        # unload_dependents takes the steps down with it
        status, _, raw = call(server.base, "POST", "/v2/repository/models/ens/unload",
                              {"parameters": {"unload_dependents": True}})
        assert status == 200, raw
        from tests.clients import wait_for

        wait_for(lambda: all(s == [("1", "UNAVAILABLE")] for n, s in states(server.base).items()
                             if n in ("first", "second")), what="steps unloaded")


def test_duplicate_model_names_across_repositories(tmp_path):
    r1, r2 = tmp_path / "r1", tmp_path / "r2"
    add_model(r1, "dup", offset=1)
    add_model(r2, "dup", offset=2)
    add_model(r1, "only1", offset=3)
    add_model(r2, "only2", offset=4)
    with NaiadProcess([r1, r2], "--exit-on-error=false", "--strict-readiness=false") as server:
        assert infer(server.base, "only1")[:2] == (200, 3)
        assert infer(server.base, "only2")[:2] == (200, 4)
        assert infer(server.base, "dup")[0] == 404
        dup = [i for i in index(server.base) if i["name"] == "dup"]
        assert dup[0]["state"] == "UNAVAILABLE"
        assert "more than one model repository" in dup[0]["reason"]


def test_repository_index_body_is_checked(repo):
    add_model(repo, "a")
    with NaiadProcess(repo) as server:
        status, body, _ = call(server.base, "POST", "/v2/repository/index", {"ready": "yes"})
        assert status == 400
        assert config_text("a")  # the helper renders


def test_explicit_startup_with_an_unknown_load_model_fails(repo):
    add_model(repo, "a")
    server = NaiadProcess(repo, "--model-control-mode=explicit", "--load-model=nosuch",
                          wait="none").start()
    try:
        assert server.proc.wait(timeout=60) == 1
        out = server.output()
        assert "failed to load 'nosuch', failed to poll from model repository" in out
        assert "failed to load all models" in out
    finally:
        server.stop()
