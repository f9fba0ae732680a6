"""The plugin interface: examples/backend_plugin is pip-installed (into a temporary
folder, from a copy, so the checkout stays clean) and served through its
``naiad.backends`` entry point by a real naiad process."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import urllib.request

import framework_models as fm
import numpy as np
import pytest
from conftest import ROOT, NaiadProcess

WEIGHT = [[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]
BIAS = [0.5, -0.5]


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    """The example package installed with pip into a folder of its own."""
    base = tmp_path_factory.mktemp("plugin")
    source = base / "src"
    shutil.copytree(ROOT / "examples" / "backend_plugin", source)
    site = base / "site"
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site),
           str(source)]
    if importlib.util.find_spec("setuptools") is not None:
        cmd.insert(4, "--no-build-isolation")  # build with this environment's setuptools
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert (site / "naiad_example_backend" / "__init__.py").is_file()
    return site


@pytest.fixture(scope="module")
def plugin_server(plugin_site, tmp_path_factory):
    repo = tmp_path_factory.mktemp("plugin_models")
    spec = {"input": "X", "output": "Y", "weight": WEIGHT, "bias": BIAS}
    # no config.pbtxt: the backend is named in a one-line config, the rest auto-completed
    (repo / "affine_auto" / "1").mkdir(parents=True)
    (repo / "affine_auto" / "1" / "model.json").write_text(json.dumps(spec))
    fm.write_config(repo / "affine_auto", 'backend: "affine"\n')
    (repo / "affine_batched" / "1").mkdir(parents=True)
    (repo / "affine_batched" / "1" / "model.json").write_text(json.dumps(spec))
    fm.write_config(repo / "affine_batched", """
        backend: "affine"
        max_batch_size: 16
        input [ { name: "X" data_type: TYPE_FP32 dims: [ 3 ] } ]
        output [ { name: "Y" data_type: TYPE_FP32 dims: [ 2 ] } ]
        instance_group [ { count: 2 kind: KIND_CPU } ]
        dynamic_batching { max_queue_delay_microseconds: 10000 }
    """)
    (repo / "affine_broken" / "1").mkdir(parents=True)
    (repo / "affine_broken" / "1" / "model.json").write_text("{not json")
    fm.write_config(repo / "affine_broken", """
        backend: "affine"
        max_batch_size: 4
        input [ { name: "X" data_type: TYPE_FP32 dims: [ 3 ] } ]
        output [ { name: "Y" data_type: TYPE_FP32 dims: [ 2 ] } ]
    """)
    env = {"PYTHONPATH": os.pathsep.join([str(plugin_site), os.environ.get("PYTHONPATH", "")])}
    with NaiadProcess(repo, "--exit-on-error=false", wait="live", env=env) as server:
        yield server


def test_the_plugin_is_not_importable_from_the_test_environment_itself():
    # installed into its own folder only: other tests never see it
    assert importlib.util.find_spec("naiad_example_backend") is None


def test_plugin_backend_serves_over_http_and_grpc(plugin_server):
    x = np.array([[1, 0, 0], [0, 1, 2]], dtype=np.float32)
    expected = x @ np.array(WEIGHT, np.float32) + np.array(BIAS, np.float32)
    for model in ("affine_auto", "affine_batched"):
        for answer in fm.infer_both(plugin_server, model, {"X": x}):
            np.testing.assert_allclose(answer["Y"], expected)


def test_plugin_auto_complete_and_metadata(plugin_server):
    with urllib.request.urlopen(plugin_server.base + "/v2/models/affine_auto/config") as r:
        config = json.loads(r.read())
    assert config["backend"] == "affine"
    assert config["max_batch_size"] == 4
    assert [(i["name"], i["dims"]) for i in config["input"]] == [("X", [3])]
    assert [(o["name"], o["dims"]) for o in config["output"]] == [("Y", [2])]
    with urllib.request.urlopen(plugin_server.base + "/v2/models/affine_auto") as r:
        meta = json.loads(r.read())
    assert meta["inputs"] == [{"name": "X", "datatype": "FP32", "shape": [-1, 3]}]


def test_plugin_errors_map_to_statuses(plugin_server):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    bad = np.array([[np.nan, 0, 0]], dtype=np.float32)
    for module, url, status in ((httpclient, plugin_server.http_url, "400"),
                                (grpcclient, plugin_server.grpc_url, "StatusCode.INVALID_ARGUMENT")):
        client = module.InferenceServerClient(url=url)
        try:
            inp = module.InferInput("X", [1, 3], "FP32")
            inp.set_data_from_numpy(bad)
            with pytest.raises(InferenceServerException) as err:
                client.infer("affine_batched", [inp])
        finally:
            client.close()
        assert str(err.value.status()) == status
        assert "takes finite numbers only" in err.value.message()


def test_a_broken_plugin_model_is_unavailable_and_the_others_serve(plugin_server):
    req = urllib.request.Request(plugin_server.base + "/v2/repository/index", data=b"{}",
                                 method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        index = {m["name"]: m for m in json.loads(r.read())}
    assert index["affine_broken"]["state"] == "UNAVAILABLE"
    assert "bad '" in index["affine_broken"]["reason"]
    assert index["affine_batched"]["state"] == "READY"
