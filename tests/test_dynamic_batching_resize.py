"""A dynamic-batching model's instance group grows and shrinks in place under traffic."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from conftest import NaiadProcess

from tests.clients import infer_probe
from tests.models import probe_config, write_probe

NO_INLINE = 'parameters { key: "NAIAD_INLINE_EXECUTION" value: { string_value: "off" } }'
BATCHING = "dynamic_batching { max_queue_delay_microseconds: 1000 }"


def _two_gates(server):
    async def go():
        client = aioclient.InferenceServerClient(server.http_url)
        try:
            return await asyncio.gather(*[infer_probe(client, "m", -0.4, tag=i)
                                          for i in range(2)])
        finally:
            await client.close()

    return asyncio.run(go())


def test_instances_are_added_and_removed_without_losing_requests(tmp_path):
    repo = tmp_path / "models"
    write_probe(repo, "m", max_batch_size=1, scheduling=BATCHING, count=1, extra=NO_INLINE)
    errors: list = []
    done = threading.Event()
    sent = [0]

    def traffic():
        client = httpclient.InferenceServerClient(server.http_url)
        while not done.is_set():
            inp = httpclient.InferInput("IN", [1, 1], "FP32")
            inp.set_data_from_numpy(np.array([[1.0]], np.float32))
            try:
                client.infer("m", [inp])
                sent[0] += 1
            except Exception as exc:  # noqa: BLE001 - collected, asserted below
                errors.append(exc)
        client.close()

    with NaiadProcess(repo, "--model-control-mode=explicit", "--load-model=m") as server:
        client = httpclient.InferenceServerClient(server.http_url)
        a, b = _two_gates(server)
        assert a.instance == b.instance  # one instance: the gates ran one after the other
        worker = threading.Thread(target=traffic)
        worker.start()
        try:
            (repo / "m" / "config.pbtxt").write_text(probe_config(
                "m", max_batch_size=1, scheduling=BATCHING, count=2, extra=NO_INLINE))
            client.load_model("m")
            a, b = _two_gates(server)
            assert {a.instance, b.instance} == {"m_0_0", "m_0_1"}  # two instances now
            (repo / "m" / "config.pbtxt").write_text(probe_config(
                "m", max_batch_size=1, scheduling=BATCHING, count=1, extra=NO_INLINE))
            client.load_model("m")
            a, b = _two_gates(server)
            assert a.instance == b.instance == "m_0_0"  # the first instance was kept
        finally:
            done.set()
            worker.join()
        assert errors == [] and sent[0] > 0
        assert client.get_model_config("m")["instance_group"][0]["count"] == 1
