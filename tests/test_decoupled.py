"""Decoupled python models: any number of responses per request, from any thread."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from naiad import Server
from naiad.server import make_request
from tests.clients import PROTOCOLS, triton_client
from tests.conftest import NaiadProcess, write_model
from tests.models import REPEAT_CONFIG, write_repeat

# Streams until the client goes away (bounded), then writes what it saw to a file
UNTIL_CANCELLED = """
import json, threading, time
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        cfg = json.loads(args["model_config"])
        self.path = cfg["parameters"]["REPORT"]["string_value"]

    def execute(self, requests):
        for r in requests:
            sender = r.get_response_sender()

            def run(sender=sender):
                sent = 0
                deadline = time.monotonic() + 10
                while not sender.is_cancelled() and time.monotonic() < deadline:
                    sender.send(pb_utils.InferenceResponse(
                        [pb_utils.Tensor("OUT", np.array([sent], np.int32))]))
                    sent += 1
                    time.sleep(0.005)
                with open(self.path, "w") as f:
                    f.write(f"{sender.is_cancelled()} {sent}")
                sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                try:
                    sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                except pb_utils.TritonModelException as e:
                    with open(self.path, "a") as f:
                        f.write(" | " + str(e))

            threading.Thread(target=run).start()
        return None
"""


def run(repo, fn):
    async def main():
        async with Server(model_repository=str(repo), exit_timeout_secs=10) as server:
            return await fn(server)

    return asyncio.run(main())


async def collect(server, model, n):
    outs = []
    async for r in server.infer_stream(make_request(model, {"IN": np.array([n], np.int32)})):
        assert r.model_name == model
        if r.error is not None:
            outs.append(r.error.message)
        else:
            outs.append(int(r.outputs[0].data[0]))
    return outs


def test_a_decoupled_model_streams_n_responses_sent_after_execute_returns(repo):
    write_repeat(repo)

    async def go(server):
        results = {n: await collect(server, "repeat", n) for n in (0, 1, 7)}
        results["err"] = await collect(server, "repeat", -1)
        concurrent = await asyncio.gather(*[collect(server, "repeat", 5) for _ in range(10)])
        for _ in range(200):  # recorded just after the final response is delivered
            stats = server.model_statistics("repeat")["model_stats"][0]
            if stats["inference_stats"]["success"]["count"] == 13:
                break
            await asyncio.sleep(0.01)
        return results, concurrent, stats

    results, concurrent, stats = run(repo, go)
    assert results[0] == []
    assert results[1] == [0]
    assert results[7] == list(range(7))
    assert results["err"] == ["repeat count must not be negative"]
    assert all(c == list(range(5)) for c in concurrent)
    assert stats["inference_stats"]["success"]["count"] == 13
    assert stats["inference_stats"]["fail"]["count"] == 1


def test_async_execute_of_a_decoupled_model_runs_requests_concurrently(repo):
    write_repeat(repo, "slow_repeat", asynchronous=True)  # 10 ms per response

    async def go(server):
        order = []

        async def one(tag):
            async for r in server.infer_stream(make_request(
                    "slow_repeat", {"IN": np.array([10], np.int32)})):
                order.append((tag, int(r.outputs[0].data[0])))

        await asyncio.gather(one("a"), one("b"))
        return order

    order = run(repo, go)
    assert sorted(order) == sorted([(t, i) for t in "ab" for i in range(10)])
    tags = [t for t, _ in order]
    # one at a time would give all of one request's responses, then the other's
    assert tags != sorted(tags) and tags != sorted(tags, reverse=True), tags


def test_a_stream_the_client_leaves_is_cancelled_for_the_model(repo, tmp_path):
    report = tmp_path / "report.txt"
    write_model(repo, "endless", REPEAT_CONFIG.format(name="endless").replace(
        "model_transaction_policy",
        f'parameters {{ key: "REPORT" value: {{ string_value: "{report}" }} }}\n'
        "model_transaction_policy"), {"model.py": UNTIL_CANCELLED})

    async def go(server):
        got = 0
        stream = server.infer_stream(make_request("endless", {"IN": np.array([1], np.int32)}))
        async for _ in stream:
            got += 1
            if got == 3:
                break
        await stream.aclose()
        for _ in range(200):
            if report.exists() and "|" in report.read_text():
                break
            await asyncio.sleep(0.01)
        return got

    assert run(repo, go) == 3
    cancelled, rest = report.read_text().split(" ", 1)
    assert cancelled == "True"
    sent = int(rest.split(" |")[0])
    assert sent < 500  # it stopped well before its 10 s bound
    assert "Response sender has been closed" in rest


# Triton's answers to a call that expects one response
REFUSALS = {
    "http": ("501", "HTTP end point doesn't support models with decoupled transaction policy"),
    "grpc": ("StatusCode.UNIMPLEMENTED",
             "ModelInfer RPC doesn't support models with decoupled transaction policy"),
}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_non_streaming_infer_of_a_decoupled_model_gets_tritons_error(repo, protocol):
    write_repeat(repo)
    with NaiadProcess(repo) as server:
        module, client = triton_client(protocol, server)
        inp = module.InferInput("IN", [1], "INT32")
        inp.set_data_from_numpy(np.array([2], np.int32))
        with pytest.raises(InferenceServerException) as info:
            client.infer("repeat", [inp])
        assert (info.value.status(), info.value.message()) == REFUSALS[protocol]
        client.close()
