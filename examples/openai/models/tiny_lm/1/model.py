"""The tiny Shakespeare LM as a decoupled python model: one response per token.

Inputs and outputs follow Triton's vLLM backend (``text_input``, ``stream``,
``sampling_parameters`` JSON, ``exclude_input_in_output``,
``return_num_input_tokens`` / ``return_num_output_tokens``); each response's
``text_output`` is the text since the previous response, and the final one
carries ``finish_reason`` (``stop`` or ``length``). One engine thread runs
every request with continuous batching (``tinylm.BatchEngine``): requests
join between steps and all running ones advance one token per step, in one
batched forward pass; a cancelled request (the client went away) ends at the
next step.

The weights and tokenizer are written by ``examples/openai/setup_models.py``
into this folder (``weights.npz``, ``config.json``, ``tokenizer.json``).
"""

import json
import os
import sys
import time

import numpy as np

import triton_python_backend_utils as pb_utils

HERE = os.path.dirname(os.path.abspath(__file__))
FOLDER = os.path.dirname(HERE)


def _scalar(request, name, default):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return default
    value = tensor.as_numpy().reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _cut_at_stop(text, stops):
    """(text to send, text to hold back, stopped): the text before the first stop
    sequence, holding back an ending that may be the start of one."""
    if not stops:
        return text, "", False
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    if hits:
        return text[:min(hits)], "", True
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:k]):
                hold = k
                break
    return text[:len(text) - hold], text[len(text) - hold:], False


class _Stream:
    """One request's side of the engine: token ids in, responses out (engine thread)."""

    def __init__(self, model, request, sender, prompt, prompt_ids, stream, exclude, stops,
                 max_tokens):
        self.model = model
        self.request = request
        self.sender = sender
        self.prompt_tokens = len(prompt_ids)
        self.stream = stream
        self.stops = stops
        self.max_tokens = max_tokens
        self.decoder = model.text_stream(model.tokenizer)
        self.pending = prompt if not exclude else ""  # text not sent yet
        self.held = ""  # text that may be the start of a stop sequence
        self.count = 0
        self.unsent = 0
        self.first = True
        self.finished = False
        self.logprobs = []  # entries not sent yet (vLLM backend's "logprobs" output)

    def _logprob_entry(self, info):
        """{token id: {logprob, rank, decoded_token}}: the sampled token first, then the
        likeliest ones (the JSON the vLLM backend returns per token)."""
        decode = self.model.tokenizer.decode
        entry = {str(info["token"]): {"logprob": info["logprob"], "rank": info["rank"],
                                      "decoded_token": decode([info["token"]])}}
        for rank, (tid, lp) in enumerate(info["top"], start=1):
            entry.setdefault(str(tid), {"logprob": lp, "rank": rank,
                                        "decoded_token": decode([tid])})
        return entry

    def cancelled(self):
        return self.finished or self.request.is_cancelled()

    def emit(self, token, logprobs=None):
        if self.finished:
            return
        if isinstance(token, Exception):
            self.finished = True
            self.sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(token))),
                             flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            return
        if token is None:  # end of text, the limit, or cancelled
            self.pending += self.held
            finish = "stop" if self.count < self.max_tokens else "length"
            self._finish(finish)
            return
        self.count += 1
        self.unsent += 1
        if logprobs is not None:
            self.logprobs.append(self._logprob_entry(logprobs))
        piece, self.held, stopped = _cut_at_stop(self.held + self.decoder.push(token),
                                                 self.stops)
        self.pending += piece
        if stopped:
            self._finish("stop")
        elif self.stream and self.pending:
            self.sender.send(self._response())

    def _finish(self, reason):
        self.finished = True
        self.sender.send(self._response(reason),
                         flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    def _response(self, finish=None):
        outputs = [pb_utils.Tensor("text_output", np.array([self.pending.encode("utf-8")],
                                                            dtype=np.object_)),
                   pb_utils.Tensor("num_output_tokens", np.array([self.unsent], np.int32))]
        if self.first:
            outputs.append(pb_utils.Tensor("num_input_tokens",
                                           np.array([self.prompt_tokens], np.int32)))
            self.first = False
        if finish is not None:
            outputs.append(pb_utils.Tensor("finish_reason",
                                           np.array([finish.encode()], dtype=np.object_)))
        if self.logprobs:
            outputs.append(pb_utils.Tensor("logprobs", np.array(
                [json.dumps(self.logprobs).encode()], dtype=np.object_)))
            self.logprobs = []
        self.pending = ""
        self.unsent = 0
        return pb_utils.InferenceResponse(outputs)


class TritonPythonModel:
    def initialize(self, args):
        if not os.path.exists(os.path.join(FOLDER, "weights.npz")):
            raise pb_utils.TritonModelException(
                "tiny_lm has no weights: run 'python examples/openai/setup_models.py' first")
        sys.path.insert(0, HERE)
        from tinylm import BatchEngine, TextStream, TinyGPT, limit_blas_threads
        from tokenizers import Tokenizer

        self.logger = pb_utils.Logger
        self.logger.log_info(f"tiny_lm: {limit_blas_threads()}")
        self.text_stream = TextStream
        self.lm = TinyGPT(FOLDER)
        self.tokenizer = Tokenizer.from_file(os.path.join(FOLDER, "tokenizer.json"))
        self.eos_id = self.lm.config.get("eos_id")
        # one engine thread generates for every request; after each step it hands the
        # GIL to the server's event loop, which has that step's responses to send
        self.engine = BatchEngine(self.lm, after_step=lambda: time.sleep(0))

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                self._submit(request, sender)
            except Exception as exc:  # the client gets the error as its final response
                sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))),
                            flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        return None

    def _submit(self, request, sender):
        prompt = _scalar(request, "text_input", "")
        stream = bool(_scalar(request, "stream", False))
        exclude = bool(_scalar(request, "exclude_input_in_output", True))
        params = json.loads(_scalar(request, "sampling_parameters", "") or "{}")
        if not isinstance(params, dict):
            raise ValueError("sampling_parameters must be a JSON object")
        max_tokens = int(params.get("max_tokens", 16))
        stops = params.get("stop") or []
        stops = [stops] if isinstance(stops, str) else [s for s in stops if s]
        prompt_ids = self.tokenizer.encode(prompt, add_special_tokens=False).ids
        out = _Stream(self, request, sender, prompt, prompt_ids, stream, exclude, stops,
                      max_tokens)
        seed = params.get("seed")
        self.engine.submit(
            out.emit, out.cancelled, prompt_ids, max_tokens, self.eos_id,
            temperature=float(params.get("temperature", 1.0)),
            top_p=float(params.get("top_p", 1.0)),
            seed=int(seed) if seed is not None else None,
            presence_penalty=float(params.get("presence_penalty", 0.0)),
            frequency_penalty=float(params.get("frequency_penalty", 0.0)),
            logprobs=int(params["logprobs"]) if params.get("logprobs") is not None else None)

    def finalize(self):
        self.engine.close()
