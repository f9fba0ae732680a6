"""The fil backend: Triton's FIL backend for tree models (``pip install 'naiad[fil]'``).

``parameters { key: "model_type" }`` says what the version folder holds, under
FIL's default file names (``default_model_filename`` overrides them):

=====================  ================  ======================================
model_type             file              read and predicted by
=====================  ================  ======================================
``xgboost_ubj``        ``xgboost.ubj``   XGBoost (``inplace_predict``)
``xgboost_json``       ``xgboost.json``  XGBoost
``xgboost`` (default)  ``xgboost.model`` XGBoost; Treelite for legacy binaries
``lightgbm``           ``model.txt``     LightGBM (``Booster.predict``)
``treelite_checkpoint`` ``checkpoint.tl`` Treelite GTIL (scikit-learn forests
                                         converted with ``treelite.sklearn``)
=====================  ================  ======================================

Each framework predicts with its own engine: measured on this 2-core machine
(200 trees, 32 features) they beat Treelite's GTIL by 3-10x at batch 256
(benchmarks/results). For XGBoost models, batches of fewer than
``SMALL_BATCH_ROWS`` rows go through Treelite's GTIL when treelite is
installed, where XGBoost's per-call overhead (~250 µs) dominates.

Tensors, as in FIL: ``input__0`` FP32 ``[features]``; ``output__0`` FP32: the
model's output for a regressor; for a classifier (``is_classifier``, or
the older ``output_class``) the class (``threshold``, default 0.5, for
binary models; the most probable class otherwise), or with ``predict_proba``
the probabilities (dims ``[classes]``; a binary model gives ``[1]`` the
positive class's or ``[2]`` both). An optional ``treeshap_output`` output
gives SHAP values, ``[(features + 1) * classes]``, from XGBoost's or
LightGBM's own TreeSHAP.

Also read: ``cpu_nthread`` (threads per prediction; -1, the default, lets
the framework choose), ``xgboost_allow_unknown_field`` (accepted; XGBoost's
loader ignores unknown fields). Accepted and ignored, as GPU-only or removed
in FIL 25.09: ``storage_type``, ``blocks_per_sm``, ``algo``, ``threads_per_tree``,
``layout``, ``chunk_size``, ``transfer_threshold``,
``use_experimental_optimizations``.
"""

from __future__ import annotations

import json
import logging
import os
import threading

import numpy as np

from naiad.backends.base import Backend, BackendModel, InstanceSpec, ModelLoadContext
from naiad.backends.framework import (
    BatchingInstance,
    OutputPlan,
    TensorSpec,
    complete_io,
    config_dims,
    dims_str,
    mc,
    param,
    parse_bool,
    parse_int,
)
from naiad.core.errors import Internal, InvalidArgument, NaiadError, Unavailable
from naiad.core.extras import install_hint

log = logging.getLogger("naiad.backends.fil")

INPUT = "input__0"
OUTPUT = "output__0"
SHAP_OUTPUT = "treeshap_output"
SMALL_BATCH_ROWS = 8

MODEL_FILES = {
    "xgboost_ubj": "xgboost.ubj",
    "xgboost_json": "xgboost.json",
    "xgboost": "xgboost.model",
    "lightgbm": "model.txt",
    "treelite_checkpoint": "checkpoint.tl",
}
_IGNORED = ("storage_type", "blocks_per_sm", "algo", "threads_per_tree", "layout", "chunk_size",
            "transfer_threshold", "use_experimental_optimizations")


def _flag(config: mc.ModelConfig, key: str, default: bool = False) -> bool:
    value = param(config, key)
    return default if value is None or value == "" else parse_bool(value, key)


def model_type(config: mc.ModelConfig) -> str:
    kind = param(config, "model_type") or "xgboost"
    if kind not in MODEL_FILES:
        raise InvalidArgument(f"{kind} not recognized as a valid serialization format.")
    return kind


def model_path(version_dir: str, config: mc.ModelConfig) -> str:
    return os.path.join(version_dir,
                        config.default_model_filename or MODEL_FILES[model_type(config)])


def detect_model_type(version_dir: str) -> str | None:
    """The model_type whose default file is in the folder (naiad's auto-complete)."""
    for kind, filename in MODEL_FILES.items():
        if os.path.isfile(os.path.join(version_dir, filename)):
            return kind
    return None


# ---------------------------------------------------------------------------
# predictors: one loaded forest, scores (n, k): probabilities for classifiers
# ---------------------------------------------------------------------------


class _Forest:
    features: int = 0
    classes: int = 1  # 1: regression or binary; k > 1: multi-class
    classifier: bool = False  # what the model's objective says
    shap: bool = False

    def scores(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def contributions(self, x: np.ndarray) -> np.ndarray:
        raise Unavailable("this model type has no TreeSHAP support")


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class _XGBoostForest(_Forest):
    shap = True

    def __init__(self, path: str, nthread: int):
        import xgboost as xgb

        self.xgb = xgb
        self.booster = xgb.Booster(model_file=path)
        if nthread > 0:
            self.booster.set_param({"nthread": nthread})
        config = json.loads(self.booster.save_config())
        learner = config["learner"]
        self.objective = learner["objective"]["name"]
        self.classes = max(1, int(learner["learner_model_param"].get("num_class", "0")))
        self.features = int(self.booster.num_features())
        self.classifier = self.objective.startswith(("binary:", "multi:"))
        self.softmax = self.objective == "multi:softmax"  # predicts labels: use margins
        self.gtil = None
        if not self.softmax:
            try:  # Treelite answers small batches faster
                import treelite

                self.gtil = treelite.frontend.load_xgboost_model(path)
                self.nthread = nthread
            except Exception as exc:  # noqa: BLE001 - treelite missing or the file unknown to it
                log.debug("treelite cannot read '%s' (%s): XGBoost predicts all batches",
                          path, exc)

    def scores(self, x: np.ndarray) -> np.ndarray:
        n = x.shape[0]
        if self.gtil is not None and n < SMALL_BATCH_ROWS:
            import treelite.gtil

            return treelite.gtil.predict(self.gtil, x, nthread=self.nthread).reshape(n, -1)
        if self.softmax:
            margin = self.booster.inplace_predict(x, predict_type="margin")
            return _softmax(np.asarray(margin, np.float32).reshape(n, -1))
        return np.asarray(self.booster.inplace_predict(x), np.float32).reshape(n, -1)

    def contributions(self, x: np.ndarray) -> np.ndarray:
        out = self.booster.predict(self.xgb.DMatrix(x), pred_contribs=True)
        return np.asarray(out, np.float32).reshape(x.shape[0], -1)


class _LightGBMForest(_Forest):
    shap = True

    def __init__(self, path: str, nthread: int):
        import lightgbm as lgb

        self.booster = lgb.Booster(model_file=path)
        self.kwargs = {"num_threads": nthread} if nthread > 0 else {}
        self.features = int(self.booster.num_feature())
        self.classes = max(1, int(self.booster.num_model_per_iteration()))
        objective = str(self.booster.params.get("objective", "")) or self._objective(path)
        self.classifier = objective.split()[0] in (
            "binary", "multiclass", "multiclassova", "softmax", "cross_entropy", "xentropy")

    @staticmethod
    def _objective(path: str) -> str:
        with open(path, encoding="utf-8", errors="replace") as f:
            for _, line in zip(range(64), f):
                if line.startswith("objective="):
                    return line.split("=", 1)[1].strip()
        return ""

    def scores(self, x: np.ndarray) -> np.ndarray:
        out = self.booster.predict(x, **self.kwargs)
        return np.asarray(out, np.float32).reshape(x.shape[0], -1)

    def contributions(self, x: np.ndarray) -> np.ndarray:
        out = self.booster.predict(x, pred_contrib=True, **self.kwargs)
        return np.asarray(out, np.float32).reshape(x.shape[0], -1)


class _TreeliteForest(_Forest):
    def __init__(self, path: str, kind: str, nthread: int):
        import treelite
        import treelite.gtil

        self.gtil = treelite.gtil
        if kind == "treelite_checkpoint":
            self.model = treelite.Model.deserialize(path)
        else:  # an XGBoost binary that XGBoost itself no longer reads
            self.model = treelite.frontend.load_xgboost_model_legacy_binary(path)
        self.nthread = nthread
        self.features = int(self.model.num_feature)
        probe = self.gtil.predict(self.model, np.zeros((1, self.features), np.float32),
                                  nthread=1)
        self.classes = max(1, int(np.prod(probe.shape[1:])))
        header = json.loads(self.model.dump_as_json(pretty_print=False))
        self.classifier = header.get("task_type", "") in ("kBinaryClf", "kMultiClf")
        if self.classifier and self.classes == 2:
            self.two_columns = True  # scikit-learn binary forests give both classes
        else:
            self.two_columns = False

    def scores(self, x: np.ndarray) -> np.ndarray:
        out = self.gtil.predict(self.model, x, nthread=self.nthread)
        out = np.asarray(out, np.float32).reshape(x.shape[0], -1)
        if self.two_columns:
            return out[:, 1:2]  # the positive class, as FIL's binary models
        return out


def load_forest(name: str, path: str, kind: str, nthread: int) -> _Forest:
    if not os.path.isfile(path):
        raise Unavailable(f"unable to find '{path}' for model '{name}'")
    try:
        if kind == "lightgbm":
            forest: _Forest = _LightGBMForest(path, nthread)
        elif kind == "treelite_checkpoint":
            forest = _TreeliteForest(path, kind, nthread)
        else:
            try:
                forest = _XGBoostForest(path, nthread)
            except Exception:
                if kind != "xgboost":
                    raise
                forest = _TreeliteForest(path, kind, nthread)
    except NaiadError:
        raise
    except ImportError as exc:
        raise Unavailable(f"unable to load model '{name}': {exc} (install it with: "
                          f"{install_hint('fil')})") from None
    except Exception as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Unavailable(f"unable to load model '{name}': failed to read '{path}' as "
                          f"{kind}: {text}") from None
    if isinstance(forest, _TreeliteForest) and forest.two_columns:
        forest.classes = 1
    return forest


# ---------------------------------------------------------------------------
# the backend
# ---------------------------------------------------------------------------


_load_lock = threading.Lock()


class FILBackend(Backend):
    name = "fil"
    default_model_filename = ""
    platforms = ()

    def auto_complete_config(self, config: mc.ModelConfig, model_dir: str,
                             version_dir: str | None, backend_config: dict[str, str]) -> None:
        """model_type, is_classifier, max_batch_size, input__0 and output__0 from the model.

        (naiad's extension: Triton's FIL backend completes nothing.)
        """
        if version_dir is None:
            return
        if param(config, "model_type") is None and not config.default_model_filename:
            kind = detect_model_type(version_dir)
            if kind is None:
                return
            config.parameters["model_type"].string_value = kind
        kind = model_type(config)
        path = model_path(version_dir, config)
        forest = load_forest(config.name, path, kind, 1)
        if param(config, "is_classifier") is None and param(config, "output_class") is None:
            config.parameters["is_classifier"].string_value = \
                "true" if forest.classifier else "false"
        classifier = _flag(config, "is_classifier", _flag(config, "output_class"))
        width = forest.classes if classifier and _flag(config, "predict_proba") else 1
        ins = [TensorSpec(INPUT, "TYPE_FP32", (-1, forest.features))]
        outs = [TensorSpec(OUTPUT, "TYPE_FP32", (-1, width))]
        complete_io(config, ins, outs, backend_config, can_batch=True, what="tree model")

    def model_files(self, config: mc.ModelConfig, version_dir: str) -> list[str]:
        """The file of the config's ``model_type`` (or ``default_model_filename``)."""
        return [model_path(version_dir, config)]

    def load(self, ctx: ModelLoadContext) -> "FILModel":
        return FILModel(ctx)


class FILModel(BackendModel):
    def __init__(self, ctx: ModelLoadContext):
        config = ctx.config
        self.name = ctx.name
        self.config = config
        self.max_batch_size = int(config.max_batch_size)
        self.kind = model_type(config)
        for key in _IGNORED:
            if param(config, key):
                log.warning("model '%s': the '%s' parameter has no effect here (GPU only, or "
                            "removed in FIL 25.09)", self.name, key)
        if param(config, "output_class") is not None:
            self.classifier = _flag(config, "output_class")
        else:
            self.classifier = _flag(config, "is_classifier")
        self.predict_proba = _flag(config, "predict_proba")
        _flag(config, "xgboost_allow_unknown_field")
        text = param(config, "threshold")
        try:
            self.threshold = float(text) if text else 0.5
        except ValueError:
            raise InvalidArgument(f"failed to convert '{text}' to float for 'threshold'") from None
        text = param(config, "cpu_nthread")
        self.nthread = parse_int(text, "cpu_nthread") if text else -1
        self.path = model_path(ctx.version_dir, config)
        with _load_lock:
            self.forest = load_forest(self.name, self.path, self.kind, self.nthread)
        self.plan = OutputPlan(config)
        self._check()
        log.info("model '%s': %s forest, %d features, %d class column(s), read from '%s'",
                 self.name, self.kind, self.forest.features, self.forest.classes, self.path)

    def _check(self) -> None:
        name, forest = self.name, self.forest
        inputs = {i.name: i for i in self.config.input}
        if INPUT not in inputs or len(inputs) != 1:
            raise InvalidArgument(
                f"unable to load model '{name}': the fil backend takes one input, named "
                f"'{INPUT}' (configured: {', '.join(inputs) or 'none'})")
        cin = inputs[INPUT]
        if cin.data_type != mc.TYPE_FP32:
            raise InvalidArgument(
                f"unable to load model '{name}', configuration expects datatype "
                f"{mc.DataType.Name(cin.data_type)} for input '{INPUT}', model provides "
                f"TYPE_FP32")
        dims = config_dims(cin)
        if len(dims) != 1 or dims[0] not in (-1, forest.features):
            raise InvalidArgument(
                f"unable to load model '{name}', input '{INPUT}' dims {dims_str(dims)} do not "
                f"match the model's {forest.features} features")
        outputs = {o.name: o for o in self.config.output}
        if OUTPUT not in outputs:
            raise InvalidArgument(
                f"unable to load model '{name}': the fil backend's output is named '{OUTPUT}'")
        for oname, cout in outputs.items():
            if oname not in (OUTPUT, SHAP_OUTPUT):
                raise InvalidArgument(
                    f"unable to load model '{name}': unexpected inference output '{oname}', "
                    f"allowed outputs are: {OUTPUT}, {SHAP_OUTPUT}")
            if cout.data_type != mc.TYPE_FP32:
                raise InvalidArgument(
                    f"unable to load model '{name}', configuration expects datatype "
                    f"{mc.DataType.Name(cout.data_type)} for output '{oname}', model provides "
                    f"TYPE_FP32")
        width = self.output_width()
        dims = config_dims(outputs[OUTPUT])
        allowed = {width}
        if self.classifier and self.predict_proba and forest.classes == 1:
            allowed.add(2)
        if len(dims) != 1 or (dims[0] != -1 and dims[0] not in allowed):
            raise InvalidArgument(
                f"unable to load model '{name}', output '{OUTPUT}' dims {dims_str(dims)} do not "
                f"match the model: expected [{' or '.join(str(a) for a in sorted(allowed))}]")
        self.binary_pairs = dims[0] == 2 and forest.classes == 1
        if SHAP_OUTPUT in outputs:
            if not forest.shap:
                raise InvalidArgument(
                    f"unable to load model '{name}': '{SHAP_OUTPUT}' needs an XGBoost or "
                    f"LightGBM model")
            expected = (forest.features + 1) * forest.classes
            sdims = config_dims(outputs[SHAP_OUTPUT])
            if len(sdims) != 1 or sdims[0] not in (-1, expected):
                raise InvalidArgument(
                    f"unable to load model '{name}', output '{SHAP_OUTPUT}' dims "
                    f"{dims_str(sdims)} do not match the model: expected [{expected}]")

    def output_width(self) -> int:
        if self.classifier and self.predict_proba:
            return self.forest.classes
        if not self.classifier:
            return self.forest.classes
        return 1

    def predict(self, x: np.ndarray) -> np.ndarray:
        scores = self.forest.scores(x)
        if not self.classifier:
            return scores
        if self.predict_proba:
            if self.binary_pairs:
                return np.concatenate([1.0 - scores, scores], axis=1)
            return scores
        if scores.shape[1] == 1:
            return (scores > self.threshold).astype(np.float32)
        return np.argmax(scores, axis=1).astype(np.float32).reshape(-1, 1)

    def create_instance(self, spec: InstanceSpec) -> "FILInstance":
        return FILInstance(self, spec)


class FILInstance(BatchingInstance):
    # A tree model's prediction is short (~0.1 ms for a small batch): the core may run it
    # on the submitting thread when the instance is idle, saving the thread hand-off, and
    # moves it back to the instance's thread when executions turn slow (naiad.core.instance).
    inline_capable = True

    def __init__(self, model: FILModel, spec: InstanceSpec):
        self.model = model
        self.spec = spec
        self.name = spec.name
        self.model_name = model.name
        self.max_batch_size = model.max_batch_size
        self.plan = model.plan

    def error(self, exc: BaseException) -> NaiadError:
        return Internal(f"FIL prediction failed: {exc}")

    def run(self, feed: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        x = feed.get(INPUT)
        if x is None:
            raise InvalidArgument(f"expected input '{INPUT}' for model '{self.model_name}'")
        if self.max_batch_size <= 0 and x.ndim == 1:
            x = x.reshape(1, -1)
        x = np.ascontiguousarray(x, dtype=np.float32)
        out: dict[str, np.ndarray] = {}
        if OUTPUT in outputs:
            out[OUTPUT] = self.model.predict(x)
        if SHAP_OUTPUT in outputs:
            out[SHAP_OUTPUT] = self.model.forest.contributions(x)
        if self.max_batch_size <= 0:
            out = {k: v.reshape(-1) if v.shape[0] == 1 else v for k, v in out.items()}
        return out
