"""Object-storage repositories, end to end against an S3-protocol server on loopback (moto)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from naiad.repository import storage
from tests.clients import call, index, infer, states, wait_for
from tests.conftest import NaiadProcess, free_port
from tests.models import add_model, config_text, model_py

boto3 = pytest.importorskip("boto3")
pytest.importorskip("s3fs")
moto_server = pytest.importorskip("moto.server")

CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
         "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3():
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}",
                          aws_access_key_id="testing", aws_secret_access_key="testing",
                          region_name="us-east-1")
    try:
        yield port, client
    finally:
        server.stop()


def _upload_folder(client, bucket: str, prefix: str, folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            key = f"{prefix}/{path.relative_to(folder).as_posix()}"
            client.put_object(Bucket=bucket, Key=key, Body=path.read_bytes())


def _env(tmp_path: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(CREDS)
    env["NAIAD_REPOSITORY_CACHE"] = str(tmp_path / "cache")
    env["AWS_CONFIG_FILE"] = str(tmp_path / "no-aws-config")
    env["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp_path / "no-aws-credentials")
    env.update(extra)
    return env


def test_s3_repository_serves_like_a_local_one_and_reuses_its_cache(s3, tmp_path):
    port, client = s3
    client.create_bucket(Bucket="models1")
    local = tmp_path / "src"
    add_model(local, "a", offset=1)
    add_model(local, "b", offset=2, versions=(1, 2))
    _upload_folder(client, "models1", "repo", local)
    url = f"s3://127.0.0.1:{port}/models1/repo"
    env = _env(tmp_path)
    with NaiadProcess(url, env=env) as server:
        assert infer(server.base, "a")[:2] == (200, 1)
        assert infer(server.base, "b")[:2] == (200, 2)
        assert states(server.base) == {"a": [("1", "READY")], "b": [("2", "READY")]}
        out = server.output()
        assert "model 'a' from " + url + ": 2 file(s) downloaded, 0 reused" in out
    # a restart finds the copies unchanged and downloads nothing
    with NaiadProcess(url, env=env) as server:
        assert infer(server.base, "b")[:2] == (200, 2)
        out = server.output()
        assert "model 'a' from " + url + ": 0 file(s) downloaded, 2 reused" in out
        assert "model 'b' from " + url + ": 0 file(s) downloaded, 3 reused" in out


def test_s3_poll_mode_sees_an_uploaded_version_and_a_removed_model(s3, tmp_path):
    port, client = s3
    client.create_bucket(Bucket="models2")
    local = tmp_path / "src"
    add_model(local, "m", offset=1)
    add_model(local, "gone", offset=9)
    _upload_folder(client, "models2", "r", local)
    url = f"s3://127.0.0.1:{port}/models2/r"
    with NaiadProcess(url, "--model-control-mode=poll", "--repository-poll-secs=0.5",
                      env=_env(tmp_path)) as server:
        assert infer(server.base, "m")[:2] == (200, 1)
        client.put_object(Bucket="models2", Key="r/m/2/model.py",
                          Body=model_py(offset=2).encode())
        wait_for(lambda: states(server.base).get("m") == [("1", "UNAVAILABLE"), ("2", "READY")],
                 timeout=30, what="version 2 from S3")
        assert infer(server.base, "m")[:2] == (200, 2)
        # a changed config is picked up too (instance count: no reload)
        client.put_object(Bucket="models2", Key="r/m/config.pbtxt",
                          Body=config_text("m", count=2).encode())
        wait_for(lambda: call(server.base, "GET", "/v2/models/m/config")[1]
                 ["instance_group"][0]["count"] == 2, timeout=30, what="count 2")
        for key in ("r/gone/config.pbtxt", "r/gone/1/model.py"):
            client.delete_object(Bucket="models2", Key=key)
        wait_for(lambda: "gone" not in states(server.base), timeout=30, what="gone removed")
        assert [i["name"] for i in index(server.base, ready=True)] == ["m"]


def test_s3_credentials_from_a_triton_credential_file(s3, tmp_path):
    port, client = s3
    client.create_bucket(Bucket="models3")
    local = tmp_path / "src"
    add_model(local, "c", offset=3)
    _upload_folder(client, "models3", "x", local)
    url = f"s3://127.0.0.1:{port}/models3/x"
    cred_file = tmp_path / "creds.json"
    cred_file.write_text(json.dumps({"s3": {
        "": {"key_id": "wrong", "secret_key": "wrong", "region": "us-east-1"},
        f"s3://127.0.0.1:{port}/models3": {"key_id": "testing", "secret_key": "testing",
                                          "region": "us-east-1", "session_token": "",
                                          "profile": ""}}}))
    env = _env(tmp_path, TRITON_CLOUD_CREDENTIAL_PATH=str(cred_file))
    for k in CREDS:
        env.pop(k)
    with NaiadProcess(url, env=env) as server:
        assert infer(server.base, "c")[:2] == (200, 3)


def test_a_missing_bucket_is_a_clear_startup_error(s3, tmp_path):
    port, _ = s3
    server = NaiadProcess(f"s3://127.0.0.1:{port}/no-such-bucket/models", wait="none",
                          env=_env(tmp_path)).start()
    try:
        assert server.proc.wait(timeout=60) != 0
        assert "no-such-bucket" in server.output()
    finally:
        server.stop()


# -- the pieces, without a server --------------------------------------------------------


@pytest.mark.parametrize("url, endpoint, root", [
    ("s3://bucket/path/to/repo", None, "bucket/path/to/repo"),
    ("s3://bucket", None, "bucket"),
    ("s3://127.0.0.1:9000/bucket/repo", "http://127.0.0.1:9000", "bucket/repo"),
    ("s3://minio.local:443/b/r/", "http://minio.local:443", "b/r"),
    ("s3://https://s3.example.com:443/b/r", "https://s3.example.com:443", "b/r"),
    ("s3://http://10.0.0.1:80/b", "http://10.0.0.1:80", "b"),
])
def test_s3_url_forms(url, endpoint, root):
    assert storage.parse_s3_url(url) == (endpoint, root)


def test_credential_file_longest_prefix_wins(tmp_path, monkeypatch):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"gs": {"": "default.json", "gs://b2": "b2.json"}}))
    monkeypatch.setenv("TRITON_CLOUD_CREDENTIAL_PATH", str(path))
    assert storage._credentials("gs", "gs://b2/models") == "b2.json"
    assert storage._credentials("gs", "gs://other/models") == "default.json"
    assert storage._credentials("s3", "s3://x") is None


def test_request_files_cannot_leave_the_model_folder():
    from naiad.core.errors import InvalidArgument

    for bad in ("../x", "1/../../x", "/etc/passwd", ""):
        with pytest.raises(InvalidArgument, match="must stay within model directory"):
            storage.write_override_files("m", {"1/model.py": b"ok", bad: b"no"})
    folder = storage.write_override_files("m", {"1/model.py": b"ok", "labels.txt": b"a\n"})
    try:
        assert sorted(os.listdir(folder)) == ["1", "labels.txt"]
    finally:
        import shutil

        shutil.rmtree(folder)


def test_fingerprint_separates_config_shared_and_version_files(tmp_path):
    add_model(tmp_path, "m", versions=(1, 3))
    (tmp_path / "m" / "labels.txt").write_text("x\n")
    (tmp_path / "m" / "2").mkdir()
    fp = storage.local_fingerprint(str(tmp_path / "m"))
    assert [rel for rel, _, _ in fp.config] == ["config.pbtxt"]
    assert [rel for rel, _, _ in fp.shared] == ["labels.txt"]
    assert [v for v, _ in fp.versions] == [1, 2, 3]
    assert fp.version(2) == ()
    before = fp.version(1)
    (tmp_path / "m" / "3" / "model.py").write_text(model_py(offset=9))
    after = storage.local_fingerprint(str(tmp_path / "m"))
    assert after.version(1) == before and after.version(3) != fp.version(3)


def test_s3_filesystem_gets_the_matching_credentials_and_endpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"s3": {
        "": {"key_id": "default-key", "secret_key": "default-secret", "region": "eu-west-1"},
        "s3://https://store.example:8443/special": {
            "key_id": "special-key", "secret_key": "special-secret", "session_token": "tok",
            "region": "us-west-004"}}}))
    monkeypatch.setenv("TRITON_CLOUD_CREDENTIAL_PATH", str(path))
    fs, root = storage._open_filesystem("s3://https://store.example:8443/special/models")
    assert root == "special/models"
    assert (fs.key, fs.secret, fs.token) == ("special-key", "special-secret", "tok")
    assert fs.client_kwargs == {"endpoint_url": "https://store.example:8443",
                                "region_name": "us-west-004"}
    fs, root = storage._open_filesystem("s3://bucket/models")
    assert (fs.key, fs.secret, root) == ("default-key", "default-secret", "bucket/models")
    assert fs.client_kwargs == {"region_name": "eu-west-1"}
