"""naiad's ``triton_python_backend_utils``: the API Triton python models import.

Models do ``import triton_python_backend_utils as pb_utils``; the python
backend makes that name resolve to this module. Unlike Triton, nothing here
crosses a process boundary: tensors are the core's numpy arrays, requests
wrap the core's request objects, and responses go straight back to the core.
"""

from __future__ import annotations

import json
import logging
import struct
import threading
from typing import Any

import numpy as np

from naiad.core import datatypes as _dt
from naiad.core import errors as _errors
from naiad.core import types as _core

# -- constants (Triton's values) -----------------------------------------------

TRITONSERVER_RESPONSE_COMPLETE_FINAL = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_START = 1
TRITONSERVER_REQUEST_FLAG_SEQUENCE_END = 2
TRITONSERVER_REQUEST_RELEASE_ALL = 1
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE = 2

TRITON_STRING_TO_NUMPY = {
    "TYPE_BOOL": bool,
    "TYPE_UINT8": np.uint8,
    "TYPE_UINT16": np.uint16,
    "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64,
    "TYPE_INT8": np.int8,
    "TYPE_INT16": np.int16,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}

# TRITONSERVER_DataType numbers, as numpy_to_triton_type returns them
_TRITON_TYPE_NUMBERS = {
    "BOOL": 1, "UINT8": 2, "UINT16": 3, "UINT32": 4, "UINT64": 5, "INT8": 6, "INT16": 7,
    "INT32": 8, "INT64": 9, "FP16": 10, "FP32": 11, "FP64": 12, "BYTES": 13, "BF16": 14,
}
_NUMBER_TO_WIRE = {v: k for k, v in _TRITON_TYPE_NUMBERS.items()}


def triton_string_to_numpy(triton_type_string: str):
    return TRITON_STRING_TO_NUMPY[triton_type_string]


def triton_to_numpy_type(data_type: int):
    wire = _NUMBER_TO_WIRE.get(data_type)
    if wire is None or wire == "BF16":
        return None
    return np.bool_ if wire == "BOOL" else _dt.numpy_dtype(wire).type


def numpy_to_triton_type(data_type) -> int | None:
    try:
        wire = _dt.wire_from_numpy(np.dtype(data_type))
    except TypeError:
        return None
    return _TRITON_TYPE_NUMBERS.get(wire) if wire else None


def serialize_byte_tensor(input_tensor: np.ndarray):
    """Length-prefixed elements of a BYTES tensor, as a 1-D uint8 array."""
    if input_tensor.size == 0:
        return np.empty([0], dtype=np.uint8)
    if input_tensor.dtype != np.object_ and input_tensor.dtype.type != np.bytes_:
        raise TritonModelException("cannot serialize bytes tensor: invalid datatype")
    parts = []
    for item in input_tensor.reshape(-1, order="C"):
        if isinstance(item, (bytes, np.bytes_)):
            s = bytes(item)
        else:
            s = str(item).encode("utf-8")
        parts.append(struct.pack("<I", len(s)))
        parts.append(s)
    return np.frombuffer(b"".join(parts), dtype=np.uint8)


def deserialize_bytes_tensor(encoded_tensor) -> np.ndarray:
    """The inverse of serialize_byte_tensor: a 1-D object array of bytes."""
    buf = bytes(encoded_tensor)
    items = []
    offset = 0
    while offset < len(buf):
        (length,) = struct.unpack_from("<I", buf, offset)
        offset += 4
        items.append(buf[offset:offset + length])
        offset += length
    arr = np.empty(len(items), dtype=np.object_)
    arr[:] = items
    return arr


# -- errors ----------------------------------------------------------------------


class _MessageAndCode:
    """``message()`` and ``code()``, as Triton's TritonError and TritonModelException have."""

    _msg: str
    _code: int

    def message(self) -> str:
        return self._msg

    def code(self) -> int:
        return self._code

    def __str__(self) -> str:
        return self._msg


class TritonError(_MessageAndCode):
    """An error a model returns in a response (or BLS reports back)."""

    UNKNOWN = 0
    INTERNAL = 1
    NOT_FOUND = 2
    INVALID_ARG = 3
    UNAVAILABLE = 4
    UNSUPPORTED = 5
    ALREADY_EXISTS = 6
    CANCELLED = 7

    _KINDS = {
        UNKNOWN: _errors.ErrorKind.UNKNOWN,
        INTERNAL: _errors.ErrorKind.INTERNAL,
        NOT_FOUND: _errors.ErrorKind.NOT_FOUND,
        INVALID_ARG: _errors.ErrorKind.INVALID_ARG,
        UNAVAILABLE: _errors.ErrorKind.UNAVAILABLE,
        UNSUPPORTED: _errors.ErrorKind.UNSUPPORTED,
        ALREADY_EXISTS: _errors.ErrorKind.ALREADY_EXISTS,
        CANCELLED: _errors.ErrorKind.CANCELLED,
    }
    _CODES = {v: k for k, v in _KINDS.items()}

    def __init__(self, message: str | None = None, code: int = INTERNAL, *,
                 msg: str | None = None):
        # Triton's keyword is ``message``; ``msg`` is naiad's older spelling
        if message is None:
            message = msg if msg is not None else ""
        self._msg = str(message)
        self._code = code

    def __repr__(self) -> str:
        return f"TritonError({self._msg!r}, code={self._code})"

    def _to_core(self) -> _errors.NaiadError:
        kind = self._KINDS.get(self._code, _errors.ErrorKind.INTERNAL)
        return _errors.NaiadError(self._msg, kind)

    @classmethod
    def _from_core(cls, err: _errors.NaiadError) -> "TritonError":
        return cls(err.message, cls._CODES.get(err.kind, cls.INTERNAL))


class TritonModelException(_MessageAndCode, Exception):
    """Raised by the API (and by models) to fail a request or a load."""

    def __init__(self, msg: str = "", code: int = TritonError.INTERNAL):
        super().__init__(msg)
        self._msg = msg
        self._code = code


# -- tensors ------------------------------------------------------------------------


class Tensor:
    """A named tensor holding a numpy array (``pb_utils.Tensor``)."""

    __slots__ = ("_name", "_array", "_wire")

    def __init__(self, name: str, numpy_array: Any, triton_dtype: int | None = None):
        arr = numpy_array if isinstance(numpy_array, np.ndarray) else np.asarray(numpy_array)
        kind = arr.dtype.kind
        if kind == "U":
            # Triton refuses np.str_; encoding to UTF-8 BYTES is what callers mean.
            obj = np.empty(arr.shape, dtype=np.object_)
            obj.reshape(-1)[:] = [s.encode("utf-8") for s in arr.reshape(-1)]
            arr = obj
        elif kind == "S":
            obj = np.empty(arr.shape, dtype=np.object_)
            obj.reshape(-1)[:] = [bytes(s) for s in arr.reshape(-1)]
            arr = obj
        elif kind == "V":
            raise TritonModelException(
                "Tensor dtype used for numpy_array is not supported by the python backend; "
                "use np.object_ for strings and bytes"
            )
        if triton_dtype is not None:
            wire = _NUMBER_TO_WIRE.get(triton_dtype)
            if wire is None:
                raise TritonModelException(f"unknown triton dtype {triton_dtype}")
            if wire != "BYTES":
                want = _dt.numpy_dtype(wire)
                if arr.dtype != want:
                    arr = arr.view(want)
        else:
            wire = _dt.wire_from_numpy(arr.dtype)
            if not wire:
                raise TritonModelException(
                    f"tensor '{name}': numpy dtype {arr.dtype} has no Triton datatype"
                )
        self._name = name
        self._array = arr
        self._wire = wire

    @classmethod
    def _wrap(cls, name: str, wire: str, arr: np.ndarray) -> "Tensor":
        t = cls.__new__(cls)
        t._name = name
        t._array = arr
        t._wire = wire
        return t

    def name(self) -> str:
        return self._name

    def as_numpy(self) -> np.ndarray:
        if self._wire == "BF16":
            raise TritonModelException(
                f"tensor '{self._name}' is BF16, which numpy cannot hold; use to_dlpack()"
            )
        return self._array

    def shape(self) -> list[int]:
        return list(self._array.shape)

    def triton_dtype(self) -> int:
        return _TRITON_TYPE_NUMBERS[self._wire]

    def data_type(self) -> str:
        return _dt.wire_to_config(self._wire)

    def is_cpu(self) -> bool:
        return True

    def to_dlpack(self):
        """A DLPack capsule over the tensor's data (BF16 keeps its bfloat16 label)."""
        if self._wire == "BYTES":
            raise TritonModelException("BYTES tensors cannot be exported through DLPack")
        arr = self._array
        if self._wire == "BF16":
            from naiad.backends.python import dlpack

            return dlpack.bf16_capsule(arr)
        if not arr.flags.c_contiguous:
            arr = np.ascontiguousarray(arr)
        return arr.__dlpack__()

    def __dlpack__(self, stream=None, **kwargs):
        return self.to_dlpack()

    def __dlpack_device__(self):
        return (1, 0)  # kDLCPU

    @staticmethod
    def from_dlpack(name: str, capsule) -> "Tensor":
        """A tensor from a DLPack capsule or any object with ``__dlpack__`` (CPU)."""
        from naiad.backends.python import dlpack

        raw = capsule.__dlpack__() if hasattr(capsule, "__dlpack__") else capsule
        bits = dlpack.read_bf16_capsule(raw) if type(raw).__name__ == "PyCapsule" else None
        if bits is not None:
            return Tensor._wrap(name, "BF16", bits)
        if hasattr(capsule, "__dlpack__"):
            arr = np.from_dlpack(capsule)
        else:
            arr = np.from_dlpack(_CapsuleHolder(capsule))
        return Tensor(name, arr)

    def __repr__(self) -> str:
        return f"Tensor({self._name!r}, {self._wire}, shape={list(self._array.shape)})"


class _CapsuleHolder:
    """Lets np.from_dlpack accept a bare PyCapsule."""

    def __init__(self, capsule):
        self._capsule = capsule

    def __dlpack__(self, stream=None, **kwargs):
        return self._capsule

    def __dlpack_device__(self):
        return (1, 0)  # kDLCPU


# -- responses ---------------------------------------------------------------------------


def _checked_parameters(parameters: Any) -> dict:
    """Request/response ``parameters`` as Triton checks them: None or a dict of str
    keys and bool/int/str values (TritonModelException otherwise)."""
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise TritonModelException(f"Expect <dict>, got {type(parameters)}")
    for key, value in parameters.items():
        if not isinstance(key, str):
            raise TritonModelException(
                f"Expect parameters keys to have type str, found type {type(key)}")
        if not isinstance(value, (bool, int, str)):
            raise TritonModelException(
                f"Expect parameters values to have type bool/int/str, found type {type(value)}")
    return parameters


class InferenceResponse:
    """What ``execute`` returns for each request (``pb_utils.InferenceResponse``)."""

    __slots__ = ("_output_tensors", "_error", "_parameters")

    def __init__(self, output_tensors: list | None = None, error: TritonError | None = None,
                 parameters: Any = None):
        if output_tensors is None:
            output_tensors = []
        if not isinstance(output_tensors, list):
            raise TritonModelException('"output_tensors" must be a list.')
        self._output_tensors = output_tensors
        self._error = error
        self._parameters = _checked_parameters(parameters)

    def output_tensors(self) -> list:
        return self._output_tensors

    def has_error(self) -> bool:
        return self._error is not None

    def error(self) -> TritonError | None:
        return self._error

    def parameters(self) -> str:
        return json.dumps(self._parameters)

    def _to_core(self) -> _core.InferenceResponse:
        err = self._error
        if err is not None:
            if isinstance(err, TritonError):
                core_err = err._to_core()
            else:
                core_err = _errors.NaiadError(str(err))
            return _core.InferenceResponse(error=core_err)
        outs = []
        for t in self._output_tensors:
            if not isinstance(t, Tensor):
                raise TritonModelException(
                    f"output tensors must be pb_utils.Tensor objects, got {type(t).__name__}")
            outs.append(_core.Tensor(t._name, t._wire, t._array))
        return _core.InferenceResponse(outs, parameters=self._parameters or None)

    @classmethod
    def _from_core(cls, resp: _core.InferenceResponse) -> "InferenceResponse":
        if resp.error is not None:
            return cls([], TritonError._from_core(resp.error))
        self = cls.__new__(cls)
        self._output_tensors = [Tensor._wrap(t.name, t.datatype, t.data) for t in resp.outputs]
        self._error = None
        self._parameters = dict(resp.parameters or {})
        return self


def get_input_tensor_by_name(inference_request, name: str):
    for t in inference_request.inputs():
        if t._name == name:
            return t
    return None


def get_output_tensor_by_name(inference_response, name: str):
    for t in inference_response.output_tensors():
        if t.name() == name:
            return t
    return None


def get_input_config_by_name(model_config: dict, name: str):
    for io in model_config.get("input", []):
        if io["name"] == name:
            return io
    return None


def get_output_config_by_name(model_config: dict, name: str):
    for io in model_config.get("output", []):
        if io["name"] == name:
            return io
    return None


def using_decoupled_model_transaction_policy(model_config: dict) -> bool:
    return bool(model_config.get("model_transaction_policy", {}).get("decoupled", False))


# -- requests -----------------------------------------------------------------------------


def _text(value: Any) -> Any:
    """bytes as text (UTF-8); anything else unchanged."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    return value


def _response_to_core(response: Any) -> _core.InferenceResponse:
    """What a model returned or sent, as the core response (a model's mistake raises)."""
    if not isinstance(response, InferenceResponse):
        raise TritonModelException(
            f"expected a pb_utils.InferenceResponse, got {type(response).__name__}")
    return response._to_core()


class InferenceResponseSender:
    """Sends a request's responses (``request.get_response_sender()``).

    Triton's rules: a decoupled model sends any number of responses and ends
    with ``TRITONSERVER_RESPONSE_COMPLETE_FINAL`` (with the last response or
    alone); a model that is not decoupled sends exactly one response, with the
    final flag or followed by it (the client receives it once the final flag
    is sent). Anything else raises with Triton's messages.
    """

    __slots__ = ("_request", "_runner", "_decoupled", "_closed", "_sent", "_held", "_lock",
                 "_done", "_open")

    def __init__(self, request: _core.InferenceRequest, runner: Any):
        self._request = request
        self._runner = runner
        self._decoupled = bool(runner.decoupled)
        self._closed = False
        self._sent = 0
        self._held: _core.InferenceResponse | None = None  # not decoupled: until final
        self._lock = threading.Lock()
        self._done = False  # the final flag went out through this sender
        # the runner's senders not closed yet (answered at unload if the model never does)
        self._open = getattr(runner, "open_senders", None)
        if self._open is not None:
            self._open[id(self)] = self

    def send(self, response: InferenceResponse | None = None, flags: int = 0) -> None:
        if flags != TRITONSERVER_RESPONSE_COMPLETE_FINAL and flags != 0:
            raise TritonModelException("Unable to send response. Unsupported flag provided.")
        if flags == 0 and response is None:
            raise TritonModelException(
                "Inference Response object must be provided when the response flags is set "
                "to zero.")
        final = flags == TRITONSERVER_RESPONSE_COMPLETE_FINAL
        core = None if response is None else _response_to_core(response)
        with self._lock:
            if not self._decoupled:
                if response is not None and self._sent > 0:
                    raise TritonModelException(
                        "Unable to send response. Non-decoupled model cannot send more than "
                        "one response.")
                if response is None and final and self._sent == 0:
                    raise TritonModelException(
                        "Unable to send response. Non-decoupled model cannot send complete "
                        "final before sending a response.")
            if self._closed:
                raise TritonModelException(
                    "Unable to send response. Response sender has been closed.")
            if final:
                self._closed = True
                self._done = True
                if self._open is not None:
                    self._open.pop(id(self), None)
            self._sent += 1
            if not self._decoupled:
                if not final:
                    self._held = core
                    return
                if core is None:
                    core, self._held = self._held, None
        self._runner.deliver(self._request, core, final)

    def is_cancelled(self) -> bool:
        return self._request.cancelled

    # -- for the backend: what execute() left behind ---------------------------------

    def _close(self) -> "tuple[bool, _core.InferenceResponse | None]":
        """Close for good (the execution failed): (whether the final flag went out
        already, the response still held if any)."""
        with self._lock:
            held, self._held = self._held, None
            self._closed = True
            if self._open is not None:
                self._open.pop(id(self), None)
            return self._done, held

    def _claim_final(self) -> bool:
        """Count a response execute() returned (not decoupled): False if one was sent."""
        with self._lock:
            if self._sent > 0 or self._closed:
                return False
            self._sent = 1
            self._closed = True
            if self._open is not None:
                self._open.pop(id(self), None)
            return True


class InferenceTrace:
    """``request.trace()``: the trace of a request; pass it to a BLS request
    (``pb_utils.InferenceRequest(..., trace=request.trace())``) to trace the call as
    its child."""

    __slots__ = ("_trace",)

    def __init__(self, trace: Any = None):
        self._trace = trace

    def get_context(self, mode: str = "opentelemetry") -> str | None:
        """The OpenTelemetry context to propagate; None: nothing to propagate."""
        return None


class InferenceRequest:
    """A request as a python model sees it, or (constructed by the model) a BLS request."""

    def __init__(
        self,
        model_name: str = "",
        inputs: list | None = None,
        requested_output_names: list | None = None,
        model_version: int = -1,
        correlation_id: int | str = 0,
        request_id: str = "",
        flags: int = 0,
        timeout: int = 0,
        preferred_memory: Any = None,
        parameters: Any = None,
        trace: Any = None,
    ):
        self._core: _core.InferenceRequest | None = None
        self._runner = None
        # Triton takes bytes for its string arguments (the bls example passes
        # ``in_tensor.as_numpy()[0]``, a numpy bytes value, as the model name)
        self._model_name = _text(model_name)
        self._inputs = list(inputs or [])
        self._requested_output_names = [_text(n) for n in requested_output_names or []]
        self._model_version = model_version
        if isinstance(correlation_id, (bytes, bytearray)):
            correlation_id = _text(correlation_id)
        self._correlation_id = correlation_id
        self._request_id = _text(request_id)
        self._flags = flags
        self._timeout = timeout
        self._preferred_memory = preferred_memory
        if isinstance(parameters, str):  # naiad accepts the JSON text too
            parameters = json.loads(parameters) if parameters else {}
        self._parameters = dict(_checked_parameters(parameters))
        self._sender: InferenceResponseSender | None = None
        self._trace = trace
        self._release_flags = TRITONSERVER_REQUEST_RELEASE_ALL

    @classmethod
    def _wrap(cls, core: _core.InferenceRequest, runner: Any) -> "InferenceRequest":
        """Wrap an incoming core request without copying anything."""
        self = cls.__new__(cls)
        self._core = core
        self._runner = runner
        self._inputs = None
        self._sender = None
        self._trace = None
        self._release_flags = TRITONSERVER_REQUEST_RELEASE_ALL
        return self

    # accessors ----------------------------------------------------------------
    def inputs(self) -> list:
        if self._inputs is None:
            self._inputs = [Tensor._wrap(t.name, t.datatype, t.data)
                            for t in self._core.inputs.values()]
        return self._inputs

    def requested_output_names(self) -> list[str]:
        core = self._core
        if core is None:
            return list(self._requested_output_names)
        if core.requested_outputs:
            return list(core.requested_outputs)
        return list(self._runner.output_names)

    def request_id(self) -> str:
        return self._core.id if self._core is not None else self._request_id

    def correlation_id(self):
        return self._core.correlation_id if self._core is not None else self._correlation_id

    def flags(self) -> int:
        return self._core.flags if self._core is not None else self._flags

    def timeout(self) -> int:
        return self._core.timeout_us if self._core is not None else self._timeout

    def model_name(self) -> str:
        return self._core.model_name if self._core is not None else self._model_name

    def model_version(self) -> int:
        return self._core.model_version if self._core is not None else self._model_version

    def parameters(self) -> str:
        params = self._core.parameters if self._core is not None else self._parameters
        return json.dumps(params, separators=(",", ":"))

    def is_cancelled(self) -> bool:
        return self._core is not None and self._core.cancelled

    def trace(self) -> "InferenceTrace":
        """The request's trace, to hand to BLS requests (``InferenceRequest(trace=...)``)."""
        core = self._core
        return InferenceTrace(core.trace if core is not None else None)

    def get_response_sender(self) -> InferenceResponseSender:
        """The request's response sender (decoupled models, and since Triton 24.06 the
        others too, for their one response)."""
        if self._core is None:
            raise TritonModelException("only requests a model received have a response sender")
        sender = self._sender
        if sender is None:
            sender = self._sender = InferenceResponseSender(self._core, self._runner)
        return sender

    def set_release_flags(self, flags: int) -> None:
        """``TRITONSERVER_REQUEST_RELEASE_RESCHEDULE``: run this request again
        (models with ``sequence_batching { iterative_sequence: true }``), read when
        execute returns."""
        if self._core is None:
            raise TritonModelException("only requests a model received can be released")
        self._release_flags = int(flags)

    # BLS --------------------------------------------------------------------------
    def exec(self, decoupled: bool = False):
        return _bls().execute(self, decoupled)

    async def async_exec(self, decoupled: bool = False):
        return await _bls().async_execute(self, decoupled)

    def stream_exec(self):
        """The older spelling of ``exec(decoupled=True)``."""
        return self.exec(decoupled=True)


# -- auto-complete --------------------------------------------------------------------------


class ModelConfig:
    """The configuration a model's ``auto_complete_config`` may complete."""

    def __init__(self, model_config: str | dict):
        self._model_config = (json.loads(model_config) if isinstance(model_config, str)
                              else model_config)
        self._model_config.setdefault("input", [])
        self._model_config.setdefault("output", [])
        self._model_config.setdefault("max_batch_size", 0)

    def as_dict(self) -> dict:
        return self._model_config

    def set_max_batch_size(self, max_batch_size: int) -> None:
        current = int(self._model_config.get("max_batch_size", 0))
        if current > max_batch_size:
            raise ValueError(
                f"configuration specified max_batch_size {current}, but in auto-complete-config "
                f"function for model '{self._model_config.get('name')}' specified "
                f"max_batch_size {max_batch_size}")
        self._model_config["max_batch_size"] = max_batch_size

    def set_dynamic_batching(self) -> None:
        for other in ("sequence_batching", "ensemble_scheduling"):
            if other in self._model_config:
                raise ValueError(
                    f"Configuration specified scheduling_choice as '{other}', but "
                    f"auto-complete-config function for model '{self._model_config.get('name')}' "
                    "tries to set scheduling_choice as 'dynamic_batching'")
        self._model_config.setdefault("dynamic_batching", {})

    def _add_io(self, kind: str, io: dict, allowed: tuple[str, ...]) -> None:
        model = self._model_config.get("name")
        for key in io:
            if key not in allowed:
                raise ValueError(
                    f"{kind} '{io.get('name')}' in auto-complete-config function for model "
                    f"'{model}' contains property other than {', '.join(repr(a) for a in allowed)}.")
        for key in ("name", "data_type", "dims"):
            if key not in io:
                raise ValueError(
                    f"{kind} in auto-complete-config function for model '{model}' is missing "
                    f"'{key}' property.")
        for current in self._model_config[kind]:
            if current["name"] != io["name"]:
                continue
            cur_dt = current.get("data_type", "TYPE_INVALID")
            if cur_dt != "TYPE_INVALID" and cur_dt != io["data_type"]:
                raise ValueError(
                    f"unable to load model '{model}', configuration expects datatype {cur_dt} "
                    f"for {kind} '{io['name']}', model provides {io['data_type']}")
            cur_dims = [int(d) for d in current.get("dims", [])]
            if cur_dims and cur_dims != [int(d) for d in io["dims"]]:
                raise ValueError(
                    f"model '{model}', tensor '{io['name']}': the model expects dims "
                    f"{list(io['dims'])} but the model configuration specifies dims {cur_dims}")
            current["data_type"] = io["data_type"]
            current["dims"] = list(io["dims"])
            if "optional" in io:
                current["optional"] = io["optional"]
            return
        self._model_config[kind].append(dict(io))

    def add_input(self, input: dict) -> None:  # noqa: A002 - Triton's parameter name
        self._add_io("input", input, ("name", "data_type", "dims", "optional"))

    def add_output(self, output: dict) -> None:
        self._add_io("output", output, ("name", "data_type", "dims"))

    def set_model_transaction_policy(self, transaction_policy_dict: dict) -> None:
        for key in transaction_policy_dict:
            if key != "decoupled":
                raise ValueError(
                    f"model transaction property in auto-complete-config function for model "
                    f"'{self._model_config.get('name')}' contains property other than "
                    "'decoupled'.")
        policy = self._model_config.setdefault("model_transaction_policy", {})
        if "decoupled" in policy and "decoupled" in transaction_policy_dict and \
                policy["decoupled"] != transaction_policy_dict["decoupled"]:
            raise ValueError(
                f"trying to change decoupled property in auto-complete-config for model "
                f"'{self._model_config.get('name')}', which is already set to "
                f"'{policy['decoupled']}'.")
        policy.update(transaction_policy_dict)


# -- logging --------------------------------------------------------------------------------

_model_log = logging.getLogger("naiad.python_model")


class LogLevel:
    INFO = 0
    WARNING = 1
    ERROR = 2
    VERBOSE = 3


class Logger:
    """``pb_utils.Logger``: writes through the server's logging.

    An entry names the model file's line that logged it (as Triton's does) and,
    inside ``execute``, the model (the json log format's ``model`` field).
    """

    _LEVELS = {LogLevel.INFO: logging.INFO, LogLevel.WARNING: logging.WARNING,
               LogLevel.ERROR: logging.ERROR, LogLevel.VERBOSE: logging.DEBUG}

    @staticmethod
    def _write(level: int, message: str) -> None:
        if not _model_log.isEnabledFor(level):
            return
        instance = getattr(_context, "instance", None)
        model = getattr(getattr(instance, "model", None), "name", None)
        _model_log.log(level, "%s", message, extra={"model": model}, stacklevel=3)

    @staticmethod
    def log(message: str, level: int = LogLevel.INFO) -> None:
        Logger._write(Logger._LEVELS.get(level, logging.INFO), message)

    @staticmethod
    def log_info(message: str) -> None:
        Logger._write(logging.INFO, message)

    @staticmethod
    def log_warn(message: str) -> None:
        Logger._write(logging.WARNING, message)

    @staticmethod
    def log_error(message: str) -> None:
        Logger._write(logging.ERROR, message)

    @staticmethod
    def log_verbose(message: str) -> None:
        Logger._write(logging.DEBUG, message)


# -- server access (BLS helpers) ---------------------------------------------------------------

_context = threading.local()
_default_server: list = [None]
# The server side of BLS (naiad.backends.python.bls) registers itself here when it
# is imported; this module, the API models import, imports nothing of the server.
_bls_module: list = [None]


def _bls():
    module = _bls_module[0]
    if module is None:
        raise TritonModelException("BLS calls need the naiad python backend to be loaded")
    return module


def _current_server():
    server = getattr(_context, "server", None)
    if server is None:
        # a thread the model started: the server of the model whose code is calling
        from naiad.backends.python import isolation

        scope = isolation.current_scope()
        server = getattr(scope, "server", None)
    return server if server is not None else _default_server[0]


def is_model_ready(model_name: str, model_version: str = "") -> bool:
    server = _current_server()
    if server is None:
        return False
    version = int(model_version) if str(model_version).strip() else -1
    return server.model_ready(model_name, version)


def load_model(model_name: str, config: str = "", files: dict | None = None) -> None:
    """Load (or reload) a model from a model's code (explicit control mode only)."""
    _bls().load_model(model_name, config, files)


def unload_model(model_name: str, unload_dependents: bool = False) -> None:
    """Unload a model from a model's code (explicit control mode only)."""
    _bls().unload_model(model_name, unload_dependents)


# -- custom metrics -------------------------------------------------------------------------


def _metrics_registry():
    from naiad.observability import metrics

    return metrics


def _metric_number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TritonModelException(f"{what} must be a number, got {type(value).__name__}")
    return float(value)


class MetricFamily:
    """``pb_utils.MetricFamily``: a custom metric family on the server's /metrics page.

    Families with the same name are one family (the first description wins);
    metrics with the same labels share one value. A family disappears from
    /metrics when no ``MetricFamily`` object for it is left.
    """

    COUNTER = 0
    GAUGE = 1
    HISTOGRAM = 2
    _KINDS = {COUNTER: "counter", GAUGE: "gauge", HISTOGRAM: "histogram"}

    def __init__(self, name: str, description: str, kind: int):
        self._family = None
        kind_name = self._KINDS.get(kind) if isinstance(kind, int) else None
        if kind_name is None:
            raise TritonModelException(
                "metric family kind must be MetricFamily.COUNTER, GAUGE or HISTOGRAM")
        if not isinstance(description, str):
            raise TritonModelException("metric family description must be a string")
        m = _metrics_registry()
        try:
            self._family = m.CUSTOM_METRICS.acquire_family(name, description, kind_name)
        except m.CustomMetricError as exc:
            raise TritonModelException(str(exc)) from None
        self._kind = kind
        self._name = name

    def Metric(self, labels: dict | None = None, buckets: list | None = None) -> "Metric":  # noqa: N802 - Triton's name
        return Metric(self, labels, buckets)

    def __del__(self) -> None:
        fam = getattr(self, "_family", None)
        if fam is not None:
            self._family = None
            try:
                _metrics_registry().CUSTOM_METRICS.release_family(fam)
            except Exception:  # interpreter shutdown
                pass


class Metric:
    """One labelled series of a MetricFamily (``family.Metric(labels=..., buckets=...)``)."""

    _DELETED = ("Invalid metric operation as the corresponding 'MetricFamily' has been "
                "deleted.")

    def __init__(self, family: MetricFamily, labels: dict | None = None,
                 buckets: list | None = None):
        import weakref

        self._series = None
        if not isinstance(family, MetricFamily) or family._family is None:
            raise TritonModelException(self._DELETED)
        if labels is not None and not isinstance(labels, dict):
            raise TritonModelException("metric labels must be a dict of strings")
        m = _metrics_registry()
        try:
            self._series = m.CUSTOM_METRICS.acquire_series(family._family, labels, buckets)
        except (m.CustomMetricError, TypeError, ValueError) as exc:
            raise TritonModelException(str(exc)) from None
        self._fam = family._family
        self._kind = family._kind
        self._family_ref = weakref.ref(family)

    def _live(self):
        family = self._family_ref()
        if family is None or family._family is None:
            raise TritonModelException(self._DELETED)
        return _metrics_registry().CUSTOM_METRICS

    def increment(self, value: float) -> None:
        reg = self._live()
        value = _metric_number(value, "increment value")
        if self._kind == MetricFamily.HISTOGRAM:
            raise TritonModelException("a histogram metric cannot be incremented: use observe()")
        if self._kind == MetricFamily.COUNTER and value < 0:
            raise TritonModelException("a counter metric cannot be incremented by a negative value")
        reg.increment(self._fam, self._series, value)

    def set(self, value: float) -> None:
        reg = self._live()
        value = _metric_number(value, "value")
        if self._kind != MetricFamily.GAUGE:
            raise TritonModelException("only a gauge metric can be set")
        reg.set(self._fam, self._series, value)

    def value(self) -> float:
        self._live()
        if self._kind == MetricFamily.HISTOGRAM:
            raise TritonModelException("a histogram metric has no single value")
        return self._series.value

    def observe(self, value: float) -> None:
        reg = self._live()
        value = _metric_number(value, "observed value")
        if self._kind != MetricFamily.HISTOGRAM:
            raise TritonModelException("only a histogram metric can observe values")
        reg.observe(self._fam, self._series, value)

    def __del__(self) -> None:
        series = getattr(self, "_series", None)
        if series is not None:
            self._series = None
            try:
                _metrics_registry().CUSTOM_METRICS.release_series(self._fam, series)
            except Exception:  # interpreter shutdown
                pass
