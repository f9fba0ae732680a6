"""The response cache: identical requests answered from a bounded LRU."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest
from conftest import NaiadProcess, write_model

from naiad.core.errors import InvalidArgument
from naiad.scheduling.response_cache import parse_cache_config
from tests.clients import http_infer
from tests.models import PROBE_MODEL, probe_config, write_probe

CACHE_ON = "response_cache { enable: true }"
SEQ = """sequence_batching { control_input [ { name: "START" control [ {
  kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] } ] }"""
SEQ_MODEL = '''
import numpy as np
import triton_python_backend_utils as pb_utils

_N = [0]


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            _N[0] += 1
            out.append(pb_utils.InferenceResponse(
                [pb_utils.Tensor("N", np.array([[_N[0]]], np.int32))]))
        return out
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("cache")
    write_probe(repo, "cached", extra=CACHE_ON)
    write_probe(repo, "plain")
    write_probe(repo, "big", dims="[ 200 ]", extra=CACHE_ON)
    write_model(repo, "seq", f"""
        name: "seq"
        backend: "python"
        max_batch_size: 4
        input [ {{ name: "IN" data_type: TYPE_FP32 dims: [ 1 ] }} ]
        output [ {{ name: "N" data_type: TYPE_INT32 dims: [ 1 ] }} ]
        {SEQ}
        {CACHE_ON}
        """, {"model.py": SEQ_MODEL})
    # each "big" response holds ~1.5 kB: room for two entries
    with NaiadProcess(repo, "--cache-config=local,size=3500") as s:
        yield s


def _infer(server, model, value, outputs=None, **kw):
    arr = np.asarray(value, dtype=np.float32).reshape(1, -1)
    return http_infer(server.http_url, model, {"IN": arr}, outputs, **kw)


def _stats(server, model):
    with urllib.request.urlopen(f"{server.base}/v2/models/{model}/stats") as r:
        return json.load(r)["model_stats"][0]


def test_identical_request_is_answered_from_the_cache(server):
    first = _infer(server, "cached", [1.5])
    second = _infer(server, "cached", [1.5])
    assert second.as_numpy("OUT").tolist() == [[1.5]]
    # the same execution answered both: the model ran once
    assert second.as_numpy("EXEC").tolist() == first.as_numpy("EXEC").tolist()
    stats = _stats(server, "cached")
    infer = stats["inference_stats"]
    assert infer["cache_hit"]["count"] == 1 and infer["cache_miss"]["count"] == 1
    assert infer["success"]["count"] == 2
    assert stats["inference_count"] == 1 and stats["execution_count"] == 1
    assert infer["cache_hit"]["ns"] > 0 and infer["cache_miss"]["ns"] > 0


def test_different_inputs_or_outputs_are_different_entries(server):
    hits = _stats(server, "cached")["inference_stats"]["cache_hit"]["count"]
    a = _infer(server, "cached", [2.5])
    b = _infer(server, "cached", [3.5])
    assert a.as_numpy("EXEC").tolist() != b.as_numpy("EXEC").tolist()
    only_out = _infer(server, "cached", [2.5], outputs=["OUT"])
    assert only_out.as_numpy("EXEC") is None  # not the cached all-outputs response
    again = _infer(server, "cached", [2.5], outputs=["OUT"])
    assert again.as_numpy("OUT").tolist() == [[2.5]]
    infer = _stats(server, "cached")["inference_stats"]
    assert infer["cache_hit"]["count"] == hits + 1  # only the repeated request hit


def test_models_without_response_cache_never_use_it(server):
    a = _infer(server, "plain", [1.0])
    b = _infer(server, "plain", [1.0])
    assert a.as_numpy("EXEC").tolist() != b.as_numpy("EXEC").tolist()
    infer = _stats(server, "plain")["inference_stats"]
    assert infer["cache_hit"]["count"] == 0 and infer["cache_miss"]["count"] == 0


def test_the_cache_evicts_the_least_recently_used_entry(server):
    def exec_of(value):
        return int(_infer(server, "big", [value] * 200).as_numpy("EXEC")[0][0])

    a = exec_of(1.0)
    b = exec_of(2.0)
    assert exec_of(1.0) == a  # hit; 1.0 is now the most recent
    c = exec_of(3.0)  # full: evicts 2.0, the least recently used
    assert c not in (a, b)
    assert exec_of(1.0) == a  # still cached
    assert exec_of(2.0) not in (a, b, c)  # evicted: executed again


def test_sequence_models_never_use_the_cache(server):
    seen = []
    for start in (True, False):
        r = _infer(server, "seq", [1.0], sequence_id=5, sequence_start=start)
        seen.append(int(r.as_numpy("N")[0][0]))
    assert seen[1] == seen[0] + 1  # executed both times
    assert _stats(server, "seq")["inference_stats"]["cache_hit"]["count"] == 0


def test_without_cache_config_the_model_setting_has_no_effect(tmp_path):
    repo = tmp_path / "models"
    write_probe(repo, "cached", extra=CACHE_ON)
    with NaiadProcess(repo) as s:
        a = _infer(s, "cached", [1.0])
        b = _infer(s, "cached", [1.0])
    assert a.as_numpy("EXEC").tolist() != b.as_numpy("EXEC").tolist()


def test_a_decoupled_model_with_the_cache_fails_to_load(tmp_path):
    repo = tmp_path / "models"
    config = probe_config("dec", extra=CACHE_ON + " model_transaction_policy { decoupled: true }")
    write_model(repo, "dec", config, {"model.py": PROBE_MODEL})
    write_probe(repo, "fine")
    with NaiadProcess(repo, "--cache-config=local,size=100000", "--exit-on-error=false",
                      "--strict-readiness=false") as s:
        req = urllib.request.Request(f"{s.base}/v2/repository/index", data=b"{}", method="POST")
        with urllib.request.urlopen(req) as r:
            index = {m["name"]: m for m in json.load(r)}
    assert index["fine"]["state"] == "READY"
    assert index["dec"]["state"] == "UNAVAILABLE"
    assert index["dec"]["reason"] == (
        "Response Cache does not currently support model dec with 'decoupled' transaction "
        "policy. Please disable the response cache.")


@pytest.mark.parametrize("config", [
    {"redis": {"host": "x"}}, {"local": {}}, {"local": {"size": "big"}},
    {"local": {"size": "0"}}, {"local": {"size": "10", "color": "red"}}])
def test_malformed_cache_config_is_refused(config):
    with pytest.raises(InvalidArgument):
        parse_cache_config(config)


def test_cache_size_flags(tmp_path):
    assert parse_cache_config({"local": {"size": "1048576"}}) == 1048576
    (tmp_path / "models").mkdir()
    bad = NaiadProcess(tmp_path / "models", "--cache-config=redis,host=x", wait="none")
    bad.start()
    try:
        assert bad.proc.wait(timeout=30) != 0
        assert "redis" in bad.output()
    finally:
        bad.stop()
