"""Business Logic Scripting: python models calling other models in-process.

``pb_utils.InferenceRequest(...).exec()`` (and ``async_exec``) land here. A
BLS call builds one core request whose input tensors are the caller's numpy
arrays (no copy, no serialisation), submits it through the data plane's
any-thread entry (``DataPlane.submit``: lookup, decoupled check, the retry of
a version retired by a reload) and waits on a lock the response callback
releases: no event-loop hop, no IPC. An idle cheap target runs inline on the caller's own
thread, so a BLS call to a small python model costs about as much as a
function call plus validation. That is the difference from Triton, where every
BLS call crosses from the stub process to the server and back through shared
memory.

The calling thread may block while it waits; schedulers never need the event
loop to make progress, so that is safe even in the rare case the caller runs
on the loop thread (an inline execution). That case is detected and the
calling instance is taken off inline execution for good, so the loop is not
held again.
"""

from __future__ import annotations

import asyncio
import queue
import sys
import threading
from collections.abc import Iterator
from typing import Any

from naiad.backends.python import pb_utils
from naiad.core import types as core
from naiad.core.errors import NaiadError
from naiad.core.handoff import ResponseWaiter, final_response_future

# Triton's text around the failure a BLS call reports in its response (the data plane
# words the failures themselves, BLS ones included)
_RUN_ERROR = "Model {name} - Error when running inference: {message}"


def _error_response(message: str, code: int = pb_utils.TritonError.INTERNAL
                    ) -> pb_utils.InferenceResponse:
    return pb_utils.InferenceResponse([], pb_utils.TritonError(message, code))


def _from_core(resp: core.InferenceResponse | None) -> pb_utils.InferenceResponse:
    if resp is None:  # a decoupled stream closed without a last response
        return pb_utils.InferenceResponse([])
    return pb_utils.InferenceResponse._from_core(resp)


def _build(pb_request: pb_utils.InferenceRequest) -> core.InferenceRequest:
    """The core request for a BLS request; tensors are shared, not copied."""
    if pb_request._core is not None:
        raise pb_utils.TritonModelException(
            "a request the model received cannot be executed again; build a new "
            "pb_utils.InferenceRequest for the BLS call")
    inputs: dict[str, core.Tensor] = {}
    for t in pb_request._inputs:
        if not isinstance(t, pb_utils.Tensor):
            raise pb_utils.TritonModelException(
                f"BLS inputs must be pb_utils.Tensor objects, got {type(t).__name__}")
        inputs[t._name] = core.Tensor(t._name, t._wire, t._array)
    names = pb_request._requested_output_names
    requested = {n: core.RequestedOutput(n) for n in names} if names else None
    version = pb_request._model_version
    try:
        version = int(version)
    except (TypeError, ValueError):
        raise pb_utils.TritonModelException(
            f"model_version must be an integer, got {version!r}") from None
    params = pb_request._parameters
    request = core.InferenceRequest(
        pb_request._model_name, inputs, model_version=version, id=pb_request._request_id,
        requested_outputs=requested, parameters=dict(params) if params else {},
        correlation_id=pb_request._correlation_id, flags=pb_request._flags,
        timeout_us=int(pb_request._timeout or 0),
    )
    trace = pb_request._trace
    if isinstance(trace, pb_utils.InferenceTrace):
        request.trace = trace._trace  # the parent's; _submit gives the call its own
    return request


def _guard_loop_thread() -> None:
    """A BLS call on the server's event loop thread: stop inline runs of the caller.

    The call itself still completes (schedulers do not need the loop), but
    the loop would be held for its whole duration; the calling instance goes
    back to its worker thread from now on.
    """
    server = pb_utils._current_server()
    if server is None or not server.on_loop_thread():
        return
    caller = getattr(pb_utils._context, "instance", None)
    if caller is not None:
        stop_inline(caller)


def stop_inline(backend_instance: Any) -> None:
    """Never run this backend instance inline on a submitting thread again."""
    backend_instance.inline_capable = False
    owner = getattr(backend_instance, "model", None)
    model = getattr(owner, "model", None)
    scheduler = getattr(model, "scheduler", None)
    for inst in getattr(scheduler, "instances", ()) or ():
        if inst.backend is backend_instance:
            inst.inline_enabled = False


def _submit(request: core.InferenceRequest, on_response: core.ResponseCallback,
            decoupled: bool) -> pb_utils.InferenceResponse | None:
    """Submit through the data plane; an error response if the call is refused."""
    server = pb_utils._current_server()
    if server is None:
        return _error_response(_RUN_ERROR.format(
            name=request.model_name, message="no server is running to execute BLS requests"))
    parent = request.trace  # the caller's trace, from InferenceRequest(trace=request.trace())
    request.trace = None
    try:
        server.submit(request, on_response, stream=decoupled, caller="bls",
                      parent_trace=parent)
    except NaiadError as exc:
        return _error_response(_RUN_ERROR.format(name=request.model_name, message=exc.message),
                               pb_utils.TritonError._CODES.get(exc.kind,
                                                               pb_utils.TritonError.INTERNAL))
    return None


def _timeout_s(request: core.InferenceRequest) -> float:
    return request.timeout_us / 1e6 if request.timeout_us > 0 else -1


def execute(pb_request: pb_utils.InferenceRequest, decoupled: bool = False):
    """``InferenceRequest.exec``: a response, or an iterator of them if ``decoupled``."""
    request = _build(pb_request)
    _guard_loop_thread()
    if decoupled:
        stream = ResponseIterator(request)
        error = _submit(request, stream._on_response, True)
        return _SingleResponse(error) if error is not None else stream
    waiter = ResponseWaiter()
    error = _submit(request, waiter, False)
    if error is not None:
        return error
    if not waiter.wait(_timeout_s(request)):
        request.cancelled = True
        return _error_response(_RUN_ERROR.format(
            name=request.model_name, message="Request timeout expired"),
            pb_utils.TritonError.CANCELLED)
    return _from_core(waiter.response)


async def async_execute(pb_request: pb_utils.InferenceRequest, decoupled: bool = False):
    """``await InferenceRequest.async_exec``: never blocks the model's event loop."""
    request = _build(pb_request)
    if decoupled:
        stream = AsyncResponseIterator(request, asyncio.get_running_loop(),
                                       threading.get_ident())
        error = _submit(request, stream._on_response, True)
        return _SingleResponse(error) if error is not None else stream
    fut, on_response = final_response_future()
    error = _submit(request, on_response, False)
    if error is not None:
        return error
    timeout = _timeout_s(request)
    try:
        if timeout > 0:
            response = await asyncio.wait_for(fut, timeout)
        else:
            response = await fut
    except asyncio.TimeoutError:
        request.cancelled = True
        return _error_response(_RUN_ERROR.format(
            name=request.model_name, message="Request timeout expired"),
            pb_utils.TritonError.CANCELLED)
    except asyncio.CancelledError:
        request.cancelled = True
        raise
    return _from_core(response)


def _resolve(fut: asyncio.Future, value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


class ResponseIterator(Iterator):
    """The responses of a decoupled BLS call, as they arrive.

    As in Triton, the stream ends with the final response; when the target
    closes the stream with only the final flag, that last response is empty.
    """

    def __init__(self, request: core.InferenceRequest):
        self._request = request
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._done = False

    def _on_response(self, response: core.InferenceResponse | None, final: bool) -> None:
        self._queue.put((response, final))

    def __iter__(self) -> "ResponseIterator":
        return self

    def __next__(self) -> pb_utils.InferenceResponse:
        if self._done:
            raise StopIteration
        timeout = _timeout_s(self._request)
        try:
            response, final = self._queue.get(timeout=timeout if timeout > 0 else None)
        except queue.Empty:
            return self._timed_out()
        if final:
            self._done = True
        return _from_core(response)

    def _timed_out(self) -> pb_utils.InferenceResponse:
        """The request's timeout passed: cancel it; its last response says so."""
        self._done = True
        self._request.cancelled = True
        return _error_response(_RUN_ERROR.format(
            name=self._request.model_name, message="Request timeout expired"),
            pb_utils.TritonError.CANCELLED)

    def cancel(self) -> None:
        """Ask the target to stop (it sees ``is_cancelled()``)."""
        self._request.cancelled = True


class AsyncResponseIterator(ResponseIterator):
    """What ``await request.async_exec(decoupled=True)`` returns.

    Triton returns its ordinary response iterator there, and models loop over
    it with a plain ``for`` (each step waits for the next response, as it does
    after ``exec``); naiad's also supports ``async for``, which waits without
    blocking the model's event loop.
    """

    def __init__(self, request: core.InferenceRequest, loop: asyncio.AbstractEventLoop,
                 loop_thread: int):
        super().__init__(request)
        self._loop = loop
        self._loop_thread = loop_thread
        self._waiter: asyncio.Future | None = None

    def _on_response(self, response: core.InferenceResponse | None, final: bool) -> None:
        self._queue.put((response, final))
        waiter = self._waiter
        if waiter is not None:
            if threading.get_ident() == self._loop_thread:
                _resolve(waiter, None)
            else:
                self._loop.call_soon_threadsafe(_resolve, waiter, None)

    def __aiter__(self) -> "AsyncResponseIterator":
        return self

    async def __anext__(self) -> pb_utils.InferenceResponse:
        if self._done:
            raise StopAsyncIteration
        timeout = _timeout_s(self._request)
        while True:
            try:
                response, final = self._queue.get_nowait()
                break
            except queue.Empty:
                pass
            waiter = self._waiter = self._loop.create_future()
            if not self._queue.empty():  # arrived before the waiter was set
                self._waiter = None
                continue
            try:
                if timeout > 0:
                    await asyncio.wait_for(waiter, timeout)
                else:
                    await waiter
            except asyncio.TimeoutError:
                return self._timed_out()
            finally:
                self._waiter = None
        if final:
            self._done = True
        return _from_core(response)


class _SingleResponse(ResponseIterator):
    """A call that failed before it started: one error response, for ``for`` and
    ``async for`` alike."""

    def __init__(self, response: pb_utils.InferenceResponse):
        self._response = response
        self._done = False

    def __next__(self) -> pb_utils.InferenceResponse:
        if self._done:
            raise StopIteration
        self._done = True
        return self._response

    def __aiter__(self) -> "_SingleResponse":
        return self

    async def __anext__(self) -> pb_utils.InferenceResponse:
        try:
            return self.__next__()
        except StopIteration:
            raise StopAsyncIteration from None

    def cancel(self) -> None:
        pass


# -- model management from BLS -------------------------------------------------------


def _run_on_server_loop(coro_factory, what: str):
    server = pb_utils._current_server()
    if server is None:
        raise pb_utils.TritonModelException(f"no server is running to {what}")
    if server.on_loop_thread():
        raise pb_utils.TritonModelException(
            f"cannot {what} from the server's event loop thread")
    try:
        return server.call(coro_factory(server))
    except NaiadError as exc:
        raise pb_utils.TritonModelException(
            exc.message, pb_utils.TritonError._CODES.get(exc.kind, pb_utils.TritonError.INTERNAL)
        ) from None


def load_model(model_name: str, config: str = "", files: dict | None = None) -> None:
    """``pb_utils.load_model``: load (or reload) a model; explicit control mode only."""
    parsed = None
    if config:
        from naiad.protocol.config_json import parse_config_json

        parsed = parse_config_json(config)
    file_map = {k[len("file:"):] if k.startswith("file:") else k: bytes(v)
                for k, v in (files or {}).items()}
    _run_on_server_loop(
        lambda server: server.load_model(model_name, config=parsed, files=file_map or None),
        f"load model '{model_name}'")


def unload_model(model_name: str, unload_dependents: bool = False) -> None:
    """``pb_utils.unload_model``; explicit control mode only."""
    _run_on_server_loop(lambda server: server.unload_model(model_name, unload_dependents),
                        f"unload model '{model_name}'")


pb_utils._bls_module[0] = sys.modules[__name__]
