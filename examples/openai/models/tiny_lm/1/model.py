"""The tiny Shakespeare LM as a decoupled python model: one response per token.

Inputs and outputs follow Triton's vLLM backend (``text_input``, ``stream``,
``sampling_parameters`` JSON, ``exclude_input_in_output``,
``return_num_input_tokens`` / ``return_num_output_tokens``); each response's
``text_output`` is the text since the previous response, and the final one
carries ``finish_reason`` (``stop`` or ``length``). Every request generates
on its own thread, so several streams progress at once; a cancelled request
(the client went away) stops at the next token.

The weights and tokenizer are written by ``examples/openai/setup_models.py``
into this folder (``weights.npz``, ``config.json``, ``tokenizer.json``).
"""

import json
import os
import sys
import threading
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


class TritonPythonModel:
    def initialize(self, args):
        if not os.path.exists(os.path.join(FOLDER, "weights.npz")):
            raise pb_utils.TritonModelException(
                "tiny_lm has no weights: run 'python examples/openai/setup_models.py' first")
        sys.path.insert(0, HERE)
        from tinylm import TextStream, TinyGPT, generate
        from tokenizers import Tokenizer

        self.generate_ids = generate
        self.text_stream = TextStream
        self.lm = TinyGPT(FOLDER)
        self.tokenizer = Tokenizer.from_file(os.path.join(FOLDER, "tokenizer.json"))
        self.eos_id = self.lm.config.get("eos_id")
        self.threads = set()
        self.lock = threading.Lock()

    def execute(self, requests):
        for request in requests:
            thread = threading.Thread(target=self._run, args=(request,), daemon=True)
            with self.lock:
                self.threads.add(thread)
            thread.start()
        return None

    def _run(self, request):
        sender = request.get_response_sender()
        try:
            self._generate(request, sender)
        except Exception as exc:  # the client gets the error as its final response
            sender.send(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))),
                        flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        finally:
            with self.lock:
                self.threads.discard(threading.current_thread())

    def _generate(self, request, sender):
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
        tokens = self.generate_ids(
            self.lm, prompt_ids, max_tokens, self.eos_id,
            temperature=float(params.get("temperature", 1.0)),
            top_p=float(params.get("top_p", 1.0)),
            seed=params.get("seed"),
            presence_penalty=float(params.get("presence_penalty", 0.0)),
            frequency_penalty=float(params.get("frequency_penalty", 0.0)),
            cancelled=request.is_cancelled)
        decoder = self.text_stream(self.tokenizer)
        pending = prompt if not exclude else ""  # text not sent yet
        held = ""  # text that may be the start of a stop sequence
        count = 0
        unsent_tokens = 0
        finish = "length"
        first = True
        for token in tokens:
            count += 1
            unsent_tokens += 1
            piece, held, stopped = _cut_at_stop(held + decoder.push(token), stops)
            pending += piece
            if stopped:
                finish = "stop"
                break
            if stream and pending:
                sender.send(self._response(pending, len(prompt_ids) if first else None,
                                           unsent_tokens))
                first = False
                pending = ""
                unsent_tokens = 0
                # hand the GIL over now: the server's event loop has a response to send,
                # and would otherwise wait out the interpreter's switch interval
                time.sleep(0)
        else:
            pending += held
            if count < max_tokens and not request.is_cancelled():
                finish = "stop"  # the model ended its speech (end-of-text token)
        final = self._response(pending, len(prompt_ids) if first else None, unsent_tokens,
                               finish)
        sender.send(final, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)

    @staticmethod
    def _response(text, input_tokens, output_tokens, finish=None):
        outputs = [pb_utils.Tensor("text_output", np.array([text.encode("utf-8")],
                                                            dtype=np.object_)),
                   pb_utils.Tensor("num_output_tokens", np.array([output_tokens], np.int32))]
        if input_tokens is not None:
            outputs.append(pb_utils.Tensor("num_input_tokens",
                                           np.array([input_tokens], np.int32)))
        if finish is not None:
            outputs.append(pb_utils.Tensor("finish_reason",
                                           np.array([finish.encode()], dtype=np.object_)))
        return pb_utils.InferenceResponse(outputs)

    def finalize(self):
        with self.lock:
            threads = list(self.threads)
        for thread in threads:
            thread.join(timeout=5)
