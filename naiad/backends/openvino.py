"""The openvino backend: Triton's ``openvino`` backend on OpenVINO's python API
(``pip install 'naiad[openvino]'``).

The version folder holds ``model.xml`` + ``model.bin`` (OpenVINO IR), or any file
OpenVINO reads named by ``default_model_filename`` (``model.onnx``,
``model.pdmodel``, a ``model.saved_model`` folder). The model is read and
compiled once per model version; every instance gets its own infer requests on
that compiled model, so the streams OpenVINO creates are shared by all of them.

Parameters, as Triton's backend reads them:

``PERFORMANCE_HINT``
    ``LATENCY``, ``THROUGHPUT`` or ``CUMULATIVE_THROUGHPUT``.
``NUM_STREAMS``
    a number, ``AUTO`` or ``NUMA``. With more than one stream an instance
    splits a batch of several requests into up to that many parts and runs
    them at once, each on its own infer request.
``INFERENCE_NUM_THREADS`` / ``COMPILATION_NUM_THREADS``
    thread limits (non-negative numbers).
``HINT_BF16``
    ``YES``: bfloat16 inference precision where the CPU has it.
``CPU_EXTENSION_PATH``
    a library of custom layers, added to the OpenVINO core before reading.
``TARGET_DEVICE``
    ``CPU`` (default), or another device OpenVINO knows.
``RESHAPE_IO_LAYERS``
    ``YES``: inputs are reshaped to the configured dims (``-1`` dynamic, and a
    dynamic batch dimension first when ``max_batch_size`` > 0).
``SKIP_OV_DYNAMIC_BATCHSIZE``
    ``YES``: the batch dimension is not made dynamic; the model is reshaped
    to ``max_batch_size`` and a request must carry that many rows unless
    ``ENABLE_BATCH_PADDING`` is ``YES`` (smaller batches are padded with
    zeros and the padding is dropped from the outputs).

Without ``SKIP_OV_DYNAMIC_BATCHSIZE``, a model that batches
(``max_batch_size`` > 0) gets a dynamic first dimension on every input.
Tensor types: BOOL, UINT8/16/32/64, INT8/16/32/64, FP16, FP32, FP64.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import queue
import threading
from xml.etree import ElementTree

import numpy as np
import openvino as ov

from naiad.backends.base import Backend, BackendModel, InstanceSpec, ModelLoadContext
from naiad.backends.framework import (
    BatchingInstance,
    OutputPlan,
    TensorSpec,
    batch_groups,
    compare_dims,
    complete_io,
    config_dims,
    io_incomplete,
    mc,
    param,
    parse_bool,
    parse_int,
)
from naiad.core import types as core
from naiad.core.errors import Internal, InvalidArgument, NaiadError, Unavailable

log = logging.getLogger("naiad.backends.openvino")

DEFAULT_MODEL_FILENAME = "model.xml"

_OV_TO_CONFIG = {
    "boolean": "TYPE_BOOL", "u8": "TYPE_UINT8", "u16": "TYPE_UINT16", "u32": "TYPE_UINT32",
    "u64": "TYPE_UINT64", "i8": "TYPE_INT8", "i16": "TYPE_INT16", "i32": "TYPE_INT32",
    "i64": "TYPE_INT64", "f16": "TYPE_FP16", "f32": "TYPE_FP32", "f64": "TYPE_FP64",
}
_HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")

_core_lock = threading.Lock()
_core: ov.Core | None = None
_extensions: set[str] = set()


def _get_core(extension: str | None = None) -> ov.Core:
    global _core
    with _core_lock:
        if _core is None:
            _core = ov.Core()
        if extension and extension not in _extensions:
            _core.add_extension(extension)
            _extensions.add(extension)
        return _core


def _yes(config: mc.ModelConfig, key: str) -> bool:
    value = param(config, key)
    return bool(value) and parse_bool(value, key, yes_no=True)


def _port_name(port) -> str:
    try:
        return port.get_any_name()
    except RuntimeError:
        return ""


def _spec(port) -> TensorSpec:
    shape = port.get_partial_shape()
    dims = tuple(-1 if d.is_dynamic else d.get_length() for d in shape) if \
        shape.rank.is_static else (-1,)
    type_name = port.get_element_type().get_type_name()
    return TensorSpec(_port_name(port), _OV_TO_CONFIG.get(type_name, "TYPE_INVALID"), dims)


def resolve_model_path(version_dir: str, filename: str) -> str:
    return os.path.join(version_dir, filename or DEFAULT_MODEL_FILENAME)


def model_files(path: str) -> list[str]:
    """The files reading ``path`` needs: an IR's ``.xml`` and, when it has weights, its ``.bin``.

    OpenVINO reads the weights of ``model.xml`` from ``model.bin`` beside it; an IR
    without constants reads without one.
    """
    if not path.endswith(".xml") or not os.path.isfile(path):
        return [path]
    weights = os.path.splitext(path)[0] + ".bin"
    try:
        for _, elem in ElementTree.iterparse(path):
            if elem.tag == "layer" and elem.get("type") == "Const":
                data = elem.find("data")
                if data is not None and data.get("size", "0") not in ("", "0"):
                    return [path, weights]
            if elem.tag == "layer":
                elem.clear()
    except (ElementTree.ParseError, OSError):
        return [path, weights]  # OpenVINO says what is wrong with it
    return [path]


def _read(model: str, path: str, extension: str | None) -> ov.Model:
    for needed in model_files(path):
        if not os.path.exists(needed):
            raise Unavailable(f"unable to find '{needed}' for model '{model}'")
    try:
        return _get_core(extension).read_model(path)
    except Exception as exc:
        # OpenVINO's text starts with where it was thrown; the reason is its last line
        lines = [line for line in str(exc).splitlines() if line.strip()]
        raise Unavailable(f"unable to load model '{model}': OpenVINO failed to read '{path}': "
                          f"{lines[-1].strip() if lines else repr(exc)}") from None


class OpenVINOBackend(Backend):
    name = "openvino"
    default_model_filename = DEFAULT_MODEL_FILENAME
    platforms = ("openvino",)

    def auto_complete_config(self, config: mc.ModelConfig, model_dir: str,
                             version_dir: str | None, backend_config: dict[str, str]) -> None:
        """Inputs, outputs (names, types, dims) and max_batch_size from the model itself."""
        has_all = (len(config.input) > 0 and len(config.output) > 0 and not any(
            io_incomplete(i) for i in list(config.input) + list(config.output)))
        if has_all or version_dir is None:
            return
        path = resolve_model_path(version_dir, config.default_model_filename)
        model = _read(config.name, path, param(config, "CPU_EXTENSION_PATH") or None)
        ins = [_spec(p) for p in model.inputs]
        outs = [_spec(p) for p in model.outputs]
        complete_io(config, ins, outs, backend_config, what="OpenVINO model")

    def model_files(self, config: mc.ModelConfig, version_dir: str) -> list[str]:
        return model_files(resolve_model_path(version_dir, config.default_model_filename))

    def load(self, ctx: ModelLoadContext) -> "OpenVINOModel":
        return OpenVINOModel(ctx)


class OpenVINOModel(BackendModel):
    def __init__(self, ctx: ModelLoadContext):
        config = ctx.config
        self.name = ctx.name
        self.config = config
        self.max_batch_size = int(config.max_batch_size)
        self.plan = OutputPlan(config)
        self.device = param(config, "TARGET_DEVICE") or "CPU"
        self.static_batch = self.max_batch_size > 0 and _yes(config, "SKIP_OV_DYNAMIC_BATCHSIZE")
        self.pad = _yes(config, "ENABLE_BATCH_PADDING")
        properties = self._properties()
        path = resolve_model_path(ctx.version_dir, config.default_model_filename)
        model = _read(self.name, path, param(config, "CPU_EXTENSION_PATH") or None)
        self._reshape(model)
        self._check(model)
        # the weights OpenVINO says the model holds (its constants); its CPU plugin
        # reports no memory use itself
        self.weights = sum(op.get_byte_size() for op in model.get_ops()
                           if op.get_type_name() == "Constant")
        try:
            self.compiled = _get_core().compile_model(model, self.device, properties)
        except Exception as exc:
            raise Unavailable(f"unable to load model '{self.name}': OpenVINO failed to compile "
                              f"it for {self.device}: {exc}") from None
        self.port_names = {_port_name(p): p for p in self.compiled.outputs}
        for p in self.compiled.outputs:
            for n in p.get_names():
                self.port_names.setdefault(n, p)
        try:
            self.requests_per_instance = max(
                1, int(self.compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
        except Exception:  # noqa: BLE001 - a device without the property
            self.requests_per_instance = 1
        log.info("model '%s': compiled for %s (%s); %d infer request(s) per instance",
                 self.name, self.device, properties, self.requests_per_instance)

    def _properties(self) -> dict[str, str]:
        config = self.config
        props: dict[str, str] = {}
        hint = param(config, "PERFORMANCE_HINT")
        if hint:
            if hint.upper() not in _HINTS:
                raise InvalidArgument(
                    f"unable to load model '{self.name}': PERFORMANCE_HINT must be one of "
                    f"{', '.join(_HINTS)}, got '{hint}'")
            props["PERFORMANCE_HINT"] = hint.upper()
        streams = param(config, "NUM_STREAMS")
        if streams:
            if streams.upper() in ("AUTO", "NUMA"):
                props["NUM_STREAMS"] = streams.upper()
            else:
                props["NUM_STREAMS"] = str(parse_int(streams, "NUM_STREAMS"))
        for key in ("INFERENCE_NUM_THREADS", "COMPILATION_NUM_THREADS"):
            value = param(config, key)
            if value:
                count = parse_int(value, key)
                if count < 0:
                    raise InvalidArgument(f"unable to load model '{self.name}': {key} must be "
                                          f"a non-negative number, got {count}")
                props[key] = str(count)
        if _yes(config, "HINT_BF16"):
            props["INFERENCE_PRECISION_HINT"] = "bf16"
        return props

    def _reshape(self, model: ov.Model) -> None:
        mbs = self.max_batch_size
        shapes: dict[str, ov.PartialShape] = {}
        if _yes(self.config, "RESHAPE_IO_LAYERS"):
            for cin in self.config.input:
                dims = list(config_dims(cin))
                if mbs > 0:
                    dims = [mbs if self.static_batch else -1] + dims
                shapes[cin.name] = ov.PartialShape(dims)
        elif mbs > 0:
            for port in model.inputs:
                shape = port.get_partial_shape()
                if shape.rank.is_dynamic or len(shape) == 0:
                    continue
                dims = [(-1 if d.is_dynamic else d.get_length()) for d in shape]
                dims[0] = mbs if self.static_batch else -1
                shapes[_port_name(port)] = ov.PartialShape(dims)
        if shapes:
            try:
                model.reshape(shapes)
            except Exception as exc:
                raise Unavailable(
                    f"unable to load model '{self.name}': OpenVINO cannot reshape its inputs to "
                    f"{ {k: str(v) for k, v in shapes.items()} }: {exc}") from None

    def _check(self, model: ov.Model) -> None:
        """Refuse a config that does not describe the model (names, types, shapes)."""
        name = self.name
        mbs = self.max_batch_size
        ins: dict[str, TensorSpec] = {}
        outs: dict[str, TensorSpec] = {}
        for ports, specs in ((model.inputs, ins), (model.outputs, outs)):
            for p in ports:
                spec = _spec(p)
                for n in set(p.get_names()) | {spec.name}:
                    specs[n] = TensorSpec(n, spec.config_type, spec.dims)
        expected = len(self.config.input) + len(self.config.sequence_batching.state) + \
            len(self.config.sequence_batching.control_input)
        if expected != len(model.inputs):
            raise InvalidArgument(
                f"unable to load model '{name}', configuration expects {expected} inputs, "
                f"model provides {len(model.inputs)}")
        for kind, entries, specs in (("input", self.config.input, ins),
                                     ("output", self.config.output, outs)):
            for entry in entries:
                spec = specs.get(entry.name)
                if spec is None:
                    raise InvalidArgument(
                        f"unable to load model '{name}': unexpected inference {kind} "
                        f"'{entry.name}', allowed {kind}s are: {', '.join(sorted(specs))}")
                cfg_type = mc.DataType.Name(entry.data_type)
                if cfg_type != spec.config_type:
                    raise InvalidArgument(
                        f"unable to load model '{name}', configuration expects datatype "
                        f"{cfg_type} for {kind} '{entry.name}', model provides "
                        f"{spec.config_type}")
                model_dims = spec.dims
                if self.static_batch and model_dims:
                    model_dims = (-1,) + tuple(model_dims[1:])
                compare_dims(name, entry.name, model_dims, config_dims(entry), mbs, exact=False)

    def create_instance(self, spec: InstanceSpec) -> "OpenVINOInstance":
        return OpenVINOInstance(self, spec)

    def memory_bytes(self) -> int:
        """The model's constants (compiled once per version, shared by its instances)."""
        return self.weights

    def finalize(self) -> None:
        self.compiled = None


class OpenVINOInstance(BatchingInstance):
    def __init__(self, model: OpenVINOModel, spec: InstanceSpec):
        self.model = model
        self.spec = spec
        self.name = spec.name
        self.model_name = model.name
        self.max_batch_size = model.max_batch_size
        self.plan = model.plan
        self.parallel = model.requests_per_instance
        self._idle: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(self.parallel):
            self._idle.put(model.compiled.create_infer_request())
        self._pool = (concurrent.futures.ThreadPoolExecutor(
            self.parallel - 1, thread_name_prefix=f"naiad-{spec.name}-ov")
            if self.parallel > 1 else None)

    def error(self, exc: BaseException) -> NaiadError:
        return Internal(f"OpenVINO inference failed: {exc}")

    def groups(self, requests: list[core.InferenceRequest]) -> list[list[int]]:
        groups = batch_groups(requests, self.max_batch_size)
        if self.parallel <= 1:
            return groups
        # several requests in a group: split it so each infer request (stream) takes a part
        out: list[list[int]] = []
        for g in groups:
            parts = min(self.parallel, len(g))
            size = -(-len(g) // parts)
            out += [g[i:i + size] for i in range(0, len(g), size)]
        return out

    def execute(self, requests: list[core.InferenceRequest]) -> list[core.InferenceResponse]:
        groups = self.groups(requests)
        if self._pool is None or len(groups) == 1:
            return self.run_groups(requests, groups)
        # run the parts at once: each on a pool thread (OpenVINO releases the GIL) and one here
        responses: list[core.InferenceResponse | None] = [None] * len(requests)

        def part(group: list[int]) -> None:
            sub = [requests[i] for i in group]
            for i, resp in zip(group, self.run_groups(sub, [list(range(len(sub)))])):
                responses[i] = resp

        futures = [self._pool.submit(part, g) for g in groups[1:]]
        part(groups[0])
        for f in futures:
            f.result()
        return responses  # type: ignore[return-value]

    def run(self, feed: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        model = self.model
        rows = None
        if model.static_batch:
            rows = next(iter(feed.values())).shape[0] if feed else 0
            mbs = model.max_batch_size
            if rows != mbs:
                if not model.pad or rows > mbs:
                    raise InvalidArgument(
                        f"inference request batch-size must be {mbs} for model "
                        f"'{model.name}' (SKIP_OV_DYNAMIC_BATCHSIZE is set; set "
                        f"ENABLE_BATCH_PADDING to YES to pad smaller batches), got {rows}")
                feed = {n: np.concatenate([a, np.zeros((mbs - rows,) + a.shape[1:], a.dtype)])
                        for n, a in feed.items()}
        feed = {n: np.ascontiguousarray(a) for n, a in feed.items()}
        request = self._idle.get()
        try:
            result = request.infer(feed)
            out = {}
            for name in outputs:
                port = model.port_names.get(name)
                if port is None:
                    raise Internal(f"model '{model.name}' has no output '{name}'")
                arr = np.array(result[port], copy=True)
                out[name] = arr[:rows] if rows is not None else arr
            return out
        except (NaiadError, RuntimeError) as exc:
            if isinstance(exc, NaiadError):
                raise
            text = str(exc)
            if "shape" in text.lower() or "dimension" in text.lower():
                raise InvalidArgument(f"OpenVINO inference failed: {text.strip()}") from None
            raise
        finally:
            self._idle.put(request)

    def finalize(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        while not self._idle.empty():
            self._idle.get()
