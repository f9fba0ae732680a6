"""A loaded model version: its config, its instances, its scheduler.

``Model.submit`` is where every request enters a model, whatever its
frontend: it checks the request against the config (names, datatypes, shapes
including the batch dimension), stamps it and hands it to the scheduler.
Worker threads call ``Model.complete`` with the backend's responses, which
filters and shapes the outputs, applies classification, records statistics
and delivers each response through the request's callback.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING

from naiad.core import classification, datatypes
from naiad.core.errors import InvalidArgument, NaiadError, Unavailable
from naiad.core.statistics import ModelStatistics
from naiad.core.types import DEFERRED, InferenceRequest, InferenceResponse

if TYPE_CHECKING:
    from naiad.backends.base import BackendModel
    from naiad.core.scheduler import Scheduler
    from naiad.protocol.model_config_pb2 import ModelConfig

log = logging.getLogger("naiad.model")

WILDCARD = -1


def dims_str(dims) -> str:
    return "[" + ",".join(str(int(d)) for d in dims) + "]"


class IOSpec:
    """A config input or output, pre-digested for the per-request checks."""

    __slots__ = (
        "name",
        "datatype",
        "dims",
        "reshape",
        "optional",
        "is_shape_tensor",
        "allow_ragged_batch",
        "labels",
        "has_wildcard",
    )

    def __init__(self, io, model_dir: str | None = None):
        self.name: str = io.name
        self.datatype: str = datatypes.config_to_wire(datatypes.enum_name(io, "data_type"))
        self.dims: tuple[int, ...] = tuple(int(d) for d in io.dims)
        self.reshape: tuple[int, ...] | None = (
            tuple(int(d) for d in io.reshape.shape) if io.HasField("reshape") else None
        )
        self.optional: bool = bool(getattr(io, "optional", False))
        self.is_shape_tensor: bool = bool(io.is_shape_tensor)
        self.allow_ragged_batch: bool = bool(getattr(io, "allow_ragged_batch", False))
        self.has_wildcard = WILDCARD in self.dims
        self.labels: list[str] | None = None
        label_file = getattr(io, "label_filename", "")
        if label_file and model_dir:
            path = os.path.join(model_dir, label_file)
            try:
                with open(path, encoding="utf-8") as f:
                    self.labels = [line.rstrip("\r\n") for line in f]
            except OSError as exc:
                raise InvalidArgument(
                    f"unable to read label file '{label_file}' of output '{io.name}': {exc}"
                ) from None

    def matches(self, dims: tuple[int, ...]) -> bool:
        """Whether a request shape (without the batch dimension) fits the config dims."""
        cfg = self.dims
        if len(dims) != len(cfg):
            return False
        if not self.has_wildcard:
            return dims == cfg
        for got, want in zip(dims, cfg):
            if want != WILDCARD and got != want:
                return False
        return True


class Model:
    """One version of one model, ready to take requests."""

    def __init__(
        self,
        config: ModelConfig,
        version: int,
        backend_model: "BackendModel | None",
        model_dir: str = "",
        version_dir: str = "",
        repository: str = "",
    ):
        self.config = config
        self.name: str = config.name
        self.version = version
        self.model_dir = model_dir
        self.version_dir = version_dir
        self.repository = repository
        self.backend_model = backend_model
        self.max_batch_size: int = int(config.max_batch_size)
        self.inputs: dict[str, IOSpec] = {io.name: IOSpec(io) for io in config.input}
        self.outputs: dict[str, IOSpec] = {io.name: IOSpec(io, model_dir) for io in config.output}
        self.required_inputs: tuple[str, ...] = tuple(
            n for n, s in self.inputs.items() if not s.optional
        )
        self.decoupled: bool = bool(config.model_transaction_policy.decoupled)
        self._output_reshape = {n: s for n, s in self.outputs.items() if s.reshape is not None}
        self._input_reshape = {n: s for n, s in self.inputs.items() if s.reshape is not None}
        self.stats = ModelStatistics(self.name, version)
        self.scheduler: Scheduler = None  # type: ignore[assignment]  # set by the loader
        self.accepting = True

    # -- descriptions --------------------------------------------------------

    @property
    def platform(self) -> str:
        return self.config.platform or self.config.backend

    def io_metadata(self) -> tuple[list[dict], list[dict]]:
        def shape(spec: IOSpec) -> list[int]:
            dims = list(spec.dims)
            return [-1] + dims if self.max_batch_size > 0 else dims

        ins = [{"name": s.name, "datatype": s.datatype, "shape": shape(s)}
               for s in self.inputs.values()]
        outs = [{"name": s.name, "datatype": s.datatype, "shape": shape(s)}
                for s in self.outputs.values()]
        return ins, outs

    # -- the request path -------------------------------------------------------

    def validate(self, request: InferenceRequest) -> None:
        """Check a request against the config; sets ``request.batch_size``."""
        inputs = request.inputs
        specs = self.inputs
        name = self.name
        for iname in inputs:
            if iname not in specs:
                raise InvalidArgument(f"unexpected inference input '{iname}' for model '{name}'")
        if len(inputs) < len(specs):
            missing = [n for n in self.required_inputs if n not in inputs]
            if missing:
                got = list(inputs)
                raise InvalidArgument(
                    f"[request id: {request.id or '<id_unknown>'}] expected "
                    f"{len(self.required_inputs)} inputs but got {len(inputs)} inputs for model "
                    f"'{name}'. Got input(s) {got}, but missing required input(s) {missing}. "
                    "Please provide all required input(s)."
                )
        mbs = self.max_batch_size
        batch = 0
        for iname, tensor in inputs.items():
            spec = specs[iname]
            if tensor.datatype != spec.datatype:
                raise InvalidArgument(
                    f"[request id: {request.id or '<id_unknown>'}] inference input '{iname}' "
                    f"data-type is '{tensor.datatype}', but model '{name}' expects "
                    f"'{spec.datatype}'"
                )
            shape = tensor.data.shape
            if mbs > 0 and not spec.is_shape_tensor:
                if len(shape) == 0:
                    raise InvalidArgument(self._shape_error(request, spec, shape))
                b = shape[0]
                if batch == 0:
                    batch = b
                elif b != batch:
                    raise InvalidArgument(
                        f"input '{iname}' batch size does not match other inputs for '{name}'"
                    )
                dims = shape[1:]
            else:
                dims = shape
            if not spec.matches(dims):
                raise InvalidArgument(self._shape_error(request, spec, shape))
        if mbs > 0:
            if batch < 1 and inputs:
                raise InvalidArgument(
                    f"[request id: {request.id or '<id_unknown>'}] inference request batch-size "
                    f"must be >= 1 for '{name}'"
                )
            if batch > mbs:
                raise InvalidArgument(
                    f"[request id: {request.id or '<id_unknown>'}] inference request batch-size "
                    f"must be <= {mbs} for '{name}'"
                )
        request.batch_size = batch if mbs > 0 else 1
        outs = request.requested_outputs
        if outs:
            for oname, ro in outs.items():
                spec = self.outputs.get(oname)
                if spec is None:
                    raise InvalidArgument(
                        f"unexpected inference output '{oname}' for model '{name}'"
                    )
                if ro.class_count and spec.datatype in classification.UNSUPPORTED:
                    raise InvalidArgument(classification.unsupported_message(oname,
                                                                             spec.datatype))
        if self._input_reshape:
            for iname, spec in self._input_reshape.items():
                t = inputs.get(iname)
                if t is not None:
                    lead = t.data.shape[:1] if mbs > 0 else ()
                    t.data = t.data.reshape(lead + tuple(spec.reshape))

    def _shape_error(self, request: InferenceRequest, spec: IOSpec, shape) -> str:
        expected = ([-1] if self.max_batch_size > 0 else []) + list(spec.dims)
        note = ""
        if self.max_batch_size > 0:
            note = (
                "NOTE: Setting a non-zero max_batch_size in the model config requires a batch "
                "dimension to be prepended to each input shape. If you want to specify the full "
                "shape including the batch dim in your input dims config, try setting "
                "max_batch_size to zero. See the model configuration docs for more info on "
                "max_batch_size."
            )
        return (
            f"[request id: {request.id or '<id_unknown>'}] unexpected shape for input "
            f"'{spec.name}' for model '{self.name}'. Expected {dims_str(expected)}, got "
            f"{dims_str(shape)}. {note}"
        )

    def submit(self, request: InferenceRequest) -> None:
        """Validate and enqueue; the response arrives through the request's callback.

        Raises NaiadError (nothing enqueued) when the request is refused.
        """
        if not self.accepting:
            raise Unavailable(f"model '{self.name}' version {self.version} is not ready")
        self.validate(request)
        if self.decoupled:
            request.enable_concurrent_responses()
        request.model_version = self.version
        request.queue_start_ns = time.monotonic_ns()
        self.scheduler.enqueue(request)

    def cancel(self, request: InferenceRequest) -> None:
        """The client gave up (disconnect, gRPC cancel): mark the request, unqueue it.

        A request still waiting in the scheduler is dropped at once and
        answered CANCELLED; one already executing sees ``cancelled`` (python
        models: ``request.is_cancelled()``).
        """
        request.cancelled = True
        if request.responded:
            return
        self.scheduler.cancel(request)

    # -- completion (worker threads) ---------------------------------------------

    def finish_response(self, request: InferenceRequest, response: InferenceResponse) -> None:
        """Shape a backend's response for the client (in place)."""
        response.model_name = self.name
        response.model_version = self.version
        response.id = request.id
        if response.error is not None:
            return
        if request.state is not None:  # sequence batcher: implicit state leaves the response
            request.state.capture(response)
        outputs = response.outputs
        wanted = request.requested_outputs
        if wanted:
            outputs = [t for t in outputs if t.name in wanted]
        if self._output_reshape:
            for t in outputs:
                spec = self._output_reshape.get(t.name)
                if spec is not None:
                    lead = t.data.shape[:1] if self.max_batch_size > 0 else ()
                    dims = tuple(-1 if d == WILDCARD else d for d in spec.dims)
                    t.data = t.data.reshape(lead + dims)
        if wanted:
            for i, t in enumerate(outputs):
                ro = wanted.get(t.name)
                if ro is not None and ro.class_count > 0:
                    spec = self.outputs.get(t.name)
                    outputs[i] = classification.top_k(
                        t, ro.class_count, spec.labels if spec else None,
                        batched=self.max_batch_size > 0,
                    )
        response.outputs = outputs

    def complete(self, requests: list[InferenceRequest],
                 responses: list[InferenceResponse | None] | None,
                 error: NaiadError | None = None) -> None:
        """Deliver a backend execution's results (called on the worker thread)."""
        end = time.monotonic_ns()
        stats = self.stats
        if error is None and responses is not None and len(responses) != len(requests):
            error = NaiadError(
                f"model '{self.name}' returned {len(responses)} responses for "
                f"{len(requests)} requests"
            )
        for i, req in enumerate(requests):
            if error is not None:
                resp = InferenceResponse(error=error)
            else:
                resp = responses[i] if responses is not None else None
                if resp is None or resp is DEFERRED:
                    if responses is None or resp is DEFERRED:
                        continue  # the model answers this request itself (or it runs again)
                    resp = InferenceResponse(
                        error=NaiadError(f"model '{self.name}' returned no response")
                    )
            try:
                self.finish_response(req, resp)
            except Exception as exc:  # a malformed output (wrong shape for its reshape...)
                resp = InferenceResponse(error=NaiadError(f"invalid output: {exc}"))
                self.finish_response(req, resp)
            req.compute_end_ns = end
            if req.responded:
                continue  # answered already (nothing is answered twice)
            # counted before the client can see the answer: statistics read right after
            # a response include it (no other thread answers an executing request)
            stats.record_request(req, resp.error is None, time.monotonic_ns())
            req.respond(resp, True)

    def deliver(self, request: InferenceRequest, response: InferenceResponse | None,
                final: bool) -> None:
        """A response a backend sends by itself (decoupled models, ensembles), from any
        thread. The one response of a model that is not decoupled is counted before
        the client can see it, as in ``complete``."""
        start = time.monotonic_ns()
        if response is not None:
            try:
                self.finish_response(request, response)
            except Exception as exc:
                response = InferenceResponse(error=NaiadError(f"invalid output: {exc}"))
                self.finish_response(request, response)
        ok = response is None or response.error is None
        if final and not self.decoupled:  # (ensembles that are not decoupled)
            if not request.responded:
                self.stats.record_request(request, ok, time.monotonic_ns())
                request.respond(response, True)
            return
        if request.respond(response, final):
            now = time.monotonic_ns()
            if self.decoupled:
                self.stats.record_stream_response(request, response, final, start, now)
            if final:
                self.stats.record_request(request, ok, now)

    # -- lifecycle ----------------------------------------------------------------

    async def stop(self) -> None:
        """Stop accepting, drain what is queued and in flight, finalize."""
        self.accepting = False
        if self.scheduler is not None:
            await self.scheduler.stop()
        if self.backend_model is not None:
            try:
                self.backend_model.finalize()
            except Exception:
                log.exception("finalize of model '%s' version %s failed", self.name,
                              self.version)

