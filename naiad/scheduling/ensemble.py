"""Ensembles (``platform: "ensemble"``): a graph of steps, each a request to another model.

An ensemble is a :class:`~naiad.core.model.Model` without a backend; its
scheduler runs the step graph. When a request arrives, every step whose
inputs are all present is submitted to its model at once (independent
branches run in parallel, each step model batching with its own scheduler);
each step's response callback stores the outputs under their ensemble names
and submits the steps that just became ready. Nothing here needs the event
loop: a step completes on whichever thread produced its response (a worker
thread, or the submitting thread when the step model ran inline), and that
thread submits the next steps. Small python steps therefore chain on one
thread without a single hand-off.

A step error fails the whole request with that error ("in ensemble 'E',
<message>", as Triton words it). Decoupled steps fork the data flow: each of
their responses drives the rest of the graph once, and the ensemble (itself
decoupled then) sends a response each time the ensemble outputs are complete,
and the final flag when nothing is in flight any more.

Load-time validation follows Triton (``ValidateEnsembleSchedulingConfig`` and
the tensor checks against the composing models): unknown models, unmapped or
unused tensors, outputs never written (cycles end up here), datatype and
shape mismatches, batch sizes, inputs from different decoupled producers.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

from naiad.core.errors import Cancelled, InvalidArgument, NaiadError
from naiad.core.scheduler import Scheduler, SchedulingContext
from naiad.core.types import InferenceRequest, InferenceResponse, RequestedOutput, Tensor
from naiad.protocol import model_config_pb2 as mc

if TYPE_CHECKING:
    from naiad.core.model import Model

log = logging.getLogger("naiad.ensemble")

WILDCARD = -1


# -- static validation (the ensemble's own config) ----------------------------------------


class _Node:
    __slots__ = ("name", "produced", "ready", "prev", "next")

    def __init__(self, name: str):
        self.name = name
        self.produced = False
        self.ready = False
        self.prev: list[_Node] = []
        self.next: list[_Node] = []


def validate_config(config: mc.ModelConfig) -> None:
    """The checks Triton makes on an ensemble config alone, with its messages."""
    name = config.name
    if config.instance_group:
        raise InvalidArgument(f"instance group should not be specified for ensemble '{name}'")
    if config.HasField("optimization"):
        raise InvalidArgument(f"optimization should not be specified for ensemble '{name}'")
    if config.model_warmup:
        raise InvalidArgument(f"model_warmup can not be specified for ensemble '{name}'")
    steps = config.ensemble_scheduling.step
    if not steps:
        raise InvalidArgument(f"must specify 'step' for ensemble '{name}'")
    nodes: dict[str, _Node] = {}

    def node(tensor: str) -> _Node:
        n = nodes.get(tensor)
        if n is None:
            n = nodes[tensor] = _Node(tensor)
        return n

    for idx, step in enumerate(steps):
        if not step.model_name:
            raise InvalidArgument(f"must specify 'model_name' in step {idx} of ensemble '{name}'")
        if not step.input_map:
            raise InvalidArgument(f"must specify 'input_map' in step {idx} of ensemble '{name}'")
        if not step.output_map:
            raise InvalidArgument(f"must specify 'output_map' in step {idx} of ensemble '{name}'")
        produced = []
        for tensor in step.output_map.values():
            n = node(tensor)
            if n.produced:
                raise InvalidArgument(
                    f"ensemble tensor '{tensor}' can appear in an output map only once for "
                    f"ensemble '{name}' step {idx}")
            n.produced = True
            produced.append(n)
        for tensor in step.input_map.values():
            src = node(tensor)
            for out in produced:
                out.prev.append(src)
                src.next.append(out)
    ready = deque()
    for io in config.input:
        n = nodes.get(io.name)
        if n is None:
            raise InvalidArgument(
                f"ensemble input '{io.name}' for ensemble {name}' is not used")
        n.ready = True
        ready.append(n)
    while ready:
        cur = ready.popleft()
        for nxt in cur.next:
            if not nxt.ready and all(p.ready for p in nxt.prev):
                nxt.ready = True
                ready.append(nxt)
    outputs = set()
    for io in config.output:
        n = nodes.get(io.name)
        if n is None:
            raise InvalidArgument(f"ensemble output '{io.name}' for ensemble {name}' is not used")
        if not n.ready:
            message = f"output '{io.name}' for ensemble '{name}' is not written"
            # name the first tensor upstream that nothing produces
            last, seen, prev = n, set(), n.prev
            while prev:
                nxt_prev = None
                for p in prev:
                    if not p.ready and p.name not in seen:
                        seen.add(p.name)
                        last, nxt_prev = p, p.prev
                        break
                prev = nxt_prev
            if last is not n:
                message += (f": at least one of its depending tensors, '{last.name}', is not "
                            "connected")
            raise InvalidArgument(message)
        outputs.add(io.name)
    for tensor, n in nodes.items():
        if tensor in outputs:
            continue
        if not n.ready or not n.next:
            raise InvalidArgument(f"ensemble tensor '{tensor}' is unused in ensemble '{name}'")


# -- validation against the composing models ---------------------------------------------------


class _TensorInfo:
    __slots__ = ("model", "dtype", "dims", "full_dims", "decoupled", "label", "step")

    def __init__(self, model: str, batching: bool, dtype: int, dims):
        self.model = model
        self.dtype = dtype
        self.dims = [int(d) for d in dims]
        self.full_dims = ([-1] if batching else []) + self.dims
        self.decoupled = False
        self.label = 0
        self.step = -1


def _dims_match(a: list[int], b: list[int]) -> bool:
    return len(a) == len(b) and all(x == y or x == WILDCARD or y == WILDCARD
                                    for x, y in zip(a, b))


def _dims_text(dims: list[int]) -> str:
    return "[" + ",".join(str(d) for d in dims) + "]"


def _consistent(have: _TensorInfo, new: _TensorInfo, prefix: str) -> None:
    if have.dtype != new.dtype:
        raise InvalidArgument(
            f"{prefix}inconsistent data type: {mc.DataType.Name(have.dtype)} is inferred from "
            f"model {have.model} while {mc.DataType.Name(new.dtype)} is inferred from model "
            f"{new.model}")
    if not _dims_match(have.dims, new.dims) and not _dims_match(have.full_dims, new.full_dims):
        raise InvalidArgument(
            f"{prefix}inconsistent shape: {_dims_text(have.full_dims)} is inferred from model "
            f"{have.model} while {_dims_text(new.full_dims)} is inferred from model {new.model}")


def validate_against_models(config: mc.ModelConfig, step_configs: list[mc.ModelConfig]) -> bool:
    """Check every mapping against the composing models; returns whether it is decoupled."""
    name = config.name
    batching = config.max_batch_size > 0
    tensors: dict[str, _TensorInfo] = {}
    for io in config.input:
        dims = io.reshape.shape if io.HasField("reshape") else io.dims
        tensors[io.name] = _TensorInfo(name, batching, io.data_type, dims)
    for io in config.output:
        dims = io.reshape.shape if io.HasField("reshape") else io.dims
        tensors[io.name] = _TensorInfo(name, batching, io.data_type, dims)
    links: list[tuple[list[str], list[str], bool]] = []
    for idx, (step, scfg) in enumerate(zip(config.ensemble_scheduling.step, step_configs)):
        sname = step.model_name
        if scfg.max_batch_size != 0 and scfg.max_batch_size < config.max_batch_size:
            raise InvalidArgument(
                f"ensemble {name} allows maximum batch size {config.max_batch_size}, but it "
                f"contains model {sname} which only allows maximum batch size to be "
                f"{scfg.max_batch_size}")
        sbatch = scfg.max_batch_size > 0
        inputs = {io.name: io for io in scfg.input}
        for model_in, tensor in step.input_map.items():
            if model_in not in inputs:
                raise InvalidArgument(
                    f"in ensemble {name}, ensemble tensor {tensor} is mapping to non-existing "
                    f"input {model_in} in model {sname}")
        for io in scfg.input:
            tensor = step.input_map.get(io.name)
            if tensor is None:
                if io.optional:
                    continue
                raise InvalidArgument(
                    f"in ensemble {name}, input {io.name} in model {sname} is not mapped to any "
                    "ensemble tensors")
            info = _TensorInfo(sname, sbatch, io.data_type, io.dims)
            have = tensors.get(tensor)
            if have is None:
                tensors[tensor] = info
            else:
                _consistent(have, info, f"in ensemble {name}, ensemble tensor {tensor}: ")
        outputs = {io.name: io for io in scfg.output}
        for model_out, tensor in step.output_map.items():
            io = outputs.get(model_out)
            if io is None:
                raise InvalidArgument(
                    f"in ensemble {name}, ensemble tensor {tensor} is mapped from non-existing "
                    f"output {model_out} in model {sname}")
            info = _TensorInfo(sname, sbatch, io.data_type, io.dims)
            have = tensors.get(tensor)
            if have is None:
                tensors[tensor] = have = info
            else:
                _consistent(have, info, f"in ensemble {name}, ensemble tensor {tensor}: ")
            have.step = idx
        links.append((list(step.input_map.values()), list(step.output_map.values()),
                       bool(scfg.model_transaction_policy.decoupled)))
    # decoupled producers: a step must not mix data from different ones
    label_of: dict[str, int] = {io.name: 0 for io in config.input}
    next_label = 0
    pending = list(range(len(links)))
    progress = True
    while pending and progress:
        progress = False
        for idx in list(pending):
            ins, outs, decoupled = links[idx]
            if not all(t in label_of for t in ins):
                continue
            labels = {label_of[t] for t in ins}
            if len(labels) > 1:
                raise InvalidArgument(
                    f"in ensemble {name}, step of model "
                    f"'{config.ensemble_scheduling.step[idx].model_name}' receives inputs "
                    "originated from different decoupled models")
            label = labels.pop()
            if decoupled:
                next_label += 1
                label = next_label
            for t in outs:
                label_of[t] = label
            pending.remove(idx)
            progress = True
    out_labels = {label_of.get(io.name, 0) for io in config.output}
    if len(out_labels) > 1:
        raise InvalidArgument(
            f"in ensemble {name}, step of model '{name}' receives inputs originated from "
            "different decoupled models")
    return next_label != 0


def check_steps(config: mc.ModelConfig, get_model) -> None:
    """Check the steps against the models serving them (loaded first by the repository's
    dependency graph); marks the ensemble decoupled when a step's responses fork."""
    name = config.name
    step_configs = []
    for step in config.ensemble_scheduling.step:
        version = int(step.model_version)
        try:
            model = get_model(step.model_name, version)
        except NaiadError:
            raise InvalidArgument(
                f"ensemble '{name}' depends on '{step.model_name}' whose required version "
                f"{version} is not loaded") from None
        step_configs.append(model.config)
    decoupled = validate_against_models(config, step_configs)
    config.model_transaction_policy.decoupled = decoupled


# -- the scheduler ---------------------------------------------------------------------------------


class _Step:
    __slots__ = ("index", "model_name", "version", "input_map", "output_map", "requested",
                 "need", "decoupled", "limit", "inflight", "cond", "parked")

    def __init__(self, index: int, step, decoupled: bool, limit: int):
        self.index = index
        self.model_name: str = step.model_name
        self.version = int(step.model_version)
        self.input_map: dict[str, str] = dict(step.input_map)
        self.output_map: dict[str, str] = dict(step.output_map)
        self.requested = {n: RequestedOutput(n) for n in self.output_map}
        self.need = len(set(self.input_map.values()))
        self.decoupled = decoupled
        # max_inflight_requests: in-flight requests of this step across all ensemble requests
        self.limit = limit
        self.inflight = 0
        self.cond = threading.Condition() if limit else None
        self.parked: deque = deque()


class _Branch:
    """The ensemble tensors of one data flow (decoupled responses fork new ones)."""

    __slots__ = ("tensors", "waiting", "missing")

    def __init__(self, tensors: dict[str, Tensor], waiting: list[int], missing: int):
        self.tensors = tensors
        self.waiting = waiting
        self.missing = missing

    def fork(self) -> "_Branch":
        return _Branch(dict(self.tensors), list(self.waiting), self.missing)


class _Run:
    """One ensemble request in flight."""

    __slots__ = ("request", "lock", "inflight", "done", "retired", "compute")

    def __init__(self, request: InferenceRequest):
        self.request = request
        self.lock = threading.Lock()
        # the steps' compute input / infer / output ns, summed (Triton reports these
        # sums as the ensemble's compute times)
        self.compute = [0, 0, 0]
        # step requests in flight, plus one while the scheduler itself is still
        # launching the first steps (so a step finishing inline cannot end the run early)
        self.inflight = 1
        self.done = False
        self.retired = False


class EnsembleScheduler(Scheduler):
    """Runs an ensemble's step graph for each request (no worker threads of its own).

    Steps are submitted through the data plane (``context.submit``), so a step
    whose version a reload retires in between is retried on its successor.
    """

    def __init__(self, model: "Model", context: SchedulingContext):
        super().__init__(model, [], context)
        config = model.config
        self.name = model.name
        self.decoupled = bool(config.model_transaction_policy.decoupled)
        limit = int(config.ensemble_scheduling.max_inflight_requests)
        self.steps: list[_Step] = []
        for i, step in enumerate(config.ensemble_scheduling.step):
            try:
                target = context.get_model(step.model_name, int(step.model_version))
            except NaiadError:
                target = None
            dec = bool(target is not None and target.decoupled)
            self.steps.append(_Step(i, step, dec, limit))
        self.consumers: dict[str, list[_Step]] = {}
        for s in self.steps:
            for tensor in set(s.input_map.values()):
                self.consumers.setdefault(tensor, []).append(s)
        self.output_names = [io.name for io in config.output]
        self._outputs = frozenset(self.output_names)
        self.input_names = [io.name for io in config.input]
        self._need = [s.need for s in self.steps]
        self.active = 0
        self._active_lock = threading.Lock()

    # -- scheduler interface -----------------------------------------------------------

    def enqueue(self, request: InferenceRequest) -> None:
        run = _Run(request)
        if request.trace is not None:
            request.trace.ensemble = True
        with self._active_lock:
            self.active += 1
        request.compute_start_ns = time.monotonic_ns()
        outputs = self._outputs
        branch = _Branch({}, list(self._need), len(outputs))
        ready: list[_Step] = []
        for name in self.input_names:
            t = request.inputs.get(name)
            if t is not None:
                branch.tensors[name] = Tensor(name, t.datatype, t.data)
            # an optional input not sent still counts as present (its steps omit it)
            self._arrived(branch, name, ready)
        if branch.missing == 0 and not ready:
            self._emit(run, branch)
        for step in ready:
            self._launch(run, branch, step)
        with run.lock:
            run.inflight -= 1
        self._maybe_finish(run)

    def _arrived(self, branch: _Branch, name: str, ready: list[_Step]) -> bool:
        """Tensor ``name`` is now present in ``branch``: the steps it completes go to
        ``ready``; True when it was the branch's last missing ensemble output."""
        for step in self.consumers.get(name, ()):
            branch.waiting[step.index] -= 1
            if branch.waiting[step.index] == 0:
                ready.append(step)
        if name in self._outputs:
            branch.missing -= 1
            return branch.missing == 0
        return False

    def busy(self) -> bool:
        return self.active > 0

    async def stop(self) -> None:
        """Wait (bounded by the caller) for requests in flight to finish."""
        while self.active > 0:
            await asyncio.sleep(0.01)

    # -- running steps ---------------------------------------------------------------------

    def _launch(self, run: _Run, branch: _Branch, step: _Step, have_slot: bool = False) -> None:
        """Submit one step; ``have_slot``: a parked launch, counted and holding its slot."""
        request = run.request
        if run.done or request.cancelled:
            if request.cancelled:
                self._fail(run, Cancelled("request was cancelled"), prefix=False)
            if have_slot:
                self._release_slot(step)
                with run.lock:
                    run.inflight -= 1
                self._maybe_finish(run)
            return
        inputs: dict[str, Tensor] = {}
        tensors = branch.tensors
        for model_in, ens in step.input_map.items():
            t = tensors.get(ens)
            if t is not None:
                inputs[model_in] = Tensor(model_in, t.datatype, t.data)
        sub = InferenceRequest(
            step.model_name, inputs, model_version=step.version, id=request.id,
            requested_outputs=step.requested, parameters=request.parameters,
            correlation_id=request.correlation_id, flags=request.flags,
            priority=request.priority, timeout_us=request.timeout_us,
        )

        def on_response(response: InferenceResponse | None, final: bool) -> None:
            if final:
                _add_compute(run, sub)
            self._on_step_response(run, branch, step, response, final)

        if not have_slot:
            with run.lock:
                run.inflight += 1
            if step.limit and not self._acquire_slot(step, run, branch):
                return  # parked (still counted in flight): launched when a slot frees
        try:
            self.context.submit(sub, on_response, stream=True, caller="ensemble",
                                parent_trace=request.trace)
        except NaiadError as exc:
            with run.lock:
                run.inflight -= 1
            if step.limit:
                self._release_slot(step)
            self._fail(run, exc)
            self._maybe_finish(run)

    def _acquire_slot(self, step: _Step, run: _Run, branch: _Branch) -> bool:
        """max_inflight_requests: block the producer, or park the launch on the loop thread."""
        cond = step.cond
        with cond:
            if step.inflight < step.limit:
                step.inflight += 1
                return True
            if self.context.on_loop_thread():
                step.parked.append((run, branch))
                return False
            while step.inflight >= step.limit:
                cond.wait()
            step.inflight += 1
            return True

    def _release_slot(self, step: _Step) -> None:
        cond = step.cond
        with cond:
            if step.parked:
                run, branch = step.parked.popleft()
            else:
                step.inflight -= 1
                cond.notify()
                return
        # the slot passes straight to the parked launch
        self._launch(run, branch, step, have_slot=True)

    def _on_step_response(self, run: _Run, branch: _Branch, step: _Step,
                          response: InferenceResponse | None, final: bool) -> None:
        if response is not None and not run.done:
            if response.error is not None:
                self._fail(run, response.error)
            else:
                self._store(run, branch, step, response)
        if final:
            if step.limit:
                self._release_slot(step)
            with run.lock:
                run.inflight -= 1
            self._maybe_finish(run)

    def _store(self, run: _Run, branch: _Branch, step: _Step,
               response: InferenceResponse) -> None:
        if step.decoupled:
            branch = branch.fork()
        produced = {t.name: t for t in response.outputs}
        ready: list[_Step] = []
        complete = False
        with run.lock:
            tensors = branch.tensors
            for model_out, ens in step.output_map.items():
                t = produced.get(model_out)
                if t is None:
                    missing = model_out
                    break
                tensors[ens] = Tensor(ens, t.datatype, t.data)
                if self._arrived(branch, ens, ready):
                    complete = True
            else:
                missing = None
        if missing is not None:
            self._fail(run, NaiadError(
                f"model '{step.model_name}' did not produce output '{missing}' the ensemble "
                "maps"))
            return
        for nxt in ready:
            self._launch(run, branch, nxt)
        if complete:
            self._emit(run, branch)

    def _emit(self, run: _Run, branch: _Branch) -> None:
        """The ensemble outputs of a branch are complete: respond."""
        outputs = [branch.tensors[n] for n in self.output_names if n in branch.tensors]
        response = InferenceResponse(outputs)
        if not self.decoupled:
            with run.lock:
                if run.done:
                    return
                run.done = True
            self._account(run)
            self.model.deliver(run.request, response, True)
            return
        with run.lock:
            if run.done:
                return
        self.model.deliver(run.request, response, False)

    def _fail(self, run: _Run, error: NaiadError, prefix: bool = True) -> None:
        with run.lock:
            if run.done:
                return
            run.done = True
        if prefix:
            error = NaiadError(f"in ensemble '{self.name}', {error.message}", error.kind)
        run.request.compute_end_ns = time.monotonic_ns()
        self.model.deliver(run.request, InferenceResponse(error=error), True)

    def _maybe_finish(self, run: _Run) -> None:
        with run.lock:
            if run.inflight > 0 or run.retired:
                return
            run.retired = True
            finished_now = not run.done
            run.done = True
        with self._active_lock:
            self.active -= 1
        if not finished_now:
            return
        if self.decoupled:
            self._account(run)
            self.model.deliver(run.request, None, True)
            return
        run.request.compute_end_ns = time.monotonic_ns()
        self.model.deliver(run.request, InferenceResponse(error=NaiadError(
            f"in ensemble '{self.name}', the steps finished without producing every "
            "ensemble output")), True)

    def _account(self, run: _Run) -> None:
        """A successful ensemble request: count it as one execution whose compute
        input / infer / output times are the sums of its steps', as Triton does.

        The request's compute stamps are set from those sums (starting at the real
        compute start) so the request statistics add up the same way; its trace
        leaves the compute events out, as Triton's ensemble traces do.
        """
        request = run.request
        cs = request.compute_start_ns
        with run.lock:
            c_in, c_infer, c_out = run.compute
        ie = request.compute_input_end_ns = cs + c_in
        os_ = request.compute_output_start_ns = ie + c_infer
        ce = request.compute_end_ns = os_ + c_out
        self.model.stats.record_execution((request,), request.batch_size or 1, cs, ie, os_, ce)


def _add_compute(run: _Run, sub: InferenceRequest) -> None:
    """Add a finished step request's compute times to its ensemble request's."""
    cs = sub.compute_start_ns
    if not cs:
        return  # never executed (refused, cancelled, answered from the cache)
    ie = sub.compute_input_end_ns or cs
    os_ = sub.compute_output_start_ns or ie
    ce = sub.compute_end_ns or os_
    with run.lock:
        c = run.compute
        c[0] += ie - cs
        c[1] += os_ - ie
        c[2] += ce - os_

