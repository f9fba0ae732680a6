"""The load generator of one process, and worker processes running more of them.

An :class:`Engine` keeps a *level* of load on the server: a number of
requests always in flight (concurrency mode), or requests sent on a schedule
(request-rate mode, constant or Poisson intervals). Every completed request
becomes a :class:`Record`; the profiler takes the records out at the end of
each measurement window (``swap``). Everything runs on one asyncio event loop
(uvloop when available) and each response sends the next request from its
callback, so nothing waits between a response and the next request.

With ``--workers N`` the load is split across N processes (each an
:class:`Engine` driven through a pipe by a :class:`RemoteEngine`), for
servers faster than one client core can drive.

Sequence models: every concurrency slot plays sequences one after another
(``sequence_start`` on the first request, ``sequence_end`` on the last,
``sequence_id`` from ``--sequence-id-range``, spread over the workers so ids
never collide); in request-rate mode ``--num-of-sequences`` sequences are
live at once and each one's requests are sent in order.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import time
from collections import deque
from typing import Any

from naiad.tools.perf.data import Step, batched
from naiad.tools.perf.transports import Prepared, Result, ShmPlan

DELAY_TOLERANCE_NS = 1_000_000  # perf_analyzer: a request sent >1 ms late is "delayed"


@dataclasses.dataclass
class Plan:
    """Everything a worker process needs to generate load (picklable)."""
    protocol: str
    url: str
    model: str
    version: str
    outputs: list[str]
    output_datatypes: list[str]
    streams: list[list[Step]]
    batch_size: int
    batching: bool
    sequence: bool
    sequence_length: int
    sequence_length_given: bool
    sequence_length_variation: float
    sequence_id_range: tuple[int, int | None]
    num_of_sequences: int
    request_parameters: list[tuple[str, Any]]
    headers: list[tuple[str, str]]
    input_format: str = "binary"
    output_format: str = "binary"
    shared_memory: str = "none"
    output_shm_size: int = 102400
    streaming: bool = False
    grpc_compression: str = "none"
    ssl: dict = dataclasses.field(default_factory=dict)
    keep_outputs: bool = False  # decode outputs for --profile-export-file
    async_mode: bool = False
    max_threads: int = 16
    distribution: str = "constant"


# (start_ns, end_ns, responses, send_ns, recv_ns, flags, sequence_id, data index, extra)
# flags: 1 sequence end, 2 delayed, 4 empty final response
SEQ_END, DELAYED, NULL_LAST = 1, 2, 4
Record = tuple


@dataclasses.dataclass
class Snapshot:
    records: list[Record]
    cpu_s: float  # process CPU time since the previous snapshot
    wall_s: float
    sent: int  # requests sent since the previous snapshot
    error: str = ""


class _Sequence:
    __slots__ = ("id", "remaining", "stream", "pos", "busy", "queue")

    def __init__(self):
        self.id = 0
        self.remaining = 0
        self.stream = 0
        self.pos = 0
        self.busy = False
        self.queue: deque = deque()


class Engine:
    def __init__(self, plan: Plan, worker: int = 0, workers: int = 1, seed: int | None = None):
        self.plan = plan
        self.worker = worker
        self.workers = workers
        self.rng = random.Random(seed if seed is not None else os.getpid())
        self.transport = None
        self.control = None
        self.prepared: list[list[Prepared]] = []
        self.flat: list[Prepared] = []
        self.records: list[Record] = []
        self.error = ""
        self.sent = 0
        self.completed = 0
        self.in_flight = 0
        self._slots: list = []
        self._idle: list = []
        self._opening = 0
        self._running = False
        self._mode = ""
        self._next_data = 0
        self._next_stream = 0
        self._next_seq_id = 0
        self._limit = 0  # requests this level may still send (0: unlimited)
        self._limited = False
        self._drained: asyncio.Event | None = None
        self._rate_handle = None
        self._pending: deque = deque()
        self._finishing = False
        self._sequences: list[_Sequence] = []
        self._shm: list = []
        self._snap_cpu = time.process_time()
        self._snap_wall = time.monotonic()
        self._snap_sent = 0

    # -- set-up -----------------------------------------------------------------------------

    async def open(self) -> None:
        from naiad.tools.perf import connect

        plan = self.plan
        self.transport = connect.make_transport(plan)
        await self.transport.open()
        shm_plans = None
        if plan.shared_memory == "system":
            self.control = connect.make_control(plan)
            shm_plans = await self._setup_shm()
        for si, stream in enumerate(plan.streams):
            row = []
            for ti, step in enumerate(stream):
                req = batched(step, plan.batch_size, plan.batching)
                index = len(self.flat)
                shm = shm_plans[index] if shm_plans else None
                p = self.transport.prepare(index, req, shm)
                p.stream, p.pos = si, ti
                row.append(p)
                self.flat.append(p)
            self.prepared.append(row)

    async def _setup_shm(self) -> list[ShmPlan]:
        from multiprocessing import shared_memory

        from naiad.tools.perf.data import tensor_bytes

        plan = self.plan
        blobs, plans, offset = [], [], 0
        tag = f"naiad_perf_{os.getpid()}_{self.worker}"
        for stream in plan.streams:
            for step in stream:
                req = batched(step, plan.batch_size, plan.batching)
                offsets = {}
                for name, v in req.items():
                    raw = tensor_bytes(v)
                    offsets[name] = (offset, len(raw))
                    blobs.append(raw)
                    offset += len(raw)
                plans.append(offsets)
        in_size = max(offset, 1)
        out_size = plan.output_shm_size * max(plan.batch_size, 1)
        region_in = shared_memory.SharedMemory(name=tag + "_in", create=True, size=in_size)
        region_out = shared_memory.SharedMemory(
            name=tag + "_out", create=True, size=max(out_size * max(len(plan.outputs), 1), 1))
        self._shm = [region_in, region_out]
        pos = 0
        for raw in blobs:
            region_in.buf[pos:pos + len(raw)] = raw
            pos += len(raw)
        await self.control.register_system_shm(tag + "_in", "/" + region_in.name, in_size)
        await self.control.register_system_shm(tag + "_out", "/" + region_out.name,
                                               region_out.size)
        return [ShmPlan(tag + "_in", offsets, tag + "_out", out_size) for offsets in plans]

    async def close(self) -> None:
        await self.stop()
        for slot in self._slots:
            slot.close()
        self._slots, self._idle = [], []
        if self.transport is not None:
            await self.transport.close()
        if self.control is not None:
            tag = f"naiad_perf_{os.getpid()}_{self.worker}"
            for suffix in ("_in", "_out"):
                try:
                    await self.control.unregister_system_shm(tag + suffix)
                except Exception:  # noqa: BLE001 - best effort at exit
                    pass
            await self.control.close()
        for region in self._shm:
            region.close()
            try:
                region.unlink()
            except FileNotFoundError:
                pass
        self._shm = []

    # -- data and sequences -----------------------------------------------------------------

    def _next_sequence_id(self) -> int:
        start, end = self.plan.sequence_id_range
        k = self._next_seq_id
        self._next_seq_id += 1
        value = start + self.worker + k * self.workers
        if end is not None:
            span = end - start
            value = start + (self.worker + k * self.workers) % span
        return value

    def _begin_sequence(self, seq: _Sequence) -> None:
        plan = self.plan
        seq.id = self._next_sequence_id()
        seq.stream = self._next_stream % len(self.prepared)
        self._next_stream += 1
        seq.pos = 0
        if plan.sequence_length_given or len(self.prepared[seq.stream]) <= 1:
            base = plan.sequence_length
            var = plan.sequence_length_variation / 100.0
            low, high = max(1, int(base * (1 - var))), max(1, int(base * (1 + var)))
            seq.remaining = self.rng.randint(low, high)
        else:
            seq.remaining = len(self.prepared[seq.stream])

    def _next_request(self, seq: _Sequence | None) -> tuple[Prepared, dict | None, int, int]:
        """(prepared, parameters, sequence id, flags) of the next request."""
        params = dict(self.plan.request_parameters) if self.plan.request_parameters else None
        if seq is None:
            p = self.flat[self._next_data % len(self.flat)]
            self._next_data += 1
            return p, params, 0, 0
        if seq.remaining <= 0:
            self._begin_sequence(seq)
        row = self.prepared[seq.stream]
        p = row[seq.pos % len(row)]
        params = params or {}
        params["sequence_id"] = seq.id
        params["sequence_start"] = seq.pos == 0
        seq.pos += 1
        seq.remaining -= 1
        end = seq.remaining == 0
        params["sequence_end"] = end
        return p, params, seq.id, SEQ_END if end else 0

    # -- load -------------------------------------------------------------------------------

    async def start_concurrency(self, concurrency: int, limit: int = 0) -> None:
        """Keep ``concurrency`` requests in flight (``limit`` > 0: send only that many)."""
        await self.stop()
        self._running, self._mode = True, "concurrency"
        self._limit, self._limited = limit, limit > 0
        while len(self._slots) < concurrency:
            self._slots.append(await self.transport.new_slot())
        self._sequences = [_Sequence() for _ in range(concurrency)] if self.plan.sequence else []
        for i in range(concurrency):
            self._issue(self._slots[i], self._sequences[i] if self._sequences else None)

    async def start_rate(self, rate: float, limit: int = 0) -> None:
        """Send ``rate`` requests per second on schedule (this process's share)."""
        await self.stop()
        self._running, self._mode = True, "rate"
        self._limit, self._limited = limit, limit > 0
        self._idle = list(self._slots)
        self._pending.clear()
        self._sequences = ([_Sequence() for _ in range(self.plan.num_of_sequences)]
                           if self.plan.sequence else [])
        self._seq_turn = 0
        loop = asyncio.get_running_loop()
        self._rate_start = loop.time()
        self._rate_next = 0.0
        self._rate = rate
        self._schedule(loop)

    def _schedule(self, loop) -> None:
        if not self._running:
            return
        gap = 1.0 / self._rate
        if self.plan.distribution == "poisson":
            gap = self.rng.expovariate(self._rate)
        self._rate_next += gap
        self._rate_handle = loop.call_at(self._rate_start + self._rate_next, self._fire, loop)

    def _fire(self, loop) -> None:
        if not self._running:
            return
        due_ns = time.time_ns()
        self._schedule(loop)
        if self._limited:
            if self._limit <= 0:
                return
            self._limit -= 1
        seq = None
        if self._sequences:
            seq = self._sequences[self._seq_turn % len(self._sequences)]
            self._seq_turn += 1
            if seq.busy:  # a sequence's requests go in order
                seq.queue.append(due_ns)
                return
        self._dispatch(seq, due_ns)

    def _dispatch(self, seq, due_ns: int) -> None:
        if self._idle:
            slot = self._idle.pop()
            delayed = time.time_ns() - due_ns > DELAY_TOLERANCE_NS
            self._issue(slot, seq, delayed)
            return
        self._pending.append((seq, due_ns))
        cap = self.plan.max_threads if not self.plan.async_mode else 4096
        if len(self._slots) + self._opening < cap:
            self._opening += 1
            asyncio.ensure_future(self._grow())

    async def _grow(self) -> None:
        try:
            slot = await self.transport.new_slot()
        except Exception as exc:  # noqa: BLE001
            self._opening -= 1
            self._fail(f"unable to open a connection: {exc}")
            return
        self._opening -= 1
        self._slots.append(slot)
        self._release(slot)

    def _release(self, slot) -> None:
        """A rate-mode slot is free: serve the oldest waiting request or go idle."""
        if self._pending and (self._running or self._finishing):
            seq, due_ns = self._pending.popleft()
            self._issue(slot, seq, time.time_ns() - due_ns > DELAY_TOLERANCE_NS)
        else:
            self._idle.append(slot)

    def _issue(self, slot, seq: _Sequence | None, delayed: bool = False) -> None:
        if self._mode == "concurrency" and self._limited:
            if self._limit <= 0:
                return
            self._limit -= 1
        p, params, seq_id, flags = self._next_request(seq)
        if delayed:
            flags |= DELAYED
        if seq is not None:
            seq.busy = True
        self.sent += 1
        self.in_flight += 1

        def done(r: Result) -> None:
            self.in_flight -= 1
            self.completed += 1
            if not r.ok:
                self._fail(r.error)
            else:
                f = flags | (NULL_LAST if r.null_last else 0)
                extra = (r.response_times, r.outputs) if r.response_times or r.outputs else None
                self.records.append((r.start_ns, r.end_ns, r.responses, r.send_ns, r.recv_ns, f,
                                     seq_id, p.index, extra))
            if seq is not None:
                seq.busy = False
            if self._finishing:
                if seq is not None and seq.remaining > 0 and not self.error:
                    self._send_final(seq, slot)
                elif self._mode != "concurrency":
                    self._release(slot)
            elif self._mode == "concurrency":
                if self._running and not self.error:
                    self._issue(slot, seq)
            else:
                if seq is not None and seq.queue and self._running:
                    due = seq.queue.popleft()
                    self._dispatch(seq, due)
                self._release(slot)
            if self.in_flight == 0 and not self._pending and self._drained is not None:
                self._drained.set()

        try:
            slot.send(p, params, done)
        except Exception as exc:  # noqa: BLE001 - a send that cannot start fails the run
            done(Result(False, f"{type(exc).__name__}: {exc}", time.time_ns(),
                        time.time_ns(), 0, 0))

    def _fail(self, message: str) -> None:
        if not self.error:
            self.error = message
        self._running = False

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop sending; wait for the requests in flight.

        Sequences the level leaves open are completed first, as perf_analyzer
        does: each gets one last request with ``sequence_end`` (sent as soon as
        its request in flight returns), so no sequence keeps holding a slot of
        the server's sequence batcher, and none blocks the sequences queued
        behind it.
        """
        self._running = False
        if self._rate_handle is not None:
            self._rate_handle.cancel()
            self._rate_handle = None
        self._pending.clear()
        self._limited = False
        if self._sequences and not self.error:
            self._finishing = True
            for seq in self._sequences:
                seq.queue.clear()
                if seq.remaining > 0 and not seq.busy:
                    seq.remaining = 1
                    self._send_final(seq)
        await self._drain(timeout)
        self._finishing = False
        self._idle = list(self._slots)

    def _send_final(self, seq: _Sequence, slot=None) -> None:
        """Send a live sequence's last request (on ``slot``, or any free one)."""
        seq.remaining = 1
        if slot is None:
            if self._mode == "concurrency":
                slot = self._slots[self._sequences.index(seq)]
            elif self._idle:
                slot = self._idle.pop()
            else:
                self._pending.append((seq, time.time_ns()))
                if not self._opening:
                    self._opening += 1
                    asyncio.ensure_future(self._grow())
                return
        self._issue(slot, seq)

    async def _drain(self, timeout: float) -> None:
        if self.in_flight or self._pending:
            self._drained = asyncio.Event()
            try:
                await asyncio.wait_for(self._drained.wait(), timeout)
            except asyncio.TimeoutError:
                pass
            self._drained = None

    async def wait_done(self, timeout: float) -> None:
        """Wait until a limited level has sent and completed all its requests."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.error:
            if self._limit <= 0 and self.in_flight == 0 and not self._pending:
                return
            await asyncio.sleep(0.01)

    def snapshot(self) -> Snapshot:
        records, self.records = self.records, []
        cpu, wall = time.process_time(), time.monotonic()
        snap = Snapshot(records, cpu - self._snap_cpu, wall - self._snap_wall,
                        self.sent - self._snap_sent, self.error)
        self._snap_cpu, self._snap_wall, self._snap_sent = cpu, wall, self.sent
        return snap

    def counters(self) -> tuple[int, int, str]:
        return self.completed, self.sent, self.error


# ---------------------------------------------------------------------------
# worker processes
# ---------------------------------------------------------------------------


def _worker_main(conn, plan: Plan, index: int, workers: int) -> None:  # pragma: no cover - child
    from naiad.tools.perf import connect

    connect.install_loop_policy()

    async def serve() -> None:
        engine = Engine(plan, index, workers)
        try:
            await engine.open()
            conn.send(("ok", None))
        except Exception as exc:  # noqa: BLE001
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
            return
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue = asyncio.Queue()
        loop.add_reader(conn.fileno(), lambda: inbox.put_nowait(conn.recv()))
        while True:
            cmd, args = await inbox.get()
            try:
                if cmd == "concurrency":
                    await engine.start_concurrency(*args)
                    reply = None
                elif cmd == "rate":
                    await engine.start_rate(*args)
                    reply = None
                elif cmd == "stop":
                    await engine.stop()
                    reply = None
                elif cmd == "wait_done":
                    await engine.wait_done(*args)
                    reply = None
                elif cmd == "snapshot":
                    reply = engine.snapshot()
                elif cmd == "counters":
                    reply = engine.counters()
                elif cmd == "close":
                    await engine.close()
                    conn.send(("ok", None))
                    return
                else:
                    raise ValueError(f"unknown command {cmd}")
                conn.send(("ok", reply))
            except Exception as exc:  # noqa: BLE001
                conn.send(("error", f"{type(exc).__name__}: {exc}"))

    asyncio.run(serve())


class RemoteEngine:
    """An :class:`Engine` in a child process, driven through a pipe."""

    def __init__(self, plan: Plan, index: int, workers: int):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, plan, index, workers),
                                daemon=True, name=f"naiad-perf-worker-{index}")
        self._lock = asyncio.Lock()

    async def _call(self, cmd: str, *args, timeout: float = 120.0):
        loop = asyncio.get_running_loop()
        async with self._lock:
            def roundtrip():
                self.conn.send((cmd, args))
                if not self.conn.poll(timeout):
                    raise TimeoutError(f"worker did not answer '{cmd}'")
                return self.conn.recv()

            status, value = await loop.run_in_executor(None, roundtrip)
        if status != "ok":
            raise RuntimeError(f"worker: {value}")
        return value

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        self.proc.start()

        def first():
            if not self.conn.poll(120):
                raise TimeoutError("worker did not start")
            return self.conn.recv()

        status, value = await loop.run_in_executor(None, first)
        if status != "ok":
            raise RuntimeError(value)

    async def start_concurrency(self, concurrency: int, limit: int = 0) -> None:
        await self._call("concurrency", concurrency, limit)

    async def start_rate(self, rate: float, limit: int = 0) -> None:
        await self._call("rate", rate, limit)

    async def stop(self) -> None:
        await self._call("stop")

    async def wait_done(self, timeout: float) -> None:
        await self._call("wait_done", timeout, timeout=timeout + 30)

    async def snapshot_async(self) -> Snapshot:
        return await self._call("snapshot")

    async def counters_async(self) -> tuple[int, int, str]:
        return await self._call("counters")

    async def close(self) -> None:
        try:
            if self.proc.is_alive():
                await self._call("close", timeout=30)
        except Exception:  # noqa: BLE001
            pass
        self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(timeout=5)


class LocalEngine(Engine):
    """An in-process engine with the remote engine's awaitable accessors."""

    async def snapshot_async(self) -> Snapshot:
        return self.snapshot()

    async def counters_async(self) -> tuple[int, int, str]:
        return self.counters()
