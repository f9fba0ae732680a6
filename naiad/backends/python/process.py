"""Process isolation for python models (``EXECUTION_MODE: "process"``).

In-process execution is naiad's default because it is the fastest: no IPC,
tensors passed by reference. A model can instead ask for its instances to
run in worker processes:

    parameters { key: "EXECUTION_MODE" value: { string_value: "process" } }

Each instance is then one worker process (``python -m
naiad.backends.python.process``) that imports ``model.py`` and runs
``initialize``/``execute``/``finalize`` exactly as in-process. That buys two
things: CPU-bound python code in several instances uses several cores (each
process has its own GIL), and a model that crashes — an exception in
``initialize``, ``os._exit``, even a segfault in a C extension — fails only the
requests it was running: the server notices the worker's end, answers those
requests with an error and starts a fresh worker for the next ones.

Tensors travel through shared memory: one input and one output region per
instance (files under /dev/shm, mapped by both sides, grown on demand), so
only small metadata crosses the socket. BYTES tensors and the responses a
decoupled model sends from its own threads are pickled instead. BLS calls
from an isolated model are not supported (its ``exec()`` answers with an error
response): BLS models run in-process.
"""

from __future__ import annotations

import inspect
import logging
import mmap
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from multiprocessing.connection import Connection

import numpy as np

from naiad.backends.base import BackendInstance, InstanceSpec, ModelLoadContext
from naiad.backends.python.common import PythonModelBase
from naiad.backends.python.environments import Environment, worker_command
from naiad.backends.python.execution import ModelLoop, Settler, answer_open_senders, model_error
from naiad.backends.python.isolation import describe_exception, import_model_file, server_path
from naiad.core import datatypes
from naiad.core import types as core
from naiad.core.errors import ErrorKind, InvalidArgument, NaiadError, Unavailable

log = logging.getLogger("naiad.backends.python.process")

MODE_PARAMETER = "EXECUTION_MODE"
INITIAL_REGION = 1 << 20
INIT_TIMEOUT_S = 300.0
_SHM_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


def execution_mode(config) -> str:
    """"process" or "inprocess" (the default), from the model's parameters."""
    param = config.parameters.get(MODE_PARAMETER)
    value = param.string_value.strip().lower() if param is not None else ""
    if value in ("", "inprocess", "in-process", "in_process", "thread"):
        return "inprocess"
    if value in ("process", "isolated", "subprocess"):
        return "process"
    raise InvalidArgument(
        f"unexpected value '{param.string_value}' for parameter {MODE_PARAMETER} of model "
        f"'{config.name}': use 'process' or 'inprocess'")


# -- shared memory regions ---------------------------------------------------------------------


class Region:
    """A file in /dev/shm mapped into memory; both processes map it by path."""

    def __init__(self, path: str, size: int, create: bool):
        self.path = path
        self.size = size
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = os.open(path, flags, 0o600)
        try:
            if create:
                os.ftruncate(fd, size)
            self.map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.buf = np.frombuffer(self.map, dtype=np.uint8)

    @classmethod
    def create(cls, tag: str, size: int) -> "Region":
        path = os.path.join(_SHM_DIR, f"naiad-{os.getpid()}-{tag}-{time.monotonic_ns()}")
        return cls(path, size, True)

    def close(self, unlink: bool = False) -> None:
        self.buf = None
        try:
            self.map.close()
        except (BufferError, ValueError):
            pass  # views still alive elsewhere: the mapping goes with them
        if unlink:
            try:
                os.unlink(self.path)
            except OSError:
                pass


def _align(n: int) -> int:
    return (n + 63) & ~63


def pack_tensors(tensors: list[core.Tensor], region: Region | None, tag: str
                 ) -> tuple[list, Region | None, Region | None]:
    """Describe tensors for the other side, copying numeric data into ``region``.

    Returns (descriptors, region used, new region if it had to grow).
    """
    total = sum(_align(t.data.nbytes) for t in tensors if t.datatype != "BYTES")
    grown = None
    if total and (region is None or region.size < total):
        size = max(INITIAL_REGION, 1 << (total - 1).bit_length())
        grown = region = Region.create(tag, size)
    descs = []
    offset = 0
    for t in tensors:
        arr = t.data
        if t.datatype == "BYTES":
            descs.append((t.name, "BYTES", arr.shape, [bytes(x) if not isinstance(x, bytes)
                                                        else x for x in arr.reshape(-1)]))
            continue
        n = arr.nbytes
        dst = region.buf[offset:offset + n]
        dst[:] = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
        descs.append((t.name, t.datatype, arr.shape, (offset, n)))
        offset += _align(n)
    return descs, region, grown


def unpack_tensors(descs: list, region: Region | None, copy: bool) -> list[core.Tensor]:
    out = []
    for name, datatype, shape, data in descs:
        if datatype == "BYTES":
            arr = np.empty(len(data), dtype=np.object_)
            arr[:] = data
            out.append(core.Tensor(name, datatype, arr.reshape(shape)))
            continue
        offset, n = data
        raw = region.buf[offset:offset + n]
        arr = raw.view(datatypes.numpy_dtype(datatype)).reshape(shape)
        out.append(core.Tensor(name, datatype, arr.copy() if copy else arr))
    return out


def _pickled_tensors(tensors: list[core.Tensor]) -> list:
    """Tensors as plain values (no numpy objects: the two sides may run different
    numpy versions when the model has its own environment)."""
    out = []
    for t in tensors:
        arr = t.data
        if t.datatype == "BYTES":
            data = [x if isinstance(x, bytes) else bytes(x) if not isinstance(x, str)
                    else x.encode() for x in arr.reshape(-1)]
        else:
            data = np.ascontiguousarray(arr).tobytes()
        out.append((t.name, t.datatype, tuple(arr.shape), data))
    return out


def _unpickled_tensors(items: list) -> list[core.Tensor]:
    out = []
    for name, datatype, shape, data in items:
        if datatype == "BYTES":
            arr = np.empty(len(data), dtype=np.object_)
            arr[:] = data
            arr = arr.reshape(shape)
        else:
            arr = np.frombuffer(data, dtype=datatypes.numpy_dtype(datatype)).reshape(shape)
        out.append(core.Tensor(name, datatype, arr))
    return out


# -- the server side ------------------------------------------------------------------------------


class ProcessPythonModel(PythonModelBase):
    """A python model whose instances are worker processes."""

    def __init__(self, ctx: ModelLoadContext, env: Environment | None = None):
        if not os.path.isfile(ctx.model_file):
            raise InvalidArgument(f"python model file '{ctx.model_file}' not found")
        super().__init__(ctx)
        self.env = env  # EXECUTION_ENV_PATH: the model's own Python environment

    def create_instance(self, spec: InstanceSpec) -> "ProcessInstance":
        return ProcessInstance(self, spec)


class ProcessInstance(BackendInstance):
    """One worker process; restarted when it dies."""

    inline_capable = False

    def __init__(self, model: ProcessPythonModel, spec: InstanceSpec):
        self.model = model
        self.spec = spec
        self.name = spec.name
        self.init_args = model.initialize_args(spec)
        self.proc: subprocess.Popen | None = None
        self.conn: Connection | None = None
        self.reader: threading.Thread | None = None
        self.results: queue.SimpleQueue = queue.SimpleQueue()
        self.in_region: Region | None = None
        self.out_region: Region | None = None
        self.streams: dict[int, core.InferenceRequest] = {}
        self.streams_lock = threading.Lock()
        self.restarts = 0
        self.generation = 0
        self.dead = False
        self._batch = 0
        self._restart_lock = threading.Lock()
        self._closing = False
        self._start()  # a failing initialize fails the load, as in-process

    # -- the worker's lifecycle ------------------------------------------------------

    def _start(self) -> None:
        parent, child = socket.socketpair()
        python_env = self.model.env
        if python_env is not None:  # EXECUTION_ENV_PATH: the environment's interpreter
            command = worker_command(python_env, str(child.fileno()))
            env = python_env.process_environ()
        else:
            command = [sys.executable, "-m", "naiad.backends.python.process",
                       str(child.fileno())]
            env = dict(os.environ)
            # the worker imports naiad from wherever the server did (and no model's
            # folder that a model put on the server's sys.path)
            paths = [p for p in server_path() if p]
            env["PYTHONPATH"] = os.pathsep.join(paths)
        try:
            self.proc = subprocess.Popen(command, pass_fds=[child.fileno()], env=env,
                                         close_fds=True)
        finally:
            child.close()
        self.conn = Connection(parent.detach())
        self.conn.send(("init", self.init_args, self.model.ctx.model_file,
                        f"{self.model.name}_{self.model.ctx.version}",
                        self.model.decoupled, self.model.output_names, self.model.iterative))
        if not self.conn.poll(INIT_TIMEOUT_S):
            self._kill()
            raise InvalidArgument(f"model instance '{self.name}' worker did not start in time")
        try:
            reply = self.conn.recv()
        except (EOFError, OSError):
            code = self.proc.wait()
            self._kill()
            raise InvalidArgument(f"model instance '{self.name}' worker exited with code {code} "
                                  "while initializing") from None
        if reply[0] != "ready":
            self._kill()
            raise InvalidArgument(reply[1])
        # a new worker knows no region yet: inputs get a fresh one on the next execute
        if self.in_region is not None:
            self.in_region.close(unlink=True)
            self.in_region = None
        self.generation += 1
        self.dead = False
        self.results = queue.SimpleQueue()
        self.reader = None
        if self.model.decoupled or self.streams:
            self._start_reader()
        # else execute() reads its result itself (one hand-off fewer) until a response
        # sender answers a request after execute returned

    def _start_reader(self) -> None:
        """Responses arrive whenever the model sends them: a thread reads them all."""
        self.reader = threading.Thread(target=self._read,
                                       args=(self.conn, self.results, self.generation),
                                       name=f"naiad-{self.name}-reader", daemon=True)
        self.reader.start()

    def _kill(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        if self.conn is not None:
            try:
                self.conn.close()
            except OSError:
                pass
        self.conn = None

    def _read(self, conn: Connection, results: queue.SimpleQueue, generation: int) -> None:
        """All messages from one worker: batch results and decoupled responses."""
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):
                break
            except Exception:  # a message that does not unpickle: treat as a broken worker
                log.exception("model instance '%s': unreadable message from its worker",
                              self.name)
                break
            if msg[0] == "response":
                self._on_stream_response(*msg[1:])
            else:
                results.put(msg)
        if generation == self.generation:
            self.dead = True
        results.put(("dead",))
        self._fail_streams()

    def _on_stream_response(self, rid: int, descs, error, params, final: bool) -> None:
        with self.streams_lock:
            request = self.streams.get(rid)
            if final:
                self.streams.pop(rid, None)
        if request is None:
            return
        if error is not None:
            response = core.InferenceResponse(error=NaiadError(error[0], ErrorKind(error[1])))
        elif descs is None:
            response = None
        else:
            response = core.InferenceResponse(_unpickled_tensors(descs), parameters=params)
        self.model.deliver(request, response, final)

    def _fail_streams(self) -> None:
        with self.streams_lock:
            pending = list(self.streams.values())
            self.streams.clear()
        if not pending:
            return
        err = self._death_error()
        for request in pending:
            self.model.deliver(request, core.InferenceResponse(error=err), True)

    def _death_error(self) -> NaiadError:
        code = None
        if self.proc is not None:
            try:
                code = self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                code = None
        how = f"was killed by signal {-code}" if code is not None and code < 0 else \
            f"exited with code {code}"
        return Unavailable(
            f"model instance '{self.name}' stopped: its worker process {how}; the requests it "
            "was running failed and a new worker is being started")

    def _restart(self) -> None:
        with self._restart_lock:
            if self._closing:
                return
            if not self.dead and self.conn is not None and self.proc is not None and \
                    self.proc.poll() is None:
                return  # another thread restarted it already
            self._kill()
            self.restarts += 1
            log.warning("model instance '%s': restarting its worker process (restart %d)",
                        self.name, self.restarts)
            try:
                self._start()
            except NaiadError as exc:
                log.error("model instance '%s': worker restart failed: %s", self.name,
                          exc.message)
                self.proc = None

    # -- execution ------------------------------------------------------------------------

    def execute(self, requests: list[core.InferenceRequest]):
        if self.dead or self.conn is None or self.proc is None or self.proc.poll() is not None:
            self._restart()
            if self.conn is None:
                raise Unavailable(f"model instance '{self.name}' has no running worker process")
        self._batch += 1
        batch_id = self._batch
        metas = []
        tensors: list[core.Tensor] = []
        index = []
        for r in requests:
            index.append(len(tensors))
            tensors.extend(r.inputs.values())
        descs, region, grown = pack_tensors(tensors, self.in_region, f"{self.name}-in")
        if grown is not None:
            if self.in_region is not None:
                self.in_region.close(unlink=True)
            self.in_region = grown
        for i, r in enumerate(requests):
            start = index[i]
            end = index[i + 1] if i + 1 < len(index) else len(tensors)
            rid = id(r)
            with self.streams_lock:  # responses its sender may send come back by its id
                self.streams[rid] = r
            metas.append({
                "rid": rid, "id": r.id, "model_name": r.model_name,
                "model_version": r.model_version, "correlation_id": r.correlation_id,
                "flags": r.flags, "timeout_us": r.timeout_us, "parameters": r.parameters,
                "requested": list(r.requested_outputs) if r.requested_outputs else None,
                "inputs": descs[start:end],
            })
        region_info = (grown.path, grown.size) if grown is not None else None
        try:
            self.conn.send(("exec", batch_id, metas, region_info))
        except (OSError, ValueError):
            error = self._death_error()  # before the restart replaces the process
            self._after_death(requests)
            raise error from None
        t_in = time.monotonic_ns()
        for r in requests:
            r.compute_input_end_ns = t_in
        if self.reader is not None:
            msg = self.results.get()
        else:
            msg = self._recv()
            while msg[0] == "response":  # a response sender's, before execute returned
                self._on_stream_response(*msg[1:])
                msg = self._recv()
        if msg[0] == "dead":
            error = self._death_error()  # before the restart replaces the process
            self._after_death(requests)
            raise error
        _, _, status, payload, out_info = msg
        if out_info is not None:
            if self.out_region is not None:
                self.out_region.close(unlink=True)
            self.out_region = Region(out_info[0], out_info[1], create=False)
        t_out = time.monotonic_ns()
        for r in requests:
            r.compute_output_start_ns = t_out
        if status == "error":
            self._forget(requests)
            raise NaiadError(payload[0], ErrorKind(payload[1]))
        if self.model.decoupled:
            for i in payload:  # rescheduled: they come back with a later execution
                requests[i].reschedule = True
                with self.streams_lock:
                    self.streams.pop(id(requests[i]), None)
            return None
        out: list = []
        deferred = False
        with self.streams_lock:
            for r, item in zip(requests, payload):
                if item.get("deferred") and not item.get("again"):
                    # its response sender answers it; still open: it will, later
                    deferred = deferred or id(r) in self.streams
                else:
                    self.streams.pop(id(r), None)
        for r, item in zip(requests, payload):
            if "deferred" in item:
                if item["again"]:
                    r.reschedule = True
                out.append(core.DEFERRED)
            elif "error" in item:
                msg_text, kind = item["error"]
                out.append(core.InferenceResponse(error=NaiadError(msg_text, ErrorKind(kind))))
            else:
                out.append(core.InferenceResponse(
                    unpack_tensors(item["outputs"], self.out_region, copy=True),
                    parameters=item.get("parameters") or None))
        if deferred and self.reader is None:
            self._start_reader()
        return out

    def _forget(self, requests: list[core.InferenceRequest]) -> None:
        with self.streams_lock:
            for r in requests:
                self.streams.pop(id(r), None)

    def _recv(self):
        try:
            return self.conn.recv()
        except (EOFError, OSError):
            self.dead = True
            return ("dead",)

    def _after_death(self, requests: list[core.InferenceRequest]) -> None:
        with self.streams_lock:
            for r in requests:
                self.streams.pop(id(r), None)
        # start the replacement now, so the next request finds it ready
        threading.Thread(target=self._restart, name=f"naiad-{self.name}-restart",
                         daemon=True).start()

    def finalize(self) -> None:
        with self._restart_lock:
            self._closing = True
        conn = self.conn
        if conn is not None and self.proc is not None and self.proc.poll() is None:
            try:
                conn.send(("stop",))
                self.proc.wait(timeout=30)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                pass
        if self.reader is not None:  # the worker's last words: responses of open senders
            self.reader.join(timeout=5)
        self._kill()
        if self.reader is not None:
            self.reader.join(timeout=5)
        for region in (self.in_region, self.out_region):
            if region is not None:
                region.close(unlink=True)
        self.in_region = self.out_region = None


# -- the worker side ------------------------------------------------------------------------------


class _WorkerRunner:
    """What pb_utils requests and response senders talk to inside a worker."""

    def __init__(self, conn: Connection, decoupled: bool, output_names: list[str]):
        self.conn = conn
        self.decoupled = decoupled
        self.output_names = output_names
        self.send_lock = threading.Lock()
        # response senders of rescheduled requests, until their next execution
        self.kept_senders: dict = {}
        self.open_senders: dict = {}  # response senders not closed yet (pb_utils keeps it)

    @staticmethod
    def request_key(request: core.InferenceRequest):
        return request.origin  # the server's id of the request: the same on each run

    def send(self, msg) -> None:
        with self.send_lock:
            self.conn.send(msg)

    def deliver(self, request: core.InferenceRequest, response: core.InferenceResponse | None,
                final: bool) -> None:
        rid = request.origin
        if response is None:
            self.send(("response", rid, None, None, None, final))
        elif response.error is not None:
            self.send(("response", rid, None, (response.error.message,
                                               response.error.kind.value), None, final))
        else:
            outputs = response.outputs
            wanted = request.requested_outputs
            if wanted:
                outputs = [t for t in outputs if t.name in wanted]
            self.send(("response", rid, _pickled_tensors(outputs), None,
                       response.parameters, final))


def _error_tuple(exc: BaseException, instance: str) -> tuple[str, str]:
    err = model_error(instance, exc)
    return err.message, err.kind.value


def worker_main(fd: int) -> int:
    """The worker process: import the model, then serve exec messages until told to stop."""
    conn = Connection(fd)
    from naiad.backends.python import pb_utils

    sys.modules.setdefault("triton_python_backend_utils", pb_utils)
    msg = conn.recv()
    _, args, model_file, label, decoupled, output_names, iterative = msg
    instance_name = args["model_instance_name"]
    runner = _WorkerRunner(conn, decoupled, output_names)
    settler = Settler(instance_name, args["model_name"], decoupled, iterative, runner)
    loop = ModelLoop(instance_name)  # async models' coroutines, on a thread of their own
    try:
        _, cls, _scope = import_model_file(model_file, label)
        obj = cls()
        init = getattr(obj, "initialize", None)
        if init is not None:
            result = init(args)
            if inspect.isawaitable(result):
                loop.run(result)
    except BaseException as exc:  # noqa: BLE001 - reported to the server, which fails the load
        message = exc.message if isinstance(exc, NaiadError) else \
            f"failed to initialize model instance '{instance_name}': {describe_exception(exc)}"
        if isinstance(exc, Exception):
            traceback.print_exc()
        conn.send(("error", message))
        return 1
    conn.send(("ready", os.getpid()))
    execute = obj.execute
    kept = runner.kept_senders
    in_region: Region | None = None
    out_region: Region | None = None
    previous_out: Region | None = None
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break
        if msg[0] == "stop":
            break
        _, batch_id, metas, region_info = msg
        if region_info is not None:
            if in_region is not None:
                in_region.close()
            in_region = Region(region_info[0], region_info[1], create=False)
        requests = []
        for m in metas:
            inputs = {t.name: t for t in unpack_tensors(m["inputs"], in_region, copy=False)}
            req = core.InferenceRequest(
                m["model_name"], inputs, model_version=m["model_version"], id=m["id"],
                requested_outputs={n: core.RequestedOutput(n) for n in m["requested"]}
                if m["requested"] else None,
                parameters=m["parameters"], correlation_id=m["correlation_id"],
                flags=m["flags"], timeout_us=m["timeout_us"])
            req.origin = m["rid"]
            requests.append(req)
        wrapped = [pb_utils.InferenceRequest._wrap(r, runner) for r in requests]
        if kept:  # rescheduled requests: their senders carry over
            for w in wrapped:
                w._sender = kept.pop(w._core.origin, None)
        result = failure = None
        try:
            result = execute(wrapped)
            if inspect.isawaitable(result):
                result = loop.run(result)
        except BaseException as exc:  # noqa: BLE001 - SystemExit too: the worker lives on
            if isinstance(exc, Exception):
                traceback.print_exc()
            failure = exc
        responses, again = settler.settle(wrapped, result, failure)
        if decoupled:
            runner.send(("result", batch_id, "ok", again, None))
            continue
        items: list = []
        outputs_all: list[core.Tensor] = []
        spans = []
        for i, core_resp in enumerate(responses):
            spans.append(None)
            if core_resp is core.DEFERRED:
                items.append({"deferred": True, "again": i in again})
                continue
            if core_resp.error is not None:
                items.append({"error": (core_resp.error.message, core_resp.error.kind.value)})
                continue
            outs = core_resp.outputs
            wanted = requests[i].requested_outputs
            if wanted:
                outs = [t for t in outs if t.name in wanted]
            spans[i] = (len(outputs_all), len(outs))
            outputs_all.extend(outs)
            items.append({"parameters": core_resp.parameters})
        descs, out_region, grown = pack_tensors(outputs_all, out_region, "out")
        if grown is not None and previous_out is not None:
            previous_out.close()  # the server unlinks it once it maps the new one
        previous_out = out_region
        for item, span in zip(items, spans):
            if span is not None:
                item["outputs"] = descs[span[0]:span[0] + span[1]]
        info = (grown.path, grown.size) if grown is not None else None
        runner.send(("result", batch_id, "ok", items, info))
    fin = getattr(obj, "finalize", None)
    if fin is not None:
        try:
            result = fin()
            if inspect.isawaitable(result):
                loop.run(result)
        except BaseException:  # noqa: BLE001
            traceback.print_exc()
    loop.close()
    answer_open_senders(runner, f"model '{args['model_name']}' version "
                                f"{args['model_version']} was unloaded before it completed "
                                "the response")
    return 0


def load(ctx: ModelLoadContext, env: Environment | None = None) -> ProcessPythonModel:
    return ProcessPythonModel(ctx, env)


if __name__ == "__main__":
    sys.exit(worker_main(int(sys.argv[1])))
