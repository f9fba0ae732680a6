"""Triton's sequence batcher: stateful models, one sequence per batch slot.

Every request names its sequence (``correlation_id``, a uint64 or a string,
the ``sequence_id`` parameter) and marks its first and last request with the
START and END flags. All requests of a sequence run on the same instance, in
order, one per execution. Requests are refused with Triton's messages when
the correlation ID is 0 or empty, when the batch size is not 1 (for a model
that batches), and when a sequence that is not running (never started, ended,
or released for being idle) gets a request without START.

Strategies (``direct`` is the default):

* ``direct``: each instance has ``max(1, max_batch_size)`` slots; a new
  sequence takes a free slot (or waits in a backlog until one frees) and keeps
  it until its END request runs. Each execution carries one row per slot up
  to the highest ready one; slots with nothing ready get a "null" request
  (zeros, READY false) whose response goes nowhere, so row *i* is always slot
  *i*. ``max_queue_delay_microseconds`` with ``minimum_slot_utilization``
  holds an execution until enough slots are ready or the oldest request has
  waited the delay.
* ``oldest``: each instance keeps up to ``max_candidate_sequences`` (default
  ``max(1, max_batch_size)``) sequences and batches their oldest requests,
  at most one per sequence, with the dynamic batcher's rules
  (``preferred_batch_size``, ``max_queue_delay_microseconds``,
  ``preserve_ordering``); requests whose variable-size inputs differ in
  shape wait for a later execution.

Control inputs (``control_input``): CONTROL_SEQUENCE_START / END / READY as
int32, fp32 or bool with their ``*_false_true`` values, and
CONTROL_SEQUENCE_CORRID (UINT64, INT64, UINT32, INT32 or STRING; a string ID
given to a numeric CORRID input is passed as a stable 64-bit hash of it) are
added to each request as tensors of shape [1, 1] ([1] without batching).

Implicit state (``state``): the ``output_name`` tensor a request's response
carries becomes the ``input_name`` input of the sequence's next request. A
START request gets the initial state: ``initial_state`` zeros or
``data_file`` (read from ``<model>/initial_state/``), else zeros with every
variable dimension as 1. The state output is removed from the response unless
it is also a configured output the client may receive. Python models read the
state as an input and return it as an output tensor of that name (Triton's
python backend only passes the input; naiad also keeps what the model
returns); onnxruntime models have them as graph inputs/outputs.

A sequence with no request for ``max_sequence_idle_microseconds`` (default
1 s) is released: its slot and state are freed; its next request needs START.

Iterative sequences (``iterative_sequence: true``, for iterative generation):
a request without a correlation ID gets one of its own and the START flag, so
each request is a sequence; a backend that sets ``request.reschedule`` (a
python model calling ``request.set_release_flags(
TRITONSERVER_REQUEST_RELEASE_RESCHEDULE)``) has the request run again in a
later batch, in its slot, with neither START nor END, beside the other
sequences' requests (continuous batching); the sequence ends, freeing its slot,
when a run finishes without rescheduling.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hashlib
import logging
import os
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

import numpy as np

from naiad.core import datatypes
from naiad.core.errors import Cancelled, InvalidArgument, Unavailable
from naiad.core.scheduler import Scheduler, SchedulingContext
from naiad.core.types import SEQUENCE_END, SEQUENCE_START, InferenceRequest, Tensor
from naiad.protocol import model_config_pb2 as mc
from naiad.scheduling.delivery import OrderedDelivery
from naiad.scheduling.dynamic_batcher import batching_shape_inputs

if TYPE_CHECKING:
    from naiad.core.instance import ModelInstance
    from naiad.core.model import Model

log = logging.getLogger("naiad.scheduling")

_monotonic_ns = time.monotonic_ns
Control = mc.ModelSequenceBatching.Control
IDLE_DEFAULT_US = 1_000_000
INITIAL_STATE_FOLDER = "initial_state"
_CORRID_TYPES = {
    mc.TYPE_UINT64: np.uint64, mc.TYPE_INT64: np.int64, mc.TYPE_UINT32: np.uint32,
    mc.TYPE_INT32: np.int32, mc.TYPE_STRING: np.object_,
}
_CORRID_MASK = {np.uint64: (1 << 64) - 1, np.int64: (1 << 63) - 1, np.uint32: (1 << 32) - 1,
                np.int32: (1 << 31) - 1}


# ---------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class ControlSpec:
    input_name: str
    kind: int
    wire: str
    dtype: Any
    false_value: Any = None
    true_value: Any = None


@dataclasses.dataclass
class StateSpec:
    input_name: str
    output_name: str
    wire: str
    initial: np.ndarray  # with the batch dimension when the model batches


def parse_controls(config: mc.ModelConfig) -> list[ControlSpec]:
    name = config.name
    seen: dict[int, str] = {}
    out = []
    for ci in config.sequence_batching.control_input:
        if not ci.name:
            raise InvalidArgument(f"sequence batching control input for model '{name}' must "
                                  "have a name")
        if len(ci.control) != 1:
            raise InvalidArgument(
                f"sequence batching control input '{ci.name}' for model '{name}' must specify "
                f"exactly one control, got {len(ci.control)}")
        c = ci.control[0]
        kind_name = Control.Kind.Name(c.kind)
        if c.kind in seen:
            raise InvalidArgument(
                f"sequence batching specifies multiple {kind_name} tensors for {name}")
        seen[c.kind] = ci.name
        if c.kind == Control.CONTROL_SEQUENCE_CORRID:
            dtype = _CORRID_TYPES.get(c.data_type)
            if dtype is None:
                raise InvalidArgument(
                    f"unexpected data type for control {kind_name} for {name}. Allowed data "
                    "types are TYPE_UINT64, TYPE_INT64, TYPE_UINT32, TYPE_INT32 and TYPE_STRING")
            wire = datatypes.config_to_wire(mc.DataType.Name(c.data_type))
            out.append(ControlSpec(ci.name, c.kind, wire, dtype))
            continue
        lists = [("int32_false_true", c.int32_false_true, "INT32", np.int32),
                 ("fp32_false_true", c.fp32_false_true, "FP32", np.float32),
                 ("bool_false_true", c.bool_false_true, "BOOL", np.bool_)]
        given = [entry for entry in lists if len(entry[1]) > 0]
        if len(given) != 1:
            raise InvalidArgument(
                f"sequence batching must specify exactly one of int32_false_true, "
                f"fp32_false_true or bool_false_true for {kind_name} for {name}")
        field, values, wire, dtype = given[0]
        if len(values) != 2:
            raise InvalidArgument(
                f"sequence batching control '{field}' must have exactly 2 entries for "
                f"{kind_name} for {name}")
        out.append(ControlSpec(ci.name, c.kind, wire, dtype, values[0], values[1]))
    return out


def parse_states(config: mc.ModelConfig, model_dir: str) -> list[StateSpec]:
    name = config.name
    batched = config.max_batch_size > 0
    out = []
    for st in config.sequence_batching.state:
        if not st.input_name or not st.output_name:
            raise InvalidArgument(
                f"sequence batching state for model '{name}' must give input_name and "
                "output_name")
        wire = datatypes.config_to_wire(mc.DataType.Name(st.data_type))
        if st.data_type == mc.TYPE_INVALID:
            raise InvalidArgument(
                f"sequence batching state '{st.input_name}' for model '{name}' must give a "
                "data_type")
        dtype = datatypes.numpy_dtype(wire)
        if len(st.initial_state) > 1:
            raise InvalidArgument(
                f"sequence batching state '{st.input_name}' for model '{name}' can have at most "
                "one initial_state")
        if st.initial_state:
            init = st.initial_state[0]
            dims = tuple(int(d) for d in init.dims)
            if any(d < 0 for d in dims):
                raise InvalidArgument(
                    f"initial state '{init.name}' for model '{name}' must have fixed dims, got "
                    f"{list(dims)}")
            if init.data_type not in (mc.TYPE_INVALID, st.data_type):
                raise InvalidArgument(
                    f"initial state '{init.name}' for model '{name}' has data type "
                    f"{mc.DataType.Name(init.data_type)}, the state is "
                    f"{mc.DataType.Name(st.data_type)}")
            arr = _initial_data(init, dims, dtype, wire, model_dir, name)
        else:
            dims = tuple(1 if int(d) < 0 else int(d) for d in st.dims)
            arr = np.zeros(dims, dtype=dtype) if wire != "BYTES" else \
                np.full(dims, b"", dtype=np.object_)
        if batched:
            arr = arr.reshape((1,) + arr.shape)
        arr.setflags(write=False)
        out.append(StateSpec(st.input_name, st.output_name, wire, arr))
    return out


def _initial_data(init, dims, dtype, wire, model_dir, model_name) -> np.ndarray:
    if init.WhichOneof("state_data") == "data_file":
        path = os.path.join(model_dir, INITIAL_STATE_FOLDER, init.data_file)
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as exc:
            raise InvalidArgument(
                f"failed to read initial state file for model '{model_name}': {exc}") from None
        count = int(np.prod(dims)) if dims else 1
        if wire == "BYTES":
            from naiad.scheduling.warmup import _read_bytes_elements

            arr = np.empty(count, dtype=np.object_)
            arr[:] = _read_bytes_elements(raw, count, path)
            return arr.reshape(dims)
        need = count * np.dtype(dtype).itemsize
        if len(raw) != need:
            raise InvalidArgument(
                f"initial state file '{init.data_file}' of model '{model_name}' has "
                f"{len(raw)} bytes, {need} expected")
        return np.frombuffer(raw, dtype=dtype).reshape(dims).copy()
    if wire == "BYTES":
        return np.full(dims, b"", dtype=np.object_)
    return np.zeros(dims, dtype=dtype)


def validate_sequence_batching(config: mc.ModelConfig) -> None:
    sb = config.sequence_batching
    if sb.HasField("oldest"):
        for size in sb.oldest.preferred_batch_size:
            if size <= 0:
                raise InvalidArgument(
                    f"sequence batching preferred batch size must be positive for {config.name}")
            if size > config.max_batch_size:
                raise InvalidArgument(
                    f"sequence batching preferred batch size must be <= max batch size for "
                    f"{config.name}")
    if sb.HasField("direct"):
        util = sb.direct.minimum_slot_utilization
        if util < 0.0 or util > 1.0:
            raise InvalidArgument(
                f"sequence batching minimum slot utilization must be in range (0.0, 1.0] for "
                f"{config.name}")
    if config.response_cache.enable:
        log.info("model '%s': the response cache is not used with the sequence batcher",
                 config.name)


# ---------------------------------------------------------------------------
# runtime
# ---------------------------------------------------------------------------


class _Sequence:
    __slots__ = ("cid", "lane", "slot", "pending", "state", "last_ns", "busy", "released",
                 "current")

    def __init__(self, cid):
        self.cid = cid
        self.lane: _Lane | None = None
        self.slot = -1
        self.pending: deque = deque()
        self.state: dict | None = None
        self.last_ns = _monotonic_ns()
        self.busy = False  # a request of it is executing
        self.released = False
        self.current: InferenceRequest | None = None  # the request executing


class _Lane:
    """One instance: its slots and the condition its worker thread waits on."""

    __slots__ = ("instance", "cond", "slots", "inflight")

    def __init__(self, instance: "ModelInstance", lock: threading.Lock, nslots: int):
        self.instance = instance
        self.cond = threading.Condition(lock)
        self.slots: list[_Sequence | None] = [None] * nslots
        self.inflight: list[_Sequence] = []

    def free_slots(self) -> int:
        return sum(1 for s in self.slots if s is None)


class _StateSink:
    """``request.state``: takes the new implicit state out of a response."""

    __slots__ = ("seq", "by_output", "visible")

    def __init__(self, seq: _Sequence, by_output: dict, visible: frozenset):
        self.seq = seq
        self.by_output = by_output
        self.visible = visible

    def capture(self, response) -> None:
        if response.error is not None:
            return
        keep = []
        state = self.seq.state
        for t in response.outputs:
            spec = self.by_output.get(t.name)
            if spec is None:
                keep.append(t)
                continue
            if state is not None:
                state[spec.input_name] = t.data
            if t.name in self.visible:
                keep.append(t)
        response.outputs = keep


class SequenceBatcher(Scheduler):
    """The scheduler of a model with ``sequence_batching``."""

    def __init__(self, model: "Model", instances: "list[ModelInstance]",
                 context: SchedulingContext):
        super().__init__(model, instances, context)
        config = model.config
        sb = config.sequence_batching
        self.name = model.name
        self.batching = model.max_batch_size > 0
        self.max_batch = max(1, model.max_batch_size)
        self.controls = parse_controls(config)
        self.states = parse_states(config, model.model_dir)
        self._state_by_output = {s.output_name: s for s in self.states}
        self._visible = frozenset(o.name for o in config.output)
        self.idle_ns = int(sb.max_sequence_idle_microseconds or IDLE_DEFAULT_US) * 1000
        self.oldest = sb.HasField("oldest")
        if self.oldest:
            o = sb.oldest
            nslots = int(o.max_candidate_sequences) or self.max_batch
            prefs = sorted({int(s) for s in o.preferred_batch_size if 0 < s <= self.max_batch})
            self.preferred = frozenset(prefs or [self.max_batch])
            self.delay_ns = int(o.max_queue_delay_microseconds) * 1000
            self.order = OrderedDelivery() if o.preserve_ordering else None
            self.min_util = 0.0
        else:
            nslots = self.max_batch
            self.preferred = frozenset([self.max_batch])
            self.delay_ns = int(sb.direct.max_queue_delay_microseconds) * 1000
            self.min_util = float(sb.direct.minimum_slot_utilization)
            self.order = None
        self.max_preferred = max(self.preferred)
        # iterative sequences: each request is a sequence of its own, which the model
        # may run again (request rescheduling) until it is done
        self.iterative = bool(sb.iterative_sequence)
        self._next_cid = 1
        if self.iterative and self.order is not None:
            log.warning("model '%s': preserve_ordering is not used with iterative sequences",
                        model.name)
            self.order = None
        self._shape_inputs, _ = batching_shape_inputs(model)
        self.lock = threading.Lock()
        self.lanes = [_Lane(inst, self.lock, nslots) for inst in instances]
        self.sequences: dict[Any, _Sequence] = {}
        self.backlog: deque[_Sequence] = deque()
        self.stopping = False
        self._reaper_cond = threading.Condition(self.lock)
        self._reaper = threading.Thread(target=self._reap_loop, name=f"naiad-seq-{model.name}",
                                        daemon=True)
        self._reaper.start()
        for lane in self.lanes:
            lane.instance.start(functools.partial(self._next_batch, lane))

    # -- intake ------------------------------------------------------------------------

    def enqueue(self, request: InferenceRequest) -> None:
        cid = request.correlation_id
        if self.iterative and (cid == 0 or cid == "" or cid is None):
            cid = self._new_correlation_id(request)
        if cid == 0 or cid == "" or cid is None:
            raise InvalidArgument(
                f"inference request to model '{self.name}' must specify a non-zero or "
                "non-empty correlation ID")
        if self.batching and request.batch_size != 1:
            raise InvalidArgument(
                f"inference request to model '{self.name}' must specify batch-size 1 due to "
                "requirements of sequence batcher")
        flags = request.flags
        with self.lock:
            if self.stopping:
                raise Unavailable(
                    f"[request id: {request.id or '<id_unknown>'}] Server is stopping, scheduler "
                    "for model has stopped accepting new inference requests")
            seq = self.sequences.get(cid)
            if seq is None:
                if not flags & SEQUENCE_START:
                    raise InvalidArgument(
                        f"inference request for sequence {cid} to model '{self.name}' must "
                        "specify the START flag on the first request of the sequence")
                seq = _Sequence(cid)
                self.sequences[cid] = seq
                self._place(seq)
            seq.pending.append(request)
            seq.last_ns = _monotonic_ns()
            if flags & SEQUENCE_END and not self.iterative:
                # the sequence ends with this request: a later one must START again
                del self.sequences[cid]
            lane = seq.lane
            if lane is not None:
                lane.cond.notify()

    def _new_correlation_id(self, request: InferenceRequest) -> int:
        """A request to an iterative model without a sequence: a sequence of its own."""
        with self.lock:
            cid = self._next_cid
            while cid in self.sequences:
                cid += 1
            self._next_cid = cid + 1
        request.correlation_id = cid
        request.flags |= SEQUENCE_START
        return cid

    def queue_size(self) -> int:
        with self.lock:
            return sum(len(s.pending) for lane in self.lanes for s in lane.slots if s) + \
                sum(len(s.pending) for s in self.backlog)

    def busy(self) -> bool:
        """Queued or executing requests, or a sequence still open (its state lives here)."""
        if self.sequences or self.backlog:
            return True
        return any(s is not None for lane in self.lanes for s in lane.slots) or super().busy()

    def cancel(self, request: InferenceRequest) -> None:
        removed = False
        with self.lock:
            for seq in self._all_sequences():
                try:
                    seq.pending.remove(request)
                except ValueError:
                    continue
                removed = True
                break
        if removed and self.iterative:
            with self.lock:
                seq = self.sequences.get(request.correlation_id)
                if seq is not None and not seq.pending and not seq.busy:
                    self._end_iterative(seq)
        if removed and request.respond_error(Cancelled("request was cancelled")):
            self.model.stats.record_request(request, False, _monotonic_ns())

    def _all_sequences(self):
        for lane in self.lanes:
            for s in lane.slots:
                if s is not None:
                    yield s
        yield from self.backlog

    # -- slots (under the lock) --------------------------------------------------------------

    def _place(self, seq: _Sequence) -> None:
        best = None
        best_free = 0
        for lane in self.lanes:
            free = lane.free_slots()
            if free > best_free:
                best, best_free = lane, free
        if best is None:
            self.backlog.append(seq)
            return
        self._assign(seq, best, best.slots.index(None))

    def _assign(self, seq: _Sequence, lane: _Lane, slot: int) -> None:
        lane.slots[slot] = seq
        seq.lane = lane
        seq.slot = slot
        if seq.pending:
            lane.cond.notify()
        self._reaper_cond.notify()

    def _end_iterative(self, seq: _Sequence) -> None:
        """An iterative sequence's request is done (under the lock): free its slot."""
        if self.sequences.get(seq.cid) is seq:
            del self.sequences[seq.cid]
        self._release(seq)

    def _release(self, seq: _Sequence) -> None:
        """Free a sequence's slot (and state) and give it to the oldest backlogged one."""
        if seq.released:
            return
        seq.released = True
        seq.state = None
        lane = seq.lane
        if lane is None:
            return
        lane.slots[seq.slot] = None
        if self.backlog:
            nxt = self.backlog.popleft()
            self._assign(nxt, lane, seq.slot)

    # -- batches (instance threads) ------------------------------------------------------------

    def _next_batch(self, lane: _Lane) -> "list | None":
        with self.lock:
            now = _monotonic_ns()
            for seq in lane.inflight:  # the previous batch of this instance has finished
                seq.busy = False
                seq.last_ns = now
                if self.iterative:
                    self._after_iteration(seq)
            if lane.inflight:
                lane.inflight = []
                self._reaper_cond.notify()
            while True:
                ready = [s for s in lane.slots if s is not None and s.pending]
                if not ready:
                    if self.stopping:
                        break
                    lane.cond.wait()
                    continue
                now = _monotonic_ns()
                if self.oldest:
                    batch, wait_ns = self._form_oldest(lane, ready, now)
                else:
                    batch, wait_ns = self._form_direct(lane, ready, now)
                if batch is not None:
                    return batch
                lane.cond.wait(wait_ns / 1e9)
        lane.instance.lock.acquire()  # ends idle: finalized only after its last batch
        return None

    def _after_iteration(self, seq: _Sequence) -> None:
        """(Under the lock.) Run a rescheduled request again, or end its sequence."""
        request, seq.current = seq.current, None
        if request is not None and request.reschedule and not request.responded \
                and not seq.released:
            request.reschedule = False
            request.flags &= ~(SEQUENCE_START | SEQUENCE_END)  # neither, from now on
            seq.pending.appendleft(request)
            return
        if not seq.pending:
            self._end_iterative(seq)

    def _form_direct(self, lane: _Lane, ready: list, now: int) -> "tuple[list | None, int]":
        delay = self.delay_ns
        if delay and not self.stopping and len(ready) < self.min_util * len(lane.slots):
            oldest = min(s.pending[0].queue_start_ns for s in ready)
            if now - oldest < delay:
                return None, delay - (now - oldest)
        last = max(s.slot for s in ready)
        rows: list = []
        template = None
        for i in range(last + 1):
            seq = lane.slots[i]
            if seq is not None and seq.pending:
                request = seq.pending.popleft()
                self._prepare(request, seq, lane)
                rows.append(request)
                if template is None:
                    template = request
            else:
                rows.append(None)
        batch = [r if r is not None else self._null_request(template) for r in rows]
        return batch, 0

    def _form_oldest(self, lane: _Lane, ready: list, now: int) -> "tuple[list | None, int]":
        heads = sorted(ready, key=lambda s: s.pending[0].queue_start_ns)
        if self._shape_inputs:
            first = self._shape_key(heads[0].pending[0])
            heads = [s for s in heads if self._shape_key(s.pending[0]) == first]
        n = min(len(heads), self.max_batch)
        best = max((p for p in self.preferred if p <= n), default=0)
        oldest = heads[0].pending[0].queue_start_ns
        delay = self.delay_ns
        exceeded = delay != 0 and now - oldest >= delay
        if best and not exceeded:
            take = best
        elif n >= self.max_preferred or delay == 0 or exceeded or self.stopping:
            take = n
        else:
            return None, delay - (now - oldest)
        batch = []
        for seq in heads[:take]:
            request = seq.pending.popleft()
            self._prepare(request, seq, lane)
            batch.append(request)
        if self.order is not None:
            self.order.register(batch)
        return batch, 0

    def _shape_key(self, request: InferenceRequest) -> tuple:
        inputs = request.inputs
        return tuple(inputs[n].data.shape if n in inputs else None for n in self._shape_inputs)

    def _prepare(self, request: InferenceRequest, seq: _Sequence, lane: _Lane) -> None:
        """Attach the control and state inputs; note the sequence as executing."""
        flags = request.flags
        start = bool(flags & SEQUENCE_START)
        if self.states and (start or seq.state is None):
            seq.state = {s.input_name: s.initial for s in self.states}
        inputs = request.inputs
        for c in self.controls:
            inputs[c.input_name] = self._control_tensor(c, request, flags, True)
        if self.states:
            state = seq.state
            for s in self.states:
                inputs[s.input_name] = Tensor(s.input_name, s.wire, state[s.input_name])
            request.state = _StateSink(seq, self._state_by_output, self._visible)
        seq.busy = True
        seq.current = request
        lane.inflight.append(seq)
        if flags & SEQUENCE_END and not self.iterative:
            self._release(seq)

    def _control_tensor(self, c: ControlSpec, request: InferenceRequest | None, flags: int,
                        ready: bool) -> Tensor:
        shape = (1, 1) if self.batching else (1,)
        kind = c.kind
        if kind == Control.CONTROL_SEQUENCE_CORRID:
            cid = request.correlation_id if request is not None and ready else 0
            if c.dtype is np.object_:
                value = cid.encode() if isinstance(cid, str) else str(cid).encode()
                arr = np.empty(shape, dtype=np.object_)
                arr.flat[0] = value
                return Tensor(c.input_name, c.wire, arr)
            if isinstance(cid, str):
                digest = hashlib.blake2b(cid.encode(), digest_size=8).digest()
                cid = int.from_bytes(digest, "little") & _CORRID_MASK[c.dtype]
            return Tensor(c.input_name, c.wire, np.full(shape, cid, dtype=c.dtype))
        if kind == Control.CONTROL_SEQUENCE_START:
            on = ready and bool(flags & SEQUENCE_START)
        elif kind == Control.CONTROL_SEQUENCE_END:
            on = ready and bool(flags & SEQUENCE_END)
        else:  # READY
            on = ready
        return Tensor(c.input_name, c.wire,
                      np.full(shape, c.true_value if on else c.false_value, dtype=c.dtype))

    def _null_request(self, template: InferenceRequest) -> InferenceRequest:
        """An empty slot's row: zeros shaped like a real request, READY false, answered nowhere."""
        inputs = {}
        for name, t in template.inputs.items():
            data = t.data
            if data.dtype == np.object_:
                arr = np.full(data.shape, b"", dtype=np.object_)
            else:
                arr = np.zeros(data.shape, dtype=data.dtype)
            inputs[name] = Tensor(name, t.datatype, arr)
        for c in self.controls:
            inputs[c.input_name] = self._control_tensor(c, None, 0, False)
        null = InferenceRequest(self.name, inputs, model_version=self.model.version)
        null.batch_size = template.batch_size
        null.queue_start_ns = template.queue_start_ns
        null._final_sent = True  # noqa: SLF001 - nothing is delivered for a null row
        return null

    # -- idle sequences ------------------------------------------------------------------------

    def _reap_loop(self) -> None:
        cond = self._reaper_cond
        with cond:
            while not self.stopping:
                now = _monotonic_ns()
                nearest = 0
                for lane in self.lanes:
                    for seq in list(lane.slots):
                        if seq is None or seq.busy or seq.pending:
                            continue
                        expires = seq.last_ns + self.idle_ns
                        if now >= expires:
                            log.debug("model '%s': sequence %s idle for %d us, released",
                                      self.name, seq.cid, self.idle_ns // 1000)
                            if self.sequences.get(seq.cid) is seq:
                                del self.sequences[seq.cid]
                            self._release(seq)
                        elif nearest == 0 or expires < nearest:
                            nearest = expires
                if nearest:
                    cond.wait(max(0.0, (nearest - now) / 1e9) + 0.001)
                else:
                    cond.wait()

    # -- lifecycle -----------------------------------------------------------------------------------

    async def stop(self) -> None:
        """Run what the running sequences have queued; refuse the backlog; end the threads."""
        with self.lock:
            self.stopping = True
            stranded = [r for s in self.backlog for r in s.pending]
            self.backlog.clear()
            for lane in self.lanes:
                lane.cond.notify_all()
            self._reaper_cond.notify_all()
        for r in stranded:
            if r.respond_error(Unavailable(f"model '{self.name}' is unloading")):
                self.model.stats.record_request(r, False, _monotonic_ns())
        loop = asyncio.get_running_loop()
        for inst in self.instances:
            if inst.thread is not None:
                await loop.run_in_executor(None, inst.thread.join)
        await loop.run_in_executor(None, self._reaper.join, 5.0)
