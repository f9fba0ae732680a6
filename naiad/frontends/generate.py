"""Triton's generate extension: ``/generate`` and ``/generate_stream`` (server-sent events).

The request is one flat JSON object. Keys named like the model's inputs
become tensors (a scalar or a flat array, shaped to the input's dims with
wildcards resolved from the element count, batch dimension 1 for batching
models); ``id`` is the request id; ``parameters`` and every other key become
request parameters, as Triton passes them. A response is one flat JSON
object too: each output (a scalar when it holds one element, else a flat
list), ``model_name``, ``model_version``, ``id`` when the request had one, and
the response's parameters.

``/generate`` answers with exactly one JSON object (a decoupled model must
produce exactly one response); ``/generate_stream`` sends each response as an
SSE ``data:`` event the moment it exists, errors included, and the HTTP status
is that of the first response. Failures before inference starts are plain
JSON errors with the usual status.

Where Triton answers 500 to a malformed value (a float for an INT32 input)
this answers 400, and where Triton answers 200 with an error body (``/generate``
on a model that streams several responses) this answers 400.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from naiad.core import datatypes
from naiad.core.errors import InvalidArgument, NaiadError
from naiad.core.types import InferenceRequest, InferenceResponse, Tensor
from naiad.frontends.status import http_status

if TYPE_CHECKING:
    from naiad.core.model import Model

log = logging.getLogger("naiad.generate")

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream; charset=utf-8"),
               (b"cache-control", b"no-cache")]

ONE_RESPONSE = ("generate expects model to produce exactly 1 response, use generate stream for "
                "model that generates various number of responses")

_INT_TYPES = {"INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
_FLOAT_TYPES = {"FP16", "FP32", "FP64"}


def _elements(name: str, value: Any, datatype: str) -> list:
    """A JSON value as a flat list of elements of the input's datatype."""
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, (list, dict)):
            raise InvalidArgument(
                f"The schema can not convert input '{name}' to tensor with proper shape")
        if datatype == "BYTES":
            if not isinstance(item, str):
                raise InvalidArgument(
                    f"Unable to parse JSON bytes array for input '{name}': expected strings")
        elif datatype == "BOOL":
            if not isinstance(item, bool):
                raise InvalidArgument(f"Unable to parse 'data' of input '{name}': expected "
                                      "booleans")
        elif datatype in _INT_TYPES:
            if isinstance(item, bool) or not isinstance(item, int):
                raise InvalidArgument(f"Unable to parse 'data' of input '{name}': expected "
                                      "integers")
        elif datatype in _FLOAT_TYPES:
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                raise InvalidArgument(f"Unable to parse 'data' of input '{name}': expected "
                                      "numbers")
        else:
            raise InvalidArgument(
                f"input '{name}' has datatype {datatype}, which the generate extension cannot "
                "fill from JSON")
    return items


def _shape(name: str, dims: tuple[int, ...], count: int, batching: bool) -> tuple[int, ...]:
    known = 1
    wildcards = 0
    for d in dims:
        if d < 0:
            wildcards += 1
        else:
            known *= d
    shape = list(dims)
    if wildcards:
        if known == 0 or count % known:
            raise InvalidArgument(
                f"The schema can not convert input '{name}' to tensor with proper shape")
        first = True
        for i, d in enumerate(shape):
            if d < 0:
                shape[i] = count // known if first else 1
                first = False
    elif known != count:
        raise InvalidArgument(
            f"The schema can not convert input '{name}' to tensor with proper shape")
    return tuple(([1] if batching else []) + shape)


def build_request(model: "Model", name: str, version: int, body: Any) -> InferenceRequest:
    """A core request from a generate JSON object."""
    if not isinstance(body, dict):
        raise InvalidArgument("the generate request must be a JSON object")
    inputs: dict[str, Tensor] = {}
    params: dict[str, Any] = {}
    request_id = ""
    batching = model.max_batch_size > 0
    for key, value in body.items():
        spec = model.inputs.get(key)
        if spec is not None:
            items = _elements(key, value, spec.datatype)
            shape = _shape(key, spec.dims, len(items), batching)
            if spec.datatype == "BYTES":
                arr = np.empty(len(items), dtype=np.object_)
                arr[:] = [s.encode("utf-8") for s in items]
            else:
                try:
                    arr = np.array(items, dtype=datatypes.numpy_dtype(spec.datatype))
                except (OverflowError, ValueError):
                    raise InvalidArgument(
                        f"value of input '{key}' does not fit datatype {spec.datatype}") from None
            inputs[key] = Tensor(key, spec.datatype, arr.reshape(shape))
        elif key == "id":
            if not isinstance(value, str):
                raise InvalidArgument("'id' must be a string")
            request_id = value
        elif key == "parameters":
            if not isinstance(value, dict):
                raise InvalidArgument("'parameters' must be a JSON object")
            for pk, pv in value.items():
                if not isinstance(pv, (str, int, float, bool)):
                    raise InvalidArgument(
                        f"parameter '{pk}' must be a string, a number or a boolean")
                params[pk] = pv
        else:
            if isinstance(value, (str, int, float, bool)):
                params[key] = value
            # arrays or objects under unknown keys match no input and no parameter: ignored
    return InferenceRequest(name, inputs, model_version=version, id=request_id,
                            parameters=params)


def _json_value(t: Tensor) -> Any:
    data = t.data
    if t.datatype == "BYTES":
        flat = [b.decode("utf-8", errors="replace") if isinstance(b, bytes) else str(b)
                for b in data.reshape(-1)]
    else:
        flat = data.reshape(-1).tolist()
    return flat[0] if len(flat) == 1 else flat


def response_json(response: InferenceResponse) -> dict:
    out: dict[str, Any] = {}
    if response.parameters:
        out.update(response.parameters)
    for t in response.outputs:
        out[t.name] = _json_value(t)
    out["model_name"] = response.model_name
    out["model_version"] = str(response.model_version)
    if response.id:
        out["id"] = response.id
    return out


def _error_status(error: NaiadError) -> int:
    """As Triton's generate endpoint: a model's own failure is a 400, not a 500."""
    status = http_status(error.kind)
    return 400 if status == 500 else status


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY)


async def _send_json(send: Callable, status: int, obj: Any) -> None:
    body = _dumps(obj)
    await send({"type": "http.response.start", "status": status,
                "headers": JSON_HEADERS + [(b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def serve(server: Any, name: str, version: int, body: bytes | bytearray, stream: bool,
                send: Callable) -> None:
    """Answer one generate or generate_stream request (the HTTP frontend's hook).

    Raises NaiadError for failures before anything was sent, which the
    frontend turns into a JSON error with the usual status.
    """
    try:
        obj = orjson.loads(body) if bytes(body).strip() else {}
    except orjson.JSONDecodeError as exc:
        raise InvalidArgument(f"failed to parse the request JSON buffer: {exc}") from None
    model = server.get_model(name, version)
    request = build_request(model, name, version, obj)
    if stream:
        await _stream(server, request, send)
        return
    try:
        if not model.decoupled:
            response = await server.infer(request)
        else:
            responses = []
            async for response in server.infer_stream(request):
                if response.error is not None:
                    raise response.error
                if response.outputs:
                    responses.append(response)
            if len(responses) != 1:
                raise InvalidArgument(ONE_RESPONSE)
            response = responses[0]
    except NaiadError as exc:
        await _send_json(send, _error_status(exc), {"error": exc.message})
        return
    await _send_json(send, 200, response_json(response))


async def _stream(server: Any, request: InferenceRequest, send: Callable) -> None:
    started = False
    responses = server.infer_stream(request)
    try:
        async for response in responses:
            if response.error is not None:
                event = {"error": response.error.message}
                status = _error_status(response.error)
            elif not response.outputs and not response.parameters:
                continue  # an empty final response carries nothing to show
            else:
                event = response_json(response)
                status = 200
            if not started:
                await send({"type": "http.response.start", "status": status,
                            "headers": SSE_HEADERS})
                started = True
            await send({"type": "http.response.body", "body": b"data: " + _dumps(event) +
                        b"\n\n", "more_body": True})
    except OSError:
        return  # the client went away; infer_stream cancels the request
    finally:
        await responses.aclose()
    if not started:
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
