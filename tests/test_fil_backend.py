"""The fil backend: XGBoost (JSON, UBJSON), LightGBM and Treelite (scikit-learn) forests
trained here, served by a real naiad process (tritonclient HTTP and gRPC) and checked
against the frameworks' own predictions in-process."""

from __future__ import annotations

import json
import urllib.request

import numpy as np
import pytest

xgb = pytest.importorskip("xgboost")
lgb = pytest.importorskip("lightgbm")
treelite = pytest.importorskip("treelite")

import framework_models as fm  # noqa: E402
from conftest import NaiadProcess  # noqa: E402

from naiad.embedded import EmbeddedServer  # noqa: E402

FEATURES = 8


def _config(model_type: str, out_dims: int = 1, extra: str = "", outputs: str = "") -> str:
    return f"""
        backend: "fil"
        max_batch_size: 64
        input [ {{ name: "input__0" data_type: TYPE_FP32 dims: [ {FEATURES} ] }} ]
        output [ {{ name: "output__0" data_type: TYPE_FP32 dims: [ {out_dims} ] }} {outputs} ]
        parameters {{ key: "model_type" value {{ string_value: "{model_type}" }} }}
        dynamic_batching {{ }}
    """ + extra


def _param(key: str, value: str) -> str:
    return f'parameters {{ key: "{key}" value {{ string_value: "{value}" }} }}\n'


@pytest.fixture(scope="module")
def fil_repo(tmp_path_factory) -> dict:
    repo = tmp_path_factory.mktemp("fil_models")
    b: dict = {"repo": repo}
    b["xgb_bin"] = fm.xgboost_model(repo / "xgb_proba" / "1" / "xgboost.json")
    fm.write_config(repo / "xgb_proba", _config(
        "xgboost_json", 2, _param("is_classifier", "true") + _param("predict_proba", "true")))
    fm.xgboost_model(repo / "xgb_class" / "1" / "xgboost.json")
    fm.write_config(repo / "xgb_class", _config(
        "xgboost_json", 1, _param("output_class", "true") + _param("threshold", "0.3")
        + _param("storage_type", "AUTO")))
    b["xgb_multi"] = fm.xgboost_model(repo / "xgb_multi" / "1" / "xgboost.ubj",
                                      objective="multi:softprob", classes=3)
    fm.write_config(repo / "xgb_multi", _config(
        "xgboost_ubj", 3, _param("is_classifier", "true") + _param("predict_proba", "true"),
        outputs=f', {{ name: "treeshap_output" data_type: TYPE_FP32 dims: [ {3 * (FEATURES + 1)} ] }}'))
    b["xgb_softmax"] = fm.xgboost_model(repo / "xgb_softmax" / "1" / "xgboost.json",
                                        objective="multi:softmax", classes=3)
    fm.write_config(repo / "xgb_softmax", _config(
        "xgboost_json", 1, _param("is_classifier", "true")))
    b["xgb_reg"] = fm.xgboost_model(repo / "xgb_reg" / "1" / "xgboost.json",
                                    objective="reg:squarederror")
    fm.write_config(repo / "xgb_reg", _config("xgboost_json", 1, _param("is_classifier", "false")))
    b["lgb_bin"] = fm.lightgbm_model(repo / "lgb_proba" / "1" / "model.txt")
    fm.write_config(repo / "lgb_proba", _config(
        "lightgbm", 1, _param("is_classifier", "true") + _param("predict_proba", "true"),
        outputs=f', {{ name: "treeshap_output" data_type: TYPE_FP32 dims: [ {FEATURES + 1} ] }}'))
    b["lgb_multi"] = fm.lightgbm_model(repo / "lgb_multi" / "1" / "model.txt",
                                       objective="multiclass", classes=4)
    fm.write_config(repo / "lgb_multi", _config("lightgbm", 1, _param("is_classifier", "true")))
    # no config at all: auto-complete finds the file, the type, the features
    b["lgb_auto"] = fm.lightgbm_model(repo / "lgb_auto" / "1" / "model.txt")
    fm.write_config(repo / "lgb_auto", 'backend: "fil"\n')
    b["xgb_auto"] = fm.xgboost_model(repo / "xgb_auto" / "1" / "xgboost.json",
                                     objective="multi:softprob", classes=3)
    fm.write_config(repo / "xgb_auto", 'backend: "fil"\n' + _param("predict_proba", "true"))
    # a scikit-learn forest through a Treelite checkpoint
    b["sk_forest"] = fm.treelite_forest(repo / "sk_forest" / "1" / "checkpoint.tl")
    fm.write_config(repo / "sk_forest", _config(
        "treelite_checkpoint", 2, _param("is_classifier", "true") + _param("predict_proba", "true")))
    # wrong feature count in the config
    fm.xgboost_model(repo / "xgb_bad" / "1" / "xgboost.json")
    fm.write_config(repo / "xgb_bad", _config("xgboost_json").replace(f"dims: [ {FEATURES} ]",
                                                                      "dims: [ 5 ]"))
    return b


@pytest.fixture(scope="module")
def fil_server(fil_repo):
    with NaiadProcess(fil_repo["repo"], "--exit-on-error=false", wait="live") as server:
        yield server


def _rows(n: int, seed: int = 11) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, FEATURES)).astype(np.float32)


def _get(server, path: str) -> dict:
    with urllib.request.urlopen(server.base + path, timeout=10) as r:
        return json.loads(r.read())


@pytest.mark.parametrize("rows", [1, 3, 40])  # small batches go through Treelite for XGBoost
def test_xgboost_binary_probabilities(fil_server, fil_repo, rows):
    x = _rows(rows)
    p = fil_repo["xgb_bin"].predict(xgb.DMatrix(x))
    for answer in fm.infer_both(fil_server, "xgb_proba", {"input__0": x}):
        np.testing.assert_allclose(answer["output__0"], np.stack([1 - p, p], axis=1),
                                   rtol=1e-5, atol=1e-6)


def test_xgboost_classes_with_threshold(fil_server, fil_repo):
    x = _rows(30)
    p = fil_repo["xgb_bin"].predict(xgb.DMatrix(x))
    for answer in fm.infer_both(fil_server, "xgb_class", {"input__0": x}):
        np.testing.assert_array_equal(answer["output__0"][:, 0], (p > 0.3).astype(np.float32))


def test_xgboost_multiclass_probabilities_and_shap(fil_server, fil_repo):
    x = _rows(20)
    booster = fil_repo["xgb_multi"]
    expected = booster.predict(xgb.DMatrix(x))
    shap = booster.predict(xgb.DMatrix(x), pred_contribs=True).reshape(20, -1)
    for answer in fm.infer_both(fil_server, "xgb_multi", {"input__0": x},
                                ["output__0", "treeshap_output"]):
        np.testing.assert_allclose(answer["output__0"], expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(answer["treeshap_output"], shap, rtol=1e-4, atol=1e-5)


def test_xgboost_softmax_objective_gives_classes(fil_server, fil_repo):
    x = _rows(25)
    labels = fil_repo["xgb_softmax"].predict(xgb.DMatrix(x))
    for answer in fm.infer_both(fil_server, "xgb_softmax", {"input__0": x}):
        np.testing.assert_array_equal(answer["output__0"][:, 0], labels)


def test_xgboost_regression(fil_server, fil_repo):
    x = _rows(17)
    expected = fil_repo["xgb_reg"].predict(xgb.DMatrix(x))
    for answer in fm.infer_both(fil_server, "xgb_reg", {"input__0": x}):
        np.testing.assert_allclose(answer["output__0"][:, 0], expected, rtol=1e-5, atol=1e-5)


def test_lightgbm_probabilities_shap_and_classes(fil_server, fil_repo):
    x = _rows(33)
    booster = fil_repo["lgb_bin"]
    for answer in fm.infer_both(fil_server, "lgb_proba", {"input__0": x},
                                ["output__0", "treeshap_output"]):
        np.testing.assert_allclose(answer["output__0"][:, 0], booster.predict(x), rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(answer["treeshap_output"], booster.predict(x, pred_contrib=True),
                                   rtol=1e-4, atol=1e-5)
    classes = np.argmax(fil_repo["lgb_multi"].predict(x), axis=1).astype(np.float32)
    for answer in fm.infer_both(fil_server, "lgb_multi", {"input__0": x}):
        np.testing.assert_array_equal(answer["output__0"][:, 0], classes)


def test_treelite_checkpoint_of_a_scikit_learn_forest(fil_server, fil_repo):
    x = _rows(12)
    expected = fil_repo["sk_forest"].predict_proba(x)
    for answer in fm.infer_both(fil_server, "sk_forest", {"input__0": x}):
        np.testing.assert_allclose(answer["output__0"], expected, rtol=1e-5, atol=1e-6)


def test_auto_complete_from_the_model_files(fil_server, fil_repo):
    config = _get(fil_server, "/v2/models/lgb_auto/config")
    assert config["parameters"]["model_type"] == {"string_value": "lightgbm"}
    assert config["parameters"]["is_classifier"] == {"string_value": "true"}
    assert config["max_batch_size"] == 4 and "dynamic_batching" in config
    assert config["input"][0]["name"] == "input__0"
    assert config["input"][0]["dims"] == [FEATURES]
    assert config["output"][0]["dims"] == [1]
    config = _get(fil_server, "/v2/models/xgb_auto/config")
    assert config["parameters"]["model_type"] == {"string_value": "xgboost_json"}
    assert config["output"][0]["dims"] == [3]  # predict_proba over 3 classes
    x = _rows(4)
    expected = fil_repo["xgb_auto"].predict(xgb.DMatrix(x))
    for answer in fm.infer_both(fil_server, "xgb_auto", {"input__0": x}):
        np.testing.assert_allclose(answer["output__0"], expected, rtol=1e-5, atol=1e-6)
    p = fil_repo["lgb_auto"].predict(x)
    for answer in fm.infer_both(fil_server, "lgb_auto", {"input__0": x}):
        np.testing.assert_array_equal(answer["output__0"][:, 0], (p > 0.5).astype(np.float32))


def test_statistics_errors_and_an_unavailable_model(fil_server):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url=fil_server.grpc_url)
    try:
        inp = grpcclient.InferInput("input__0", [2, FEATURES], "FP32")
        inp.set_data_from_numpy(_rows(2))
        before = client.get_inference_statistics("xgb_reg").model_stats[0]
        client.infer("xgb_reg", [inp])
        after = client.get_inference_statistics("xgb_reg").model_stats[0]
        assert after.inference_count == before.inference_count + 2
        assert after.execution_count == before.execution_count + 1
        index = {m.name: m for m in client.get_model_repository_index().models}
        meta = client.get_model_metadata("xgb_reg")
        assert meta.inputs[0].name == "input__0" and list(meta.inputs[0].shape) == [-1, FEATURES]
    finally:
        client.close()
    assert index["xgb_bad"].state == "UNAVAILABLE"
    assert "input 'input__0' dims [5] do not match the model's 8 features" in \
        index["xgb_bad"].reason
    for protocol in ("http", "grpc"):
        msg = fm.infer_error(fil_server, "xgb_reg",
                             {"input__0": ("FP32", [1, 3], np.zeros((1, 3), np.float32))},
                             protocol)
        assert "unexpected shape for input 'input__0' for model 'xgb_reg'" in msg
        msg = fm.infer_error(fil_server, "xgb_reg",
                             {"input__0": ("FP64", [1, FEATURES],
                                           np.zeros((1, FEATURES), np.float64))}, protocol)
        assert "data-type is 'FP64', but model 'xgb_reg' expects 'FP32'" in msg


def test_unknown_model_type_fails_the_load(tmp_path):
    fm.xgboost_model(tmp_path / "m" / "1" / "xgboost.json")
    fm.write_config(tmp_path / "m", _config("catboost"))
    with EmbeddedServer(model_repository=str(tmp_path)) as server:
        assert not server.model_ready("m")
        reason = next(m for m in server.server.repository_index() if m["name"] == "m")["reason"]
    assert "catboost not recognized as a valid serialization format." in reason


def test_missing_framework_makes_the_model_unavailable_naming_the_extra(tmp_path):
    """Without xgboost installed (blocked in a child process) the model is UNAVAILABLE."""
    fm.xgboost_model(tmp_path / "m" / "1" / "xgboost.json")
    fm.write_config(tmp_path / "m", _config("xgboost_json"))
    ready, reason = fm.load_without("xgboost", tmp_path, "m")
    assert not ready
    assert "pip install -e '.[fil]'" in reason
