"""Decoupled models and streaming ensembles over gRPC ModelStreamInfer (tritonclient.grpc).

(How each protocol refuses a non-streaming call to a decoupled model is in
test_decoupled.py.)
"""

from __future__ import annotations

import queue

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from tests.conftest import NaiadProcess
from tests.models import step, write_affine, write_cast, write_ensemble, write_repeat


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("grpc_stream") / "models"
    repo.mkdir()
    write_repeat(repo)
    write_cast(repo)
    write_affine(repo, "double", mul=2)
    write_ensemble(repo, "stream", [("N", "TYPE_INT32", "1")], [("R", "TYPE_FP32", "1")], [
        step("repeat", {"IN": "N"}, {"OUT": "i"}),
        step("cast", {"I": "i"}, {"F": "f"}),
        step("double", {"X": "f"}, {"Y": "R"}),
    ])
    with NaiadProcess(repo) as s:
        yield s


def stream(server, model, name, dtype, values):
    """Send one request per value on one stream; collect (id, result, error, final)."""
    got: queue.Queue = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: got.put((result, error)))
    for i, v in enumerate(values):
        inp = grpcclient.InferInput(name, [1], dtype)
        inp.set_data_from_numpy(np.array([v], dtype=np.int32))
        client.async_stream_infer(model, [inp], request_id=str(i),
                                  enable_empty_final_response=True)
    out = {str(i): [] for i in range(len(values))}
    finals = 0
    while finals < len(values):
        result, error = got.get(timeout=30)
        if error is not None:
            out.setdefault("errors", []).append(str(error))
            finals += 1
            continue
        resp = result.get_response()
        final = resp.parameters["triton_final_response"].bool_param
        arr = result.as_numpy("OUT" if model == "repeat" else "R")
        out[resp.id].append((None if arr is None else arr.tolist(), final))
        if final:
            finals += 1
    client.stop_stream()
    client.close()
    return out


def test_a_decoupled_model_streams_n_responses_then_the_final_flag(server):
    out = stream(server, "repeat", "IN", "INT32", [3, 0, 5])
    assert out["0"] == [([0], False), ([1], False), ([2], False), (None, True)]
    assert out["1"] == [(None, True)]
    assert [v for v, _ in out["2"][:-1]] == [[i] for i in range(5)]
    assert out["2"][-1] == (None, True)


def test_a_streaming_ensemble_over_grpc(server):
    out = stream(server, "stream", "N", "INT32", [4])
    values = sorted(v[0] for v, final in out["0"] if v is not None)
    assert values == [0.0, 2.0, 4.0, 6.0]
    assert out["0"][-1][1] is True
