"""Test models for the OpenAI frontend: a scripted decoupled "LM" with a real tokenizer.

``mock_lm`` answers deterministically so tests can predict every token: it
emits the words ``w0 w1 w2 ...`` (one response per word, each a delta of
``text_output``) up to ``max_tokens`` words, or, when the rendered prompt
lists a tool called ``get_weather``, a Hermes tool call. It honours
``sampling_parameters`` (``max_tokens``, ``seed`` -> first word index,
``delay`` -> seconds per word, ``script`` -> the exact text to emit word by
word), ``stream``, and ``exclude_input_in_output`` (echoing the prompt first
when false); it stops when its request is cancelled and writes the request's
``marker`` file with the time it noticed. Its tokenizer is a word-level
``tokenizers`` model trained on a few lines, with a ChatML-style template.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import write_model

MOCK_LM = r'''
import json
import threading
import time

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.threads = []

    def execute(self, requests):
        for request in requests:
            t = threading.Thread(target=self.generate, args=(request,), daemon=True)
            t.start()
        return None

    def generate(self, request):
        sender = request.get_response_sender()
        try:
            prompt = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy()
            prompt = prompt.reshape(-1)[0].decode()
            stream_t = pb_utils.get_input_tensor_by_name(request, "stream")
            stream = bool(stream_t.as_numpy().reshape(-1)[0]) if stream_t is not None else False
            ex = pb_utils.get_input_tensor_by_name(request, "exclude_input_in_output")
            exclude = bool(ex.as_numpy().reshape(-1)[0]) if ex is not None else True
            sp = pb_utils.get_input_tensor_by_name(request, "sampling_parameters")
            params = json.loads(sp.as_numpy().reshape(-1)[0]) if sp is not None else {}
            if params.get("fail"):
                raise pb_utils.TritonModelException("the mock model was asked to fail")
            limit = int(params.get("max_tokens", 16))
            delay = float(params.get("delay", 0.0))
            if "get_weather" in prompt:
                words = ['<tool_call>', '{"name": "get_weather", ',
                         '"arguments": {"city": "Paris"}}', '</tool_call>']
            elif "script" in params:
                words = [w + " " for w in params["script"].split(" ")]
            else:
                start = int(params.get("seed", 0) or 0)
                words = ["w%d " % (start + i) for i in range(limit)]
            words = words[:limit]
            pieces = ([prompt] if not exclude else []) + words
            held = []
            for piece in pieces:
                if request.is_cancelled():
                    marker = params.get("marker")
                    if marker:
                        with open(marker, "w") as f:
                            f.write(str(time.time()))
                    sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
                    return
                if stream:
                    out = pb_utils.Tensor("text_output",
                                          np.array([piece.encode()], dtype=np.object_))
                    sender.send(pb_utils.InferenceResponse([out]))
                else:
                    held.append(piece)
                if delay:
                    time.sleep(delay)
            if not stream:  # one response with the whole text
                out = pb_utils.Tensor("text_output",
                                      np.array(["".join(held).encode()], dtype=np.object_))
                sender.send(pb_utils.InferenceResponse([out]))
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as exc:
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
'''

MOCK_LM_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 0
model_transaction_policy {{ decoupled: true }}
input [
  {{ name: "text_input" data_type: TYPE_STRING dims: [ 1 ] }},
  {{ name: "stream" data_type: TYPE_BOOL dims: [ 1 ] optional: true }},
  {{ name: "sampling_parameters" data_type: TYPE_STRING dims: [ 1 ] optional: true }},
  {{ name: "exclude_input_in_output" data_type: TYPE_BOOL dims: [ 1 ] optional: true }}
]
output [ {{ name: "text_output" data_type: TYPE_STRING dims: [ -1 ] }} ]
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
{extra}
"""

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}"
    "{% if tools %}<|im_start|>tools\n{% for t in tools %}{{ t['function']['name'] }} "
    "{{ t['function'] | tojson }}\n{% endfor %}<|im_end|>\n{% endif %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "hello world this is a test of the tokenizer",
    "the quick brown fox jumps over the lazy dog",
    "you are a helpful assistant say something",
    "w0 w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12 w13 w14 w15 w16 w17 w18 w19 w20",
    "get_weather city paris tools assistant user system",
]


def write_tokenizer(folder: Path) -> Path:
    """A small word-level tokenizer.json plus tokenizer_config.json with the chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]", "<|im_start|>",
                                                        "<|im_end|>"])
    tok.train_from_iterator(CORPUS, trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": CHATML, "eos_token": "<|im_end|>", "pad_token": "[PAD]",
        "model_max_length": 512}))
    return folder / "tokenizer.json"


def write_mock_lm(repo: Path, name: str = "mock_lm", parameters: dict | None = None,
                  tokenizer: bool = True, max_batch_size: int = 0) -> Path:
    """``max_batch_size`` > 0 makes a batching model (TensorRT-LLM-style shapes [1, 1])."""
    extra = "".join(
        f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}\n'
        for k, v in (parameters or {}).items())
    config = MOCK_LM_CONFIG.format(name=name, extra=extra).replace(
        "max_batch_size: 0", f"max_batch_size: {max_batch_size}")
    model_dir = write_model(repo, name, config, {"model.py": MOCK_LM})
    if tokenizer:
        write_tokenizer(model_dir)
    return model_dir


# An embedding model with the text signature: BYTES in, FP32 [4] out per text. The
# vector is a fixed function of the text, so tests can compute the expected answer.
EMBED_TEXT = r'''
import numpy as np
import triton_python_backend_utils as pb_utils


def vector(text):
    v = np.array([len(text), sum(text.encode()) % 97, text.count(" ") + 1, 1.0],
                 dtype=np.float32)
    return v / np.linalg.norm(v)


class TritonPythonModel:
    def execute(self, requests):
        out = []
        for r in requests:
            texts = pb_utils.get_input_tensor_by_name(r, "TEXT").as_numpy().reshape(-1)
            vecs = np.stack([vector(t.decode()) for t in texts])
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("EMBEDDING", vecs)]))
        return out
'''

EMBED_TEXT_CONFIG = """
name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [ {{ name: "EMBEDDING" data_type: TYPE_FP32 dims: [ 4 ] }} ]
dynamic_batching {{ }}
{extra}
"""


def embed_vector(text: str):
    import numpy as np

    v = np.array([len(text), sum(text.encode()) % 97, text.count(" ") + 1, 1.0],
                 dtype=np.float32)
    return v / np.linalg.norm(v)


def write_text_embedder(repo: Path, name: str = "text_embedder",
                        parameters: dict | None = None) -> Path:
    extra = "".join(
        f'parameters {{ key: "{k}" value {{ string_value: "{v}" }} }}\n'
        for k, v in (parameters or {}).items())
    return write_model(repo, name, EMBED_TEXT_CONFIG.format(name=name, extra=extra),
                       {"model.py": EMBED_TEXT})
