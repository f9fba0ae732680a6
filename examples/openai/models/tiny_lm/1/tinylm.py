"""A tiny GPT-style causal language model, run with numpy (no torch needed to serve it).

The weights are trained by ``train_tiny_lm.py`` (torch, at setup time) and
saved as ``weights.npz`` + ``config.json``; the tokenizer is a byte-level BPE
``tokenizer.json`` trained on the same text. This module holds the forward
pass (pre-norm transformer blocks, tanh-GELU MLP, learned positions, tied
output embedding) with a key/value cache, and the sampling loop the served
model and the benchmark's in-process baseline share.
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
    probs /= probs.sum()
    if top_p < 1.0:
        order = np.argsort(-probs)
        cum = np.cumsum(probs[order])
        keep = order[: int(np.searchsorted(cum, top_p) + 1)]
        kept = probs[keep] / probs[keep].sum()
        return int(keep[rng.choice(len(keep), p=kept)])
    return int(rng.choice(len(probs), p=probs))


def generate(model: TinyGPT, prompt_ids: list[int], max_tokens: int, eos_id: int | None,
             temperature: float = 1.0, top_p: float = 1.0, seed: int | None = None,
             presence_penalty: float = 0.0, frequency_penalty: float = 0.0,
             cancelled: Callable[[], bool] | None = None) -> Iterator[int]:
    """Token ids one at a time, until ``max_tokens``, the end-of-text token or ``cancelled()``.

    Prompts longer than the context keep their last tokens; when generation
    reaches the end of the context, the window slides (the second half is
    re-read), so any ``max_tokens`` works.
    """
    rng = np.random.default_rng(seed)
    ids = list(prompt_ids)[-(model.ctx - 1):] or [eos_id if eos_id is not None else 0]
    cache = model.new_cache()
    logits = model.forward(ids, cache, 0)
    pos = len(ids)
    counts = np.zeros(model.vocab, dtype=np.float32)
    for _ in range(max_tokens):
        if cancelled is not None and cancelled():
            return
        if presence_penalty or frequency_penalty:
            logits = logits - frequency_penalty * counts - presence_penalty * (counts > 0)
        token = sample(logits, rng, temperature, top_p)
        if token == eos_id:
            return
        yield token
        counts[token] += 1
        ids.append(token)
        if pos >= model.ctx:
            keep = ids[-(model.ctx // 2):]
            cache = model.new_cache()
            logits = model.forward(keep, cache, 0)
            pos = len(keep)
        else:
            logits = model.forward([token], cache, pos)
            pos += 1


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
