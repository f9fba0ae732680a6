"""When a model instance runs a batch on the submitting thread, and when it must not.

These drive ModelInstance directly with a fake backend whose execute time the
test controls; no timing target is asserted, only which thread ran what.
"""

from __future__ import annotations

import threading
import time

from naiad.backends.base import BackendInstance, InstanceSpec
from naiad.core import instance as inst_mod
from naiad.core.instance import ModelInstance
from naiad.core.statistics import ModelStatistics
from naiad.core.types import InferenceRequest, InferenceResponse


class FakeModel:
    name = "fake"
    decoupled = False

    def __init__(self):
        self.stats = ModelStatistics("fake", 1)
        self.completed = []

    def complete(self, requests, responses, error=None):
        for r in requests:
            r.respond(InferenceResponse(), True)
        self.completed.extend(requests)


class FakeBackend(BackendInstance):
    inline_capable = True

    def __init__(self):
        self.delay = 0.0
        self.threads = []

    def execute(self, requests):
        self.threads.append(threading.get_ident())
        if self.delay:
            time.sleep(self.delay)
        return [InferenceResponse() for _ in requests]


def make():
    model = FakeModel()
    backend = FakeBackend()
    spec = InstanceSpec(name="fake_0", kind="KIND_CPU", device_id=0, group_index=0,
                        index_in_group=0)
    return model, backend, ModelInstance(model, spec, backend)


def req():
    r = InferenceRequest("fake", {})
    r.set_response_callback(lambda resp, final: None)
    return r


def test_new_instance_never_runs_inline_before_its_warmup_on_the_thread():
    _, backend, inst = make()
    for _ in range(inst_mod.WARMUP_EXECUTIONS):
        assert not inst.try_run_inline([req()])
        inst.run([req()], inline=False)  # as its worker thread would
    assert inst.try_run_inline([req()])
    assert backend.threads[-1] == threading.get_ident()


def test_a_model_that_sleeps_never_holds_the_submitting_thread():
    _, backend, inst = make()
    backend.delay = 0.01
    for _ in range(inst_mod.WARMUP_EXECUTIONS + 5):
        assert not inst.try_run_inline([req()])
        inst.run([req()], inline=False)
    assert inst.inline_runs == 0


def test_a_model_that_turns_slow_goes_back_to_its_thread():
    _, backend, inst = make()
    for _ in range(inst_mod.WARMUP_EXECUTIONS):
        inst.run([req()], inline=False)
    assert inst.try_run_inline([req()])
    backend.delay = (inst_mod.INLINE_SLOW_NS / 1e9) * 1.5
    assert inst.try_run_inline([req()])  # it could not know beforehand; one is forgiven
    assert inst.try_run_inline([req()])  # (a lone slow run may be preemption)
    assert not inst.try_run_inline([req()])  # two close together: back to its thread
    assert inst._inline_blocked_until > time.monotonic_ns()


def test_preemption_of_an_inline_run_does_not_count_as_model_time():
    _, _, inst = make()
    for _ in range(inst_mod.WARMUP_EXECUTIONS):
        inst.run([req()], inline=False)
    avg = inst._avg_ns
    # 5 ms of wall time of which 20 us were the model's CPU: the thread lost the core
    inst._observe(5_000_000, 20_000, time.monotonic_ns())
    assert inst._avg_ns < inst_mod.INLINE_MAX_AVG_NS
    assert inst._strikes == 0
    assert inst._avg_ns <= max(avg, 20_000)
    assert inst.inline_allowed()


def test_repeated_slow_inline_runs_back_off_for_a_while():
    _, _, inst = make()
    for _ in range(inst_mod.WARMUP_EXECUTIONS):
        inst.run([req()], inline=False)
    slow = inst_mod.INLINE_SLOW_NS + 1
    for _ in range(inst_mod.INLINE_SLOW_STRIKES):
        inst._observe(slow, 1000, time.monotonic_ns())
    assert inst._inline_blocked_until > time.monotonic_ns()
    assert not inst.try_run_inline([req()])


def test_inline_run_takes_over_batches_already_queued_in_order():
    model, _, inst = make()
    for _ in range(inst_mod.WARMUP_EXECUTIONS):
        inst.run([req()], inline=False)
    first, second, current = req(), req(), req()
    queued = [[first], [second]]
    assert inst.try_run_inline([current], lambda: queued.pop(0) if queued else None)
    assert model.completed[-3:] == [first, second, current]


def test_instance_busy_on_its_thread_is_not_entered_inline():
    _, _, inst = make()
    for _ in range(inst_mod.WARMUP_EXECUTIONS):
        inst.run([req()], inline=False)
    with inst.lock:  # the worker thread holds it while executing
        assert not inst.try_run_inline([req()])
