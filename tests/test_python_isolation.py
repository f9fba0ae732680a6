"""Python models import their own helper modules, as under Triton's one stub per model.

Two models with the same helper names (``helpers.py`` beside model.py, a
module in the model folder, a package with relative imports) each see their
own, in-process and in worker processes, loaded in parallel and reloaded
after an edit; site-packages (numpy) stay shared.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tests.clients import PROTOCOLS, triton_client
from tests.conftest import NaiadProcess, write_model
from tests.models import PROCESS_PARAMETER as PROCESS

CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
input [ {{ name: "X" data_type: TYPE_INT64 dims: [ 1 ] }} ]
output [ {{ name: "Y" data_type: TYPE_INT64 dims: [ 1 ] }},
         {{ name: "TAG" data_type: TYPE_STRING dims: [ 1 ] }},
         {{ name: "SHARED" data_type: TYPE_BOOL dims: [ 1 ] }} ]
{extra}
"""

# Y = X * helpers.FACTOR + common.OFFSET (+ the pickled Thing's value * 1000000);
# TAG = the package's VALUE; SHARED: numpy is the server's own module.
MODEL_PY = """
import importlib
import os
import pickle
import sys

import numpy as np
import triton_python_backend_utils as pb_utils

# as some models written for Triton do: their own folder on sys.path
sys.path.append(os.path.dirname(os.path.abspath(__file__)))

from helpers import FACTOR
import common
import pkg
from pkg.sub import VALUE
from . import helpers as relative_helpers

with open(os.path.join(os.path.dirname(__file__), "thing.pkl"), "rb") as f:
    THING = pickle.load(f)  # pickled as thing.Thing outside the server


class TritonPythonModel:
    def initialize(self, args):
        # a module found by name at run time, as importlib users do
        self.dynamic = importlib.import_module("helpers")

    def execute(self, requests):
        assert relative_helpers.FACTOR == FACTOR == self.dynamic.FACTOR
        assert importlib.import_module("helpers").FACTOR == FACTOR
        assert pkg.VALUE == VALUE
        out = []
        for r in requests:
            x = pb_utils.get_input_tensor_by_name(r, "X").as_numpy()
            y = x * FACTOR + common.OFFSET + THING.value * 1000000
            out.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("Y", y.astype(np.int64)),
                pb_utils.Tensor("TAG", np.array([VALUE.encode()], dtype=np.object_)),
                pb_utils.Tensor("SHARED", np.array([sys.modules["numpy"] is np
                                                    and np.__file__ == NUMPY_FILE])),
            ]))
        return out


NUMPY_FILE = {numpy_file!r}
"""

THING_PY = """
class Thing:
    def __init__(self, value):
        self.value = value
"""


def _pickle_thing(folder, value: int) -> None:
    """Pickle thing.Thing(value) the way a training script would: by the bare name."""
    code = ("import pickle, sys; sys.path.insert(0, sys.argv[1]); import thing; "
            "open(sys.argv[1] + '/thing.pkl', 'wb').write(pickle.dumps(thing.Thing(int(sys.argv[2]))))")
    subprocess.run([sys.executable, "-c", code, str(folder), str(value)], check=True)


def write_isolated(repo, name: str, factor: int, offset: int, tag: str, thing: int,
                   extra: str = "") -> None:
    model_dir = write_model(repo, name, CONFIG.format(name=name, extra=extra), {
        "model.py": MODEL_PY.format(numpy_file=np.__file__),
        "helpers.py": f"FACTOR = {factor}\n",
        "thing.py": THING_PY,
        "pkg/__init__.py": "from .sub import VALUE\n",
        "pkg/sub.py": f"VALUE = {tag!r}\n",
    })
    (model_dir / "common.py").write_text(f"OFFSET = {offset}\n")  # the model folder's
    _pickle_thing(model_dir / "1", thing)


def infer(client, module, name: str, x: int):
    inp = module.InferInput("X", [1], "INT64")
    inp.set_data_from_numpy(np.array([x], dtype=np.int64))
    result = client.infer(name, [inp])
    tag = result.as_numpy("TAG")[0]
    return int(result.as_numpy("Y")[0]), tag.decode() if isinstance(tag, bytes) else tag, \
        bool(result.as_numpy("SHARED")[0])


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    repo = tmp_path_factory.mktemp("iso") / "models"
    repo.mkdir()
    write_isolated(repo, "ma", 10, 1, "a", 3)
    write_isolated(repo, "mb", 1000, 2, "b", 4)
    write_isolated(repo, "mc", 100000, 5, "c", 7, extra=PROCESS)  # a worker process
    with NaiadProcess(repo, "--model-load-thread-count=4") as server:
        yield server


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_models_with_the_same_helper_names_each_import_their_own(two_models, protocol):
    module, client = triton_client(protocol, two_models)
    # Y = X * FACTOR + OFFSET + thing * 1e6; numpy is the server's own everywhere
    assert infer(client, module, "ma", 2) == (3_000_021, "a", True)
    assert infer(client, module, "mb", 2) == (4_002_002, "b", True)
    assert infer(client, module, "mc", 2) == (7_200_005, "c", True)
    assert infer(client, module, "ma", 3) == (3_000_031, "a", True)


def _edit_and_reload(client, repo, name: str, factor: int, tag: str) -> None:
    (repo / name / "1" / "helpers.py").write_text(f"FACTOR = {factor}\n")
    (repo / name / "1" / "pkg" / "sub.py").write_text(f"VALUE = {tag!r}\n")
    client.load_model(name)


@pytest.mark.parametrize("extra", ["", PROCESS], ids=["in-process", "worker-process"])
def test_a_reload_or_an_unload_then_load_imports_the_edited_helpers(repo, extra):
    write_isolated(repo, "ma", 10, 1, "a", 3, extra=extra)
    write_isolated(repo, "mb", 1000, 2, "b", 4)
    with NaiadProcess(repo, "--model-control-mode=explicit", "--load-model=*") as server:
        client = httpclient.InferenceServerClient(server.http_url)
        assert infer(client, httpclient, "ma", 1)[:2] == (3_000_011, "a")
        # same size, same second: a stale bytecode cache would not notice
        _edit_and_reload(client, repo, "ma", 20, "A")
        assert infer(client, httpclient, "ma", 1)[:2] == (3_000_021, "A")
        client.unload_model("ma")
        (repo / "ma" / "1" / "helpers.py").write_text("FACTOR = 30\n")
        client.load_model("ma")
        assert infer(client, httpclient, "ma", 1)[:2] == (3_000_031, "A")
        assert infer(client, httpclient, "mb", 1)[:2] == (4_001_002, "b")  # untouched


def test_parallel_loads_and_reloads_never_mix_two_models_helpers(repo):
    write_isolated(repo, "ma", 10, 1, "a", 3)
    write_isolated(repo, "mb", 1000, 2, "b", 4)
    with NaiadProcess(repo, "--model-control-mode=explicit", "--load-model=*",
                      "--model-load-thread-count=4") as server:
        for round_ in range(6):
            fa, fb = 10 + round_, 1000 + round_
            (repo / "ma" / "1" / "helpers.py").write_text(f"FACTOR = {fa}\n")
            (repo / "mb" / "1" / "helpers.py").write_text(f"FACTOR = {fb}\n")
            errors: list[BaseException] = []

            def load(name, url, module, errors=errors):
                try:
                    module.InferenceServerClient(url).load_model(name)
                except BaseException as exc:  # noqa: BLE001 - reported below
                    errors.append(exc)

            threads = [threading.Thread(target=load, args=("ma", server.http_url, httpclient)),
                       threading.Thread(target=load, args=("mb", server.grpc_url, grpcclient))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
            assert not errors
            client = grpcclient.InferenceServerClient(server.grpc_url)
            assert infer(client, grpcclient, "ma", 1)[:2] == (3_000_000 + fa + 1, "a")
            assert infer(client, grpcclient, "mb", 1)[:2] == (4_000_000 + fb + 2, "b")


def test_a_model_file_that_shadows_nothing_shared_and_the_stdlib_wins(repo):
    """A helper named like a stdlib module is not the model's (as under Triton, where
    the model folders come last on sys.path); a helper named like an installed
    package is the model's own."""
    write_model(repo, "shadow", """
        name: "shadow"
        backend: "python"
        max_batch_size: 0
        input [ { name: "X" data_type: TYPE_INT64 dims: [ 1 ] } ]
        output [ { name: "Y" data_type: TYPE_STRING dims: [ 1 ] } ]
        """, {
        "model.py": textwrap.dedent("""
            import numpy as np
            import triton_python_backend_utils as pb_utils
            import json
            import tritonclient

            class TritonPythonModel:
                def execute(self, requests):
                    text = json.dumps({"t": tritonclient.WHO})
                    return [pb_utils.InferenceResponse([pb_utils.Tensor(
                        "Y", np.array([text.encode()], dtype=np.object_))]) for _ in requests]
            """),
        "json.py": "raise RuntimeError('the stdlib json must win')\n",
        "tritonclient.py": "WHO = 'the model'\n",
    })
    with NaiadProcess(repo) as server:
        client = httpclient.InferenceServerClient(server.http_url)
        inp = httpclient.InferInput("X", [1], "INT64")
        inp.set_data_from_numpy(np.array([1], dtype=np.int64))
        out = client.infer("shadow", [inp]).as_numpy("Y")[0]
        assert out == b'{"t": "the model"}'
