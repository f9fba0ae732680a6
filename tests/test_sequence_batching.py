"""The sequence batcher: controls, implicit state, slots, strategies, idle release."""

from __future__ import annotations

import asyncio
import random
import time

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from conftest import NaiadProcess, write_model

SEQ_MODEL = '''
import time

import numpy as np
import triton_python_backend_utils as pb_utils


def _get(r, name):
    t = pb_utils.get_input_tensor_by_name(r, name)
    return None if t is None else t.as_numpy()


class TritonPythonModel:
    def execute(self, requests):
        first = _get(requests[0], "IN")
        if first is not None and first.reshape(-1)[0] < 0:
            time.sleep(-float(first.reshape(-1)[0]))
        out = []
        n = len(requests)
        for i, r in enumerate(requests):
            x = _get(r, "IN").astype(np.float32)
            state = _get(r, "STATE_IN")
            new = (x + state).astype(np.float32) if state is not None else x
            corrid = _get(r, "CORRID")
            tensors = [
                pb_utils.Tensor("OUT", new),
                pb_utils.Tensor("STATE_OUT", new),
                pb_utils.Tensor("ROWS", np.full_like(x, n)),
                pb_utils.Tensor("ROW", np.full_like(x, i)),
            ]
            for name in ("START", "END", "READY"):
                value = _get(r, name)
                if value is not None:
                    tensors.append(pb_utils.Tensor(name + "_SEEN", value.astype(np.float32)))
                    tensors.append(pb_utils.Tensor(
                        name + "_TYPE", np.array([[str(value.dtype).encode()]], np.object_)))
            if corrid is not None:
                tensors.append(pb_utils.Tensor("CORRID_SEEN", corrid))
            out.append(pb_utils.InferenceResponse(tensors))
        return out
'''

CONTROLS = """
  control_input [
    { name: "START" control [ { kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] } ] },
    { name: "END" control [ { kind: CONTROL_SEQUENCE_END fp32_false_true: [ 0, 1 ] } ] },
    { name: "READY" control [ { kind: CONTROL_SEQUENCE_READY bool_false_true: [ false, true ] } ] },
    { name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: %s } ] }
  ]"""

STATE = """
  state [ { input_name: "STATE_IN" output_name: "STATE_OUT" data_type: TYPE_FP32 dims: [ 1 ]
            %s } ]"""


def seq_config(name, max_batch_size=4, strategy="", idle_us=0, corrid="TYPE_UINT64",
               state=True, initial="", count=1, outputs_extra=""):
    return f"""
name: "{name}"
backend: "python"
max_batch_size: {max_batch_size}
input [ {{ name: "IN" data_type: TYPE_FP32 dims: [ 1 ] }} ]
output [
  {{ name: "OUT" data_type: TYPE_FP32 dims: [ 1 ] }},
  {{ name: "ROWS" data_type: TYPE_FP32 dims: [ 1 ] }},
  {{ name: "ROW" data_type: TYPE_FP32 dims: [ 1 ] }},
  {{ name: "START_SEEN" data_type: TYPE_FP32 dims: [ 1 ] }},
  {{ name: "END_SEEN" data_type: TYPE_FP32 dims: [ 1 ] }},
  {{ name: "READY_SEEN" data_type: TYPE_FP32 dims: [ 1 ] }},
  {{ name: "START_TYPE" data_type: TYPE_STRING dims: [ 1 ] }},
  {{ name: "END_TYPE" data_type: TYPE_STRING dims: [ 1 ] }},
  {{ name: "READY_TYPE" data_type: TYPE_STRING dims: [ 1 ] }},
  {{ name: "CORRID_SEEN" data_type: {corrid} dims: [ 1 ] }}
  {outputs_extra}
]
sequence_batching {{
  {strategy}
  max_sequence_idle_microseconds: {idle_us}
  {CONTROLS % corrid}
  {STATE % initial if state else ""}
}}
instance_group [ {{ count: {count} kind: KIND_CPU }} ]
parameters {{ key: "NAIAD_INLINE_EXECUTION" value: {{ string_value: "off" }} }}
"""


MODELS = {
    "direct": dict(max_batch_size=2),
    "oldest": dict(max_batch_size=4, strategy="oldest { max_candidate_sequences: 4 "
                                              "max_queue_delay_microseconds: 100000 }"),
    "single": dict(max_batch_size=1, idle_us=400000),
    "idle": dict(max_batch_size=4, idle_us=3000000),
    "strid": dict(max_batch_size=4, corrid="TYPE_STRING"),
    "nobatch": dict(max_batch_size=0),
    "zero_init": dict(initial='initial_state { data_type: TYPE_FP32 dims: [ 1 ] zero_data: true '
                              'name: "zero" }'),
    "file_init": dict(initial='initial_state { data_type: TYPE_FP32 dims: [ 1 ] '
                              'data_file: "start.bin" name: "from file" }'),
    "visible_state": dict(outputs_extra=', { name: "STATE_OUT" data_type: TYPE_FP32 '
                                        'dims: [ 1 ] }'),
    # a 3 s delay: the sequences must outlive it (the default idle limit is 1 s)
    "util": dict(max_batch_size=2, idle_us=20000000,
                 strategy="direct { max_queue_delay_microseconds: 3000000 "
                          "minimum_slot_utilization: 1.0 }"),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("seq")
    for name, kw in MODELS.items():
        model_dir = write_model(repo, name, seq_config(name, **kw), {"model.py": SEQ_MODEL})
        if name == "file_init":
            (model_dir / "initial_state").mkdir()
            (model_dir / "initial_state" / "start.bin").write_bytes(
                np.array([100.0], np.float32).tobytes())
    with NaiadProcess(repo) as s:
        yield s


class Step:
    def __init__(self, response=None, error=None, status=None, done=0.0):
        self.r = response
        self.error = error
        self.status = status
        self.done = done

    def __getitem__(self, name):
        return self.r.as_numpy(name)

    def value(self, name="OUT"):
        return float(self.r.as_numpy(name).reshape(-1)[0])


def _sync_infer(server, model, value, seq_id, start=False, end=False, batch=1, outputs=None):
    client = httpclient.InferenceServerClient(server.http_url)
    shape = [batch, 1] if model != "nobatch" else [1]
    arr = np.full(shape, value, np.float32)
    inp = httpclient.InferInput("IN", shape, "FP32")
    inp.set_data_from_numpy(arr)
    req_out = [httpclient.InferRequestedOutput(n) for n in outputs] if outputs else None
    try:
        return Step(client.infer(model, [inp], sequence_id=seq_id, sequence_start=start,
                                 sequence_end=end, outputs=req_out))
    except Exception as exc:
        return Step(error=exc.message(), status=exc.status())
    finally:
        client.close()


async def _ainfer(client, model, value, seq_id, start=False, end=False):
    inp = aioclient.InferInput("IN", [1, 1], "FP32")
    inp.set_data_from_numpy(np.array([[value]], np.float32))
    try:
        r = await client.infer(model, [inp], sequence_id=seq_id, sequence_start=start,
                               sequence_end=end)
        return Step(r, done=time.monotonic())
    except Exception as exc:
        return Step(error=exc.message(), status=exc.status(), done=time.monotonic())


def test_interleaved_sequences_keep_their_own_state(server):
    rng = random.Random(7)
    plans = {sid: [float(rng.randint(1, 9)) for _ in range(6)] for sid in (11, 12, 13, 14, 15)}

    async def run_sequence(client, model, sid, values):
        sums = []
        for i, v in enumerate(values):
            step = await _ainfer(client, model, v, sid, start=i == 0, end=i == len(values) - 1)
            assert step.error is None, step.error
            sums.append(step.value())
            await asyncio.sleep(rng.random() * 0.02)
        return sums

    async def go(model):
        client = aioclient.InferenceServerClient(server.http_url)
        try:
            return await asyncio.gather(*[run_sequence(client, model, sid, values)
                                          for sid, values in plans.items()])
        finally:
            await client.close()

    for model in ("direct", "oldest"):
        results = asyncio.run(go(model))
        for (sid, values), sums in zip(plans.items(), results):
            assert sums == list(np.cumsum(values)), (model, sid)


def test_control_inputs_carry_triton_encodings(server):
    first = _sync_infer(server, "direct", 1.0, 77, start=True)
    middle = _sync_infer(server, "direct", 1.0, 77)
    last = _sync_infer(server, "direct", 1.0, 77, end=True)
    for step, start, end in ((first, 1.0, 0.0), (middle, 0.0, 0.0), (last, 0.0, 1.0)):
        assert step.error is None, step.error
        assert step.value("START_SEEN") == start and step.value("END_SEEN") == end
        assert step.value("READY_SEEN") == 1.0
        assert step["CORRID_SEEN"].tolist() == [[77]]
        assert step["CORRID_SEEN"].dtype == np.uint64
        assert step["START_TYPE"].reshape(-1)[0] == b"int32"
        assert step["END_TYPE"].reshape(-1)[0] == b"float32"
        assert step["READY_TYPE"].reshape(-1)[0] == b"bool"
    both = _sync_infer(server, "direct", 1.0, 78, start=True, end=True)
    assert both.value("START_SEEN") == 1.0 and both.value("END_SEEN") == 1.0


def test_string_sequence_ids(server):
    a = _sync_infer(server, "strid", 2.0, "session-a", start=True)
    b = _sync_infer(server, "strid", 5.0, "session-b", start=True)
    a2 = _sync_infer(server, "strid", 3.0, "session-a", end=True)
    assert a2.value() == 5.0 and b.value() == 5.0
    assert a["CORRID_SEEN"].tolist() == [[b"session-a"]]
    # a string ID given to a numeric CORRID input arrives as a stable hash
    h1 = _sync_infer(server, "direct", 1.0, "text-id", start=True)
    h2 = _sync_infer(server, "direct", 1.0, "text-id", end=True)
    assert h1["CORRID_SEEN"].tolist() == h2["CORRID_SEEN"].tolist()
    assert h1["CORRID_SEEN"][0][0] != 0


def test_requests_the_sequence_batcher_refuses(server):
    no_id = _sync_infer(server, "direct", 1.0, 0, start=True)
    assert no_id.status == "400"
    assert no_id.error == ("inference request to model 'direct' must specify a non-zero or "
                           "non-empty correlation ID")
    unknown = _sync_infer(server, "direct", 1.0, 4242)
    assert unknown.status == "400"
    assert unknown.error == ("inference request for sequence 4242 to model 'direct' must "
                             "specify the START flag on the first request of the sequence")
    unknown_str = _sync_infer(server, "strid", 1.0, "nobody")
    assert unknown_str.error == ("inference request for sequence nobody to model 'strid' must "
                                 "specify the START flag on the first request of the sequence")
    batch2 = _sync_infer(server, "direct", 1.0, 4243, start=True, batch=2)
    assert batch2.status == "400"
    assert batch2.error == ("inference request to model 'direct' must specify batch-size 1 due "
                            "to requirements of sequence batcher")
    _sync_infer(server, "direct", 1.0, 4244, start=True)
    _sync_infer(server, "direct", 1.0, 4244, end=True)
    ended = _sync_infer(server, "direct", 1.0, 4244)
    assert ended.status == "400" and "must specify the START flag" in ended.error


def test_a_new_start_restarts_the_state(server):
    assert _sync_infer(server, "direct", 4.0, 90, start=True).value() == 4.0
    assert _sync_infer(server, "direct", 4.0, 90).value() == 8.0
    assert _sync_infer(server, "direct", 1.0, 90, start=True).value() == 1.0
    assert _sync_infer(server, "direct", 1.0, 90, end=True).value() == 2.0
    # ended: the same ID starts over from the initial state
    assert _sync_infer(server, "direct", 3.0, 90, start=True, end=True).value() == 3.0


def test_initial_state_from_zero_and_from_file(server):
    assert _sync_infer(server, "zero_init", 2.0, 1, start=True).value() == 2.0
    assert _sync_infer(server, "file_init", 2.0, 1, start=True).value() == 102.0
    assert _sync_infer(server, "file_init", 3.0, 1, end=True).value() == 105.0


def test_state_output_reaches_the_client_only_when_it_is_a_configured_output(server):
    hidden = _sync_infer(server, "direct", 1.0, 300, start=True, end=True)
    assert hidden["STATE_OUT"] is None
    shown = _sync_infer(server, "visible_state", 6.0, 300, start=True, end=True)
    assert shown["STATE_OUT"].tolist() == [[6.0]]
    asked = _sync_infer(server, "visible_state", 6.0, 301, start=True, end=True,
                        outputs=["OUT"])
    assert asked["STATE_OUT"] is None and asked.value() == 6.0


def test_models_without_batching_get_unbatched_controls(server):
    step = _sync_infer(server, "nobatch", 2.0, 5, start=True)
    assert step.error is None, step.error
    assert step["OUT"].shape == (1,) and step["START_SEEN"].tolist() == [1.0]
    assert _sync_infer(server, "nobatch", 3.0, 5, end=True).value() == 5.0


def test_direct_strategy_keeps_each_sequence_in_its_slot(server):
    async def go():
        client = aioclient.InferenceServerClient(server.http_url)
        try:
            a0 = await _ainfer(client, "direct", 1.0, 501, start=True)  # slot 0
            b0 = await _ainfer(client, "direct", 1.0, 502, start=True)  # slot 1
            b1 = await _ainfer(client, "direct", 1.0, 502)  # only slot 1 has a request
            both = await asyncio.gather(_ainfer(client, "direct", -0.3, 501),
                                        _ainfer(client, "direct", 1.0, 502))
            await _ainfer(client, "direct", 0.0, 501, end=True)
            await _ainfer(client, "direct", 0.0, 502, end=True)
            return a0, b0, b1, both
        finally:
            await client.close()

    a0, b0, b1, _ = asyncio.run(go())
    assert a0.value("ROW") == 0.0 and a0.value("ROWS") == 1.0
    # slot 1's request runs as row 1 behind a null row for the idle slot 0
    assert b1.value("ROW") == 1.0 and b1.value("ROWS") == 2.0
    assert b1.value() == 2.0  # the null row did not disturb its state


def test_oldest_strategy_batches_at_most_one_request_per_sequence(server):
    async def go():
        client = aioclient.InferenceServerClient(server.http_url)
        try:
            starts = [_ainfer(client, "oldest", 1.0, 600 + i, start=True) for i in range(3)]
            await asyncio.gather(*starts)
            # two requests of 600 and one each of 601, 602 arrive within the queue delay
            steps = await asyncio.gather(_ainfer(client, "oldest", 1.0, 600),
                                         _ainfer(client, "oldest", 1.0, 600),
                                         _ainfer(client, "oldest", 1.0, 601),
                                         _ainfer(client, "oldest", 1.0, 602))
            for i in range(3):
                await _ainfer(client, "oldest", 0.0, 600 + i, end=True)
            return steps
        finally:
            await client.close()

    s600a, s600b, s601, s602 = asyncio.run(go())
    assert sorted([s600a.value(), s600b.value()]) == [2.0, 3.0]  # in order, state carried
    assert s601.value() == 2.0 and s602.value() == 2.0
    assert max(s.value("ROWS") for s in (s600a, s600b, s601, s602)) <= 3.0


def test_idle_sequences_are_released(server):
    assert _sync_infer(server, "idle", 1.0, 800, start=True).error is None
    assert _sync_infer(server, "idle", 1.0, 800).value() == 2.0
    time.sleep(4.0)  # idle for longer than max_sequence_idle_microseconds (3 s)
    late = _sync_infer(server, "idle", 1.0, 800)
    assert late.status == "400" and "must specify the START flag" in late.error
    # the released sequence's state is gone: starting again begins from scratch
    assert _sync_infer(server, "idle", 1.0, 800, start=True, end=True).value() == 1.0


def test_a_backlogged_sequence_gets_the_slot_an_idle_one_released(server):
    async def go():
        client = aioclient.InferenceServerClient(server.http_url)
        try:
            first = await _ainfer(client, "single", 1.0, 900, start=True)  # takes the only slot
            t0 = time.monotonic()
            second = await _ainfer(client, "single", 7.0, 901, start=True, end=True)
            return first, second, second.done - t0
        finally:
            await client.close()

    first, second, waited = asyncio.run(go())
    assert first.error is None and second.error is None and second.value() == 7.0
    assert waited > 0.3  # it waited in the backlog until sequence 900 went idle (400 ms)
    gone = _sync_infer(server, "single", 1.0, 900)
    assert gone.status == "400"


def test_minimum_slot_utilization_holds_a_batch_until_the_delay(server):
    async def go():
        client = aioclient.InferenceServerClient(server.http_url)
        try:
            t0 = time.monotonic()
            alone = await _ainfer(client, "util", 1.0, 1001, start=True)
            alone_s = time.monotonic() - t0
            await _ainfer(client, "util", 1.0, 1002, start=True)  # both slots taken now
            t0 = time.monotonic()
            pair = await asyncio.gather(_ainfer(client, "util", 1.0, 1001, end=True),
                                        _ainfer(client, "util", 1.0, 1002, end=True))
            return alone, alone_s, pair, time.monotonic() - t0
        finally:
            await client.close()

    alone, alone_s, pair, pair_s = asyncio.run(go())
    # one ready slot of two is below the minimum utilization: it waited out the delay
    assert alone.error is None and alone_s > 2.5
    # both slots ready: full utilization, sent at once, as one execution of two rows
    assert all(p.error is None and p.value("ROWS") == 2.0 for p in pair)
    assert pair_s < 1.5
