"""The OpenAI-compatible frontend, tested with the official ``openai`` client and curl.

The models are scripted (tests/openai_models.py) so every token is known in
advance; the real models of examples/openai are tested in
test_openai_examples.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import openai
import pytest
import requests

from tests.conftest import NaiadProcess, free_port, write_model
from tests.openai_models import (
    CHATML,
    embed_vector,
    write_mock_lm,
    write_text_embedder,
)

LIMIT = 256 * 1024  # --http-max-input-size of this server (the OpenAI port uses it too)

SLOW_EMBED = r'''
import time
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def execute(self, requests):
        time.sleep(0.4)
        return [pb_utils.InferenceResponse([pb_utils.Tensor(
            "EMBEDDING", np.ones((1, 2), np.float32))]) for _ in requests]
'''
SLOW_EMBED_CONFIG = """
name: "busy_embedder"
backend: "python"
max_batch_size: 1
input [ { name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "EMBEDDING" data_type: TYPE_FP32 dims: [ 2 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
dynamic_batching { default_queue_policy { max_queue_size: 1 } }
"""


@pytest.fixture(scope="module")
def oa_server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("openai_repo")
    write_mock_lm(repo, "mock_lm", {"openai_tool_call_parser": "hermes"})
    write_mock_lm(repo, "bare_lm", tokenizer=False)
    write_mock_lm(repo, "batched_lm", max_batch_size=4)
    write_text_embedder(repo, "text_embedder", {"openai_embedding_dimensions": "truncate"})
    write_model(repo, "busy_embedder", SLOW_EMBED_CONFIG, {"model.py": SLOW_EMBED})
    port = free_port()
    with NaiadProcess(repo, "--allow-openai=true", f"--openai-port={port}",
                      "--openai-address=127.0.0.1", f"--http-max-input-size={LIMIT}") as server:
        server.openai_port = port
        server.openai_base = f"http://127.0.0.1:{port}"
        server.repo = repo
        yield server


@pytest.fixture(scope="module")
def client(oa_server):
    with openai.OpenAI(base_url=oa_server.openai_base + "/v1", api_key="unused",
                       max_retries=0, timeout=60) as c:
        yield c


def _tokenizer(repo: Path, name: str = "mock_lm"):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(repo / name / "tokenizer.json"))


def _render(messages, tools=None) -> str:
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(CHATML).render(messages=messages, tools=tools,
                                          add_generation_prompt=True)


def _count(tok, text: str) -> int:
    return len(tok.encode(text, add_special_tokens=False).ids)


HELLO = [{"role": "system", "content": "you are a helpful assistant"},
         {"role": "user", "content": "hello world say something"}]


# -- listing --------------------------------------------------------------------------------


def test_models_list_and_retrieve(client):
    models = {m.id: m for m in client.models.list()}
    # every model that serves chat/completions or embeddings, and nothing else
    assert set(models) == {"mock_lm", "bare_lm", "batched_lm", "text_embedder",
                           "busy_embedder"}
    for m in models.values():
        assert m.object == "model" and m.owned_by == "naiad"
        assert abs(m.created - time.time()) < 3600
    one = client.models.retrieve("text_embedder")
    assert one.id == "text_embedder" and one.created == models["text_embedder"].created
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no_such_model")


# -- chat --------------------------------------------------------------------------------------


def test_chat_sync_usage_matches_tokenizer(client, oa_server):
    out = client.chat.completions.create(model="mock_lm", messages=HELLO, max_tokens=3)
    assert out.object == "chat.completion" and out.model == "mock_lm"
    choice = out.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "w0 w1 w2 "
    assert choice.finish_reason == "length"
    tok = _tokenizer(oa_server.repo)
    assert out.usage.prompt_tokens == _count(tok, _render(HELLO))
    assert out.usage.completion_tokens == _count(tok, "w0 w1 w2 ") == 3
    assert out.usage.total_tokens == out.usage.prompt_tokens + 3


def test_chat_max_completion_tokens_wins(client):
    out = client.chat.completions.create(model="mock_lm", messages=HELLO, max_tokens=9,
                                         max_completion_tokens=2)
    assert out.choices[0].message.content == "w0 w1 "


def test_chat_default_max_tokens_and_natural_stop(client):
    out = client.chat.completions.create(model="mock_lm", messages=HELLO,
                                         extra_body={"script": "to be or not"})
    assert out.choices[0].message.content == "to be or not "
    assert out.choices[0].finish_reason == "stop"  # fewer tokens than the limit (16)
    out = client.chat.completions.create(model="mock_lm", messages=HELLO)
    assert out.choices[0].message.content.split() == [f"w{i}" for i in range(16)]
    assert out.choices[0].finish_reason == "length"


def test_chat_stream_chunks_in_order_with_usage(client, oa_server):
    stream = client.chat.completions.create(model="mock_lm", messages=HELLO, max_tokens=5,
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    texts = [c.choices[0].delta.content for c in chunks if c.choices and
             c.choices[0].delta.content]
    assert texts == ["w0 ", "w1 ", "w2 ", "w3 ", "w4 "]  # one chunk per token
    finals = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finals[-1] == "length" and all(f is None for f in finals[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 5
    assert chunks[-1].usage.prompt_tokens == _count(_tokenizer(oa_server.repo), _render(HELLO))
    assert len({c.id for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_chat_n_and_seed(client):
    out = client.chat.completions.create(model="mock_lm", messages=HELLO, max_tokens=2, n=3,
                                         seed=10)
    assert [c.index for c in out.choices] == [0, 1, 2]
    # each choice gets seed + index (the mock starts counting at its seed)
    assert [c.message.content for c in out.choices] == ["w10 w11 ", "w11 w12 ", "w12 w13 "]
    assert out.usage.completion_tokens == 6


def test_chat_async_and_streamed_n(oa_server):
    async def main():
        async with openai.AsyncOpenAI(base_url=oa_server.openai_base + "/v1",
                                      api_key="unused", max_retries=0) as ac:
            plain = await ac.chat.completions.create(model="mock_lm", messages=HELLO,
                                                     max_tokens=2)
            stream = await ac.chat.completions.create(model="mock_lm", messages=HELLO,
                                                      max_tokens=3, n=2, seed=0, stream=True)
            texts: dict[int, str] = {0: "", 1: ""}
            finish = {}
            async for chunk in stream:
                for ch in chunk.choices:
                    texts[ch.index] += ch.delta.content or ""
                    if ch.finish_reason:
                        finish[ch.index] = ch.finish_reason
            return plain, texts, finish

    plain, texts, finish = asyncio.run(main())
    assert plain.choices[0].message.content == "w0 w1 "
    assert texts == {0: "w0 w1 w2 ", 1: "w1 w2 w3 "}
    assert finish == {0: "length", 1: "length"}


def test_stop_sequences(client):
    out = client.chat.completions.create(model="mock_lm", messages=HELLO, max_tokens=8,
                                         stop=["w3", "w6"])
    assert out.choices[0].message.content == "w0 w1 w2 "
    assert out.choices[0].finish_reason == "stop"
    # a stop sequence spanning two tokens, streamed: nothing of it is sent
    stream = client.chat.completions.create(
        model="mock_lm", messages=HELLO, stream=True, stop="ta gam",
        extra_body={"script": "alpha beta gamma delta"})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "alpha be"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"


def test_tool_calls_hermes(client):
    tools = [{"type": "function", "function": {
        "name": "get_weather", "description": "weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]
    msgs = [{"role": "user", "content": "what is the weather in paris"}]
    out = client.chat.completions.create(model="mock_lm", messages=msgs, tools=tools,
                                         max_tokens=10)
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert call.id.startswith("call_")
    # streamed: the call arrives whole in one delta, then finish_reason tool_calls
    stream = client.chat.completions.create(model="mock_lm", messages=msgs, tools=tools,
                                            max_tokens=10, stream=True)
    chunks = list(stream)
    calls = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert len(calls) == 1 and calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}
    assert not any(c.choices[0].delta.content for c in chunks if c.choices)
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    # tool_choice "none": the tools are not offered, the model answers in words
    out = client.chat.completions.create(model="mock_lm", messages=msgs, tools=tools,
                                         tool_choice="none", max_tokens=2)
    assert out.choices[0].message.content == "w0 w1 " and not out.choices[0].message.tool_calls


# -- completions -------------------------------------------------------------------------------


def test_completions(client, oa_server):
    out = client.completions.create(model="mock_lm", prompt="hello world", max_tokens=3)
    assert out.object == "text_completion"
    assert out.choices[0].text == "w0 w1 w2 " and out.choices[0].finish_reason == "length"
    tok = _tokenizer(oa_server.repo)
    assert out.usage.prompt_tokens == _count(tok, "hello world")
    # several prompts x n: index = prompt * n + j
    out = client.completions.create(model="mock_lm", prompt=["hello", "the fox"], n=2,
                                    max_tokens=1, seed=4)
    assert [(c.index, c.text) for c in out.choices] == [(0, "w4 "), (1, "w5 "), (2, "w4 "),
                                                         (3, "w5 ")]
    assert out.usage.prompt_tokens == _count(tok, "hello") + _count(tok, "the fox")
    # echo: the prompt comes first (the model is told exclude_input_in_output=false)
    out = client.completions.create(model="mock_lm", prompt="hello ", max_tokens=2, echo=True)
    assert out.choices[0].text == "hello w0 w1 "
    # token ids are decoded with the model's tokenizer
    ids = tok.encode("hello world", add_special_tokens=False).ids
    out = client.completions.create(model="mock_lm", prompt=ids, max_tokens=1)
    assert out.choices[0].text == "w0 " and out.usage.prompt_tokens == len(ids)


def test_completions_stream(client):
    stream = client.completions.create(model="mock_lm", prompt="hello", max_tokens=4,
                                       stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks) == "w0 w1 w2 w3 "
    assert chunks[-1].choices[0].finish_reason == "length"


def test_batching_generation_model(client):
    """A model with max_batch_size > 0 gets its tensors shaped [1, 1], as TensorRT-LLM's do."""
    out = client.chat.completions.create(model="batched_lm", messages=HELLO, max_tokens=3,
                                         n=2, seed=1)
    assert [c.message.content for c in out.choices] == ["w1 w2 w3 ", "w2 w3 w4 "]
    chunks = list(client.completions.create(model="batched_lm", prompt="hi", max_tokens=2,
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks) == "w0 w1 "


def test_model_without_tokenizer_or_template(client):
    # completions still work (usage counts the streamed responses), chat needs a template
    out = client.completions.create(model="bare_lm", prompt="hi", max_tokens=2)
    assert out.choices[0].text == "w0 w1 " and out.usage.prompt_tokens == 0
    chunks = list(client.completions.create(model="bare_lm", prompt="hi", max_tokens=2,
                                            stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens == 2
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="bare_lm", messages=HELLO)
    assert "chat template" in err.value.message


# -- embeddings ---------------------------------------------------------------------------------


def test_embeddings_float_base64_and_dimensions(client):
    texts = ["hello world", "a b c", "the quick brown fox"]
    out = client.embeddings.create(model="text_embedder", input=texts, encoding_format="float")
    assert out.object == "list" and out.model == "text_embedder"
    assert [d.index for d in out.data] == [0, 1, 2]
    for d, text in zip(out.data, texts):
        np.testing.assert_allclose(d.embedding, embed_vector(text), atol=1e-6)
    # the client's default is base64 (decoded by the client)
    out64 = client.embeddings.create(model="text_embedder", input="hello world")
    np.testing.assert_allclose(out64.data[0].embedding, embed_vector("hello world"), atol=1e-6)
    # Matryoshka truncation, renormalised
    short = client.embeddings.create(model="text_embedder", input="hello world", dimensions=2,
                                     encoding_format="float")
    v = embed_vector("hello world")[:2]
    np.testing.assert_allclose(short.data[0].embedding, v / np.linalg.norm(v), atol=1e-6)
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="text_embedder", input="x", dimensions=5)
    # more texts than max_batch_size (8): split into batches, order kept
    many = [f"text number {i}" for i in range(19)]
    out = client.embeddings.create(model="text_embedder", input=many, encoding_format="float")
    assert len(out.data) == 19
    for d, text in zip(out.data, many):
        np.testing.assert_allclose(d.embedding, embed_vector(text), atol=1e-6)


def test_embeddings_raw_base64(oa_server):
    r = requests.post(oa_server.openai_base + "/v1/embeddings",
                      json={"model": "text_embedder", "input": ["hello world"],
                            "encoding_format": "base64"})
    assert r.status_code == 200
    raw = base64.b64decode(r.json()["data"][0]["embedding"])
    np.testing.assert_allclose(np.frombuffer(raw, dtype="<f4"), embed_vector("hello world"),
                               atol=1e-6)


# -- errors -------------------------------------------------------------------------------------


def _error(r: requests.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]


@pytest.mark.parametrize("payload,param", [
    ({"model": "mock_lm", "messages": []}, "messages"),
    ({"model": "mock_lm"}, "messages"),
    ({"model": "mock_lm", "messages": "hello"}, "messages"),
    ({"model": "mock_lm", "messages": [{"role": "wizard", "content": "x"}]}, "messages"),
    ({"model": "mock_lm", "messages": HELLO, "max_tokens": "10"}, "max_tokens"),
    ({"model": "mock_lm", "messages": HELLO, "max_tokens": 0}, "max_tokens"),
    ({"model": "mock_lm", "messages": HELLO, "temperature": 3}, "temperature"),
    ({"model": "mock_lm", "messages": HELLO, "n": 0}, "n"),
    ({"model": "mock_lm", "messages": HELLO, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"model": 5, "messages": HELLO}, "model"),
    ({"model": "mock_lm", "messages": HELLO, "tool_choice": "auto"}, "tool_choice"),
])
def test_bad_chat_requests_400(oa_server, payload, param):
    r = requests.post(oa_server.openai_base + "/v1/chat/completions", json=payload)
    assert r.status_code == 400, r.text
    err = _error(r)
    assert err["type"] == "invalid_request_error"
    assert err["param"] is not None and err["param"].split(".")[0] == param


def test_error_statuses(client, oa_server):
    base = oa_server.openai_base
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no_such_model", messages=HELLO)
    assert e.value.body["code"] == "model_not_found"
    r = requests.post(base + "/v1/chat/completions", data=b"{not json")
    assert r.status_code == 400 and "JSON" in _error(r)["message"]
    r = requests.post(base + "/v1/chat/completions", data=b"")
    assert r.status_code == 400
    r = requests.post(base + "/v1/embeddings", json={"model": "mock_lm", "input": "x"})
    assert r.status_code == 400 and _error(r)["param"] == "model"
    r = requests.post(base + "/v1/chat/completions",
                      json={"model": "text_embedder", "messages": HELLO})
    assert r.status_code == 400
    r = requests.post(base + "/v1/embeddings", json={"model": "text_embedder", "input": []})
    assert r.status_code == 400 and _error(r)["param"] == "input"
    r = requests.post(base + "/v1/embeddings",  # more inputs than OpenAI allows: refused whole
                      json={"model": "text_embedder", "input": ["x"] * 2049})
    assert r.status_code == 400 and _error(r)["param"] == "input"
    r = requests.get(base + "/v1/chat/completions")
    assert r.status_code == 405
    r = requests.get(base + "/v1/nothing")
    assert r.status_code == 404 and _error(r)["code"] == "unknown_url"
    # the model failing is the server's error (500), in the same shape
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model="mock_lm", messages=HELLO,
                                       extra_body={"fail": True})
    assert "asked to fail" in e.value.message
    # ... and mid-stream it is an error event that the client raises
    with pytest.raises(openai.APIError):
        list(client.chat.completions.create(model="mock_lm", messages=HELLO, stream=True,
                                            extra_body={"fail": True}))


def test_body_too_large_refused_before_it_is_sent(oa_server):
    # declared far too large: answered 413 at once, while the body is never sent
    with socket.create_connection(("127.0.0.1", oa_server.openai_port), timeout=10) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 10000000000\r\n\r\n")
        data = b""
        while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    err = json.loads(body)["error"]
    assert err["code"] == "request_too_large" and err["type"] == "invalid_request_error"
    # a chunked body that grows past the limit is cut off too
    def chunks():
        for _ in range(LIMIT // 65536 + 4):
            yield b"x" * 65536
    try:
        r = requests.post(oa_server.openai_base + "/v1/chat/completions", data=chunks())
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "request_too_large"
    except requests.ConnectionError:
        pass  # the server may close before the client finished sending: also refused


def test_queue_full_is_429(oa_server):
    async def main():
        async with openai.AsyncOpenAI(base_url=oa_server.openai_base + "/v1",
                                      api_key="unused", max_retries=0) as ac:
            async def one():
                try:
                    await ac.embeddings.create(model="busy_embedder", input="x")
                    return 200
                except openai.RateLimitError as exc:
                    assert exc.body["type"] == "rate_limit_error"
                    return 429
            return await asyncio.gather(*(one() for _ in range(6)))

    statuses = asyncio.run(main())
    assert 429 in statuses and 200 in statuses


# -- cancellation and concurrency ----------------------------------------------------------------


def _wait_for(path: Path, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            return True
        time.sleep(0.05)
    return False


def test_disconnect_cancels_openai_stream(oa_server, tmp_path):
    marker = tmp_path / "cancelled-openai"
    with requests.post(oa_server.openai_base + "/v1/chat/completions", stream=True, timeout=30,
                       json={"model": "mock_lm", "messages": HELLO, "stream": True,
                             "max_tokens": 400, "delay": 0.05, "marker": str(marker)}) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any(b'"w1 "' in line for line in got)
        closed_at = time.time()
    assert _wait_for(marker), "the model never saw its request cancelled"
    noticed = float(marker.read_text())
    assert noticed >= closed_at - 1.0


def test_disconnect_cancels_generate_stream(oa_server, tmp_path):
    marker = tmp_path / "cancelled-generate"
    params = json.dumps({"max_tokens": 400, "delay": 0.05, "marker": str(marker)})
    with requests.post(oa_server.base + "/v2/models/mock_lm/generate_stream", stream=True,
                       timeout=30, json={"text_input": "hi", "stream": True,
                                         "sampling_parameters": params}) as r:
        assert r.status_code == 200
        first = next(line for line in r.iter_lines() if line)
        assert json.loads(first[len(b"data: "):])["text_output"] == "w0 "
    assert _wait_for(marker), "generate_stream did not cancel the model's request"


def test_sixteen_concurrent_streams_complete_in_order(oa_server):
    async def one(ac, i):
        stream = await ac.chat.completions.create(
            model="mock_lm", messages=HELLO, stream=True, max_tokens=12, seed=100 * i,
            extra_body={"delay": 0.01})
        text = []
        finish = None
        async for chunk in stream:
            for ch in chunk.choices:
                if ch.delta.content:
                    text.append(ch.delta.content)
                finish = ch.finish_reason or finish
        return text, finish

    async def main():
        async with openai.AsyncOpenAI(base_url=oa_server.openai_base + "/v1",
                                      api_key="unused", max_retries=0, timeout=120) as ac:
            return await asyncio.gather(*(one(ac, i) for i in range(16)))

    results = asyncio.run(main())
    for i, (text, finish) in enumerate(results):
        assert text == [f"w{100 * i + k} " for k in range(12)]
        assert finish == "length"


# -- raw SSE with curl ------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_raw_sse(oa_server):
    body = json.dumps({"model": "mock_lm", "messages": HELLO, "max_tokens": 3, "stream": True})
    out = subprocess.run(["curl", "-sN", "-H", "Content-Type: application/json", "-d", body,
                          oa_server.openai_base + "/v1/chat/completions"],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    events = [e for e in out.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    chunks = [json.loads(e[len("data: "):]) for e in events[:-1]]
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == "w0 w1 w2 "
    # headers of the stream
    head = subprocess.run(["curl", "-sN", "-D", "-", "-o", "/dev/null", "-d", body,
                           oa_server.openai_base + "/v1/chat/completions"],
                          capture_output=True, text=True, timeout=60, check=True).stdout
    assert "text/event-stream" in head.lower()


# -- metrics and health -------------------------------------------------------------------------------


def test_generation_metrics(client, oa_server):
    stream = client.chat.completions.create(model="mock_lm", messages=HELLO, max_tokens=4,
                                            stream=True)
    list(stream)
    text = requests.get(f"http://127.0.0.1:{oa_server.metrics_port}/metrics").text
    samples = {}
    for line in text.splitlines():
        if line.startswith("naiad_openai_"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples['naiad_openai_time_to_first_token_seconds_count{model="mock_lm"}'] >= 1
    assert samples['naiad_openai_inter_token_latency_seconds_count{model="mock_lm"}'] >= 3
    assert samples['naiad_openai_generation_tokens_total{model="mock_lm"}'] >= 4
    assert samples['naiad_openai_prompt_tokens_total{model="mock_lm"}'] > 0
    assert samples['naiad_openai_requests_total{model="mock_lm",endpoint="chat/completions",'
                   'outcome="success"}'] >= 1
    # the same page is on the OpenAI port, as Triton's OpenAI frontend serves it
    assert "naiad_openai_time_to_first_token_seconds" in \
        requests.get(oa_server.openai_base + "/metrics").text
    assert requests.get(oa_server.openai_base + "/health/ready").status_code == 200


# -- in-process and command line ---------------------------------------------------------------------


def test_in_process_app_serves_the_openai_client(tmp_path):
    """The same app without a socket: an embedding application hands it to any ASGI client."""
    try:  # the HTTP library the installed openai client is built on
        import httpx2 as httpx
    except ImportError:
        import httpx

    from naiad.frontends.openai.app import OpenAIApp
    from naiad.server import Server

    repo = tmp_path / "models"
    write_mock_lm(repo)
    write_text_embedder(repo)

    async def main():
        server = Server(model_repository=str(repo), allow_metrics=False)
        await server.start()
        try:
            app = OpenAIApp(server.dataplane)
            http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://naiad")
            async with openai.AsyncOpenAI(base_url="http://naiad/v1", api_key="x",
                                          http_client=http, max_retries=0) as ac:
                chat = await ac.chat.completions.create(model="mock_lm", messages=HELLO,
                                                        max_tokens=2)
                stream = await ac.chat.completions.create(model="mock_lm", messages=HELLO,
                                                          max_tokens=3, stream=True)
                streamed = "".join([c.choices[0].delta.content or "" async for c in stream
                                    if c.choices])
                emb = await ac.embeddings.create(model="text_embedder", input="hello world")
            return chat, streamed, emb
        finally:
            await server.stop()

    chat, streamed, emb = asyncio.run(main())
    assert chat.choices[0].message.content == "w0 w1 "
    assert streamed == "w0 w1 w2 "
    np.testing.assert_allclose(emb.data[0].embedding, embed_vector("hello world"), atol=1e-6)


def test_command_line_flags():
    from naiad.cli import CliError, options_from_args

    opts = options_from_args(["--model-repository=/m", "--allow-openai=true",
                              "--openai-port=9100", "--openai-tool-call-parser=llama3",
                              "--openai-default-max-tokens=32"])
    assert (opts.allow_openai, opts.openai_port, opts.openai_tool_call_parser,
            opts.openai_default_max_tokens) == (True, 9100, "llama3", 32)
    assert options_from_args(["--model-repository=/m"]).allow_openai is False  # off by default
    assert options_from_args(["--model-repository=/m"]).openai_port == 9000
    for bad in (["--openai-tool-call-parser=xml"], ["--openai-port=70000"],
                ["--openai-default-max-tokens=0"], ["--openai-chat-template=/no/such/file"]):
        with pytest.raises(CliError):
            options_from_args(["--model-repository=/m", "--allow-openai=true", *bad])


def test_llama3_tool_call_parser():
    from naiad.frontends.openai import tools

    content, calls = tools.parse("llama3", '<|python_tag|>{"name": "f", "parameters": {"x": 1}};'
                                           ' {"name": "g", "arguments": {}}')
    assert content is None
    assert [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls] == \
        [("f", {"x": 1}), ("g", {})]
    assert tools.parse("llama3", "just words") == ("just words", [])
    assert tools.parse("hermes", "<tool_call>{broken</tool_call>") == (
        "<tool_call>{broken</tool_call>", [])


def test_disconnect_cancels_a_request_that_does_not_stream(oa_server, tmp_path):
    marker = tmp_path / "cancelled-plain"
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(oa_server.openai_base + "/v1/completions", timeout=(10, 0.5),
                      json={"model": "mock_lm", "prompt": "hi", "max_tokens": 400,
                            "delay": 0.05, "marker": str(marker)})
    assert _wait_for(marker), "the model never saw its request cancelled"


def test_logprobs_are_null_when_the_model_returns_none(client):
    out = client.chat.completions.create(model="mock_lm", messages=HELLO, max_tokens=2,
                                         logprobs=True, top_logprobs=2)
    assert out.choices[0].logprobs is None and out.choices[0].message.content == "w0 w1 "
    out = client.completions.create(model="mock_lm", prompt="hi", max_tokens=2, logprobs=1)
    assert out.choices[0].logprobs is None
