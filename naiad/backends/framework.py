"""What the tensor-framework backends share (onnxruntime, pytorch, openvino, fil).

Moved here from ``onnxruntime.py`` so that each framework backend reads
Triton's string parameters, checks a config against the model's signature,
auto-completes a config and splits a batch the same way:

* parameters: :func:`parse_int`, :func:`parse_bool`, :func:`param`;
* signatures: :class:`TensorSpec` (a model input/output as the framework
  reports it, in config terms), :func:`compare_dims`, :func:`check_scalar`;
* auto-complete: :func:`io_incomplete`, :func:`fill_dims`,
  :func:`complete_max_batch_size`, :func:`complete_io`, :func:`complete_entries`
  (Triton's rules: fill what the config leaves out, never overwrite what it says);
* batches: :class:`OutputPlan` (the outputs a model version produces, with
  their wire types and the implicit-state outputs the sequence batcher
  needs), :func:`batch_groups`, :func:`wanted_outputs`,
  :func:`split_outputs`;
* :class:`BatchingInstance`, an ``execute`` for frameworks that run a dict of
  numpy arrays at once: it concatenates a batch along dim 0, calls the
  subclass's ``run`` once per group of same-shaped requests, and gives each
  request its rows back.

The model-config protobuf and the datatype table are imported here once for
the framework backends (``mc``, ``datatypes``). Boolean parameters go through
the one parser, :func:`naiad.options.parse_bool`.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from naiad.backends.base import BackendInstance
from naiad.core import datatypes
from naiad.core import types as core
from naiad.core.errors import Internal, InvalidArgument, NaiadError, Unsupported
from naiad.options import parse_bool as parse_flag
from naiad.protocol import model_config_pb2 as mc

__all__ = [
    "mc", "datatypes", "parse_int", "parse_bool", "param", "dims_str", "TensorSpec",
    "compare_dims", "check_scalar", "io_incomplete", "fill_dims", "complete_max_batch_size",
    "complete_io", "complete_entries", "OutputPlan", "batch_groups", "wanted_outputs", "split_outputs",
    "check_batch_rows", "select_outputs", "config_dims",
    "BatchingInstance", "DEFAULT_MAX_BATCH_SIZE",
]

log = logging.getLogger("naiad.backends")

#: Triton's ``--backend-config=<backend>,default-max-batch-size`` default
DEFAULT_MAX_BATCH_SIZE = 4


# ---------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------


def parse_int(value: str, what: str) -> int:
    try:
        return int(str(value).strip())
    except ValueError:
        raise InvalidArgument(f"failed to convert '{value}' to integral number for '{what}'") from None


def parse_bool(value: str, what: str, yes_no: bool = False) -> bool:
    """A boolean model parameter, read by :func:`naiad.options.parse_bool` (Triton's
    true/on/1, false/off/0); INVALID_ARG naming the parameter when it is neither.

    ``yes_no`` also takes YES/NO, the spelling Triton's OpenVINO backend documents
    for its switches (``SKIP_OV_DYNAMIC_BATCHSIZE: "YES"``).
    """
    if yes_no:
        text = str(value).strip().lower()
        if text in ("yes", "no"):
            return text == "yes"
    flag = parse_flag(value)
    if flag is None:
        raise InvalidArgument(f"failed to convert '{value}' to boolean for '{what}'")
    return flag


def param(config: mc.ModelConfig, key: str) -> str | None:
    """A ``parameters`` entry's string value, or None."""
    if key in config.parameters:
        return config.parameters[key].string_value
    return None


def dims_str(dims) -> str:
    return "[" + ",".join(str(int(d)) for d in dims) + "]"


# ---------------------------------------------------------------------------
# signatures and config checks
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """A model input or output as its framework describes it, in config terms."""

    name: str
    config_type: str  # "TYPE_FP32", ..., "TYPE_INVALID" when a config cannot express it
    dims: tuple[int, ...]  # full shape with the batch dimension; -1 where dynamic


def compare_dims(model: str, tensor: str, model_shape: tuple[int, ...], dims: tuple[int, ...],
                 max_batch_size: int, exact: bool) -> None:
    """Triton's check of a configured shape against the model's (batch dim included)."""
    if max_batch_size > 0:
        if not model_shape or model_shape[0] != -1:
            raise InvalidArgument(
                f"model '{model}', tensor '{tensor}': for the model to support batching the "
                f"shape should have at least 1 dimension and the first dimension must be -1; "
                f"but shape expected by the model is {dims_str(model_shape)}")
        full = (-1,) + tuple(dims)
        how = (f"{len(full)} dimensions (an initial batch dimension because max_batch_size > 0 "
               f"followed by the explicit tensor shape, making complete shape "
               f"{dims_str(full)})")
    else:
        full = tuple(dims)
        how = f"{len(dims)} dimensions (shape {dims_str(dims)})"
    if len(model_shape) != len(full) or not all(
            m == f for m, f in zip(model_shape, full) if exact or m != -1):
        raise InvalidArgument(
            f"model '{model}', tensor '{tensor}': the model expects {len(model_shape)} "
            f"dimensions (shape {dims_str(model_shape)}) but the model configuration "
            f"specifies {how}")


def check_scalar(model: str, tensor: str, dims: tuple[int, ...]) -> None:
    if any(d != 1 for d in dims):
        raise InvalidArgument(
            f"unable to load model '{model}', scalar tensor '{tensor}', should only provide 1 in "
            f"the model configuration when the model doesn't support batching. Model "
            f"configuration provided: {dims_str(dims)}.")


def config_dims(io) -> tuple[int, ...]:
    """A config input/output's dims as the model sees them (its reshape if it has one)."""
    return tuple(io.reshape.shape) if io.HasField("reshape") else tuple(io.dims)


# ---------------------------------------------------------------------------
# auto-complete
# ---------------------------------------------------------------------------


def io_incomplete(io) -> bool:
    return io.data_type == mc.TYPE_INVALID or (len(io.dims) == 0 and not io.HasField("reshape"))


def fill_dims(io, model_dims: Sequence[int], mbs: int) -> None:
    """Set a config entry's dims from the model's full shape (dropping the batch dim)."""
    dims = list(model_dims[1:] if mbs > 0 else model_dims)
    del io.dims[:]
    if dims:
        io.dims.extend(dims)
        return
    # a scalar (or a batch-only tensor) is dims [1]; with batching, reshaped to []
    io.dims.append(1)
    if mbs > 0:
        io.reshape.SetInParent()


def default_max_batch_size(backend_config: dict[str, str]) -> int:
    value = backend_config.get("default-max-batch-size", str(DEFAULT_MAX_BATCH_SIZE))
    return max(parse_int(value, "default-max-batch-size"), 0)


def complete_max_batch_size(config: mc.ModelConfig, shapes: Iterable[Sequence[int]],
                            backend_config: dict[str, str],
                            can_batch: bool | None = None) -> None:
    """Triton's max_batch_size auto-complete.

    ``shapes`` are the model's full input and output shapes; the model can
    batch when every one has a dynamic first dimension (or ``can_batch``
    says so). A batching model with max_batch_size 0 gets
    ``default-max-batch-size`` and, when that is above 1 and no scheduler is
    configured, ``dynamic_batching {}``.
    """
    if can_batch is None:
        can_batch = all(len(s) > 0 and s[0] == -1 for s in shapes)
    if can_batch:
        if config.max_batch_size == 0:
            config.max_batch_size = default_max_batch_size(backend_config)
            log.warning(
                "autofilled max_batch_size to %d for model '%s' since batching is supported "
                "but no max_batch_size is specified in model configuration. Must specify "
                "max_batch_size to utilize autofill with a larger max batch size",
                config.max_batch_size, config.name)
        if config.max_batch_size > 1 and config.WhichOneof("scheduling_choice") is None:
            config.dynamic_batching.SetInParent()
    elif config.max_batch_size != 0:
        raise InvalidArgument(
            f"autofill failed for model '{config.name}': model does not support batching "
            f"while non-zero max_batch_size is specified")


def complete_io(config: mc.ModelConfig, inputs: Sequence[TensorSpec],
                outputs: Sequence[TensorSpec], backend_config: dict[str, str],
                can_batch: bool | None = None, what: str = "model") -> None:
    """Fill max_batch_size, inputs and outputs from a model's signature, as Triton does.

    Lists the config already gives are kept (their entries lacking a
    data_type or dims are completed: naiad's extension); missing lists are
    filled from ``inputs``/``outputs``.
    """
    name = config.name or "<unnamed>"
    has_inputs = len(config.input) + len(config.batch_input) > 0
    has_outputs = len(config.output) > 0
    if not (has_inputs and has_outputs):
        complete_max_batch_size(config, [s.dims for s in list(inputs) + list(outputs)],
                                backend_config, can_batch)
        mbs = int(config.max_batch_size)
        for key, listed, specs in (("input", has_inputs, inputs),
                                   ("output", has_outputs, outputs)):
            if listed:
                continue
            field = getattr(config, key)
            for spec in specs:
                if spec.config_type == "TYPE_INVALID":
                    raise Unsupported(
                        f"unable to auto-complete model '{name}': {key} '{spec.name}' of the "
                        f"{what} has a type that a model configuration cannot express")
                entry = field.add()
                entry.name = spec.name
                entry.data_type = mc.DataType.Value(spec.config_type)
                fill_dims(entry, spec.dims, mbs)
    complete_entries(config, {s.name: s for s in inputs}, {s.name: s for s in outputs})


def complete_entries(config: mc.ModelConfig, inputs: Mapping[str, TensorSpec],
                     outputs: Mapping[str, TensorSpec]) -> None:
    """naiad's extension: entries the config lists without a data_type or dims get the
    model's (``inputs``/``outputs``: name -> anything with ``config_type`` and ``dims``)."""
    mbs = int(config.max_batch_size)
    for field, specs in ((config.input, inputs), (config.output, outputs)):
        for entry in field:
            spec = specs.get(entry.name)
            if spec is None or not io_incomplete(entry):
                continue
            if entry.data_type == mc.TYPE_INVALID and spec.config_type != "TYPE_INVALID":
                entry.data_type = mc.DataType.Value(spec.config_type)
            if len(entry.dims) == 0 and not entry.HasField("reshape"):
                fill_dims(entry, spec.dims, mbs)


# ---------------------------------------------------------------------------
# batches
# ---------------------------------------------------------------------------


class OutputPlan:
    """The outputs one model version produces and the wire type of each."""

    def __init__(self, config: mc.ModelConfig):
        # config outputs: name -> wire datatype, and the dims used for scalar outputs
        self.types: dict[str, str] = {
            o.name: datatypes.config_to_wire(mc.DataType.Name(o.data_type)) for o in config.output
        }
        self.dims: dict[str, tuple[int, ...]] = {o.name: tuple(o.dims) for o in config.output}
        self.all_outputs: tuple[str, ...] = tuple(o.name for o in config.output)
        # sequence batching implicit state: model outputs fetched for the scheduler
        # even when the client did not ask for them (naiad.scheduling.sequence_batcher)
        self.state_outputs: tuple[str, ...] = tuple(
            s.output_name for s in config.sequence_batching.state
            if s.output_name not in self.types)
        for st in config.sequence_batching.state:
            self.types.setdefault(
                st.output_name, datatypes.config_to_wire(mc.DataType.Name(st.data_type)))


def batch_groups(requests: list[core.InferenceRequest], max_batch_size: int,
                 ragged: Iterable[str] = ()) -> list[list[int]]:
    """Indices of the requests that can run as one batch (same shapes beyond dim 0)."""
    if len(requests) == 1:
        return [[0]]
    if max_batch_size <= 0:
        return [[i] for i in range(len(requests))]
    ragged = frozenset(ragged)
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(requests):
        key = tuple(sorted((n, t.datatype, None if n in ragged else t.data.shape[1:])
                           for n, t in r.inputs.items()))
        groups.setdefault(key, []).append(i)
    return list(groups.values())


def wanted_outputs(requests: list[core.InferenceRequest], plan: OutputPlan) -> list[str]:
    """The outputs to compute for a batch: what any request asked for, plus state outputs."""
    names: set[str] = set()
    for r in requests:
        if not r.requested_outputs:
            return list(plan.all_outputs) + list(plan.state_outputs)
        names.update(r.requested_outputs)
    wanted = [n for n in plan.all_outputs if n in names] or list(names)
    return wanted + [n for n in plan.state_outputs if n not in names]


def select_outputs(request: core.InferenceRequest, outputs: dict[str, tuple[str, np.ndarray]],
                   span: tuple[int, int] | None, plan: OutputPlan) -> list[core.Tensor]:
    """The tensors one request gets: what it asked for (all if nothing), state outputs, its rows."""
    wanted = request.requested_outputs
    out = []
    for name, (wire, arr) in outputs.items():
        if wanted and name not in wanted and name not in plan.state_outputs:
            continue
        data = arr if span is None else arr[span[0]:span[1]]
        out.append(core.Tensor(name, wire, data))
    return out


def check_batch_rows(model_name: str, requests: list[core.InferenceRequest],
                     outputs: dict[str, tuple[str, np.ndarray]]) -> int:
    """The batch's total rows; INTERNAL when an output does not have one row per batch item."""
    total = sum(r.batch_size for r in requests)
    for name, (_, arr) in outputs.items():
        if arr.ndim == 0 or arr.shape[0] != total:
            raise Internal(
                f"model '{model_name}' output '{name}' has shape {list(arr.shape)}, which "
                f"cannot be split back into requests of a batch of {total}")
    return total


def split_outputs(model_name: str, requests: list[core.InferenceRequest],
                  outputs: dict[str, tuple[str, np.ndarray]],
                  plan: OutputPlan) -> list[list[core.Tensor]]:
    """Each request's rows of a batch's outputs."""
    if len(requests) == 1:
        return [select_outputs(requests[0], outputs, None, plan)]
    check_batch_rows(model_name, requests, outputs)
    results = []
    offset = 0
    for r in requests:
        n = r.batch_size
        results.append(select_outputs(r, outputs, (offset, offset + n), plan))
        offset += n
    return results


class BatchingInstance(BackendInstance):
    """``execute`` for a framework that runs named numpy arrays in one call.

    Subclasses set ``model_name``, ``max_batch_size`` and ``plan`` and
    implement :meth:`run`. Requests whose inputs agree in shape beyond dim 0
    run as one batch (concatenated along dim 0); an error fails only the
    requests of its group.
    """

    model_name: str = ""
    max_batch_size: int = 0
    plan: OutputPlan

    def run(self, feed: dict[str, np.ndarray], outputs: list[str]) -> dict[str, np.ndarray]:
        """Run the model on one batch: input name -> array; return output name -> array."""
        raise NotImplementedError

    def error(self, exc: BaseException) -> NaiadError:
        """How a framework exception reads to the client (INTERNAL unless overridden)."""
        return Internal(str(exc) or type(exc).__name__)

    def execute(self, requests: list[core.InferenceRequest]) -> list[core.InferenceResponse]:
        return self.run_groups(requests, self.groups(requests))

    def run_groups(self, requests: list[core.InferenceRequest],
                   groups: list[list[int]]) -> list[core.InferenceResponse]:
        """Run each group of request indices as one batch; one response per request."""
        responses: list[core.InferenceResponse | None] = [None] * len(requests)
        for group in groups:
            batch = [requests[i] for i in group]
            try:
                results = self._run_group(batch)
            except NaiadError as exc:
                results = [exc] * len(batch)
            except Exception as exc:  # noqa: BLE001 - the framework's failure, reported
                log.debug("model '%s' run failed: %s", self.model_name, exc)
                err = self.error(exc)
                results = [err] * len(batch)
            for i, res in zip(group, results):
                responses[i] = (core.InferenceResponse(error=res) if isinstance(res, NaiadError)
                                else core.InferenceResponse(outputs=res))
        return responses  # type: ignore[return-value]

    def groups(self, requests: list[core.InferenceRequest]) -> list[list[int]]:
        return batch_groups(requests, self.max_batch_size)

    def feed(self, requests: list[core.InferenceRequest]) -> dict[str, np.ndarray]:
        first = requests[0]
        if len(requests) == 1:
            return {name: t.data for name, t in first.inputs.items()}
        return {name: np.concatenate([r.inputs[name].data for r in requests], axis=0)
                for name in first.inputs}

    def _run_group(self, requests: list[core.InferenceRequest]):
        feed = self.feed(requests)
        names = wanted_outputs(requests, self.plan)
        start = time.monotonic_ns()
        for r in requests:
            r.compute_input_end_ns = start
        arrays = self.run(feed, names)
        end = time.monotonic_ns()
        for r in requests:
            r.compute_output_start_ns = end
        outputs: dict[str, tuple[str, np.ndarray]] = {}
        for name in names:
            arr = arrays.get(name)
            if arr is None:
                raise Internal(f"model '{self.model_name}' produced no output '{name}'")
            wire = self.plan.types.get(name) or datatypes.wire_from_numpy(arr.dtype)
            if arr.ndim == 0 and self.max_batch_size <= 0:
                arr = arr.reshape(self.plan.dims.get(name) or (1,))
            outputs[name] = (wire, arr)
        return split_outputs(self.model_name, requests, outputs, self.plan)
