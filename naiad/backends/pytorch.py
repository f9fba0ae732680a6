"""The pytorch backend: Triton's ``pytorch_libtorch`` / ``torch_aoti`` platforms and the
python-based PyTorch runtime, on torch's python API (``pip install 'naiad[torch]'``).

What a version folder may hold (``default_model_filename`` overrides the name):

``model.pt`` — TorchScript (``torch.jit.save``)
    Inputs bind to ``forward()``'s arguments by Triton's rules: when every
    configured input is named like a ``forward`` argument, by name; else when
    every name is ``<name>__<index>`` (``INPUT__0``), by that index; else in
    configuration order. A ``forward`` taking one ``Dict[str, Tensor]`` gets
    the inputs under their configured names. Outputs: a tensor, a tuple/list
    of tensors, ``List[str]`` (BYTES, 1-D), or a dict; they are flattened in
    order and bound by ``<name>__<index>``, by path (``RESULT``,
    ``RESULT[0]``, ``RESULT[key]``) or in configuration order.
``model.pt2`` — a torch.export program (``torch.export.save``) or an AOTInductor
    package (``torch._inductor.aoti_compile_and_package``), told apart by the
    archive's contents. Inputs/outputs are named by ordinal (``INPUT__0``,
    ``OUTPUT__0``) or as Triton's PT2 support names them from the call
    specification: ``ARGS[0]``, ``ARGS[2][key]``, ``KWARGS[name]``;
    ``RESULT``, ``RESULT[0]``, ``RESULT[key]``. Unlike Triton 26.05 (batch 1
    only), batching works when the program was exported with a dynamic first
    dimension.
``runtime: "model.py"`` — the python-based runtime
    ``model.py`` defines a ``torch.nn.Module`` subclass (built with no
    arguments); ``model.pt`` beside it, if present, is its ``state_dict``.
    Inputs are passed to ``forward`` in configuration order; outputs (a tensor
    or a tuple/list) are taken in configuration order. Without ``model.py``,
    ``model.pt`` is loaded as TorchScript.

Parameters (``parameters { key: ... value { string_value: ... } }``):
``INFERENCE_MODE`` (default true; false runs under ``no_grad``),
``DISABLE_OPTIMIZED_EXECUTION`` (TorchScript's graph executor optimizations),
``ENABLE_JIT_EXECUTOR`` / ``ENABLE_JIT_PROFILING`` (process-wide, as in Triton),
``INTRA_OP_THREAD_COUNT`` (``torch.set_num_threads`` on the instance's thread),
``INTER_OP_THREAD_COUNT`` (process-wide; only the first value set takes effect,
as Triton documents), ``ENABLE_WEIGHT_SHARING`` (one loaded module for all
instances), ``ENABLE_CACHE_CLEANING`` and ``DISABLE_CUDNN`` (accepted; CUDA only,
so no effect here). The python runtime also reads ``NUM_THREADS`` /
``NUM_INTEROP_THREADS`` (default 1, as Triton's runtime) and
``TORCH_COMPILE_OPTIONAL_PARAMETERS`` (JSON keyword arguments of
``torch.compile``; naiad compiles only when this parameter is given, where
Triton's runtime always compiles).

Tensor types: every Triton type torch has (BOOL, UINT8/16/32/64, INT8/16/32/64,
FP16, FP32, FP64, BF16) plus BYTES as ``List[str]`` (UTF-8, one dimension).
Execution errors are INTERNAL with torch's message ("PyTorch execute failure:
..."), as in Triton.
"""

from __future__ import annotations

import contextlib
import importlib.util
import itertools
import json
import logging
import os
import re
import sys
import threading
import zipfile
from typing import Any

import numpy as np
import torch
import torch.utils._pytree as pytree

from naiad.backends.base import (
    Backend,
    BackendModel,
    InstanceSpec,
    ModelLoadContext,
)
from naiad.backends.framework import (
    BatchingInstance,
    OutputPlan,
    TensorSpec,
    compare_dims,
    complete_io,
    config_dims,
    datatypes,
    io_incomplete,
    mc,
    param,
    parse_bool,
    parse_int,
)
from naiad.core.errors import Internal, InvalidArgument, NaiadError, Unavailable

log = logging.getLogger("naiad.backends.pytorch")

DEFAULT_MODEL_FILENAME = "model.pt"
PT2_FILENAME = "model.pt2"
RUNTIME_FILENAME = "model.py"

_TORCH_TO_CONFIG: dict[torch.dtype, str] = {
    torch.bool: "TYPE_BOOL",
    torch.uint8: "TYPE_UINT8",
    torch.int8: "TYPE_INT8",
    torch.int16: "TYPE_INT16",
    torch.int32: "TYPE_INT32",
    torch.int64: "TYPE_INT64",
    torch.float16: "TYPE_FP16",
    torch.float32: "TYPE_FP32",
    torch.float64: "TYPE_FP64",
    torch.bfloat16: "TYPE_BF16",
}
for _name, _cfg in (("uint16", "TYPE_UINT16"), ("uint32", "TYPE_UINT32"),
                    ("uint64", "TYPE_UINT64")):
    if hasattr(torch, _name):
        _TORCH_TO_CONFIG[getattr(torch, _name)] = _cfg

_NAMED_INDEX = re.compile(r"^.*?__(\d+)$")

# process-wide torch settings: set once
_settings_lock = threading.Lock()
_interop_threads: int | None = None


def _flag(config: mc.ModelConfig, key: str, default: bool) -> bool:
    value = param(config, key)
    return default if value is None or value == "" else parse_bool(value, key)


def _named_index(name: str) -> int | None:
    m = _NAMED_INDEX.match(name)
    return int(m.group(1)) if m else None


def _path_name(root: str, path: tuple) -> str:
    return root + "".join(f"[{p}]" for p in path)


def _leaf_paths(obj: Any, path: tuple = ()) -> list[tuple]:
    """Paths of the leaves of a nested tuple/list/dict of leaves, in flatten order."""
    if isinstance(obj, dict):
        out = []
        for k, v in obj.items():
            out += _leaf_paths(v, path + (k,))
        return out
    if isinstance(obj, (list, tuple)) and not _is_string_list(obj):
        out = []
        for i, v in enumerate(obj):
            out += _leaf_paths(v, path + (i,))
        return out
    return [path]


def _is_string_list(obj: Any) -> bool:
    return isinstance(obj, (list, tuple)) and len(obj) > 0 and all(isinstance(x, str) for x in obj)


def _flatten_result(obj: Any) -> list[Any]:
    """Leaves of a model's result (tensors, or lists of str) in flatten order."""
    if isinstance(obj, dict):
        out = []
        for v in obj.values():
            out += _flatten_result(v)
        return out
    if isinstance(obj, (list, tuple)) and not _is_string_list(obj):
        if len(obj) == 0:
            return []
        out = []
        for v in obj:
            out += _flatten_result(v)
        return out
    return [obj]


# ---------------------------------------------------------------------------
# tensors in and out
# ---------------------------------------------------------------------------


def _to_torch(name: str, wire: str, arr: np.ndarray) -> Any:
    if wire == "BYTES":
        flat = arr.reshape(-1)
        out = []
        for i, v in enumerate(flat):
            if isinstance(v, str):
                out.append(v)
                continue
            try:
                out.append(bytes(v).decode("utf-8"))
            except (UnicodeDecodeError, TypeError):
                raise InvalidArgument(
                    f"input '{name}': element {i} is not valid UTF-8; PyTorch string inputs "
                    f"are List[str]") from None
        return out
    if not arr.flags.writeable or not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr).copy()
    if wire == "BF16":
        return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(arr)


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        t = value.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if t.dtype == torch.bfloat16:
            return t.contiguous().view(torch.int16).numpy().view(np.uint16)
        return t.numpy()
    if isinstance(value, (list, tuple)) and all(isinstance(x, str) for x in value):
        out = np.empty(len(value), dtype=np.object_)
        for i, s in enumerate(value):
            out[i] = s.encode("utf-8")
        return out
    raise Internal(
        f"output must be of type Tensor, List[str] or Tuple containing one of these two types, "
        f"received {type(value).__name__}")


def _wire_of(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        cfg = _TORCH_TO_CONFIG.get(value.dtype, "TYPE_INVALID")
        return datatypes.config_to_wire(cfg) or str(value.dtype)
    return "BYTES"


# ---------------------------------------------------------------------------
# runners: one loaded model file, called with input leaves in ordinal order
# ---------------------------------------------------------------------------


class _Runner:
    """A loaded model: ``call(leaves)`` -> the model's raw result."""

    kind = ""
    #: names of the ordinal inputs as forward() sees them (None: config order)
    forward_names: list[str] | None = None
    #: True when forward() takes one Dict[str, Tensor]
    dict_input = False
    #: number of ordinal inputs, when known
    n_inputs: int | None = None
    #: output leaf paths (``RESULT[...]`` names), when known before a run
    output_names: list[str] | None = None
    #: the program's signature (torch.export programs), for config checks
    signature: tuple[list[TensorSpec], list[TensorSpec]] | None = None

    def call(self, leaves: list[Any]) -> Any:
        raise NotImplementedError


class _TorchScriptRunner(_Runner):
    kind = "torchscript"

    def __init__(self, path: str):
        self.module = torch.jit.load(path, map_location="cpu")
        self.module.eval()
        args = list(self.module.forward.schema.arguments)
        if args and args[0].type.kind() == "ClassType":
            args = args[1:]
        kinds = [a.type.kind() for a in args]
        if "DictType" in kinds:
            if len(args) != 1:
                raise Unavailable(
                    "Multiple inputs of kind DictType were detected. Only a single input of "
                    "type Dict(str, Tensor) is supported.")
            self.dict_input = True
        self.forward_names = [a.name for a in args]
        self.n_inputs = None if self.dict_input else len(args)

    def call(self, leaves: list[Any], names: list[str] | None = None) -> Any:
        if self.dict_input:
            return self.module.forward(dict(zip(names or [], leaves)))
        return self.module.forward(*leaves)


def _pt2_input_names(in_spec) -> list[str]:
    args, kwargs = pytree.tree_unflatten(list(range(in_spec.num_leaves)), in_spec)
    names = [""] * in_spec.num_leaves
    for path in _leaf_paths(tuple(args)):
        idx = _get(tuple(args), path)
        names[idx] = _path_name("ARGS", path)
    for path in _leaf_paths(dict(kwargs)):
        idx = _get(dict(kwargs), path)
        names[idx] = _path_name("KWARGS", path)
    return names


def _pt2_output_names(out_spec) -> list[str]:
    tree = pytree.tree_unflatten(list(range(out_spec.num_leaves)), out_spec)
    names = [""] * out_spec.num_leaves
    for path in _leaf_paths(tree):
        names[_get(tree, path)] = _path_name("RESULT", path)
    return names


def _get(obj: Any, path: tuple) -> Any:
    for p in path:
        obj = obj[p]
    return obj


def _shape_of(val) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) else -1 for d in val.shape)


class _ExportedProgramRunner(_Runner):
    kind = "torch.export"

    def __init__(self, path: str):
        self.program = torch.export.load(path)
        self.module = self.program.module()
        spec = self.program.call_spec
        self.in_spec, self.out_spec = spec.in_spec, spec.out_spec
        self.forward_names = _pt2_input_names(self.in_spec)
        self.n_inputs = len(self.forward_names)
        self.output_names = _pt2_output_names(self.out_spec)
        self.signature = self._signature()

    def _signature(self) -> tuple[list[TensorSpec], list[TensorSpec]] | None:
        try:
            sig = self.program.graph_signature
            nodes = {n.name: n for n in self.program.graph.nodes}
            ins = []
            for i, name in enumerate(sig.user_inputs):
                val = nodes[name].meta["val"]
                ins.append(TensorSpec(f"INPUT__{i}",
                                      _TORCH_TO_CONFIG.get(val.dtype, "TYPE_INVALID"),
                                      _shape_of(val)))
            out_node = next(n for n in self.program.graph.nodes if n.op == "output")
            returned = list(out_node.args[0])
            n_user = len(sig.user_outputs)
            outs = []
            for i, arg in enumerate(returned[len(returned) - n_user:]):
                val = arg.meta["val"]
                outs.append(TensorSpec(f"OUTPUT__{i}",
                                       _TORCH_TO_CONFIG.get(val.dtype, "TYPE_INVALID"),
                                       _shape_of(val)))
            return ins, outs
        except Exception as exc:  # noqa: BLE001 - a program we cannot describe still runs
            log.debug("unable to read the signature of an exported program: %s", exc)
            return None

    def call(self, leaves: list[Any], names: list[str] | None = None) -> Any:
        args, kwargs = pytree.tree_unflatten(leaves, self.in_spec)
        return self.module(*args, **kwargs)


class _AOTIRunner(_Runner):
    kind = "aoti"

    def __init__(self, path: str):
        self.compiled = torch._inductor.aoti_load_package(path)
        in_text, out_text = self.compiled.loader.get_call_spec()
        self.in_spec = pytree.treespec_loads(in_text)
        self.out_spec = pytree.treespec_loads(out_text)
        self.forward_names = _pt2_input_names(self.in_spec)
        self.n_inputs = len(self.forward_names)
        self.output_names = _pt2_output_names(self.out_spec)

    def call(self, leaves: list[Any], names: list[str] | None = None) -> Any:
        args, kwargs = pytree.tree_unflatten(leaves, self.in_spec)
        return self.compiled(*args, **kwargs)


class _PythonModuleRunner(_Runner):
    """Triton's python-based PyTorch runtime: an nn.Module class in model.py."""

    kind = "python runtime"

    def __init__(self, model_name: str, path: str, config: mc.ModelConfig):
        module_name = f"naiad_torch_model_{abs(hash(path))}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise Unavailable(f"unable to load model '{model_name}': cannot import '{path}'")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(module_name, None)
            raise Unavailable(
                f"unable to load model '{model_name}': failed to import '{path}': "
                f"{type(exc).__name__}: {exc}") from None
        cls = None
        for attr in vars(module).values():
            if isinstance(attr, type) and issubclass(attr, torch.nn.Module) and \
                    attr.__module__ == module_name:
                cls = attr
                break
        if cls is None:
            raise Unavailable(f"unable to load model '{model_name}': Cannot find a subclass of "
                              f"torch.nn.Module in '{path}'")
        model = cls()
        weights = os.path.splitext(path)[0] + ".pt"
        if os.path.isfile(weights):
            state = torch.load(weights, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        else:
            log.info("Model parameter file not found for '%s'", model_name)
        model.eval()
        text = param(config, "TORCH_COMPILE_OPTIONAL_PARAMETERS")
        if text:
            try:
                options = json.loads(text)
            except ValueError as exc:
                raise InvalidArgument(
                    f"unable to load model '{model_name}': TORCH_COMPILE_OPTIONAL_PARAMETERS is "
                    f"not valid JSON: {exc}") from None
            if not isinstance(options, dict):
                raise InvalidArgument(
                    f"unable to load model '{model_name}': TORCH_COMPILE_OPTIONAL_PARAMETERS "
                    f"must be a JSON object")
            if "model" in options:
                raise InvalidArgument("'model' is not an optional parameter for 'torch.compile'")
            self.module = torch.compile(model, **options)
        else:
            self.module = model
        self.raw = model

    def call(self, leaves: list[Any], names: list[str] | None = None) -> Any:
        return self.module(*leaves)


def _pt2_kind(path: str) -> str:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (OSError, zipfile.BadZipFile) as exc:
        raise Unavailable(f"'{path}' is not a PT2 archive: {exc}") from None
    if any("/data/aotinductor/" in n or n.startswith("data/aotinductor/") for n in names):
        return "aoti"
    return "export"


# ---------------------------------------------------------------------------
# binding config names to ordinal positions
# ---------------------------------------------------------------------------


def _bind_inputs(model: str, config: mc.ModelConfig, runner: _Runner) -> list[str]:
    """Config input names in ordinal order (position i feeds forward leaf i)."""
    configured = [i.name for i in config.input]
    extra = [c.name for c in config.sequence_batching.control_input]
    extra += [s.input_name for s in config.sequence_batching.state]
    extra += [t for b in config.batch_input for t in b.target_name]
    names = configured + extra
    if runner.dict_input:
        return names
    forward = runner.forward_names or []
    if configured and all(n in forward for n in configured):
        convention = "forward"
    elif configured and all(_named_index(n) is not None for n in configured):
        convention = "index"
    else:
        convention = "order"
        if forward and configured:
            log.warning("input '%s' or previous input(s) are neither an input argument to the "
                        "model '%s' nor do they follow the <name>__<index> naming convention. "
                        "Falling back to enforcing strict ordering from model configuration.",
                        configured[-1], model)
    if config.sequence_batching.state and convention != "index":
        if not all(_named_index(s.input_name) is not None and _named_index(s.output_name)
                   is not None for s in config.sequence_batching.state):
            raise InvalidArgument(
                f"PyTorch model '{model}' is using sequence batching with state but not all "
                f"inputs and outputs follow the <name>__<index> naming convention. ")
    n = runner.n_inputs if runner.n_inputs is not None else len(names)
    if runner.n_inputs is not None and len(names) != runner.n_inputs:
        raise InvalidArgument(
            f"unable to load model '{model}', configuration expects {len(names)} inputs, model "
            f"provides {runner.n_inputs}")
    order: list[str | None] = [None] * n
    for pos, name in enumerate(names):
        if convention == "forward" and name in forward:
            idx = forward.index(name)
        elif convention == "order":
            idx = pos
        else:
            idx = _named_index(name)
            if idx is None:
                idx = forward.index(name) if name in forward else pos
        if not 0 <= idx < n or order[idx] is not None:
            raise InvalidArgument(
                f"unable to load model '{model}': input '{name}' maps to position {idx}, which "
                f"the model does not have or another input already takes")
        order[idx] = name
    return [o or "" for o in order]


def _bind_outputs(model: str, config: mc.ModelConfig, runner: _Runner) -> dict[str, int] | None:
    """Config output name (and state output name) -> flattened result position.

    None: the outputs are named by path (``RESULT[key]``) and the model's
    result structure is only known when it runs (TorchScript).
    """
    configured = [o.name for o in config.output]
    states = [s.output_name for s in config.sequence_batching.state
              if s.output_name not in configured]
    names = configured + states
    paths = runner.output_names or []
    if names and all(_named_index(n) is not None for n in names):
        return {n: _named_index(n) for n in names}  # type: ignore[misc]
    if paths and all(n in paths for n in names):
        return {n: paths.index(n) for n in names}
    if not paths and names and all(n == "RESULT" or n.startswith("RESULT[") for n in names):
        return None
    if paths or runner.kind != "python runtime":
        log.warning("output '%s' or previous output(s) of the model '%s' do not follow the "
                    "<name>__<index> naming convention. Falling back to enforcing strict "
                    "ordering from model configuration.", names[-1] if names else "", model)
    return {n: i for i, n in enumerate(names)}


# ---------------------------------------------------------------------------
# the backend
# ---------------------------------------------------------------------------


def _model_path(version_dir: str, config: mc.ModelConfig) -> str:
    """The model file: default_model_filename, else model.pt, else model.pt2."""
    runtime = config.runtime == RUNTIME_FILENAME
    names = [config.default_model_filename] if config.default_model_filename else []
    if runtime:
        names = [n for n in names if n != DEFAULT_MODEL_FILENAME] + [RUNTIME_FILENAME,
                                                                    DEFAULT_MODEL_FILENAME]
    elif config.platform == "torch_aoti":
        names += [PT2_FILENAME]
    names += [DEFAULT_MODEL_FILENAME, PT2_FILENAME]
    for n in names:
        path = os.path.join(version_dir, n)
        if os.path.isfile(path):
            return path
    return os.path.join(version_dir, names[0])


# torch.export.load and the AOTInductor loader keep global state while they run
_load_lock = threading.Lock()


def _load_runner(model: str, path: str, config: mc.ModelConfig) -> _Runner:
    if not os.path.isfile(path):
        raise Unavailable(f"unable to find '{path}' for model '{model}'")
    with _load_lock:
        return _load_runner_locked(model, path, config)


def _load_runner_locked(model: str, path: str, config: mc.ModelConfig) -> _Runner:
    try:
        if path.endswith(".py"):
            return _PythonModuleRunner(model, path, config)
        if path.endswith(".pt2") or zipfile.is_zipfile(path) and _is_pt2(path):
            if _pt2_kind(path) == "aoti":
                return _AOTIRunner(path)
            return _ExportedProgramRunner(path)
        return _TorchScriptRunner(path)
    except NaiadError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise Unavailable(f"unable to load model '{model}': failed to read '{path}': "
                          f"{type(exc).__name__}: {first}") from None


def _is_pt2(path: str) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("archive_format") for n in z.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


class PyTorchBackend(Backend):
    name = "pytorch"
    default_model_filename = DEFAULT_MODEL_FILENAME
    platforms = ("pytorch_libtorch", "pytorch_torchscript", "torch_aoti")

    def auto_complete_config(self, config: mc.ModelConfig, model_dir: str,
                             version_dir: str | None, backend_config: dict[str, str]) -> None:
        """Complete the config from a torch.export program's signature.

        TorchScript files, AOTInductor packages and python-runtime modules
        carry no tensor types or shapes, so their configs stay as written.
        """
        if version_dir is None:
            return
        path = _model_path(version_dir, config)
        if not path.endswith(".pt2") or not os.path.isfile(path):
            return
        if not config.default_model_filename:
            config.default_model_filename = os.path.basename(path)
        complete = (len(config.input) > 0 and len(config.output) > 0 and not any(
            io_incomplete(i) for i in list(config.input) + list(config.output)))
        if complete:
            return
        if _pt2_kind(path) != "export":
            return
        runner = _load_runner(config.name, path, config)
        if runner.signature is None:
            return
        ins, outs = runner.signature
        complete_io(config, ins, outs, backend_config, what="torch.export program")

    def model_files(self, config: mc.ModelConfig, version_dir: str) -> list[str]:
        """The file the version loads: ``model.pt``, ``model.pt2`` or the runtime's module
        (its state_dict ``model.pt`` is optional)."""
        return [_model_path(version_dir, config)]

    def load(self, ctx: ModelLoadContext) -> "PyTorchModel":
        return PyTorchModel(ctx)


def _runner_bytes(runner: _Runner, path: str) -> int:
    module = getattr(runner, "module", None)
    if module is None or not hasattr(module, "parameters"):
        try:
            return os.path.getsize(path)
        except OSError:
            return 0
    seen: set[int] = set()
    total = 0
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        storage = tensor.untyped_storage()
        if storage.data_ptr() in seen:
            continue
        seen.add(storage.data_ptr())
        total += storage.nbytes()
    return total


class PyTorchModel(BackendModel):
    def __init__(self, ctx: ModelLoadContext):
        config = ctx.config
        self.name = ctx.name
        self.config = config
        self.max_batch_size = int(config.max_batch_size)
        self.path = _model_path(ctx.version_dir, config)
        self.runtime = config.runtime == RUNTIME_FILENAME or self.path.endswith(".py")
        self.inference_mode = _flag(config, "INFERENCE_MODE", True)
        self.optimized = not _flag(config, "DISABLE_OPTIMIZED_EXECUTION", False)
        self.weight_sharing = _flag(config, "ENABLE_WEIGHT_SHARING", False)
        for key in ("ENABLE_CACHE_CLEANING", "DISABLE_CUDNN"):
            _flag(config, key, False)  # parsed (a bad value is an error); CUDA only
        key_threads = "NUM_THREADS" if self.runtime else "INTRA_OP_THREAD_COUNT"
        text = param(config, key_threads)
        self.threads = parse_int(text, key_threads) if text else (1 if self.runtime else 0)
        self._apply_process_settings()
        self.plan = OutputPlan(config)
        self.input_types = {i.name: datatypes.config_to_wire(mc.DataType.Name(i.data_type))
                            for i in config.input}
        for st in config.sequence_batching.state:
            self.input_types[st.input_name] = datatypes.config_to_wire(
                mc.DataType.Name(st.data_type))
        self._check_strings()
        self._shared: _Runner | None = None
        self._runners: list[_Runner] = []  # the instances' modules (memory_bytes)
        self._lock = threading.Lock()
        # load once now: a broken file fails the load, and the bindings are checked
        first = _load_runner(self.name, self.path, config)
        self.input_order = _bind_inputs(self.name, config, first)
        self.output_index = _bind_outputs(self.name, config, first)
        if first.signature is not None:
            self._check_signature(first.signature)
        self._first: _Runner | None = first
        log.info("model '%s': loaded %s model '%s'", self.name, first.kind, self.path)

    def _apply_process_settings(self) -> None:
        global _interop_threads
        config = self.config
        key = "NUM_INTEROP_THREADS" if self.runtime else "INTER_OP_THREAD_COUNT"
        text = param(config, key)
        if text:
            count = parse_int(text, key)
            with _settings_lock:
                if _interop_threads is None and count > 0:
                    try:
                        torch.set_num_interop_threads(count)
                        _interop_threads = count
                    except RuntimeError as exc:
                        log.warning("model '%s': %s not applied: %s", self.name, key, exc)
                elif _interop_threads is not None and count != _interop_threads:
                    log.warning("model '%s': %s=%d ignored: the PyTorch backend already uses "
                                "%d inter-op threads (the first value set applies)",
                                self.name, key, count, _interop_threads)
        for key, setter in (("ENABLE_JIT_EXECUTOR", "_jit_set_profiling_executor"),
                            ("ENABLE_JIT_PROFILING", "_jit_set_profiling_mode")):
            text = param(config, key)
            if text:
                flag = parse_bool(text, key)
                fn = getattr(torch._C, setter, None)
                if fn is not None:
                    fn(flag)

    def _check_strings(self) -> None:
        batching = 1 if self.max_batch_size > 0 else 0
        for io, kind in [(i, "input") for i in self.config.input] + \
                [(o, "output") for o in self.config.output]:
            if io.data_type == mc.TYPE_STRING and len(config_dims(io)) + batching > 1:
                raise InvalidArgument(
                    f"Triton only supports 1 dimensional List of String as {kind} for "
                    f"'{io.name}' for model '{self.name}'")

    def _check_signature(self, signature: tuple[list[TensorSpec], list[TensorSpec]]) -> None:
        """A torch.export program knows its types and shapes: check the config against them."""
        ins, outs = signature
        mbs = self.max_batch_size
        for pos, name in enumerate(self.input_order):
            if pos >= len(ins) or not name:
                continue
            spec = ins[pos]
            cin = next((i for i in self.config.input if i.name == name), None)
            if cin is None:
                continue
            cfg_type = mc.DataType.Name(cin.data_type)
            if cfg_type != spec.config_type:
                raise InvalidArgument(
                    f"unable to load model '{self.name}', configuration expects datatype "
                    f"{cfg_type} for input '{name}', model provides {spec.config_type}")
            compare_dims(self.name, name, spec.dims, config_dims(cin), mbs, exact=False)
        for cout in self.config.output:
            idx = (self.output_index or {}).get(cout.name)
            if idx is None or idx >= len(outs):
                raise InvalidArgument(
                    f"unable to load model '{self.name}': unexpected inference output "
                    f"'{cout.name}', the model has {len(outs)} outputs")
            spec = outs[idx]
            cfg_type = mc.DataType.Name(cout.data_type)
            if cfg_type != spec.config_type:
                raise InvalidArgument(
                    f"unable to load model '{self.name}', configuration expects datatype "
                    f"{cfg_type} for output '{cout.name}', model provides {spec.config_type}")
            compare_dims(self.name, cout.name, spec.dims, config_dims(cout), mbs, exact=False)

    def runner(self) -> _Runner:
        with self._lock:
            if self._first is not None:
                runner, self._first = self._first, None
                if self.weight_sharing:
                    self._shared = runner
                return runner
            if self.weight_sharing and self._shared is not None:
                return self._shared
        return _load_runner(self.name, self.path, self.config)

    def create_instance(self, spec: InstanceSpec) -> "PyTorchInstance":
        runner = self.runner()
        if all(r is not runner for r in self._runners):
            self._runners.append(runner)
        return PyTorchInstance(self, spec, runner)

    def memory_bytes(self) -> int:
        """What torch says the loaded modules hold: their parameters' and buffers'
        storages (each counted once), one module per instance unless
        ENABLE_WEIGHT_SHARING; an AOTInductor package, whose weights torch does not
        list, counts as its file's size."""
        return sum(_runner_bytes(r, self.path) for r in self._runners)

    def finalize(self) -> None:
        self._shared = None
        self._first = None
        self._runners = []


class PyTorchInstance(BatchingInstance):
    def __init__(self, model: PyTorchModel, spec: InstanceSpec, runner: _Runner):
        self.model = model
        self.spec = spec
        self.name = spec.name
        self.runner: _Runner | None = runner
        self.model_name = model.name
        self.max_batch_size = model.max_batch_size
        self.plan = model.plan
        self._threads_set = False

    def error(self, exc: BaseException) -> NaiadError:
        text = str(exc).strip() or type(exc).__name__
        return Internal(f"PyTorch execute failure: {text}")

    def _grad_mode(self):
        return torch.inference_mode() if self.model.inference_mode else torch.no_grad()

    def run(self, feed: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        runner = self.runner
        if runner is None:
            raise Internal(f"model instance '{self.name}' has been finalized")
        model = self.model
        if model.threads > 0 and not self._threads_set:
            torch.set_num_threads(model.threads)  # this (worker) thread's intra-op pool
            self._threads_set = True
        leaves = []
        for name in model.input_order:
            arr = feed.get(name)
            if arr is None:
                raise InvalidArgument(
                    f"expected input '{name}' for model '{model.name}' is missing")
            wire = model.input_types.get(name) or datatypes.wire_from_numpy(arr.dtype)
            leaves.append(_to_torch(name, wire, arr))
        optimized = (torch.jit.optimized_execution(model.optimized)
                     if runner.kind == "torchscript" else contextlib.nullcontext())
        with self._grad_mode(), optimized:
            result = runner.call(leaves, model.input_order)
        flat = _flatten_result(result)
        index = model.output_index
        if index is None:  # named by path: the result's structure says where each is
            paths = [_path_name("RESULT", p) for p in _leaf_paths(result)]
            index = {n: i for i, n in enumerate(paths)}
        out: dict[str, np.ndarray] = {}
        for name in outputs:
            idx = index.get(name)
            if idx is None or idx >= len(flat):
                raise Internal(
                    f"model '{model.name}': output '{name}' is not produced by the model (it "
                    f"returned {len(flat)} output(s))")
            value = flat[idx]
            want = model.plan.types.get(name)
            have = _wire_of(value)
            if want and want != have:
                raise Internal(
                    f"configuration expects datatype {datatypes.wire_to_config(want)} for output "
                    f"'{name}', model provides {datatypes.wire_to_config(have)}")
            out[name] = _to_numpy(value)
        return out

    def finalize(self) -> None:
        self.runner = None
