"""A grpcio without the internal API naiad's gRPC core uses: grpcio's own server serves.

The native core drives ``grpc._cython.cygrpc`` directly; ``grpc_native.available()``
checks every name it needs. When one is missing (a grpcio release outside the
tested range, see pyproject.toml), the frontend must still serve, with
grpcio's public synchronous server, and tritonclient must not see a difference.
"""

from __future__ import annotations

import numpy as np
import tritonclient.grpc as grpcclient
from conftest import copy_example, free_port

from naiad.embedded import EmbeddedServer
from naiad.frontends import grpc_native


def test_without_the_native_api_the_grpcio_server_answers_tritonclient(monkeypatch, tmp_path):
    monkeypatch.setattr(grpc_native, "available", lambda: False)
    copy_example(tmp_path, "add_sub")
    port = free_port()
    server = EmbeddedServer(model_repository=str(tmp_path), allow_http=False,
                            allow_metrics=False, grpc_port=port, grpc_address="127.0.0.1")
    server.start(frontends=True)
    try:
        kinds = [getattr(f, "kind", None) for f in server.server.frontends]
        assert "grpcio" in kinds and "native" not in kinds
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
        a = np.arange(4, dtype=np.float32)
        b = np.ones(4, dtype=np.float32)
        inputs = [grpcclient.InferInput("INPUT0", [4], "FP32"),
                  grpcclient.InferInput("INPUT1", [4], "FP32")]
        inputs[0].set_data_from_numpy(a)
        inputs[1].set_data_from_numpy(b)
        result = client.infer("add_sub", inputs)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a + b)
        np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), a - b)
        client.close()
    finally:
        server.stop()


def test_the_installed_grpcio_has_the_native_api():
    # the tested range (pyproject.toml) must keep the fast core: if this fails,
    # grpcio moved its internals and the pin or grpc_native needs updating
    assert grpc_native.available()
