"""Running one completion choice on a generation model, through ``DataPlane.infer_stream``.

The request is built as Triton's OpenAI frontend builds it for the vLLM
backend: ``text_input`` (the prompt or the rendered chat), ``stream``,
``exclude_input_in_output`` (``not echo``), ``sampling_parameters`` (JSON:
``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``stop``, the
penalties and any extra request fields), ``return_num_input_tokens`` /
``return_num_output_tokens`` — each only if the model has that input. Each
response's ``text_output`` is the text produced since the previous one.

The frontend also enforces ``stop`` itself (a model may ignore it): text is
held back while it could be the start of a stop sequence, cut before the
first stop sequence found, and the model's request is then cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from naiad.core.errors import NaiadError
from naiad.frontends.generate import build_request
from naiad.frontends.openai.catalog import ModelInfo
from naiad.frontends.openai.errors import from_naiad

# request fields that are not sampling parameters (never sent to the model)
NOT_SAMPLING = frozenset({
    "model", "messages", "prompt", "stream", "stream_options", "echo", "n", "user", "tools",
    "tool_choice", "parallel_tool_calls", "response_format", "suffix", "best_of", "logprobs",
    "top_logprobs", "max_tokens", "max_completion_tokens", "metadata", "store",
    "service_tier", "functions", "function_call", "logit_bias", "modalities", "audio",
    "prediction", "reasoning_effort", "web_search_options",
})


def sampling_parameters(req: Any, max_tokens: int, seed: int | None) -> dict[str, Any]:
    params: dict[str, Any] = {"max_tokens": max_tokens}
    for key in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        value = getattr(req, key, None)
        if value is not None:
            params[key] = value
    if seed is not None:
        params["seed"] = seed
    stops = req.stop_list()
    if stops:
        params["stop"] = stops
    top = logprobs_wanted(req)
    if top is not None:
        params["logprobs"] = top  # vLLM's meaning: the sampled token plus the top N
    for key, value in (req.model_extra or {}).items():
        if key not in NOT_SAMPLING and isinstance(value, (str, int, float, bool, list)):
            params[key] = value
    return params


def logprobs_wanted(req: Any) -> int | None:
    """How many top alternatives a request wants with its logprobs; None: no logprobs."""
    value = getattr(req, "logprobs", None)
    if value is None or value is False:
        return None
    if value is True:  # chat: a flag, with top_logprobs as the count
        return int(getattr(req, "top_logprobs", None) or 0)
    return int(value)  # completions: the count itself


def _entry(entry: dict, top: int) -> tuple[str, float, list[tuple[str, float]]] | None:
    """(token, logprob, [(alternative, logprob)...]) from one vLLM-style logprobs entry:
    {token id: {logprob, rank, decoded_token}}, the sampled token first."""
    if not isinstance(entry, dict) or not entry:
        return None
    items = list(entry.values())
    if not all(isinstance(v, dict) for v in items):
        return None
    first = items[0]
    ranked = sorted(items, key=lambda v: v.get("rank") or 1 << 30)
    alts = [(str(v.get("decoded_token", "")), float(v.get("logprob", 0.0)))
            for v in ranked if (v.get("rank") or 1 << 30) <= top]
    return str(first.get("decoded_token", "")), float(first.get("logprob", 0.0)), alts


def chat_logprobs(entries: list, top: int) -> dict | None:
    """OpenAI's chat ``logprobs`` object; None when the model returned none."""
    if not entries:
        return None
    content = []
    for entry in entries:
        e = _entry(entry, top)
        if e is None:
            continue
        token, lp, alts = e
        content.append({"token": token, "logprob": lp, "bytes": list(token.encode("utf-8")),
                        "top_logprobs": [{"token": t, "logprob": a,
                                          "bytes": list(t.encode("utf-8"))} for t, a in alts]})
    return {"content": content}


def completion_logprobs(entries: list, top: int, offset: int = 0) -> dict | None:
    """The completions API's ``logprobs`` object; None when the model returned none."""
    if not entries:
        return None
    tokens, lps, tops, offsets = [], [], [], []
    for entry in entries:
        e = _entry(entry, top)
        if e is None:
            continue
        token, lp, alts = e
        tokens.append(token)
        lps.append(lp)
        tops.append(dict(alts) if top > 0 else None)
        offsets.append(offset)
        offset += len(token)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops,
            "text_offset": offsets}


class StopFilter:
    """Cuts streamed text at the first stop sequence, holding back possible prefixes."""

    __slots__ = ("stops", "pending", "stopped")

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """The text that may be sent now (sets ``stopped`` once a stop sequence appeared)."""
        if not self.stops:
            return text
        self.pending += text
        cut = -1
        for stop in self.stops:
            i = self.pending.find(stop)
            if i >= 0 and (cut < 0 or i < cut):
                cut = i
        if cut >= 0:
            self.stopped = True
            out = self.pending[:cut]
            self.pending = ""
            return out
        hold = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.pending)), 0, -1):
                if self.pending.endswith(stop[:k]):
                    hold = max(hold, k)
                    break
        out = self.pending[:len(self.pending) - hold]
        self.pending = self.pending[len(self.pending) - hold:]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def _first_text(tensor: Any) -> str:
    data = tensor.data
    if data.size == 0:
        return ""
    item = data.reshape(-1)[0]
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item).decode("utf-8", errors="replace")
    return str(item)


def _json_list(text: str) -> list:
    try:
        value = orjson.loads(text) if text else None
    except orjson.JSONDecodeError:
        return []
    return value if isinstance(value, list) else []


def _first_int(tensor: Any) -> int | None:
    data = np.asarray(tensor.data)
    if data.size == 0 or data.dtype.kind not in "iu":
        return None
    return int(data.reshape(-1)[0])


@dataclass
class ChoiceResult:
    index: int
    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    tool_calls: list[dict] = field(default_factory=list)
    logprobs: list = field(default_factory=list)  # the model's entries, one per token


class ChoiceRun:
    """One choice: submit, iterate text deltas (``deltas()``), then read the result."""

    def __init__(self, server: Any, info: ModelInfo, index: int, prompt: str,
                 params: dict[str, Any], stream: bool, echo: bool, max_tokens: int,
                 stops: list[str]):
        self.server = server
        self.info = info
        self.result = ChoiceResult(index)
        self.prompt = prompt
        self.params = params
        self.stream = stream
        self.echo = echo
        self.max_tokens = max_tokens
        self.filter = StopFilter(stops)
        self.accepted_at = time.perf_counter()
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.gaps: list[float] = []
        self._model_input_tokens: int | None = None
        self._model_output_tokens: int | None = None
        self._model_finish: str | None = None
        self._pieces: list[str] = []
        self._new_logprobs: list = []  # entries not yet taken by a streamed chunk
        self.text_offset = 0  # characters already streamed (completions' text_offset)

    def build_request(self) -> Any:
        info = self.info
        inputs = info.inputs
        body: dict[str, Any] = {"text_input": self.prompt}
        if "stream" in inputs:
            body["stream"] = self.stream
        if "exclude_input_in_output" in inputs:
            body["exclude_input_in_output"] = not self.echo
        if "sampling_parameters" in inputs:
            body["sampling_parameters"] = orjson.dumps(self.params).decode()
        for flag in ("return_num_input_tokens", "return_num_output_tokens"):
            if inputs.get(flag) == "BOOL":
                body[flag] = True
        # scalar inputs named like a sampling parameter (TensorRT-LLM style models)
        for key, value in self.params.items():
            kind = inputs.get(key)
            if kind is None or key in body or isinstance(value, (list, str)):
                continue
            if kind in ("FP32", "FP64", "FP16") and isinstance(value, (int, float)) and \
                    not isinstance(value, bool):
                body[key] = float(value)
            elif kind.startswith(("INT", "UINT")) and isinstance(value, int) and \
                    not isinstance(value, bool):
                body[key] = value
        model = self.server.get_model(info.name)
        return build_request(model, info.name, -1, body)

    async def deltas(self) -> AsyncIterator[str]:
        """The choice's text as it arrives; raises OpenAIError if the model fails."""
        try:
            request = self.build_request()
        except NaiadError as exc:
            raise from_naiad(exc) from None
        if self.echo and "exclude_input_in_output" not in self.info.inputs:
            self._pieces.append(self.prompt)
            yield self.prompt
        responses = self.server.infer_stream(request)
        stopped = False
        try:
            async for response in responses:
                if response.error is not None:
                    raise from_naiad(response.error)
                text = ""
                for tensor in response.outputs:
                    name = tensor.name
                    if name == "text_output":
                        text = _first_text(tensor)
                    elif name == "num_input_tokens":
                        self._model_input_tokens = _first_int(tensor)
                    elif name == "num_output_tokens":
                        n = _first_int(tensor)
                        if n is not None:
                            self._model_output_tokens = (self._model_output_tokens or 0) + n
                    elif name == "finish_reason":
                        reason = _first_text(tensor)
                        if reason:
                            self._model_finish = reason
                    elif name == "logprobs":
                        entries = _json_list(_first_text(tensor))
                        self.result.logprobs.extend(entries)
                        self._new_logprobs.extend(entries)
                if not text:
                    continue
                now = time.perf_counter()
                if self.first_at is None:
                    self.first_at = now
                else:
                    self.gaps.append(now - self.last_at)
                self.last_at = now
                out = self.filter.feed(text)
                if out:
                    self._pieces.append(out)
                    yield out
                if self.filter.stopped:
                    stopped = True
                    break
        except NaiadError as exc:  # submission refused (queue full, model gone)
            raise from_naiad(exc) from None
        finally:
            await responses.aclose()  # cancels the model's request if it has not finished
        if not stopped:
            rest = self.filter.flush()
            if rest:
                self._pieces.append(rest)
                yield rest
        self._finish(stopped)

    def _finish(self, stopped: bool) -> None:
        r = self.result
        r.text = "".join(self._pieces)
        tok = self.info.tokenizer
        if self._model_input_tokens is not None:
            r.prompt_tokens = self._model_input_tokens
        elif tok is not None:
            r.prompt_tokens = tok.count(self.prompt)
        if stopped and tok is not None:
            r.completion_tokens = tok.count(r.text)
        elif self._model_output_tokens is not None:
            r.completion_tokens = self._model_output_tokens
        elif tok is not None:
            r.completion_tokens = tok.count(r.text)
        else:
            r.completion_tokens = len(self.gaps) + (1 if self.first_at is not None else 0)
        if stopped:
            r.finish_reason = "stop"
        elif self._model_finish:
            r.finish_reason = self._model_finish
        elif r.completion_tokens >= self.max_tokens:
            r.finish_reason = "length"
        else:
            r.finish_reason = "stop"

    def take_logprobs(self) -> list:
        """The logprob entries that arrived since the last call (streamed chunks)."""
        out, self._new_logprobs = self._new_logprobs, []
        return out

    async def run(self) -> ChoiceResult:
        async for _ in self.deltas():
            pass
        return self.result


_DONE = object()


async def merged(runs: list[ChoiceRun]) -> AsyncIterator[tuple[ChoiceRun, str | None]]:
    """Deltas of several choices as they arrive: (run, text), then (run, None) when one ends.

    One choice is iterated directly; several run as tasks, all cancelled (and
    their model requests with them) if the consumer stops early.
    """
    if len(runs) == 1:
        run = runs[0]
        async for text in run.deltas():
            yield run, text
        yield run, None
        return
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(run: ChoiceRun) -> None:
        try:
            async for text in run.deltas():
                queue.put_nowait((run, text))
            queue.put_nowait((run, None))
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            queue.put_nowait((run, exc))

    tasks = [asyncio.ensure_future(pump(run)) for run in runs]
    remaining = len(runs)
    try:
        while remaining:
            run, item = await queue.get()
            if isinstance(item, BaseException):
                raise item
            if item is None:
                remaining -= 1
            yield run, item
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t


def usage(results: list[ChoiceResult], prompts: int = 1) -> dict[str, int]:
    """OpenAI usage: each distinct prompt counted once, every choice's output added."""
    seen: dict[int, int] = {}
    per_prompt = max(1, len(results) // max(1, prompts))
    for r in results:
        seen.setdefault(r.index // per_prompt, r.prompt_tokens)
    prompt = sum(seen.values())
    completion = sum(r.completion_tokens for r in results)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}
