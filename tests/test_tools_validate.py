"""``naiad validate``: what loading a repository would say, without serving it.

The central check serves the same broken repository with a real server and
asserts that validate reports each model's load failure with the server's own
words (the repository index's ``reason``).
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import requests

from tests.clients import naiad_tool
from tests.conftest import EXAMPLES, NaiadProcess, copy_example, write_model

PY_OK = """
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        return [pb_utils.InferenceResponse([]) for _ in requests]
"""

PY_CONFIG = """
name: "{name}"
backend: "python"
input [ {{ name: "IN" data_type: {dtype} dims: [ 4 ] }} ]
output [ {{ name: "OUT" data_type: {dtype} dims: [ 4 ] }} ]
"""


def validate(*args: str) -> subprocess.CompletedProcess:
    return naiad_tool("validate", *args, timeout=120)


def as_json(*args: str) -> dict:
    r = validate(*args, "--format", "json")
    doc = json.loads(r.stdout)
    assert r.returncode == (0 if doc["ok"] else 1)
    return {m["model"]: m for m in doc["models"]} | {"_doc": doc}


def test_examples_repository_is_valid():
    r = validate(str(EXAMPLES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "| Model " in r.stdout and "| Status |" in r.stdout
    assert "4 models: 4 ok, 0 with warnings, 0 with errors" in r.stdout


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    repo = tmp_path_factory.mktemp("broken")
    copy_example(repo, "add_sub")
    write_model(repo, "parse_error", 'name: "parse_error"\nbackend: "python"\n'
                'max_batch_size: [\n', {"model.py": PY_OK})
    write_model(repo, "wrong_name", 'name: "other"\nbackend: "python"\n', {"model.py": PY_OK})
    write_model(repo, "syntax", 'backend: "python"\n',
                {"model.py": "import numpy\n\ndef broken(:\n    pass\n"})
    write_model(repo, "no_class", 'backend: "python"\n', {"model.py": "X = 1\n"})
    write_model(repo, "bad_import", 'backend: "python"\n',
                {"model.py": "import numpy\nimport no_such_module_q\n"})
    write_model(repo, "no_file", 'backend: "python"\n', {})
    write_model(repo, "no_version", 'backend: "python"\nversion_policy { specific { '
                'versions: [ 3 ] } }\n', {"model.py": PY_OK})
    write_model(repo, "bad_dims", PY_CONFIG.format(name="bad_dims", dtype="TYPE_FP32")
                .replace("dims: [ 4 ] } ]\noutput", "dims: [ 0 ] } ]\noutput"),
                {"model.py": PY_OK})
    # ONNX: a complete config but no model file in the version folder
    (repo / "onnx_missing" / "1").mkdir(parents=True)
    shutil.copy(EXAMPLES / "simple_onnx" / "config.pbtxt", repo / "onnx_missing")
    (repo / "onnx_missing" / "config.pbtxt").write_text(
        (repo / "onnx_missing" / "config.pbtxt").read_text().replace("simple_onnx",
                                                                     "onnx_missing"))
    # ensembles: an unknown step, an unused tensor, mismatched types, a cycle
    write_model(repo, "fp32_model", PY_CONFIG.format(name="fp32_model", dtype="TYPE_FP32"),
                {"model.py": PY_OK})
    write_model(repo, "int_model", PY_CONFIG.format(name="int_model", dtype="TYPE_INT32"),
                {"model.py": PY_OK})

    def ensemble(name, steps, inputs=("X",), outputs=("Y",), dtype="TYPE_FP32"):
        ins = ", ".join(f'{{ name: "{i}" data_type: {dtype} dims: [ 4 ] }}' for i in inputs)
        outs = ", ".join(f'{{ name: "{o}" data_type: {dtype} dims: [ 4 ] }}' for o in outputs)
        body = ", ".join(
            f'{{ model_name: "{m}" model_version: -1 input_map {{ key: "IN" value: "{a}" }} '
            f'output_map {{ key: "OUT" value: "{b}" }} }}' for m, a, b in steps)
        write_model(repo, name, f'name: "{name}"\nplatform: "ensemble"\ninput [ {ins} ]\n'
                    f'output [ {outs} ]\nensemble_scheduling {{ step [ {body} ] }}\n')

    ensemble("ens_ok", [("fp32_model", "X", "T"), ("fp32_model", "T", "Y")])
    ensemble("ens_ghost", [("ghost_model", "X", "Y")])
    ensemble("ens_unwritten", [("fp32_model", "X", "T")])
    ensemble("ens_types", [("fp32_model", "X", "T"), ("int_model", "T", "Y")])
    ensemble("ens_a", [("ens_b", "X", "Y")])
    ensemble("ens_b", [("ens_a", "X", "Y")])
    return repo


def test_broken_repository_reports_each_problem(broken):
    models = as_json(str(broken))
    doc = models.pop("_doc")
    assert not doc["ok"]
    assert models["add_sub"]["status"] == "OK"
    assert models["ens_ok"]["status"] == "OK"
    assert models["fp32_model"]["status"] == models["int_model"]["status"] == "OK"

    def err(name):
        assert models[name]["status"] == "ERROR", models[name]
        return models[name]["errors"][0]

    assert err("parse_error").startswith(f"{broken}/parse_error/config.pbtxt:3: failed to "
                                         "parse model configuration")
    assert "the model folder is 'wrong_name' but the configuration names 'other'" in \
        err("wrong_name")
    assert err("syntax").startswith(f"{broken}/syntax/1/model.py:3: ")
    assert "SyntaxError" in err("syntax")
    assert "does not define class TritonPythonModel" in err("no_class")
    assert err("bad_import").startswith(f"{broken}/bad_import/1/model.py:2: ")
    assert "No module named 'no_such_module_q'" in err("bad_import")
    assert f"python model file '{broken}/no_file/1/model.py' not found" in err("no_file")
    assert "at least one version must be available under the version policy" in \
        err("no_version")
    assert "version 3 named by the version policy has no folder" in \
        models["no_version"]["warnings"][0]
    assert f"{broken}/bad_dims/config.pbtxt:" in err("bad_dims")
    assert "dimension must be integer >= 1" in err("bad_dims")
    assert f"unable to find '{broken}/onnx_missing/1/model.onnx'" in err("onnx_missing")
    assert "contains models that are not available or ambiguous: ghost_model" in \
        err("ens_ghost")
    assert "ensemble output 'Y' for ensemble ens_unwritten' is not used" in err("ens_unwritten")
    assert "inconsistent data type: TYPE_FP32 is inferred from model fp32_model while " \
           "TYPE_INT32 is inferred from model int_model" in err("ens_types")
    assert "circular dependency" in err("ens_a") and "circular dependency" in err("ens_b")


def test_validate_says_what_the_server_says(broken):
    """Every load failure the server reports is what validate reports for that model."""
    models = as_json(str(broken))
    models.pop("_doc")
    with NaiadProcess(broken, "--exit-on-error=false", "--strict-readiness=false") as server:
        index = requests.post(f"{server.base}/v2/repository/index", timeout=30).json()
    reasons = {m["name"]: m.get("reason", "") for m in index if m.get("state") != "READY"}
    ready = {m["name"] for m in index if m.get("state") == "READY"}
    assert {n for n, m in models.items() if m["status"] != "ERROR"} == ready
    for name, reason in reasons.items():
        if name == "no_version" or not reason:
            continue
        assert models[name]["status"] == "ERROR"
        # the same words (validate may add the file:line in front)
        if name.startswith("ens_a") or name.startswith("ens_b"):
            assert "circular dependency" in reason
            continue
        assert reason.split(";")[0].replace("version 1 is at UNAVAILABLE state: ", "") \
            .strip() in models[name]["errors"][0], (name, reason, models[name]["errors"])


def test_table_output_and_exit_code(broken):
    r = validate(str(broken))
    assert r.returncode == 1
    assert "| syntax " in r.stdout and "| ERROR  |" in r.stdout
    assert f"syntax: error: {broken}/syntax/1/model.py:3: " in r.stdout
    assert "with errors" in r.stdout.splitlines()[-1]


def test_print_config_shows_auto_complete(tmp_path):
    repo = tmp_path / "m"
    (repo / "plain_onnx" / "1").mkdir(parents=True)
    shutil.copy(EXAMPLES / "simple_onnx" / "1" / "model.onnx", repo / "plain_onnx" / "1")
    r = validate(str(repo), "--print-config")
    assert r.returncode == 0, r.stdout
    text = r.stdout.split("# plain_onnx")[1]
    # read from the ONNX file, as the server's auto-complete does
    assert 'name: "INPUT0"' in text and 'name: "OUTPUT0"' in text
    assert "max_batch_size: 4" in text and "dynamic_batching" in text
    assert 'platform: "onnxruntime_onnx"' in text
    # without auto-complete the same folder is refused, as the server refuses it
    r = validate(str(repo), "--strict-model-config")
    assert r.returncode == 1
    assert "model configuration file not found" in r.stdout


def test_initialize_runs_model_code(tmp_path):
    repo = tmp_path / "m"
    write_model(repo, "init_fails", 'backend: "python"\n', {"model.py": """
        class TritonPythonModel:
            def initialize(self, args):
                raise RuntimeError("no weights in " + args["model_name"])
            def execute(self, requests):
                return []
    """})
    assert validate(str(repo)).returncode == 0  # initialize is not run by default
    models = as_json(str(repo), "--initialize")
    assert models["init_fails"]["status"] == "ERROR"
    assert "RuntimeError: no weights in init_fails" in models["init_fails"]["errors"][0]
    r = validate(str(EXAMPLES), "--initialize")
    assert r.returncode == 0, r.stdout


def test_missing_repository_and_help(tmp_path):
    r = validate(str(tmp_path / "nope"))
    assert r.returncode == 1
    assert "model repository not found" in r.stdout
    r = validate("--help")
    assert r.returncode == 0 and "--print-config" in r.stdout and "--format" in r.stdout
    assert validate().returncode == 2
