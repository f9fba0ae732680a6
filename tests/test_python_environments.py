"""Per-model Python environments (``EXECUTION_ENV_PATH``), with environments the
test builds: ``python -m venv`` plus numpy (linked from the server's) and a
package the server does not have, as a folder and as a conda-pack-style
``.tar.gz`` unpacked once into a cache keyed by its content.
"""

from __future__ import annotations

import glob
import io
import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from tests.clients import PROTOCOLS, triton_client
from tests.conftest import NaiadProcess, write_model

ENV_PACKAGE = "naiad_envtest_only_here"

CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
{io}
parameters {{ key: "EXECUTION_ENV_PATH" value: {{ string_value: "{env}" }} }}
instance_group [ {{ kind: KIND_CPU count: {count} }} ]
"""

IO = """
input [ { name: "X" data_type: TYPE_FP32 dims: [ -1 ] } ]
output [ { name: "Y" data_type: TYPE_FP32 dims: [ -1 ] },
         { name: "INFO" data_type: TYPE_STRING dims: [ 4 ] } ]
"""

# Y = X * MAGIC (from the package only the environment has); INFO: sys.prefix,
# whether the server's tritonclient is importable, numpy's folder, the package's file
MODEL_PY = f"""
import importlib.util
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

import {ENV_PACKAGE}


class TritonPythonModel:
    @staticmethod
    def auto_complete_config(config):
        # runs in the environment too: the package is there
        if {ENV_PACKAGE}.MAGIC == 7 and not config.as_dict()["input"]:
            config.add_input({{"name": "X", "data_type": "TYPE_FP32", "dims": [-1]}})
            config.add_output({{"name": "Y", "data_type": "TYPE_FP32", "dims": [-1]}})
            config.add_output({{"name": "INFO", "data_type": "TYPE_STRING", "dims": [4]}})
        return config

    def execute(self, requests):
        info = [sys.prefix, str(importlib.util.find_spec("tritonclient") is not None),
                np.__file__, {ENV_PACKAGE}.__file__]
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "X").as_numpy()
            out.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("Y", (x * {ENV_PACKAGE}.MAGIC).astype(np.float32)),
                pb_utils.Tensor("INFO", np.array([s.encode() for s in info], dtype=np.object_)),
            ]))
        return out
"""


def _site_packages(env: Path) -> Path:
    return Path(glob.glob(str(env / "lib" / "python3*" / "site-packages"))[0])


def build_env(env: Path, python: str = sys.executable, numpy_too: bool = True) -> Path:
    """A real virtual environment: numpy linked in from the server's, and a package
    written here that the server's environment does not have."""
    subprocess.run([python, "-m", "venv", "--without-pip", str(env)], check=True)
    site = _site_packages(env)
    if numpy_too:
        source = Path(np.__file__).parent
        (site / "numpy").symlink_to(source, target_is_directory=True)
        libs = source.parent / "numpy.libs"  # the wheel's bundled libraries
        if libs.is_dir():
            (site / "numpy.libs").symlink_to(libs, target_is_directory=True)
    package = site / ENV_PACKAGE
    package.mkdir()
    (package / "__init__.py").write_text("MAGIC = 7\n")
    return env


def pack(env: Path, archive: Path) -> Path:
    """A conda-pack-style archive: the environment's content at the archive's top."""
    with tarfile.open(archive, "w:gz") as tar:
        for item in sorted(env.iterdir()):
            tar.add(item, arcname=item.name)
    return archive


def other_python() -> str | None:
    """A Python of another minor version on this machine, if one runs."""
    mine = f"{sys.version_info[0]}.{sys.version_info[1]}"
    candidates = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.*/bin/python3")))
    candidates += [shutil.which(f"python3.{m}") or "" for m in range(8, 15)]
    for path in candidates:
        if not path or mine in path:
            continue
        try:
            done = subprocess.run([path, "-c", "import sys, venv; print(sys.version_info[1])"],
                                  capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.SubprocessError):
            continue
        if done.returncode == 0 and done.stdout.strip() != str(sys.version_info[1]):
            return path
    return None


def fake_other_python(env: Path) -> None:
    """Where no other Python is installed: an interpreter that answers naiad's probe as
    a Python of another minor version would."""
    (env / "bin").mkdir(parents=True)
    script = env / "bin" / "python3"
    minor = sys.version_info[1] + 1
    script.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        echo '{{"version": [3, {minor}], "executable": "'$0'", "numpy": "2.0.0"}}'
        """))
    script.chmod(0o755)


def _infer(client, module, name: str, x: np.ndarray):
    inp = module.InferInput("X", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = client.infer(name, [inp])
    return result.as_numpy("Y"), [s.decode() for s in result.as_numpy("INFO")]


@pytest.fixture(scope="module")
def envs(tmp_path_factory):
    base = tmp_path_factory.mktemp("envs")
    repo = base / "models"
    repo.mkdir()
    cache = base / "cache"
    # a folder environment inside the model folder
    folder_model = write_model(repo, "env_folder", CONFIG.format(
        name="env_folder", io=IO, env="$$TRITON_MODEL_DIRECTORY/venv", count=2),
        {"model.py": MODEL_PY})
    build_env(folder_model / "venv")
    # the same environment packed; two models name the same content
    archive = pack(build_env(base / "packed_env"), base / "env.tar.gz")
    for name in ("env_archive", "env_archive_too"):
        model = write_model(repo, name, CONFIG.format(
            name=name, io=IO, env="$$TRITON_MODEL_DIRECTORY/env.tar.gz", count=1),
            {"model.py": MODEL_PY})
        shutil.copy(archive, model / "env.tar.gz")
    # no inputs or outputs in config.pbtxt: auto_complete_config, in the environment
    auto = write_model(repo, "env_auto", CONFIG.format(
        name="env_auto", io="", env="$$TRITON_MODEL_DIRECTORY/env.tar.gz", count=1),
        {"model.py": MODEL_PY})
    shutil.copy(archive, auto / "env.tar.gz")
    server = NaiadProcess(repo, env={"NAIAD_PYTHON_ENV_CACHE": str(cache)}).start()
    try:
        yield server, repo, cache, folder_model / "venv"
    finally:
        server.stop()


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("name", ["env_folder", "env_archive", "env_archive_too", "env_auto"])
def test_a_model_runs_with_its_own_environments_interpreter_and_packages(envs, protocol, name):
    server, repo, cache, folder_env = envs
    module, client = triton_client(protocol, server)
    x = np.arange(300_000, dtype=np.float32)  # through the shared-memory regions
    y, (prefix, sees_server_packages, numpy_file, package_file) = _infer(client, module, name, x)
    np.testing.assert_array_equal(y, x * 7)
    expected_root = folder_env if name == "env_folder" else \
        Path(glob.glob(str(cache / "*" / ".naiad-unpacked"))[0]).parent
    assert os.path.realpath(prefix) == os.path.realpath(expected_root)
    assert package_file.startswith(str(expected_root))
    assert sees_server_packages == "False"  # the server's site-packages are not there
    assert os.path.realpath(numpy_file) == os.path.realpath(np.__file__)


def test_an_archive_is_unpacked_once_per_content_and_reused_by_a_new_server(envs):
    server, repo, cache, _ = envs
    unpacked = glob.glob(str(cache / "*" / ".naiad-unpacked"))
    assert len(unpacked) == 1  # three models, one archive content, one unpacking
    assert server.output().count("unpacking Python environment") == 1
    with NaiadProcess(repo, "--model-control-mode=explicit", "--load-model=env_archive",
                      env={"NAIAD_PYTHON_ENV_CACHE": str(cache)}) as again:
        client = httpclient.InferenceServerClient(again.http_url)
        y, _ = _infer(client, httpclient, "env_archive", np.ones(3, np.float32))
        np.testing.assert_array_equal(y, np.full(3, 7, np.float32))
        assert "unpacking Python environment" not in again.output()
    assert glob.glob(str(cache / "*" / ".naiad-unpacked")) == unpacked


def test_environments_that_cannot_serve_fail_the_load_with_a_clear_message(tmp_path):
    repo = tmp_path / "models"
    repo.mkdir()
    cases = {}

    def model(name, env_value):
        path = write_model(repo, name, CONFIG.format(name=name, io=IO, env=env_value, count=1),
                           {"model.py": MODEL_PY})
        return path

    no_numpy = model("no_numpy", "$$TRITON_MODEL_DIRECTORY/venv")
    build_env(no_numpy / "venv", numpy_too=False)
    cases["no_numpy"] = "has no numpy"
    other = model("other_python", "$$TRITON_MODEL_DIRECTORY/venv")
    python = other_python()
    if python is not None:
        build_env(other / "venv", python=python)
    else:
        fake_other_python(other / "venv")
    cases["other_python"] = f"the server runs Python {sys.version_info[0]}.{sys.version_info[1]}"
    outside = model("outside", "$$TRITON_MODEL_DIRECTORY/../no_numpy/venv")
    cases["outside"] = "leads outside the model directory"
    assert outside.is_dir()
    model("missing", "$$TRITON_MODEL_DIRECTORY/nothing.tar.gz")
    cases["missing"] = "which does not exist"
    slip = model("zipslip", "$$TRITON_MODEL_DIRECTORY/env.tar.gz")
    marker = tmp_path / "escaped.txt"
    with tarfile.open(slip / "env.tar.gz", "w:gz") as tar:
        info = tarfile.TarInfo("../../escaped.txt")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"oops"))
    cases["zipslip"] = "has a member outside its folder ('../../escaped.txt')"
    both = model("both_modes", "$$TRITON_MODEL_DIRECTORY/venv")
    build_env(both / "venv")
    with open(both / "config.pbtxt", "a") as f:
        f.write('parameters { key: "EXECUTION_MODE" value: { string_value: "inprocess" } }\n')
    cases["both_modes"] = "drop one of them"
    with NaiadProcess(repo, "--model-control-mode=explicit",
                      env={"NAIAD_PYTHON_ENV_CACHE": str(tmp_path / "cache")}) as server:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        for name, text in cases.items():
            with pytest.raises(InferenceServerException) as info:
                client.load_model(name)
            assert text in info.value.message(), (name, info.value.message())
            assert not client.is_model_ready(name)
        assert client.is_server_live()
    assert not marker.exists()
