"""tritonserver's --grpc-* options on naiad: TLS, restrictions, headers, limits, control."""

from __future__ import annotations

import datetime
import gzip
import ipaddress
import json
import os
import socket
import subprocess
import sys

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from conftest import EXAMPLES, ROOT, NaiadProcess, copy_example, free_port
from tritonclient.utils import InferenceServerException

from tests.models import build_repository


def _add_sub(client, **kw):
    a = np.array([1, 2, 3, 4], dtype=np.float32)
    inputs = []
    for name in ("INPUT0", "INPUT1"):
        i = grpcclient.InferInput(name, [4], "FP32")
        i.set_data_from_numpy(a)
        inputs.append(i)
    result = client.infer("add_sub", inputs, **kw)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), a * 2)
    return result


# ---------------------------------------------------------------------------
# TLS with certificates made here
# ---------------------------------------------------------------------------


def _certificates(folder):
    """A CA, a server certificate for 127.0.0.1 and a client certificate, as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def key():
        return ec.generate_private_key(ec.SECP256R1())

    def write(path, data):
        path.write_bytes(data)
        return str(path)

    ca_key = key()
    ca = (x509.CertificateBuilder().subject_name(name("naiad test CA")).issuer_name(
        name("naiad test CA")).public_key(ca_key.public_key()).serial_number(1)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256()))

    def leaf(cn, usage, san):
        k = key()
        builder = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject)
                   .public_key(k.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(hours=1))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        pem_key = k.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
        return cert.public_bytes(serialization.Encoding.PEM), pem_key

    server_cert, server_key = leaf("127.0.0.1", ExtendedKeyUsageOID.SERVER_AUTH,
                                   [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                    x509.DNSName("localhost")])
    client_cert, client_key = leaf("naiad test client", ExtendedKeyUsageOID.CLIENT_AUTH, None)
    return {
        "ca": write(folder / "ca.pem", ca.public_bytes(serialization.Encoding.PEM)),
        "server_cert": write(folder / "server.pem", server_cert),
        "server_key": write(folder / "server.key", server_key),
        "client_cert": write(folder / "client.pem", client_cert),
        "client_key": write(folder / "client.key", client_key),
    }


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return _certificates(tmp_path_factory.mktemp("certs"))


@pytest.fixture(params=["native", "grpcio"])
def transport(request) -> dict:
    """The environment selecting one of naiad's two gRPC transports."""
    return {"NAIAD_GRPC_SERVER": request.param}


def test_tls(certs, transport):
    with NaiadProcess(EXAMPLES, "--grpc-use-ssl=true",
                      f"--grpc-server-cert={certs['server_cert']}",
                      f"--grpc-server-key={certs['server_key']}", env=transport) as server:
        secure = grpcclient.InferenceServerClient(url=server.grpc_url, ssl=True,
                                                  root_certificates=certs["ca"])
        try:
            assert secure.is_server_ready()
            _add_sub(secure)
        finally:
            secure.close()
        plain = grpcclient.InferenceServerClient(url=server.grpc_url)
        try:
            with pytest.raises(InferenceServerException) as e:
                plain.is_server_live(client_timeout=5)
            assert "UNAVAILABLE" in e.value.status() or "DEADLINE" in e.value.status()
        finally:
            plain.close()


def test_mutual_tls(certs, transport):
    with NaiadProcess(EXAMPLES, "--grpc-use-ssl-mutual=true",
                      f"--grpc-server-cert={certs['server_cert']}",
                      f"--grpc-server-key={certs['server_key']}",
                      f"--grpc-root-cert={certs['ca']}", env=transport) as server:
        with_cert = grpcclient.InferenceServerClient(
            url=server.grpc_url, ssl=True, root_certificates=certs["ca"],
            private_key=certs["client_key"], certificate_chain=certs["client_cert"])
        try:
            _add_sub(with_cert)
        finally:
            with_cert.close()
        without = grpcclient.InferenceServerClient(url=server.grpc_url, ssl=True,
                                                   root_certificates=certs["ca"])
        try:
            with pytest.raises(InferenceServerException):
                without.is_server_live(client_timeout=5)
        finally:
            without.close()


def test_tls_without_certificate_files_is_refused(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "naiad", f"--model-repository={EXAMPLES}",
         f"--http-port={free_port()}", f"--grpc-port={free_port()}",
         f"--metrics-port={free_port()}", "--http-address=127.0.0.1",
         "--grpc-address=127.0.0.1", "--grpc-use-ssl=true",
         f"--grpc-server-cert={tmp_path / 'missing.pem'}", "--grpc-server-key=x.key"],
        cwd=str(ROOT), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "unable to read --grpc-server-cert" in proc.stderr


# ---------------------------------------------------------------------------
# other options
# ---------------------------------------------------------------------------


def test_keepalive_compression_and_pool_options_are_served(tmp_path):
    repo = tmp_path / "models"
    repo.mkdir()
    copy_example(repo, "add_sub")
    flags = ["--grpc-keepalive-time=10000", "--grpc-keepalive-timeout=5000",
             "--grpc-keepalive-permit-without-calls=true",
             "--grpc-http2-max-pings-without-data=0",
             "--grpc-http2-min-recv-ping-interval-without-data=5000",
             "--grpc-http2-max-ping-strikes=3", "--grpc-max-connection-age=60000",
             "--grpc-max-connection-age-grace=5000",
             "--grpc-infer-response-compression-level=high",
             "--grpc-infer-allocation-pool-size=16", "--reuse-grpc-port=false"]
    with NaiadProcess(repo, *flags) as server:
        options = grpcclient.KeepAliveOptions(keepalive_time_ms=10000,
                                              keepalive_permit_without_calls=True)
        client = grpcclient.InferenceServerClient(url=server.grpc_url,
                                                  keepalive_options=options)
        try:
            for _ in range(3):
                _add_sub(client)
        finally:
            client.close()


def test_response_compression_shrinks_the_wire(tmp_path):
    """With --grpc-infer-response-compression-level, big compressible outputs travel gzipped.

    Measured below grpc: a raw HTTP/2 connection (the h2 library) counts the DATA
    bytes of the response.
    """
    import h2.config
    import h2.connection
    import h2.events

    repo = build_repository(tmp_path / "models")
    zeros = np.zeros(1 << 20, dtype=np.uint8)
    from naiad.protocol import grpc_service_pb2 as pb

    req = pb.ModelInferRequest(model_name="identity")
    req.inputs.add(name="IN_UINT8", datatype="UINT8", shape=[zeros.size])
    req.raw_input_contents.append(zeros.tobytes())
    body = gzip.compress(req.SerializeToString())  # small on the way in
    frame = b"\x01" + len(body).to_bytes(4, "big") + body

    def received_bytes(port: int) -> int:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        try:
            conn.initiate_connection()
            conn.increment_flow_control_window(1 << 30)
            sid = conn.get_next_available_stream_id()
            conn.send_headers(sid, [
                (":method", "POST"), (":scheme", "http"), (":authority", f"127.0.0.1:{port}"),
                (":path", "/inference.GRPCInferenceService/ModelInfer"),
                ("content-type", "application/grpc"), ("te", "trailers"),
                ("grpc-encoding", "gzip"), ("grpc-accept-encoding", "gzip")])
            conn.send_data(sid, frame, end_stream=True)
            sock.sendall(conn.data_to_send())
            total, status = 0, None
            while status is None:
                data = sock.recv(1 << 16)
                assert data, "connection closed"
                for event in conn.receive_data(data):
                    if isinstance(event, h2.events.DataReceived):
                        total += len(event.data)
                        conn.acknowledge_received_data(event.flow_controlled_length, sid)
                    elif isinstance(event, h2.events.TrailersReceived):
                        status = dict(event.headers).get(b"grpc-status")
                sock.sendall(conn.data_to_send())
            assert status == b"0"
            return total
        finally:
            sock.close()

    with NaiadProcess(repo) as plain:
        uncompressed = received_bytes(plain.grpc_port)
    with NaiadProcess(repo, "--grpc-infer-response-compression-level=high") as packed:
        compressed = received_bytes(packed.grpc_port)
    assert uncompressed > zeros.size
    assert compressed < zeros.size // 20


def test_busy_grpc_port_is_a_clear_error(transport):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "naiad", f"--model-repository={EXAMPLES}",
             f"--http-port={free_port()}", f"--grpc-port={port}",
             f"--metrics-port={free_port()}", "--http-address=127.0.0.1",
             "--grpc-address=127.0.0.1"],
            cwd=str(ROOT), capture_output=True, text=True, timeout=120,
            env=dict(os.environ, **transport))
    assert proc.returncode != 0
    assert f"unable to bind 127.0.0.1:{port}" in proc.stderr


def test_allow_grpc_false_serves_no_grpc():
    with NaiadProcess(EXAMPLES, "--allow-grpc=false") as server:
        assert "GRPCInferenceService" not in server.output()
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", server.grpc_port)) != 0


def test_restricted_protocol(tmp_path, transport):
    repo = tmp_path / "models"
    repo.mkdir()
    copy_example(repo, "add_sub")
    with NaiadProcess(repo, "--grpc-restricted-protocol=inference,model-config:admin-key=s3cret",
                      env=transport) as server:
        client = grpcclient.InferenceServerClient(url=server.grpc_url)
        try:
            assert client.is_server_live()  # health is not restricted
            assert client.get_model_metadata("add_sub").name == "add_sub"
            for call in (lambda **kw: _add_sub(client, **kw),
                         lambda **kw: client.get_model_config("add_sub", **kw)):
                with pytest.raises(InferenceServerException) as e:
                    call()
                assert "UNAVAILABLE" in e.value.status()
                assert e.value.message() == ("This protocol is restricted, expecting header "
                                             "'admin-key'")
                with pytest.raises(InferenceServerException):
                    call(headers={"admin-key": "wrong"})
                call(headers={"admin-key": "s3cret"})
        finally:
            client.close()


def test_bad_restricted_protocol_is_refused():
    proc = subprocess.run(
        [sys.executable, "-m", "naiad", f"--model-repository={EXAMPLES}",
         f"--http-port={free_port()}", f"--grpc-port={free_port()}",
         f"--metrics-port={free_port()}", "--http-address=127.0.0.1",
         "--grpc-address=127.0.0.1", "--grpc-restricted-protocol=teleport:k=v"],
        cwd=str(ROOT), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "unknown protocol 'teleport'" in proc.stderr


def test_header_forward_pattern(tmp_path, transport):
    repo = build_repository(tmp_path / "models")
    with NaiadProcess(repo, "--grpc-header-forward-pattern=x-fwd-.*", env=transport) as server:
        client = grpcclient.InferenceServerClient(url=server.grpc_url)
        try:
            inp = grpcclient.InferInput("IN", [1], "INT32")
            inp.set_data_from_numpy(np.array([1], np.int32))
            result = client.infer("params", [inp], headers={"x-fwd-user": "ada",
                                                            "x-other": "no"})
            assert json.loads(result.as_numpy("PARAMS")[0]) == {"x-fwd-user": "ada"}
        finally:
            client.close()


# ---------------------------------------------------------------------------
# model repository control over gRPC (explicit mode)
# ---------------------------------------------------------------------------


def test_repository_load_and_unload(tmp_path):
    repo = tmp_path / "models"
    repo.mkdir()
    copy_example(repo, "add_sub")
    copy_example(repo, "string_upper")
    with NaiadProcess(repo, "--model-control-mode=explicit", "--load-model=add_sub") as server:
        client = grpcclient.InferenceServerClient(url=server.grpc_url)
        try:
            assert not client.is_model_ready("string_upper")
            client.load_model("string_upper")
            assert client.is_model_ready("string_upper")
            index = {m["name"]: m for m in
                     client.get_model_repository_index(as_json=True)["models"]}
            assert index["string_upper"]["state"] == "READY"
            client.unload_model("string_upper")
            assert not client.is_model_ready("string_upper")
            # a config override (JSON) reaches the core's loader
            config = client.get_model_config("add_sub", as_json=True)["config"]
            config["parameters"] = {"note": {"string_value": "from-grpc"}}
            client.load_model("add_sub", config=json.dumps(config))
            reloaded = client.get_model_config("add_sub").config
            assert reloaded.parameters["note"].string_value == "from-grpc"
            with pytest.raises(InferenceServerException) as e:
                client.load_model("no_such_model")
            assert "no_such_model" in e.value.message()
            _add_sub(client)
            # a model sent whole in the request: config plus files as raw bytes
            model_py = (EXAMPLES / "add_sub" / "1" / "model.py").read_bytes()
            config["name"] = "shipped"
            config.pop("parameters")
            client.load_model("shipped", config=json.dumps(config),
                              files={"file:1/model.py": model_py})
            assert client.is_model_ready("shipped")
            a = np.ones(4, np.float32)
            inputs = [grpcclient.InferInput(n, [4], "FP32") for n in ("INPUT0", "INPUT1")]
            for i in inputs:
                i.set_data_from_numpy(a)
            np.testing.assert_array_equal(
                client.infer("shipped", inputs).as_numpy("OUTPUT1"), np.zeros(4, np.float32))
        finally:
            client.close()


def test_repository_parameter_types_are_checked(tmp_path):
    from tritonclient.grpc import service_pb2 as tpb
    from tritonclient.grpc import service_pb2_grpc as tpb_grpc

    repo = tmp_path / "models"
    repo.mkdir()
    copy_example(repo, "add_sub")
    with NaiadProcess(repo, "--model-control-mode=explicit", "--load-model=*") as server:
        with grpc.insecure_channel(server.grpc_url) as channel:
            stub = tpb_grpc.GRPCInferenceServiceStub(channel)
            load = tpb.RepositoryModelLoadRequest(model_name="add_sub")
            load.parameters["config"].int64_param = 3
            with pytest.raises(grpc.RpcError) as e:
                stub.RepositoryModelLoad(load)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert e.value.details() == ("invalid value type for load parameter 'config', "
                                         "expected string_param.")
            unload = tpb.RepositoryModelUnloadRequest(model_name="add_sub")
            unload.parameters["unload_dependents"].string_param = "yes"
            with pytest.raises(grpc.RpcError) as e:
                stub.RepositoryModelUnload(unload)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "expected bool_param" in e.value.details()


def test_grpc_requests_are_traced(tmp_path, transport):
    repo = tmp_path / "models"
    repo.mkdir()
    copy_example(repo, "add_sub")
    trace_file = tmp_path / "trace.json"
    proc = NaiadProcess(repo, "--trace-config", f"triton,file={trace_file}",
                        "--trace-config", "level=TIMESTAMPS", "--trace-config", "rate=1",
                        env=transport)
    with proc:
        client = grpcclient.InferenceServerClient(url=proc.grpc_url)
        try:
            _add_sub(client, request_id="traced")
            settings = client.get_trace_settings(as_json=True)["settings"]
            assert settings["trace_level"]["value"] == ["TIMESTAMPS"]
        finally:
            client.close()
        assert proc.stop() == 0  # the trace array is closed at shutdown
    items = json.loads(trace_file.read_text())
    meta = [i for i in items if "model_name" in i]
    assert [(m["model_name"], m["request_id"]) for m in meta] == [("add_sub", "traced")]
    events = dict((s["name"], s["ns"]) for i in items if "timestamps" in i
                  for s in i["timestamps"])
    order = ["GRPC_WAITREAD_START", "GRPC_WAITREAD_END", "REQUEST_START", "QUEUE_START",
             "COMPUTE_START", "COMPUTE_END", "REQUEST_END", "GRPC_SEND_START", "GRPC_SEND_END"]
    assert set(order) <= set(events), sorted(events)
    stamps = [events[n] for n in order]
    assert stamps == sorted(stamps), events
