#!/usr/bin/env python3
"""Train the example's tiny language model on bundled Shakespeare (CPU, a few minutes).

Runs inside the torch virtualenv that ``benchmarks/export_minilm.py`` keeps
(``setup_models.py`` starts it there). Steps:

1. the text (``shakespeare.txt.gz``: the first 600 kB of the public-domain
   "tiny Shakespeare" collection) is cut into speeches, each closed by the
   end-of-text token, so the model learns where a speech ends;
2. a byte-level BPE tokenizer (1,024 tokens) is trained with Hugging Face
   ``tokenizers`` and saved as ``tokenizer.json``, with a
   ``tokenizer_config.json`` holding the chat template (the user speaks as
   ROMEO, the model answers as JULIET);
3. a GPT-style model (4 layers, width 128, 4 heads, 128-token context,
   ~0.9 M parameters) is trained with AdamW for ``--minutes`` (or
   ``--steps``);
4. the weights are saved as ``weights.npz`` + ``config.json`` and the numpy
   forward pass that serves them (``models/tiny_lm/1/tinylm.py``) is checked against torch.

    python train_tiny_lm.py --out DIR [--minutes 4 | --steps N] [--seed 0]
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
EOS = "<|endoftext|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] | trim }}" + EOS + "\n"
    "{% elif message['role'] == 'user' %}ROMEO:\n{{ message['content'] | trim }}" + EOS + "\n"
    "{% elif message['role'] == 'assistant' %}JULIET:\n{{ message['content'] | trim }}" + EOS +
    "\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}JULIET:\n{% endif %}"
)
CONFIG = {"vocab_size": 1024, "n_layer": 4, "n_head": 4, "d_model": 128, "context": 128}


def speeches(text: str) -> str:
    parts = [p.strip() for p in text.split("\n\n") if p.strip()]
    return "".join(p + EOS + "\n" for p in parts)


def train_tokenizer(corpus: str, out: Path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=CONFIG["vocab_size"], special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([corpus], trainer)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS, "bos_token": EOS,
        "model_max_length": CONFIG["context"], "chat_template": CHAT_TEMPLATE}, indent=2) + "\n")
    return tok


def build_model(torch):
    nn = torch.nn
    F = torch.nn.functional
    d, heads, ctx, vocab = CONFIG["d_model"], CONFIG["n_head"], CONFIG["context"], \
        CONFIG["vocab_size"]

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.Linear(d, 3 * d)
            self.proj = nn.Linear(d, d)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.qkv(x).split(d, dim=2)
            q, k, v = (z.view(b, t, heads, d // heads).transpose(1, 2) for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.proj(y.transpose(1, 2).reshape(b, t, d))

    class Mlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(d, 4 * d)
            self.proj = nn.Linear(4 * d, d)

        def forward(self, x):
            return self.proj(F.gelu(self.fc(x), approximate="tanh"))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1 = nn.LayerNorm(d)
            self.attn = Attn()
            self.ln2 = nn.LayerNorm(d)
            self.mlp = Mlp()

        def forward(self, x):
            x = x + self.attn(self.ln1(x))
            return x + self.mlp(self.ln2(x))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(vocab, d)
            self.wpe = nn.Embedding(ctx, d)
            self.h = nn.ModuleList([Block() for _ in range(CONFIG["n_layer"])])
            self.lnf = nn.LayerNorm(d)
            for m in self.modules():
                if isinstance(m, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(m.weight, std=0.02)
                    if isinstance(m, nn.Linear) and m.bias is not None:
                        nn.init.zeros_(m.bias)

        def forward(self, idx):
            t = idx.shape[1]
            x = self.wte(idx) + self.wpe(torch.arange(t))
            for block in self.h:
                x = block(x)
            return self.lnf(x) @ self.wte.weight.T

    return GPT()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--steps", type=int, default=0, help="train this many steps instead")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    import numpy as np
    import torch

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    text = gzip.decompress((HERE / "shakespeare.txt.gz").read_bytes()).decode("utf-8")
    corpus = speeches(text)
    t0 = time.time()
    tok = train_tokenizer(corpus, out)
    data = torch.tensor(tok.encode(corpus).ids, dtype=torch.long)
    eos_id = tok.token_to_id(EOS)
    print(f"[tiny_lm] tokenizer: {tok.get_vocab_size()} tokens, corpus {len(data)} tokens "
          f"({time.time() - t0:.1f}s)", flush=True)

    model = build_model(torch)
    params = sum(p.numel() for p in model.parameters())
    ctx, batch = CONFIG["context"], 16
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01, betas=(0.9, 0.95))
    deadline = time.time() + args.minutes * 60
    total_steps = args.steps or 10 ** 9
    step = 0
    loss_avg = None
    g = torch.Generator().manual_seed(args.seed)
    started = time.time()
    while step < total_steps and (args.steps or time.time() < deadline):
        # cosine decay over the planned steps (or the planned time)
        frac = step / args.steps if args.steps else (time.time() - started) / (args.minutes * 60)
        lr = 3e-4 + 0.5 * (3e-3 - 3e-4) * (1 + math.cos(math.pi * min(1.0, frac)))
        for group in opt.param_groups:
            group["lr"] = lr
        ix = torch.randint(len(data) - ctx - 1, (batch,), generator=g)
        x = torch.stack([data[i:i + ctx] for i in ix])
        y = torch.stack([data[i + 1:i + ctx + 1] for i in ix])
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
        step += 1
        if step % 200 == 0:
            print(f"[tiny_lm] step {step} loss {loss_avg:.3f} ({time.time() - started:.0f}s)",
                  flush=True)
    train_s = time.time() - started
    model.eval()
    state = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    state["wte"] = state.pop("wte.weight")
    state["wpe"] = state.pop("wpe.weight")
    np.savez(out / "weights.npz", **state)
    info = dict(CONFIG, eos_token=EOS, eos_id=eos_id, parameters=params, steps=step,
                train_seconds=round(train_s, 1), final_loss=round(loss_avg or 0.0, 4),
                seed=args.seed, torch=torch.__version__, text="tiny Shakespeare (first 600 kB)")
    (out / "config.json").write_text(json.dumps(info, indent=2) + "\n")

    # the numpy forward pass that serves the model must match torch
    sys.path.insert(0, str(HERE / "models" / "tiny_lm" / "1"))
    from tinylm import TinyGPT

    probe = tok.encode("ROMEO:\nWhat light through yonder window breaks?").ids
    with torch.no_grad():
        ref = model(torch.tensor([probe]))[0].numpy()
    got = TinyGPT(out).logits_all(probe)
    diff = float(np.abs(got - ref).max())
    print(f"[tiny_lm] {params} parameters, {step} steps in {train_s:.0f}s, loss {loss_avg:.3f}; "
          f"numpy vs torch max abs diff {diff:.2e}", flush=True)
    if diff > 1e-3:
        raise SystemExit(f"numpy forward differs from torch by {diff}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
