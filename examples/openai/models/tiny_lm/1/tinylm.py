"""A tiny GPT-style causal language model, run with numpy (no torch needed to serve it).

The weights are trained by ``train_tiny_lm.py`` (torch, at setup time) and
saved as ``weights.npz`` + ``config.json``; the tokenizer is a byte-level BPE
``tokenizer.json`` trained on the same text. This module holds the forward
pass (pre-norm transformer blocks, tanh-GELU MLP, learned positions, tied
output embedding) with a key/value cache, and the sampling loop the served
model and the benchmark's in-process baseline share: ``Sequence`` (one
generation), ``generate`` (one at a time) and ``BatchEngine`` (continuous
batching: all running sequences advance together, one batched forward pass
per token).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(0.7978845608028654 * (x + 0.044715 * x ** 3)))


class TinyGPT:
    def __init__(self, folder: str | Path):
        folder = Path(folder)
        self.config = json.loads((folder / "config.json").read_text())
        self.n_layer = int(self.config["n_layer"])
        self.n_head = int(self.config["n_head"])
        self.d = int(self.config["d_model"])
        self.ctx = int(self.config["context"])
        with np.load(folder / "weights.npz") as data:
            self.w = {k: np.ascontiguousarray(data[k], dtype=np.float32) for k in data.files}
        # Linear weights are stored as torch keeps them ([out, in]): transpose once here
        for k in list(self.w):
            if k.endswith(".weight") and self.w[k].ndim == 2 and not k.startswith("w"):
                self.w[k] = np.ascontiguousarray(self.w[k].T)
        self.vocab = self.w["wte"].shape[0]

    def new_cache(self) -> list:
        return [[None, None] for _ in range(self.n_layer)]

    def forward(self, ids: list[int], cache: list, start: int) -> np.ndarray:
        """Logits of the last position after feeding ``ids`` at positions ``start``... ."""
        w = self.w
        n = len(ids)
        x = w["wte"][ids] + w["wpe"][start:start + n]
        hd = self.d // self.n_head
        scale = 1.0 / np.sqrt(hd)
        for i in range(self.n_layer):
            p = f"h.{i}."
            h = _layer_norm(x, w[p + "ln1.weight"], w[p + "ln1.bias"])
            qkv = h @ w[p + "attn.qkv.weight"] + w[p + "attn.qkv.bias"]
            q, k, v = np.split(qkv, 3, axis=-1)
            q = q.reshape(n, self.n_head, hd).transpose(1, 0, 2)
            k = k.reshape(n, self.n_head, hd).transpose(1, 0, 2)
            v = v.reshape(n, self.n_head, hd).transpose(1, 0, 2)
            pk, pv = cache[i]
            if pk is not None:
                k = np.concatenate([pk, k], axis=1)
                v = np.concatenate([pv, v], axis=1)
            cache[i] = [k, v]
            att = (q @ k.transpose(0, 2, 1)) * scale  # [heads, n, total]
            total = k.shape[1]
            if n > 1:
                mask = np.triu(np.ones((n, total), dtype=bool), k=total - n + 1)
                att = np.where(mask, -1e30, att)
            att = att - att.max(-1, keepdims=True)
            att = np.exp(att)
            att /= att.sum(-1, keepdims=True)
            y = (att @ v).transpose(1, 0, 2).reshape(n, self.d)
            x = x + y @ w[p + "attn.proj.weight"] + w[p + "attn.proj.bias"]
            h = _layer_norm(x, w[p + "ln2.weight"], w[p + "ln2.bias"])
            h = _gelu(h @ w[p + "mlp.fc.weight"] + w[p + "mlp.fc.bias"])
            x = x + h @ w[p + "mlp.proj.weight"] + w[p + "mlp.proj.bias"]
        x = _layer_norm(x[-1], w["lnf.weight"], w["lnf.bias"])
        return x @ w["wte"].T

    def forward_step(self, tokens: list[int], seqs: list) -> np.ndarray:
        """One new token for each of several sequences at once: logits [n, vocab].

        Every matrix product runs on the whole batch; attention runs per
        sequence over its own cache (their lengths differ). ``seqs[i]`` has
        ``cache`` and ``pos`` (where ``tokens[i]`` goes).
        """
        w = self.w
        n = len(tokens)
        x = w["wte"][tokens] + w["wpe"][[q.pos for q in seqs]]
        hd = self.d // self.n_head
        scale = 1.0 / np.sqrt(hd)
        for i in range(self.n_layer):
            p = f"h.{i}."
            h = _layer_norm(x, w[p + "ln1.weight"], w[p + "ln1.bias"])
            qkv = h @ w[p + "attn.qkv.weight"] + w[p + "attn.qkv.bias"]
            q, k, v = (z.reshape(n, self.n_head, 1, hd) for z in np.split(qkv, 3, axis=-1))
            ys = np.empty((n, self.d), dtype=np.float32)
            for j, seq in enumerate(seqs):
                pk, pv = seq.cache[i]
                kj = k[j] if pk is None else np.concatenate([pk, k[j]], axis=1)
                vj = v[j] if pv is None else np.concatenate([pv, v[j]], axis=1)
                seq.cache[i] = [kj, vj]
                att = (q[j] @ kj.transpose(0, 2, 1)) * scale  # [heads, 1, total]
                att = np.exp(att - att.max(-1, keepdims=True))
                att /= att.sum(-1, keepdims=True)
                ys[j] = (att @ vj).reshape(self.d)
            x = x + ys @ w[p + "attn.proj.weight"] + w[p + "attn.proj.bias"]
            h = _layer_norm(x, w[p + "ln2.weight"], w[p + "ln2.bias"])
            h = _gelu(h @ w[p + "mlp.fc.weight"] + w[p + "mlp.fc.bias"])
            x = x + h @ w[p + "mlp.proj.weight"] + w[p + "mlp.proj.bias"]
        x = _layer_norm(x, w["lnf.weight"], w["lnf.bias"])
        return x @ w["wte"].T

    def logits_all(self, ids: list[int]) -> np.ndarray:
        """Logits at every position (for checking against the training framework)."""
        out = []
        cache = self.new_cache()
        for pos, t in enumerate(ids):
            out.append(self.forward([t], cache, pos))
        return np.stack(out)


def sample(logits: np.ndarray, rng: np.random.Generator, temperature: float,
           top_p: float) -> int:
    if temperature <= 0.0:
        return int(np.argmax(logits))
    z = logits / temperature
    z = z - z.max()
    probs = np.exp(z)
    if top_p < 1.0:
        order = np.argsort(-probs)
        cum = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cum, top_p * cum[-1]) + 1)]
        cdf = np.cumsum(probs[keep])
        i = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
        return int(keep[min(i, len(keep) - 1)])
    cdf = np.cumsum(probs)
    i = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return min(i, len(probs) - 1)


def token_logprobs(logits: np.ndarray, token: int, top: int) -> dict:
    """The model's log-probability of ``token`` (and its rank, 1 = likeliest) and of the
    ``top`` likeliest tokens, from the raw logits."""
    z = logits - logits.max()
    lsm = z - np.log(np.exp(z).sum())
    out = {"token": token, "logprob": float(lsm[token]),
           "rank": int((lsm > lsm[token]).sum()) + 1, "top": []}
    if top > 0:
        best = np.argpartition(-lsm, top - 1)[:top]
        best = best[np.argsort(-lsm[best])]
        out["top"] = [(int(i), float(lsm[i])) for i in best]
    return out


class Sequence:
    """One generation in progress: its tokens, key/value cache and sampling state."""

    def __init__(self, model: TinyGPT, prompt_ids: list[int], max_tokens: int,
                 eos_id: int | None, temperature: float = 1.0, top_p: float = 1.0,
                 seed: int | None = None, presence_penalty: float = 0.0,
                 frequency_penalty: float = 0.0, logprobs: int | None = None):
        self.model = model
        self.logprobs = logprobs  # None: not asked; N: the sampled token plus the N likeliest
        self.last_logprobs: dict | None = None
        self.ids = list(prompt_ids)[-(model.ctx - 1):] or [eos_id if eos_id is not None else 0]
        self.remaining = max_tokens
        self.eos_id = eos_id
        self.temperature = temperature
        self.top_p = top_p
        self.presence = presence_penalty
        self.frequency = frequency_penalty
        self.rng = np.random.default_rng(seed)
        self.counts = np.zeros(model.vocab, dtype=np.float32)
        self.cache = model.new_cache()
        self.logits = model.forward(self.ids, self.cache, 0)  # the prompt, at once
        self.pos = len(self.ids)

    def next_token(self) -> int | None:
        """Sample the next token; None when the sequence is over (end-of-text or limit)."""
        if self.remaining <= 0:
            return None
        logits = self.logits
        if self.presence or self.frequency:
            logits = logits - self.frequency * self.counts - self.presence * (self.counts > 0)
        token = sample(logits, self.rng, self.temperature, self.top_p)
        if token == self.eos_id:
            return None
        if self.logprobs is not None:
            self.last_logprobs = token_logprobs(self.logits, token, self.logprobs)
        self.remaining -= 1
        self.counts[token] += 1
        self.ids.append(token)
        return token

    def needs_window(self) -> bool:
        return self.pos >= self.model.ctx

    def slide(self) -> None:
        """At the end of the context: keep the second half and read it again."""
        keep = self.ids[-(self.model.ctx // 2):]
        self.cache = self.model.new_cache()
        self.logits = self.model.forward(keep, self.cache, 0)
        self.pos = len(keep)


def generate(model: TinyGPT, prompt_ids: list[int], max_tokens: int, eos_id: int | None,
             temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None,
             presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
             cancelled: Callable[[], bool] | None = None) -> Iterator[int]:
    """Token ids one at a time, until ``max_tokens``, the end-of-text token or ``cancelled()``.

    Prompts longer than the context keep their last tokens; when generation
    reaches the end of the context, the window slides (the second half is
    re-read), so any ``max_tokens`` works.
    """
    seq = Sequence(model, prompt_ids, max_tokens, eos_id, temperature, top_p, seed,
                   presence_penalty, frequency_penalty)
    while True:
        if cancelled is not None and cancelled():
            return
        token = seq.next_token()
        if token is None:
            return
        yield token
        if seq.remaining <= 0:
            return
        if seq.needs_window():
            seq.slide()
        else:
            seq.logits = model.forward([token], seq.cache, seq.pos)
            seq.pos += 1


class BatchEngine:
    """Continuous batching: one thread advances every running sequence by one token a step.

    ``submit`` adds a sequence between steps; each step samples one token for
    every sequence, calls its ``emit(token, logprobs)`` (``logprobs`` from
    ``token_logprobs`` when the sequence asked for them; ``emit(None)`` once when it
    ends: end-of-text, its limit, or ``cancelled()``), then runs one batched
    forward pass for all of them (``TinyGPT.forward_step``): the matrix
    products serve the whole batch at once, which is what makes many streams
    cheaper together than apart.
    """

    def __init__(self, model: TinyGPT, after_step: Callable[[], None] | None = None):
        import threading
        from collections import deque

        self.model = model
        self.after_step = after_step
        self._pending: deque = deque()
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="tiny-lm-engine", daemon=True)
        self._thread.start()

    def submit(self, emit: Callable[..., None], cancelled: Callable[[], bool],
               prompt_ids: list[int], max_tokens: int, eos_id: int | None, **sampling) -> None:
        with self._wake:
            self._pending.append((emit, cancelled, prompt_ids, max_tokens, eos_id, sampling))
            self._wake.notify()

    def close(self, timeout: float = 10.0) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout)

    def _run(self) -> None:
        running: list[tuple[Sequence, Callable, Callable]] = []
        while True:
            with self._wake:
                while not self._pending and not running and not self._stopping:
                    self._wake.wait()
                if self._stopping:
                    break
                arrived = list(self._pending)
                self._pending.clear()
            for emit, cancelled, prompt_ids, max_tokens, eos_id, sampling in arrived:
                try:
                    seq = Sequence(self.model, prompt_ids, max_tokens, eos_id, **sampling)
                except Exception as exc:  # noqa: BLE001 - reported to that request only
                    emit(exc)
                    continue
                running.append((seq, emit, cancelled))
            still = []
            to_step: list[Sequence] = []
            for item in running:
                seq, emit, cancelled = item
                token = None if cancelled() else seq.next_token()
                if token is None:
                    emit(None)
                    continue
                emit(token, seq.last_logprobs)
                if seq.remaining <= 0:
                    emit(None)
                    continue
                still.append(item)
                if seq.needs_window():
                    seq.slide()  # fresh logits for the kept half of the window
                else:
                    to_step.append(seq)
            if to_step:
                logits = self.model.forward_step([q.ids[-1] for q in to_step], to_step)
                for q, row in zip(to_step, logits):
                    q.logits = row
                    q.pos += 1
            running = still
            if self.after_step is not None:
                self.after_step()
        for _, emit, _ in running:
            emit(None)


def limit_blas_threads() -> str:
    """One BLAS thread: this model's matrices are small, and OpenBLAS's worker threads
    only spin against the server's own threads (several times slower on a busy CPU)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return "threadpoolctl is not installed: BLAS keeps its default threads"
    threadpool_limits(limits=1, user_api="blas")
    return "BLAS limited to one thread"


class TextStream:
    """Decodes token ids to text incrementally (a byte-level token may end mid-character)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.sent = 0  # characters of the decoded text already returned

    def push(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return ""  # an incomplete UTF-8 sequence: wait for the next token
        out = text[self.sent:]
        self.sent = len(text)
        return out
