"""A lean gRPC server core on grpcio's completion queue (``grpc._cython.cygrpc``).

grpcio's own servers spend far more Python per call than the inference does:
the synchronous one hands every call from its polling thread to a pool thread
and back (conditions, futures, a context object, several batches), and
``grpc.aio`` pays for asyncio on top. This core drives the same C-core objects
directly from one polling thread:

* a call's request arrives as three completion events (new call, message
  received, batch sent) handled on the polling thread: no thread hop, no
  per-call lock on the fast path;
* ``ModelInfer`` goes straight to ``Model.submit``; a cheap python model runs
  inline on the polling thread and its response is sent in the same pass.
  Otherwise the model's thread sends the response batch itself when it
  finishes (the C core allows batches from any thread), and only then is the
  client's cancellation watched for (one more event, slow requests only);
* ``ModelStreamInfer`` keeps one receive and at most one send in flight, as the
  C core requires, with the ordering rules of ``StreamSession``;
* every other RPC reuses ``InferenceService``'s handlers: cheap ones on the
  polling thread, the rest on a small elastic pool.

A model that blocks inline (its first calls run inline before the core knows
it is slow; a BLS call waiting for another model) would stall every call
behind it, so a watchdog adds a polling thread whenever the pollers have all
been inside handlers for ``STALL_CHECK_S`` without taking a new event while
using no CPU (asleep in a handler). A poller that is working (computing, or
slowed by a busy machine that preempts it) gets a helper only after
``STALL_WORKING_CHECKS`` periods: sooner, the helper would only compete for
the same CPU and GIL. An
extra poller leaves as soon as no other poller is inside a handler (or after
a second without work), so the usual state is one poller. The C core lets any
number of threads poll one queue, and each call's events come one after
another, so handlers need no more locking than a stream's own.

docs/grpc.md has the measurements. ``cygrpc`` is grpcio's internal layer, the
one both of its servers are built on; ``available()`` checks that what is used
here exists, and the frontend falls back to grpcio's public synchronous server
when it does not.
"""

from __future__ import annotations

import _thread
import logging
import threading
import time
from collections import deque
from typing import Any

import grpc

from naiad.core.errors import NaiadError, as_naiad_error
from naiad.core.types import InferenceRequest, InferenceResponse, successful
from naiad.frontends import restrictions
from naiad.frontends.grpc_service import END, HEALTH_SERVICE, SERVICE, STATUS, StreamSession
from naiad.observability.logging import log_grpc_call, log_response_outputs
from naiad.protocol import grpc_codec as codec
from naiad.protocol import grpc_service_pb2 as pb
from naiad.protocol import health_pb2

try:  # grpcio's internal layer; see available()
    from grpc._cython import cygrpc
except ImportError:  # pragma: no cover
    cygrpc = None

log = logging.getLogger("naiad.grpc")

_NEEDED = {
    "Server": ("register_completion_queue", "register_method", "add_http2_port", "start",
               "request_registered_call", "request_call", "shutdown", "cancel_all_calls"),
    "CompletionQueue": ("poll", "shutdown"),
    "Call": ("start_server_batch",),
}


def available() -> bool:
    """Whether this grpcio has the internal API the core uses."""
    if cygrpc is None:
        return False
    for cls, methods in _NEEDED.items():
        obj = getattr(cygrpc, cls, None)
        if obj is None or not all(hasattr(obj, m) for m in methods):
            return False
    return all(hasattr(cygrpc, n) for n in (
        "ReceiveMessageOperation", "ReceiveCloseOnServerOperation",
        "SendInitialMetadataOperation", "SendMessageOperation",
        "SendStatusFromServerOperation", "CompletionType", "StatusCode"))


if cygrpc is not None:
    _RECV = cygrpc.ReceiveMessageOperation
    _CLOSE = cygrpc.ReceiveCloseOnServerOperation
    _META = cygrpc.SendInitialMetadataOperation
    _SEND = cygrpc.SendMessageOperation
    _STATUS = cygrpc.SendStatusFromServerOperation
    _OK = cygrpc.StatusCode.ok
    _UNIMPLEMENTED = cygrpc.StatusCode.unimplemented

_NO_FLAGS = 0
# the watchdog's period, and how long an extra poller stays without work
STALL_CHECK_S = 0.005
# a stuck poller that used more CPU than this in a period is working, not blocked;
# it gets a helper only after this many periods
CPU_PROGRESS_NS = 500_000
STALL_WORKING_CHECKS = 10
EXTRA_POLLER_IDLE_S = 1.0
_FAST_RPCS = frozenset({"ServerLive", "ServerReady", "ModelReady", "ServerMetadata",
                        "ModelMetadata", "ModelConfig", "Check"})


def _cpu_clock(ident: int) -> int | None:
    """The CPU-time clock of a thread of this process (None where there is none)."""
    try:
        return time.pthread_getcpuclockid(ident)
    except (AttributeError, OSError):
        return None


def _cpu_ns(clocks: list) -> int | None:
    """CPU time used so far by the threads of these clocks (None if any is unknown)."""
    total = 0
    for clock in clocks:
        if clock is None:
            return None
        try:
            total += time.clock_gettime_ns(clock)
        except OSError:
            return None
    return total


class _Abort(Exception):
    pass


class _Context:
    """The part of grpc.ServicerContext the handlers use."""

    __slots__ = ("metadata", "code", "details", "active")

    def __init__(self, metadata: Any):
        self.metadata = metadata
        self.code = grpc.StatusCode.OK
        self.details = ""
        self.active = True

    def invocation_metadata(self) -> Any:
        return self.metadata

    def set_code(self, code: grpc.StatusCode) -> None:
        self.code = code

    def set_details(self, details: str) -> None:
        self.details = details

    def is_active(self) -> bool:
        return self.active

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        self.details = details
        raise _Abort()


def _status_ops(code: grpc.StatusCode, details: str) -> tuple:
    return (_META(None, _NO_FLAGS),
            _STATUS(None, code.value[0], details.encode("utf-8", "replace"), _NO_FLAGS))


def _error_ops(exc: BaseException) -> tuple:
    if not isinstance(exc, NaiadError):
        log.error("unhandled error in a gRPC call: %s: %s", type(exc).__name__, exc,
                  exc_info=exc)
        exc = as_naiad_error(exc)
    return _status_ops(STATUS.get(exc.kind, grpc.StatusCode.UNKNOWN), exc.message)


def _allowed(rule: tuple[str, str] | None, metadata: Any) -> bool:
    if rule is None:
        return True
    key, value = rule
    return any(k == key and v == value for k, v in metadata)


class _Infer:
    """One ModelInfer call from its message to its status."""

    __slots__ = ("core", "call", "request", "shm", "lock", "done", "watching", "model",
                 "trace")

    def __init__(self, core: NativeServer, call: Any, request: InferenceRequest, shm: Any,
                 trace: Any):
        self.core = core
        self.call = call
        self.request = request
        self.shm = shm
        self.lock = _thread.allocate_lock()
        self.done = False
        self.watching = False  # a receive-close batch is out (slow requests only)
        self.model: Any = None
        self.trace = trace

    def on_response(self, response: InferenceResponse | None, final: bool) -> None:
        if not final:
            return
        trace = self.trace
        try:
            response = successful(response, self.request.model_name)
            if trace is not None:
                trace.response(response)
            if log.isEnabledFor(logging.DEBUG):
                log_response_outputs(log, response)
            body = codec.serialize_infer_response(response, self.request, self.shm)
            ops: tuple = (_META(None, _NO_FLAGS), _SEND(body, _NO_FLAGS),
                          _STATUS(None, _OK, b"", _NO_FLAGS))
        except Exception as exc:
            ops = _error_ops(exc)
        with self.lock:
            self.done = True
            if not self.watching:
                ops += (_CLOSE(_NO_FLAGS),)
        if trace is None:
            self.core.send(self.call, ops)
            return
        trace.stamp("GRPC_SEND_START")
        self.core.send(self.call, ops)
        trace.stamp("GRPC_SEND_END")
        self.core.service.server.tracer.finish(trace, self.request)

    def watch(self) -> None:
        """Still running after submit: learn if the client goes away meanwhile."""
        with self.lock:
            if self.done:
                return
            self.watching = True
        self.core.start(self.call, (_CLOSE(_NO_FLAGS),), self.on_close)

    def on_close(self, event: Any) -> None:
        op = event.batch_operations[0] if event.batch_operations else None
        if op is not None and op.cancelled() and self.model is not None:
            self.model.cancel(self.request)


class _NativeStream:
    """The transport of one ModelStreamInfer call; ``StreamSession`` does the rest."""

    def __init__(self, core: NativeServer, call: Any, metadata: Any):
        outer = self

        class Session(StreamSession):
            def _emit(self, item: Any) -> None:
                outer.emit_locked(item)

        self.core = core
        self.call = call
        self.session = Session(core.service, metadata)
        self.writes: deque = deque()
        self.writing = False
        self.headers_sent = False
        self.finished = False

    def start(self) -> None:
        self.core.start(self.call, (_CLOSE(_NO_FLAGS),), self.on_close)
        self.core.start(self.call, (_RECV(_NO_FLAGS),), self.on_message)

    # reading
    def on_message(self, event: Any) -> None:
        data = event.batch_operations[0].message() if event.success else None
        if data is None:
            if event.success:
                self.session.end_of_requests()
            return
        try:
            msg = codec.parse_message(pb.ModelInferRequest, data)
        except NaiadError as exc:
            self.session.refuse(exc, "")
        else:
            self.session.submit(msg)
        if not self.session.closed:
            self.core.start(self.call, (_RECV(_NO_FLAGS),), self.on_message)

    def on_close(self, event: Any) -> None:
        op = event.batch_operations[0] if event.batch_operations else None
        if op is not None and op.cancelled():
            self.session.abort()

    # writing: one send batch in flight at a time (called with the session lock held)
    def emit_locked(self, item: Any) -> None:
        self.writes.append(item)
        if not self.writing:
            self._write_next_locked()

    def _write_next_locked(self) -> None:
        while self.writes:
            item = self.writes.popleft()
            if item is END:
                self.finished = True
                ops: tuple = (_STATUS(None, _OK, b"", _NO_FLAGS),)
                if not self.headers_sent:
                    ops = (_META(None, _NO_FLAGS),) + ops
                self.core.send(self.call, ops)
                return
            try:
                body = (item() if callable(item) else item).SerializeToString()
            except Exception:
                log.exception("encoding a stream response failed")
                continue
            ops = (_SEND(body, _NO_FLAGS),)
            if not self.headers_sent:
                self.headers_sent = True
                ops = (_META(None, _NO_FLAGS),) + ops
            self.writing = True
            self.core.start(self.call, ops, self.on_written)
            return

    def on_written(self, event: Any) -> None:
        with self.session.lock:
            self.writing = False
            if not event.success:
                self.writes.clear()
            elif not self.finished:
                self._write_next_locked()
        if not event.success:
            self.session.abort()


class NativeServer:
    """The server: one completion queue, one polling thread."""

    def __init__(self, service: Any, pool: Any, options: list[tuple[str, Any]],
                 credentials: Any, restricted: dict[str, tuple[str, str]]):
        self.service = service
        self.pool = pool
        self.restricted = restricted
        self.cq = cygrpc.CompletionQueue()
        self.server = cygrpc.Server(tuple(options), False)
        self.server.register_completion_queue(self.cq)
        self.credentials = credentials
        self._thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._shutting_down = False
        # held while the C server is called from outside the pollers (shutdown, cancel):
        # the poller that gets the shutdown event destroys it only then (grpcio's rule)
        self._server_lock = threading.Lock()
        self._destroyed = False
        self._pollers: dict[int, bool] = {}  # poller thread id -> waiting in poll()
        self._pollers_lock = threading.Lock()
        self._cpu_clocks: dict[int, int | None] = {}  # poller thread id -> its CPU clock
        self._events = 0  # events handled so far (the watchdog's sign of progress)
        self._seq = 0
        # method path -> (handler(call, metadata, event), receives a message first)
        self.methods: dict[str, tuple[Any, bool]] = {}
        unary = {
            "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
            "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
            "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
            "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
            "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
            "ModelConfig": (pb.ModelConfigRequest, pb.ModelConfigResponse),
            "ModelStatistics": (pb.ModelStatisticsRequest, pb.ModelStatisticsResponse),
            "RepositoryIndex": (pb.RepositoryIndexRequest, pb.RepositoryIndexResponse),
            "RepositoryModelLoad": (pb.RepositoryModelLoadRequest,
                                    pb.RepositoryModelLoadResponse),
            "RepositoryModelUnload": (pb.RepositoryModelUnloadRequest,
                                      pb.RepositoryModelUnloadResponse),
            "SystemSharedMemoryStatus": (pb.SystemSharedMemoryStatusRequest,
                                         pb.SystemSharedMemoryStatusResponse),
            "SystemSharedMemoryRegister": (pb.SystemSharedMemoryRegisterRequest,
                                           pb.SystemSharedMemoryRegisterResponse),
            "SystemSharedMemoryUnregister": (pb.SystemSharedMemoryUnregisterRequest,
                                             pb.SystemSharedMemoryUnregisterResponse),
            "CudaSharedMemoryStatus": (pb.CudaSharedMemoryStatusRequest,
                                       pb.CudaSharedMemoryStatusResponse),
            "CudaSharedMemoryRegister": (pb.CudaSharedMemoryRegisterRequest,
                                         pb.CudaSharedMemoryRegisterResponse),
            "CudaSharedMemoryUnregister": (pb.CudaSharedMemoryUnregisterRequest,
                                           pb.CudaSharedMemoryUnregisterResponse),
            "TraceSetting": (pb.TraceSettingRequest, pb.TraceSettingResponse),
            "LogSettings": (pb.LogSettingsRequest, pb.LogSettingsResponse),
        }
        for name, (req_cls, _) in unary.items():
            self._add(f"/{SERVICE}/{name}", self._unary(name, req_cls, getattr(service, name)),
                      True)
        self._add(f"/{SERVICE}/ModelInfer", self._infer, True)
        self._add(f"/{SERVICE}/ModelStreamInfer", self._stream, False)
        self._add(f"/{HEALTH_SERVICE}/Check",
                  self._unary("Check", health_pb2.HealthCheckRequest, service.Check), True)
        self._add(f"/{HEALTH_SERVICE}/Watch", self._unimplemented_watch, False)
        self._infer_rule = restricted.get("ModelInfer")

    def _add(self, path: str, handler: Any, receive_first: bool) -> None:
        self.server.register_method(path)
        self.methods[path] = (handler, receive_first)

    # -- binding and lifecycle ------------------------------------------------------------

    def add_port(self, target: str) -> int:
        creds = None if self.credentials is None else self.credentials._credentials
        if creds is None:
            return self.server.add_http2_port(target.encode())
        return self.server.add_http2_port(target.encode(), creds)

    def begin(self) -> None:
        self.server.start()
        for path in self.methods:
            self._arm(path)
        self.server.request_call(self.cq, self.cq, self._on_unknown_call)
        self._thread = self._add_poller()
        threading.Thread(target=self._watch, name="naiad-grpc-watchdog", daemon=True).start()

    def stop(self, grace: float) -> threading.Event:
        """Stop accepting calls; cancel what is still running after ``grace`` seconds."""
        if self._thread is None:
            self._stopped.set()
            return self._stopped
        if self._shutting_down:
            return self._stopped
        self._shutting_down = True
        with self._server_lock:
            # the shutdown event can reach a poller before this call returns
            self.server.shutdown(self.cq, self._on_shutdown)

        def cancel_after_grace() -> None:
            if not self._stopped.wait(grace):
                with self._server_lock:
                    if self._destroyed:
                        return
                    try:
                        self.server.cancel_all_calls()
                    except Exception:  # already down
                        pass

        threading.Thread(target=cancel_after_grace, name="naiad-grpc-stop", daemon=True).start()
        return self._stopped

    def _on_shutdown(self, event: Any) -> None:
        """Every call is over: release the server, then drain and end the queue."""
        with self._server_lock:  # not while stop() is still inside server.shutdown()
            self._destroyed = True
            destroy = getattr(self.server, "destroy", None)
            if destroy is not None:
                destroy()
        self.cq.shutdown()

    def _add_poller(self) -> threading.Thread:
        self._seq += 1
        placeholder = -self._seq  # counts as polling until the thread registers itself
        t = threading.Thread(target=self._poll, args=(placeholder,),
                             name=f"naiad-grpc-cq-{self._seq}", daemon=True)
        with self._pollers_lock:
            self._pollers[placeholder] = True
        t.start()
        return t

    def _poll(self, placeholder: int) -> None:
        cq = self.cq
        queue_shutdown = cygrpc.CompletionType.queue_shutdown
        queue_timeout = cygrpc.CompletionType.queue_timeout
        me: int | None = threading.get_ident()
        pollers = self._pollers
        with self._pollers_lock:
            pollers.pop(placeholder, None)
            pollers[me] = True
            self._cpu_clocks[me] = _cpu_clock(me)
        try:
            while True:
                pollers[me] = True
                event = cq.poll(time.time() + EXTRA_POLLER_IDLE_S)
                pollers[me] = False
                kind = event.completion_type
                if kind == queue_shutdown:
                    return
                if kind == queue_timeout:
                    with self._pollers_lock:
                        if len(pollers) > 1:  # an extra poller without work leaves
                            del pollers[me]
                            me = None
                            return
                    continue
                self._events += 1
                tag = event.tag
                if tag is not None:
                    try:
                        tag(event)
                    except Exception:
                        log.exception("gRPC event handler failed")
                event = None
                if len(pollers) > 1 and self._surplus(me):
                    me = None
                    return
        finally:
            with self._pollers_lock:
                if me is not None:
                    pollers.pop(me, None)
                self._cpu_clocks.pop(threading.get_ident(), None)
                last = not pollers
            if last and self._shutting_down:
                self._stopped.set()

    def _surplus(self, me: int) -> bool:
        """With several pollers and none of the others inside a handler, one leaves."""
        with self._pollers_lock:
            pollers = self._pollers
            if len(pollers) > 1 and all(polling for t, polling in pollers.items() if t != me):
                del pollers[me]
                return True
        return False

    def _watch(self) -> None:
        """Add a poller when every poller is stuck in a handler."""
        pollers = self._pollers
        idle_checks = 0
        stuck_checks = 0
        cpu_seen = -1
        while not self._shutting_down:
            seen = self._events
            # every poller waiting for work: nothing can be stuck, look again later
            time.sleep(STALL_CHECK_S if idle_checks < 20 else STALL_CHECK_S * 10)
            if self._shutting_down:
                return
            with self._pollers_lock:
                busy = [t for t, polling in pollers.items() if not polling]
                stuck = bool(pollers) and len(busy) == len(pollers)
                clocks = [self._cpu_clocks.get(t) for t in busy]
            idle_checks = 0 if busy else idle_checks + 1
            if not stuck or self._events != seen:
                stuck_checks, cpu_seen = 0, -1
                continue
            stuck_checks += 1
            cpu = _cpu_ns(clocks)
            if cpu is not None and cpu_seen < 0:
                cpu_seen = cpu  # stuck for one period: the next tells asleep from working
                continue
            working = cpu is not None and cpu - cpu_seen > CPU_PROGRESS_NS
            cpu_seen = -1 if cpu is None else cpu
            # asleep in a handler (no CPU used): help at once; working (preempted on a
            # busy machine, or computing): a helper would only compete for the same
            # CPU and GIL, unless it has gone on for long
            if not working or stuck_checks >= STALL_WORKING_CHECKS:
                stuck_checks, cpu_seen = 0, -1
                self._add_poller()

    # -- starting batches ---------------------------------------------------------------

    def start(self, call: Any, ops: tuple, tag: Any) -> bool:
        try:
            call.start_server_batch(ops, tag)
            return True
        except Exception as exc:  # the call or the server is gone
            log.debug("gRPC batch refused: %s", exc)
            return False

    def send(self, call: Any, ops: tuple) -> None:
        self.start(call, ops, None)

    # -- new calls ----------------------------------------------------------------------

    def _arm(self, path: str) -> None:
        handler, receive_first = self.methods[path]
        method = path.rpartition("/")[2]

        def on_call(event: Any) -> None:
            if self._shutting_down:
                if event.success:
                    self.send(event.call, _status_ops(grpc.StatusCode.UNAVAILABLE,
                                                      "the server is shutting down"))
                return
            self._arm(path)
            if not event.success:
                return
            call = event.call
            metadata = event.invocation_metadata
            if log.isEnabledFor(logging.DEBUG):  # --log-verbose: as Triton's handlers
                log_grpc_call(log, method)
            if receive_first:
                self.start(call, (_RECV(_NO_FLAGS),),
                           lambda ev: handler(call, metadata, ev))
            else:
                handler(call, metadata, None)

        try:
            self.server.request_registered_call(self.cq, self.cq, path, on_call)
        except Exception as exc:  # shutting down
            log.debug("not arming %s: %s", path, exc)

    def _on_unknown_call(self, event: Any) -> None:
        if self._shutting_down:
            return
        try:
            self.server.request_call(self.cq, self.cq, self._on_unknown_call)
        except Exception:
            pass
        if event.success:
            self.send(event.call, _status_ops(grpc.StatusCode.UNIMPLEMENTED,
                                              "Method not found!") + (_CLOSE(_NO_FLAGS),))

    # -- ModelInfer -----------------------------------------------------------------------

    def _infer(self, call: Any, metadata: Any, event: Any) -> None:
        data = event.batch_operations[0].message() if event.success else None
        if data is None:
            self.send(call, (_CLOSE(_NO_FLAGS),))
            return
        service = self.service
        server = service.server
        trace = None
        try:
            if self._infer_rule is not None and not _allowed(self._infer_rule, metadata):
                self.send(call, _status_ops(
                    grpc.StatusCode.UNAVAILABLE,
                    restrictions.restricted_message("protocol", self._infer_rule[0]))
                    + (_CLOSE(_NO_FLAGS),))
                return
            server.refuse_if_shutting_down()
            tracer = server.tracer
            received = time.monotonic_ns() if tracer.active else 0
            msg, raw = codec.parse_infer_request(data)
            shm = server.shared_memory
            request, _ = codec.decode_infer_request(msg, shm, raw)
            if service.forward is not None:
                service._forward_headers(request, metadata)
            trace = tracer.sample(request, "GRPC", received, received) if received else None
            pending = _Infer(self, call, request, shm, trace)
            pending.model = server.submit(request, pending.on_response)
        except Exception as exc:
            if trace is not None:
                server.tracer.finish(trace, request)
            self.send(call, _error_ops(exc) + (_CLOSE(_NO_FLAGS),))
            return
        if not pending.done:
            pending.watch()

    # -- ModelStreamInfer -------------------------------------------------------------------

    def _stream(self, call: Any, metadata: Any, event: Any) -> None:
        rule = self.restricted.get("ModelStreamInfer")
        if not _allowed(rule, metadata):
            self.send(call, _status_ops(
                grpc.StatusCode.UNAVAILABLE,
                restrictions.restricted_message("protocol", rule[0]))
                + (_CLOSE(_NO_FLAGS),))
            return
        _NativeStream(self, call, metadata).start()

    def _unimplemented_watch(self, call: Any, metadata: Any, event: Any) -> None:
        self.send(call, _status_ops(grpc.StatusCode.UNIMPLEMENTED, "") + (_CLOSE(_NO_FLAGS),))

    # -- every other RPC --------------------------------------------------------------------

    def _unary(self, name: str, request_cls: Any, handler: Any) -> Any:
        rule = self.restricted.get(name)
        fast = name in _FAST_RPCS

        def run(call: Any, metadata: Any, data: bytes) -> None:
            context = _Context(metadata)
            try:
                if rule is not None and not _allowed(rule, metadata):
                    context.abort(grpc.StatusCode.UNAVAILABLE,
                                  restrictions.restricted_message("protocol", rule[0]))
                response = handler(codec.parse_message(request_cls, data), context)
            except _Abort:
                response = None
            except Exception as exc:
                self.send(call, _error_ops(exc) + (_CLOSE(_NO_FLAGS),))
                return
            if context.code is not grpc.StatusCode.OK:
                self.send(call, _status_ops(context.code, context.details) + (_CLOSE(_NO_FLAGS),))
                return
            self.send(call, (_META(None, _NO_FLAGS), _SEND(response.SerializeToString(),
                                                           _NO_FLAGS),
                             _STATUS(None, _OK, b"", _NO_FLAGS), _CLOSE(_NO_FLAGS)))

        def on_message(call: Any, metadata: Any, event: Any) -> None:
            data = event.batch_operations[0].message() if event.success else None
            if data is None:
                self.send(call, (_CLOSE(_NO_FLAGS),))
                return
            if fast:
                run(call, metadata, data)
            else:
                self.pool.submit(run, call, metadata, data)

        return on_message
