"""Inline runs read the thread's CPU clock (a system call) only when a run looked slow.

A fast inline run's wall time bounds its CPU time, so it feeds the average
without a clock read; a run slow by the wall clock (a slow model, or a
preempted thread) is left out of the average and the next runs' CPU time is
measured to tell which. Driven with the fake backend of test_inline_execution.
"""

from __future__ import annotations

import time

from test_inline_execution import make, req

from naiad.core import instance as inst_mod
from naiad.core.types import InferenceResponse


def _warm(inst):
    for _ in range(inst_mod.WARMUP_EXECUTIONS):
        inst.run([req()], inline=False)


def test_fast_inline_runs_do_not_read_the_cpu_clock(monkeypatch):
    _, _, inst = make()
    _warm(inst)
    reads = []
    real = time.thread_time_ns
    monkeypatch.setattr(inst_mod.time, "thread_time_ns", lambda: reads.append(1) or real())
    for _ in range(50):
        assert inst.try_run_inline([req()])
    assert reads == []
    assert 0 < inst._avg_ns < inst_mod.INLINE_MAX_AVG_NS


def test_a_run_slow_by_the_clock_has_the_next_runs_cpu_measured(monkeypatch):
    _, backend, inst = make()
    _warm(inst)
    avg = inst._avg_ns
    backend.delay = 0.002  # sleeps: slow by the wall clock, not by CPU
    assert inst.try_run_inline([req()])
    assert inst._avg_ns == avg  # left out of the average, not counted as model time
    assert inst._cpu_checks == inst_mod.CPU_CHECK_RUNS
    backend.delay = 0.0
    reads = []
    real = time.thread_time_ns
    monkeypatch.setattr(inst_mod.time, "thread_time_ns", lambda: reads.append(1) or real())
    for _ in range(inst_mod.CPU_CHECK_RUNS + 5):
        assert inst.try_run_inline([req()])
    assert len(reads) == 2 * inst_mod.CPU_CHECK_RUNS  # start and end of each checked run
    assert inst._cpu_checks == 0


def test_a_model_slow_on_cpu_leaves_inline_execution(monkeypatch):
    _, backend, inst = make()
    _warm(inst)
    busy = inst_mod.INLINE_MAX_AVG_NS * 3 / 1e9

    def spin(requests):
        end = time.thread_time() + busy
        while time.thread_time() < end:
            pass
        return [InferenceResponse() for _ in requests]

    monkeypatch.setattr(backend, "execute", spin)
    ran_inline = 0
    for _ in range(60):
        if not inst.try_run_inline([req()]):
            break
        ran_inline += 1
    assert 0 < ran_inline < 60
    assert not inst.inline_allowed()
