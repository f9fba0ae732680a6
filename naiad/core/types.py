"""The core's request, response and tensor objects.

A frontend (HTTP, gRPC, BLS, an ensemble step, the in-process API) builds one
:class:`InferenceRequest`, hands it to ``Server.infer``/``Model.submit`` and
gets :class:`InferenceResponse` objects back through the request's response
callback. The request carries its own timestamps, so statistics and tracing
need nothing beside it.

These classes sit on the per-request hot path: they use ``__slots__`` and do
no work in their constructors beyond storing what they are given.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from naiad.core.errors import NaiadError

# Triton's TRITONSERVER_RequestFlag bits
SEQUENCE_START = 1
SEQUENCE_END = 2


class Tensor:
    """A named tensor: wire datatype plus a numpy array holding the data.

    ``data`` is an ``np.ndarray`` whose dtype is ``datatypes.numpy_dtype(datatype)``
    (object array of ``bytes`` for BYTES, raw ``uint16`` bits for BF16).
    """

    __slots__ = ("name", "datatype", "data", "parameters")

    def __init__(self, name: str, datatype: str, data: np.ndarray, parameters: dict | None = None):
        self.name = name
        self.datatype = datatype
        self.data = data
        self.parameters = parameters

    @property
    def shape(self) -> tuple[int, ...]:
        return self.data.shape

    def __repr__(self) -> str:
        return f"Tensor({self.name!r}, {self.datatype}, shape={list(self.data.shape)})"


class _Deferred:
    """See :data:`DEFERRED`."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "DEFERRED"


# An entry of the list a backend instance's ``execute`` returns: the backend
# answers this request itself, later, through ``Model.deliver`` (a python model's
# response sender), or the request runs again (``InferenceRequest.reschedule``).
DEFERRED = _Deferred()


class RequestedOutput:
    """An output the client asked for, with its per-output parameters.

    ``parameters`` keeps protocol-level keys (``binary_data``, shared memory
    placement); ``class_count`` > 0 asks for the classification extension.
    """

    __slots__ = ("name", "parameters", "class_count")

    def __init__(self, name: str, parameters: dict | None = None, class_count: int = 0):
        self.name = name
        self.parameters = parameters
        self.class_count = class_count

    def __repr__(self) -> str:
        return f"RequestedOutput({self.name!r}, class_count={self.class_count})"


def successful(response: "InferenceResponse | None", model_name: str) -> "InferenceResponse":
    """A request's final response, or raise what it failed with."""
    if response is None:
        raise NaiadError(f"model '{model_name}' sent no response")
    if response.error is not None:
        raise response.error
    return response


class InferenceResponse:
    """One response to one request; ``error`` set means the request failed."""

    __slots__ = ("model_name", "model_version", "id", "outputs", "parameters", "error")

    def __init__(
        self,
        outputs: list[Tensor] | None = None,
        error: NaiadError | None = None,
        parameters: dict | None = None,
        model_name: str = "",
        model_version: int = -1,
        id: str = "",
    ):
        self.outputs = outputs if outputs is not None else []
        self.error = error
        self.parameters = parameters
        self.model_name = model_name
        self.model_version = model_version
        self.id = id

    def output(self, name: str) -> Tensor | None:
        for t in self.outputs:
            if t.name == name:
                return t
        return None

    def as_numpy(self, name: str) -> np.ndarray | None:
        t = self.output(name)
        return None if t is None else t.data

    def __repr__(self) -> str:
        if self.error is not None:
            return f"InferenceResponse(error={self.error!r})"
        return f"InferenceResponse({self.model_name!r}, v{self.model_version}, {self.outputs!r})"


# Callback a request delivers its responses through: (response, final). It is
# called from whichever thread produced the response (a model instance's
# worker, a python model's own thread for decoupled models); the issuer is
# responsible for hopping back to its own thread or loop. ``response`` may be
# None together with final=True (a decoupled model closing a stream without a
# last response).
ResponseCallback = Callable[["InferenceResponse | None", bool], None]


class InferenceRequest:
    """A request for one model, as the core sees it, whatever its protocol."""

    __slots__ = (
        "model_name",
        "model_version",
        "id",
        "inputs",
        "requested_outputs",
        "parameters",
        "correlation_id",
        "flags",
        "priority",
        "timeout_us",
        "batch_size",
        # timestamps (time.monotonic_ns), filled in along the path
        "arrival_ns",
        "queue_start_ns",
        "compute_start_ns",
        "compute_input_end_ns",
        "compute_output_start_ns",
        "compute_end_ns",
        # delivery
        "_callback",
        "_final_sent",
        "_lock",
        "cancelled",
        "trace",
        "state",
        "origin",
        # set by a backend: run the request again (iterative sequences); its
        # scheduler re-enqueues it instead of considering it done
        "reschedule",
    )

    def __init__(
        self,
        model_name: str,
        inputs: dict[str, Tensor],
        model_version: int = -1,
        id: str = "",
        requested_outputs: dict[str, RequestedOutput] | None = None,
        parameters: dict[str, Any] | None = None,
        correlation_id: int | str = 0,
        flags: int = 0,
        priority: int = 0,
        timeout_us: int = 0,
    ):
        self.model_name = model_name
        self.model_version = model_version
        self.id = id
        self.inputs = inputs
        self.requested_outputs = requested_outputs
        self.parameters = parameters if parameters is not None else {}
        self.correlation_id = correlation_id
        self.flags = flags
        self.priority = priority
        self.timeout_us = timeout_us
        self.batch_size = 0
        self.arrival_ns = time.monotonic_ns()
        self.queue_start_ns = 0
        self.compute_start_ns = 0
        self.compute_input_end_ns = 0
        self.compute_output_start_ns = 0
        self.compute_end_ns = 0
        self._callback: ResponseCallback | None = None
        self._final_sent = False
        self._lock: threading.Lock | None = None
        self.cancelled = False
        self.trace = None
        self.state = None
        self.origin = None
        self.reschedule = False

    # -- response delivery -------------------------------------------------

    def set_response_callback(self, callback: ResponseCallback) -> None:
        self._callback = callback
        self._final_sent = False

    def enable_concurrent_responses(self) -> None:
        """Decoupled models may answer from several threads at once."""
        if self._lock is None:
            self._lock = threading.Lock()

    def respond(self, response: InferenceResponse | None, final: bool = True) -> bool:
        """Deliver a response (thread-safe against a late duplicate final).

        Returns False, dropping the response, once a final response has been
        delivered: nothing is ever answered twice.
        """
        lock = self._lock
        if lock is not None:
            with lock:
                return self._deliver(response, final)
        return self._deliver(response, final)

    def _deliver(self, response: InferenceResponse | None, final: bool) -> bool:
        if self._final_sent:
            return False
        if final:
            self._final_sent = True
        cb = self._callback
        if cb is not None:
            cb(response, final)
        return True

    def respond_error(self, error: NaiadError) -> bool:
        return self.respond(
            InferenceResponse(
                error=error, model_name=self.model_name, model_version=self.model_version, id=self.id
            ),
            True,
        )

    @property
    def responded(self) -> bool:
        return self._final_sent

    def __repr__(self) -> str:
        return (
            f"InferenceRequest({self.model_name!r}, v{self.model_version}, id={self.id!r}, "
            f"inputs={list(self.inputs)})"
        )
