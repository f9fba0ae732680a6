"""The onnxruntime backend: Triton's ``onnxruntime_onnx`` platform on ORT's python API.

One ``InferenceSession`` per model instance (or per instance group with the
``share_session_between_instances`` parameter), built from the model
configuration the way Triton's onnxruntime backend reads it:

``parameters``
    ``intra_op_thread_count`` / ``inter_op_thread_count`` (0 or absent: ORT
    picks, i.e. one intra-op thread per physical core for each session, as in
    Triton; set them when a model runs several instances), ``execution_mode``
    (0 sequential, 1 parallel; anything else is an error),
    ``enable_mem_arena`` / ``enable_mem_pattern`` (booleans),
    ``memory.enable_memory_arena_shrinkage`` (a run option, e.g. "cpu:0"),
    ``session.use_device_allocator_for_initializers`` (a session config entry),
    ``share_session_between_instances`` (boolean).
``optimization { graph { level } }``
    Triton's numbering: -1 basic, 1 extended, 2 everything disabled, anything
    else (0, absent) all optimizations.
``optimization { execution_accelerators }``
    CPU ``openvino`` uses ORT's OpenVINO execution provider when the installed
    onnxruntime has it and is ignored with a warning otherwise; other CPU
    accelerator names are refused, as in Triton. GPU accelerators only apply
    to GPU instances.
``model_operations { op_library_filename }``
    custom-op libraries registered on every session.
``--backend-config=onnxruntime,...``
    ``default-max-batch-size`` (auto-complete, default 4) and
    ``enable-global-threadpool`` with ``intra_op_thread_count`` /
    ``inter_op_thread_count`` (one process-wide ORT thread pool).

``execute`` concatenates the requests of a batch along dim 0, runs the session
once (ORT releases the GIL) and splits the outputs back per request. BYTES
travel as UTF-8 text: the python API of onnxruntime only carries ``str``
elements, so a BYTES element that is not valid UTF-8 is refused with
INVALID_ARG. BF16 tensors (which Triton's onnxruntime backend refuses) are
supported through ``OrtValue`` as long as the model has no string inputs.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import re
import threading
import time
from typing import Any

import numpy as np
import onnxruntime as ort

from naiad.backends.base import (
    Backend,
    BackendInstance,
    BackendModel,
    InstanceSpec,
    ModelLoadContext,
)
from naiad.backends.batch_io import BatchIO
from naiad.backends.framework import (
    OutputPlan,
    batch_groups,
    check_batch_rows,
    check_scalar,
    complete_entries,
    complete_max_batch_size,
    fill_dims,
    io_incomplete,
    select_outputs,
    wanted_outputs,
)
from naiad.backends.framework import compare_dims as _compare_dims
from naiad.backends.framework import dims_str as _dims_str
from naiad.backends.framework import param as _param
from naiad.backends.framework import parse_bool as _parse_bool
from naiad.backends.framework import parse_int as _parse_int
from naiad.core import datatypes
from naiad.core import types as core
from naiad.core.errors import (
    ErrorKind,
    Internal,
    InvalidArgument,
    NaiadError,
    Unavailable,
    Unsupported,
)
from naiad.core.files import folder_bytes
from naiad.protocol import model_config_pb2 as mc

log = logging.getLogger("naiad.backends.onnxruntime")

DEFAULT_MODEL_FILENAME = "model.onnx"

# ORT's python type strings -> config data types (BF16: naiad's extension)
_ORT_TO_CONFIG: dict[str, str] = {
    "tensor(bool)": "TYPE_BOOL",
    "tensor(uint8)": "TYPE_UINT8",
    "tensor(uint16)": "TYPE_UINT16",
    "tensor(uint32)": "TYPE_UINT32",
    "tensor(uint64)": "TYPE_UINT64",
    "tensor(int8)": "TYPE_INT8",
    "tensor(int16)": "TYPE_INT16",
    "tensor(int32)": "TYPE_INT32",
    "tensor(int64)": "TYPE_INT64",
    "tensor(float16)": "TYPE_FP16",
    "tensor(float)": "TYPE_FP32",
    "tensor(double)": "TYPE_FP64",
    "tensor(string)": "TYPE_STRING",
    "tensor(bfloat16)": "TYPE_BF16",
}
_STRING = "tensor(string)"
_BF16 = "tensor(bfloat16)"
_ONNX_BFLOAT16 = 16  # onnx.TensorProto.BFLOAT16
_BF16_SUPPORTED = hasattr(ort.OrtValue, "ortvalue_from_numpy_with_onnx_type")

# Triton's optimization.graph.level -> ORT level; anything else: ORT_ENABLE_ALL
_GRAPH_LEVELS = {
    -1: ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    1: ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    2: ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}

_ORT_ERROR = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*(\d+)\s*:\s*[A-Z_]+\s*:\s*(.*)$", re.S)


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _ort_exception_types() -> tuple[type, type]:
    try:
        from onnxruntime.capi import onnxruntime_pybind11_state as state

        return state.InvalidArgument, state.Fail
    except Exception:  # pragma: no cover - very old/odd builds
        return RuntimeError, RuntimeError


_ORT_INVALID_ARG, _ORT_FAIL = _ort_exception_types()


def ort_error_text(exc: BaseException) -> str:
    """ORT's message, reworded the way Triton reports it ("onnx runtime error N: ...")."""
    text = str(exc).strip()
    m = _ORT_ERROR.match(text)
    if m:
        return f"onnx runtime error {m.group(1)}: {m.group(2).strip()}"
    return text or type(exc).__name__


def _ort_error(exc: BaseException, prefix: str = "") -> NaiadError:
    kind = ErrorKind.INVALID_ARG if isinstance(exc, _ORT_INVALID_ARG) else ErrorKind.INTERNAL
    return NaiadError(prefix + ort_error_text(exc), kind)


def register_custom_ops(options: Any, config: mc.ModelConfig, action: str) -> None:
    """Register the config's ``model_operations`` libraries with session options."""
    for lib in config.model_operations.op_library_filename:
        try:
            options.register_custom_ops_library(lib)
        except Exception as exc:
            raise InvalidArgument(
                f"unable to {action} model '{config.name}': failed to register custom "
                f"operations library '{lib}': {ort_error_text(exc)}") from None


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    """An ONNX graph input or output as ORT reports it."""

    name: str
    ort_type: str  # "tensor(float)", "seq(tensor(float))", ...
    dims: tuple[int, ...]  # -1 for dynamic (symbolic or unknown) dimensions

    @property
    def config_type(self) -> str:
        """'TYPE_FP32'..., or 'TYPE_INVALID' for what Triton's config cannot express."""
        return _ORT_TO_CONFIG.get(self.ort_type, "TYPE_INVALID")

    @property
    def is_tensor(self) -> bool:
        return self.ort_type.startswith("tensor(")


def _infos(args) -> dict[str, TensorInfo]:
    out: dict[str, TensorInfo] = {}
    for a in args:
        shape = a.shape if isinstance(a.shape, (list, tuple)) else []
        dims = tuple(int(d) if isinstance(d, int) and d >= 0 else -1 for d in shape)
        out[a.name] = TensorInfo(a.name, a.type, dims)
    return out


@dataclasses.dataclass
class SessionIO:
    inputs: dict[str, TensorInfo]
    outputs: dict[str, TensorInfo]
    # initializers a request may override (config inputs marked optional)
    overridable: dict[str, TensorInfo]

    @classmethod
    def of(cls, session: ort.InferenceSession) -> "SessionIO":
        try:
            overridable = _infos(session.get_overridable_initializers())
        except Exception:  # pragma: no cover - API missing in some builds
            overridable = {}
        return cls(_infos(session.get_inputs()), _infos(session.get_outputs()), overridable)


def resolve_model_path(version_dir: str, filename: str) -> str:
    """<version>/<filename>; a folder there means <version>/<filename>/model.onnx (Triton)."""
    path = os.path.join(version_dir, filename or DEFAULT_MODEL_FILENAME)
    if os.path.isdir(path):
        path = os.path.join(path, DEFAULT_MODEL_FILENAME)
    return path


# ---------------------------------------------------------------------------
# session options
# ---------------------------------------------------------------------------

_global_pool_lock = threading.Lock()
_global_pool_state: bool | None = None  # None: not tried; True: in use; False: unavailable


def _global_threadpool(backend_config: dict[str, str]) -> bool:
    """Whether sessions should use ORT's process-wide thread pool (set up on first call)."""
    global _global_pool_state
    flag = backend_config.get("enable-global-threadpool")
    if flag is None or not _parse_bool(flag, "enable-global-threadpool"):
        return False
    with _global_pool_lock:
        if _global_pool_state is None:
            intra = _parse_int(backend_config.get("intra_op_thread_count", "0"),
                               "intra_op_thread_count")
            inter = _parse_int(backend_config.get("inter_op_thread_count", "0"),
                               "inter_op_thread_count")
            try:
                ort.set_global_thread_pool_sizes(max(intra, 0), max(inter, 0))
                _global_pool_state = True
                log.info("onnxruntime: global thread pool enabled (intra_op=%d, inter_op=%d)",
                         intra, inter)
            except Exception as exc:
                _global_pool_state = False
                log.warning("onnxruntime: unable to enable the global thread pool (%s); "
                            "sessions keep their own threads", ort_error_text(exc))
        return bool(_global_pool_state)


def ort_log_severity() -> int:
    """onnxruntime's log severity for the server's --log-verbose level.

    onnxruntime writes its log to stderr in its own format: silent (fatal
    only) unless verbose logging is on; then warnings at --log-verbose=1,
    info at 2, everything at 3 and more. Its errors reach the server log
    anyway, as the exceptions naiad reports. The naiad loggers' level carries
    the verbose level (DEBUG at 1, one below DEBUG per extra level).
    """
    level = log.getEffectiveLevel()
    if level > logging.DEBUG:
        severity = 4
    else:
        severity = max(0, 2 - (logging.DEBUG - level))
    ort.set_default_logger_severity(severity)
    return severity


@dataclasses.dataclass
class SessionSettings:
    """What every session of one model is created with."""

    options: ort.SessionOptions
    run_options: ort.RunOptions
    # summary of what the config asked for, for logs and tests
    summary: dict[str, Any]
    cpu_providers: list  # provider entries placed before CPUExecutionProvider

    @classmethod
    def from_config(cls, config: mc.ModelConfig, backend_config: dict[str, str]) -> "SessionSettings":
        name = config.name
        so = ort.SessionOptions()
        summary: dict[str, Any] = {}
        so.log_severity_level = ort_log_severity()

        level = int(config.optimization.graph.level)
        so.graph_optimization_level = _GRAPH_LEVELS.get(
            level, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
        summary["graph_optimization_level"] = so.graph_optimization_level

        mode_text = _param(config, "execution_mode")
        mode = _parse_int(mode_text, "execution_mode") if mode_text is not None else 0
        if mode not in (0, 1):
            raise InvalidArgument(
                f"Invalid configuration value provided. Expected values for execution_mode "
                f"are 0 or 1 but got {mode} (model '{name}').")
        so.execution_mode = (ort.ExecutionMode.ORT_SEQUENTIAL if mode == 0
                             else ort.ExecutionMode.ORT_PARALLEL)
        summary["execution_mode"] = mode

        if _global_threadpool(backend_config):
            so.use_per_session_threads = False
            summary["global_threadpool"] = True
        else:
            for key, attr in (("intra_op_thread_count", "intra_op_num_threads"),
                              ("inter_op_thread_count", "inter_op_num_threads")):
                text = _param(config, key)
                count = _parse_int(text, key) if text is not None else 0
                if count > 0:  # 0 (and negatives, as in Triton): ORT's default
                    setattr(so, attr, count)
                summary[key] = max(count, 0)

        def config_entry(key: str, add) -> None:
            """A parameter passed through as an onnxruntime config entry."""
            value = _param(config, key)
            if value is not None:
                log.debug("model '%s': configuring '%s' to '%s'", name, key, value)
                add(key, value)
                summary[key] = value

        config_entry("session.use_device_allocator_for_initializers",
                     so.add_session_config_entry)

        for key, attr in (("enable_mem_arena", "enable_cpu_mem_arena"),
                          ("enable_mem_pattern", "enable_mem_pattern")):
            value = _param(config, key)
            if value is not None:
                flag = _parse_bool(value, key)
                setattr(so, attr, flag)
                summary[key] = flag

        run_options = ort.RunOptions()
        run_options.log_severity_level = so.log_severity_level
        config_entry("memory.enable_memory_arena_shrinkage", run_options.add_run_config_entry)

        register_custom_ops(so, config, "load")

        providers: list = []
        available = ort.get_available_providers()
        accels = config.optimization.execution_accelerators
        for acc in accels.cpu_execution_accelerator:
            if acc.name == "openvino":
                if "OpenVINOExecutionProvider" in available:
                    providers.append(("OpenVINOExecutionProvider", dict(acc.parameters)))
                    log.info("model '%s': OpenVINO execution accelerator is set on CPU", name)
                else:
                    log.warning(
                        "model '%s': the 'openvino' execution accelerator is ignored: this "
                        "onnxruntime has no OpenVINOExecutionProvider (install "
                        "onnxruntime-openvino to use it)", name)
                continue
            raise InvalidArgument(f"unknown Execution Accelerator '{acc.name}' is requested")
        summary["providers"] = [p[0] if isinstance(p, tuple) else p for p in providers]
        return cls(so, run_options, summary, providers)

    def providers_for(self, config: mc.ModelConfig, spec: InstanceSpec | None) -> list:
        providers: list = []
        if spec is not None and spec.kind == "KIND_GPU":
            available = ort.get_available_providers()
            for acc in config.optimization.execution_accelerators.gpu_execution_accelerator:
                if acc.name == "tensorrt" and "TensorrtExecutionProvider" in available:
                    providers.append(("TensorrtExecutionProvider",
                                      {"device_id": spec.device_id, **dict(acc.parameters)}))
                elif acc.name == "cuda":
                    continue  # its parameters go to the CUDA provider below
                else:
                    log.warning("model '%s': GPU execution accelerator '%s' is not available; "
                                "ignored", config.name, acc.name)
            if "CUDAExecutionProvider" in available:
                cuda_opts: dict[str, Any] = {"device_id": spec.device_id}
                for acc in config.optimization.execution_accelerators.gpu_execution_accelerator:
                    if acc.name == "cuda":
                        cuda_opts.update(dict(acc.parameters))
                providers.append(("CUDAExecutionProvider", cuda_opts))
        elif config.optimization.execution_accelerators.gpu_execution_accelerator:
            log.debug("model '%s': GPU execution accelerators do not apply to CPU instances",
                      config.name)
        providers.extend(self.cpu_providers)
        providers.append("CPUExecutionProvider")
        return providers


def create_session(path: str, options: ort.SessionOptions, providers: list,
                   model_name: str) -> ort.InferenceSession:
    if not os.path.isfile(path):
        raise Unavailable(f"unable to find '{path}' for model '{model_name}'")
    try:
        return ort.InferenceSession(path, sess_options=options, providers=providers)
    except Exception as exc:
        raise Unavailable(
            f"unable to load model '{model_name}': failed to create an onnxruntime session "
            f"for '{path}': {ort_error_text(exc)}") from None


# ---------------------------------------------------------------------------
# config checks (what Triton's onnxruntime backend checks when an instance loads)
# ---------------------------------------------------------------------------


def check_config(config: mc.ModelConfig, io: SessionIO) -> None:
    """Refuse a config that does not describe the ONNX model (names, types, shapes)."""
    name = config.name
    mbs = int(config.max_batch_size)
    for info in list(io.inputs.values()) + list(io.outputs.values()):
        if not info.is_tensor:
            raise Unsupported(
                f"unable to load model '{name}': unsupported ONNX type '{info.ort_type}' for "
                f"I/O '{info.name}', expected a tensor")

    allowed_inputs = {**io.inputs, **io.overridable}
    for cin in config.input:
        cfg_type = mc.DataType.Name(cin.data_type)
        info = allowed_inputs.get(cin.name)
        if info is None:
            raise InvalidArgument(
                f"unable to load model '{name}': unexpected inference input '{cin.name}', "
                f"allowed inputs are: {', '.join(sorted(allowed_inputs))}")
        if cin.optional and mbs != 0:
            raise InvalidArgument(
                f"unable to load model '{name}', optional input '{cin.name}' is not supported "
                f"for models that support batching")
        if cfg_type != info.config_type:
            raise InvalidArgument(
                f"unable to load model '{name}', configuration expects datatype {cfg_type} for "
                f"input '{cin.name}', model provides {info.config_type} ({info.ort_type})")
        dims = tuple(cin.reshape.shape) if cin.HasField("reshape") else tuple(cin.dims)
        if cin.allow_ragged_batch:
            if info.dims != (-1,):
                raise InvalidArgument(
                    f"unable to load model '{name}', configuration expects model provides "
                    f"input with shape [-1] for ragged input '{cin.name}', model provides "
                    f"{_dims_str(info.dims)}")
        elif info.dims:
            _compare_dims(name, cin.name, info.dims, dims, mbs, exact=False)
        else:
            check_scalar(name, cin.name, dims)

    expected = sum(1 for cin in config.input if not cin.optional)
    expected += len(config.batch_input)
    if config.HasField("sequence_batching"):
        expected += len(config.sequence_batching.control_input)
        expected += len(config.sequence_batching.state)
    if len(io.inputs) != expected:
        raise InvalidArgument(
            f"unable to load model '{name}', configuration expects {expected} inputs, model "
            f"provides {len(io.inputs)} (model inputs: {', '.join(io.inputs)})")

    batch_outputs = {t for bo in config.batch_output for t in bo.target_name}
    for cout in config.output:
        cfg_type = mc.DataType.Name(cout.data_type)
        info = io.outputs.get(cout.name)
        if info is None:
            raise InvalidArgument(
                f"unable to load model '{name}': unexpected inference output '{cout.name}', "
                f"allowed outputs are: {', '.join(sorted(io.outputs))}")
        if cfg_type != info.config_type:
            raise InvalidArgument(
                f"unable to load model '{name}', configuration expects datatype {cfg_type} for "
                f"output '{cout.name}', model provides {info.config_type} ({info.ort_type})")
        if cout.name in batch_outputs:
            continue
        dims = tuple(cout.reshape.shape) if cout.HasField("reshape") else tuple(cout.dims)
        if info.dims:
            _compare_dims(name, cout.name, info.dims, dims, mbs, exact=True)
        else:
            check_scalar(name, cout.name, dims)

    if not _BF16_SUPPORTED:
        for info in list(io.inputs.values()) + list(io.outputs.values()):
            if info.ort_type == _BF16:
                raise Unsupported(
                    f"unable to load model '{name}': BF16 tensor '{info.name}' needs "
                    f"onnxruntime >= 1.17 (OrtValue.ortvalue_from_numpy_with_onnx_type)")
    has_string_input = any(i.ort_type == _STRING for i in io.inputs.values())
    bf16_outputs = [o.name for o in config.output if io.outputs[o.name].ort_type == _BF16]
    if has_string_input and bf16_outputs:
        raise Unsupported(
            f"unable to load model '{name}': BF16 output '{bf16_outputs[0]}' together with "
            f"string inputs is not supported by onnxruntime's python API")


# ---------------------------------------------------------------------------
# auto-complete
# ---------------------------------------------------------------------------


def _fill_dims(io, info: TensorInfo, mbs: int) -> None:
    fill_dims(io, info.dims, mbs)


def _fill_io(io, info: TensorInfo, mbs: int) -> None:
    io.name = info.name
    io.data_type = mc.DataType.Value(info.config_type)
    _fill_dims(io, info, mbs)


def auto_complete(config: mc.ModelConfig, io: SessionIO, backend_config: dict[str, str]) -> None:
    """Triton's onnxruntime auto-complete, on an already-read ``SessionIO``."""
    name = config.name or "<unnamed>"
    has_inputs = len(config.input) + len(config.batch_input) > 0
    has_outputs = len(config.output) > 0
    for info in list(io.inputs.values()) + list(io.outputs.values()):
        if not info.is_tensor:
            raise Unsupported(
                f"unable to auto-complete model '{name}': unsupported ONNX type "
                f"'{info.ort_type}' for I/O '{info.name}', expected a tensor")
    if not (has_inputs and has_outputs):
        _auto_complete_max_batch(config, io, backend_config)
        mbs = int(config.max_batch_size)
        for key, listed, infos in (("input", has_inputs, io.inputs),
                                   ("output", has_outputs, io.outputs)):
            if listed:
                continue
            field = getattr(config, key)
            for info in infos.values():
                if info.config_type == "TYPE_INVALID":
                    raise Unsupported(
                        f"unable to auto-complete model '{name}': {key} '{info.name}' has "
                        f"type {info.ort_type}, which a model configuration cannot express")
                _fill_io(field.add(), info, mbs)
    # naiad's extension: complete entries the config lists without data_type/dims
    complete_entries(config, {**io.inputs, **io.overridable}, io.outputs)


def _auto_complete_max_batch(config: mc.ModelConfig, io: SessionIO,
                             backend_config: dict[str, str]) -> None:
    shapes = [i.dims for i in list(io.inputs.values()) + list(io.outputs.values())]
    complete_max_batch_size(config, shapes, backend_config)


# ---------------------------------------------------------------------------
# tensors in and out
# ---------------------------------------------------------------------------


def _strings_to_ort(name: str, arr: np.ndarray) -> np.ndarray:
    """An object array of bytes -> an object array of str (what ORT's python API takes)."""
    flat = arr.reshape(-1)
    out = np.empty(flat.shape[0], dtype=np.object_)
    for i, v in enumerate(flat):
        if isinstance(v, str):
            out[i] = v
            continue
        if not isinstance(v, (bytes, bytearray, memoryview)):
            raise InvalidArgument(
                f"input '{name}': element {i} is {type(v).__name__}, expected bytes")
        try:
            out[i] = bytes(v).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidArgument(
                f"input '{name}': element {i} is not valid UTF-8; onnxruntime string tensors "
                f"carry UTF-8 text") from None
    return out.reshape(arr.shape)


def _strings_from_ort(arr: np.ndarray) -> np.ndarray:
    flat = arr.reshape(-1)
    out = np.empty(flat.shape[0], dtype=np.object_)
    for i, v in enumerate(flat):
        out[i] = v.encode("utf-8") if isinstance(v, str) else bytes(v)
    return out.reshape(arr.shape)


def _ortvalue_numpy(value, ort_type: str) -> np.ndarray:
    if ort_type != _BF16:
        return value.numpy()
    shape = tuple(value.shape())
    nbytes = int(np.prod(shape, dtype=np.int64)) * 2
    raw = ctypes.string_at(value.data_ptr(), nbytes) if nbytes else b""
    return np.frombuffer(raw, dtype=np.uint16).reshape(shape).copy()


# ---------------------------------------------------------------------------
# the backend
# ---------------------------------------------------------------------------


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    default_model_filename = DEFAULT_MODEL_FILENAME
    platforms = ("onnxruntime_onnx",)

    def auto_complete_config(self, config: mc.ModelConfig, model_dir: str,
                             version_dir: str | None, backend_config: dict[str, str]) -> None:
        has_inputs = len(config.input) + len(config.batch_input) > 0
        has_outputs = len(config.output) > 0
        incomplete = any(io_incomplete(i) for i in list(config.input) + list(config.output))
        if has_inputs and has_outputs and not incomplete:
            log.info("skipping model configuration auto-complete for '%s': inputs and outputs "
                     "already specified", config.name)
            return
        if version_dir is None:
            return  # nothing to read; the repository reports the missing version
        path = resolve_model_path(version_dir, config.default_model_filename)
        options = ort.SessionOptions()
        options.log_severity_level = ort_log_severity()
        # only the signature is read: skip the optimizers, keep custom ops
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.intra_op_num_threads = 1
        register_custom_ops(options, config, "auto-complete")
        session = create_session(path, options, ["CPUExecutionProvider"], config.name)
        try:
            auto_complete(config, SessionIO.of(session), backend_config)
        finally:
            del session

    def load(self, ctx: ModelLoadContext) -> "OnnxRuntimeModel":
        return OnnxRuntimeModel(ctx)


class OnnxRuntimeModel(BackendModel):
    """One version of an ONNX model: shared settings, one session per instance."""

    def __init__(self, ctx: ModelLoadContext):
        self.ctx = ctx
        config = ctx.config
        self.name = ctx.name
        self.config = config
        self.path = resolve_model_path(ctx.version_dir, config.default_model_filename)
        if not os.path.isfile(self.path):
            raise Unavailable(f"unable to find '{self.path}' for model '{ctx.name}'")
        self.settings = SessionSettings.from_config(config, ctx.backend_config)
        self.max_batch_size = int(config.max_batch_size)
        share = _param(config, "share_session_between_instances")
        self.share_session = bool(share is not None
                                  and _parse_bool(share, "share_session_between_instances"))
        self._shared: dict[int, tuple[ort.InferenceSession, SessionIO]] = {}
        self._lock = threading.Lock()
        # the outputs it produces, their wire types, the implicit-state outputs
        self.plan = OutputPlan(config)
        self.output_types = self.plan.types
        self.output_dims = self.plan.dims
        self.all_outputs = self.plan.all_outputs
        self.state_outputs = self.plan.state_outputs
        # ragged inputs, batch_input and batch_output (naiad.backends.batch_io)
        batch_io = BatchIO(config)
        self.batch_io: BatchIO | None = batch_io if batch_io.active else None
        self.model = None
        self.sessions = 0

    def memory_bytes(self) -> int:
        """The weights every session holds (the ONNX file and its external data, copied
        or mapped; onnxruntime's API reports no sizes itself), per session."""
        return folder_bytes(os.path.dirname(self.path)) * self.sessions

    def _new_session(self, spec: InstanceSpec | None) -> tuple[ort.InferenceSession, SessionIO]:
        providers = self.settings.providers_for(self.config, spec)
        session = create_session(self.path, self.settings.options, providers, self.name)
        self.sessions += 1
        io = SessionIO.of(session)
        check_config(self.config, io)
        return session, io

    def create_instance(self, spec: InstanceSpec) -> "OnnxRuntimeInstance":
        if self.share_session:
            with self._lock:
                entry = self._shared.get(spec.group_index)
                if entry is None:
                    entry = self._new_session(spec)
                    self._shared[spec.group_index] = entry
                    log.info("created session for instance '%s'", spec.name)
                else:
                    log.info("reusing session for instance '%s'", spec.name)
        else:
            entry = self._new_session(spec)
        return OnnxRuntimeInstance(self, spec, entry[0], entry[1])

    def finalize(self) -> None:
        self._shared.clear()


class OnnxRuntimeInstance(BackendInstance):
    def __init__(self, model: OnnxRuntimeModel, spec: InstanceSpec,
                 session: ort.InferenceSession, io: SessionIO):
        self.model = model
        self.spec = spec
        self.name = spec.name
        self.session: ort.InferenceSession | None = session
        self.io = io
        self.session_options = model.settings.options
        self.run_options = model.settings.run_options
        self._inputs = {**io.inputs, **io.overridable}
        self._bf16_inputs = {n for n, i in self._inputs.items() if i.ort_type == _BF16}
        self._bf16_outputs = {n for n, i in io.outputs.items() if i.ort_type == _BF16}

    # -- execution -----------------------------------------------------------------

    def execute(self, requests: list[core.InferenceRequest]) -> list[core.InferenceResponse]:
        if self.session is None:
            raise Internal(f"model instance '{self.name}' has been finalized")
        responses: list[core.InferenceResponse | None] = [None] * len(requests)
        for group in self._groups(requests):
            batch = [requests[i] for i in group]
            try:
                results = self._run(batch)
            except NaiadError as exc:
                for i in group:
                    responses[i] = core.InferenceResponse(error=exc)
                continue
            for i, outputs in zip(group, results):
                responses[i] = core.InferenceResponse(outputs=outputs)
        return responses  # type: ignore[return-value]

    def _groups(self, requests: list[core.InferenceRequest]) -> list[list[int]]:
        """Indices of the requests that can run as one batch (same inputs beyond dim 0)."""
        ragged = self.model.batch_io.ragged if self.model.batch_io is not None else ()
        return batch_groups(requests, self.model.max_batch_size, ragged)

    def _wanted_outputs(self, requests: list[core.InferenceRequest]) -> list[str]:
        return wanted_outputs(requests, self.model.plan)

    def _feed(self, requests: list[core.InferenceRequest]) -> dict[str, Any]:
        batched = self.model.max_batch_size > 0
        batch_io = self.model.batch_io
        first = requests[0]
        feed: dict[str, Any] = {}
        for name in first.inputs:
            info = self._inputs.get(name)
            if info is None:
                continue  # not a model input (checked at load; nothing to feed)
            if batch_io is not None and name in batch_io.ragged:
                arr = batch_io.concat_ragged(requests, name)
            elif len(requests) == 1:
                arr = first.inputs[name].data
            else:
                arr = np.concatenate([r.inputs[name].data for r in requests], axis=0)
            if info.ort_type == _STRING:
                arr = _strings_to_ort(name, arr)
            elif not info.dims and not batched and arr.shape == (1,):
                arr = arr.reshape(())  # a scalar the config describes as dims [1]
            if name in self._bf16_inputs:
                arr = ort.OrtValue.ortvalue_from_numpy_with_onnx_type(
                    np.ascontiguousarray(arr, dtype=np.uint16), _ONNX_BFLOAT16)
            feed[name] = arr
        if batch_io is not None:
            for name, arr in batch_io.batch_input_arrays(requests).items():
                if name in self._inputs:
                    feed[name] = arr
        return feed

    def _run(self, requests: list[core.InferenceRequest]) -> list[list[core.Tensor]]:
        model = self.model
        session = self.session
        feed = self._feed(requests)
        names = self._wanted_outputs(requests)
        use_ortvalues = any(n in self._bf16_outputs for n in names)
        if use_ortvalues:
            feed = {k: v if isinstance(v, ort.OrtValue) else
                    ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(v))
                    for k, v in feed.items()}
        start = time.monotonic_ns()
        for r in requests:
            r.compute_input_end_ns = start
        try:
            if use_ortvalues:
                values = session.run_with_ort_values(names, feed, self.run_options)
                arrays = [_ortvalue_numpy(v, self.io.outputs[n].ort_type)
                          for n, v in zip(names, values)]
            else:
                arrays = session.run(names, feed, self.run_options)
        except NaiadError:
            raise
        except Exception as exc:
            log.debug("model instance '%s': onnxruntime run failed: %s", self.name, exc)
            raise _ort_error(exc) from None
        end = time.monotonic_ns()
        for r in requests:
            r.compute_output_start_ns = end

        outputs: dict[str, tuple[str, np.ndarray]] = {}
        for name, arr in zip(names, arrays):
            info = self.io.outputs[name]
            if info.ort_type == _STRING:
                arr = _strings_from_ort(arr)
            if arr.ndim == 0 and model.max_batch_size <= 0:
                dims = model.output_dims.get(name) or (1,)
                arr = arr.reshape(dims)
            wire = model.output_types.get(name) or datatypes.config_to_wire(info.config_type)
            outputs[name] = (wire, arr)

        scattered = None
        if model.batch_io is not None and model.batch_io.scatter:
            # batch outputs go back in the shape of each request's source input
            scattered = {}
            for name in list(outputs):
                if name in model.batch_io.scatter:
                    wire, arr = outputs.pop(name)
                    try:
                        pieces = model.batch_io.scatter_output(name, arr, requests)
                    except NaiadError as exc:
                        raise Internal(exc.message) from None
                    scattered[name] = (wire, pieces)
        if len(requests) == 1 and not scattered:
            return [self._select(requests[0], outputs, None)]
        check_batch_rows(model.name, requests, outputs)
        results = []
        offset = 0
        for i, r in enumerate(requests):
            n = r.batch_size
            selected = self._select(r, outputs, (offset, offset + n))
            if scattered:
                wanted = r.requested_outputs
                for name, (wire, pieces) in scattered.items():
                    if not wanted or name in wanted:
                        selected.append(core.Tensor(name, wire, pieces[i]))
            results.append(selected)
            offset += n
        return results

    def _select(self, request: core.InferenceRequest, outputs: dict[str, tuple[str, np.ndarray]],
                span: tuple[int, int] | None) -> list[core.Tensor]:
        return select_outputs(request, outputs, span, self.model.plan)

    def finalize(self) -> None:
        self.session = None
