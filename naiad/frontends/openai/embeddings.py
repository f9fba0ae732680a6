"""``/v1/embeddings`` on an embedding model (text or token-id signature, see ``catalog``).

Inputs are split into batches of the model's ``max_batch_size`` and the
batches run concurrently, so the dynamic batcher can merge them with other
clients' requests. Token-id models get ``input_ids`` padded to the longest
item of the batch, with ``attention_mask`` marking the real tokens and
``token_type_ids`` zero, as Hugging Face tokenizers produce them.
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np

from naiad.core.errors import NaiadError
from naiad.dataplane import make_request
from naiad.frontends.openai.catalog import ModelInfo
from naiad.frontends.openai.errors import bad_request, from_naiad
from naiad.frontends.openai.schemas import EmbeddingRequest

_NP_INT = {"INT64": np.int64, "INT32": np.int32}


def _items(req: EmbeddingRequest) -> tuple[list[str] | None, list[list[int]] | None]:
    value = req.input
    if isinstance(value, str):
        return [value], None
    if value and isinstance(value[0], str):
        return list(value), None
    if value and isinstance(value[0], int):
        return None, [list(value)]
    return None, [list(v) for v in value]


async def embed(server: Any, info: ModelInfo, req: EmbeddingRequest) -> tuple[dict, int]:
    """The response body (vectors as numpy rows or base64 text) and its prompt token count."""
    if req.dimensions is not None:
        if not info.truncatable:
            raise bad_request(f"model '{info.name}' does not support 'dimensions' (its vectors "
                              "cannot be shortened)", "dimensions")
        if req.dimensions > info.dim:
            raise bad_request(f"'dimensions' must be at most {info.dim} for model "
                              f"'{info.name}'", "dimensions")
    texts, ids = _items(req)
    tok = info.tokenizer
    if info.text_input is not None:
        if texts is None:
            if tok is None:
                raise bad_request(f"model '{info.name}' takes text and has no tokenizer to "
                                  "decode token ids: send strings", "input")
            vocab = tok.impl.get_vocab_size(with_added_tokens=True)
            for seq in ids:
                if any(t >= vocab for t in seq):
                    raise bad_request(f"token id out of range (vocabulary size {vocab})",
                                      "input")
            texts = [tok.decode(seq) for seq in ids]
        prompt_tokens = sum(tok.count(t) for t in texts) if tok is not None else 0
        count = len(texts)
    else:
        if ids is None:
            ids = tok.encode_batch(texts)
        else:
            vocab = tok.impl.get_vocab_size(with_added_tokens=True)
            for seq in ids:
                if any(t >= vocab for t in seq):
                    raise bad_request(f"token id out of range (vocabulary size {vocab})",
                                      "input")
                if tok.max_length is not None and len(seq) > tok.max_length:
                    raise bad_request(f"an input of {len(seq)} tokens exceeds the model's "
                                      f"limit of {tok.max_length}", "input")
        prompt_tokens = sum(len(seq) for seq in ids)
        count = len(ids)
    step = info.max_batch_size if info.max_batch_size > 0 else count
    requests = []
    for start in range(0, count, step):
        if info.text_input is not None:
            requests.append(_text_request(info, texts[start:start + step]))
        else:
            requests.append(_ids_request(info, ids[start:start + step]))
    try:
        responses = await asyncio.gather(*(server.infer(r) for r in requests))
    except NaiadError as exc:
        raise from_naiad(exc) from None
    parts = []
    for response in responses:
        out = next((t for t in response.outputs if t.name == info.output), None)
        if out is None:
            raise from_naiad(NaiadError(f"model '{info.name}' returned no '{info.output}'"))
        parts.append(np.asarray(out.data, dtype=np.float32).reshape(-1, info.dim))
    vectors = parts[0] if len(parts) == 1 else np.concatenate(parts)
    if req.dimensions is not None and req.dimensions < info.dim:
        vectors = vectors[:, :req.dimensions]
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = vectors / np.maximum(norms, 1e-12)
    vectors = np.ascontiguousarray(vectors, dtype="<f4")
    if req.encoding_format == "base64":
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(row.tobytes()).decode("ascii")}
                for i, row in enumerate(vectors)]
    else:
        data = [{"object": "embedding", "index": i, "embedding": row}
                for i, row in enumerate(vectors)]
    body = {"object": "list", "data": data, "model": info.name,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}
    return body, prompt_tokens


def _text_request(info: ModelInfo, texts: list[str]) -> Any:
    arr = np.empty(len(texts), dtype=np.object_)
    arr[:] = [t.encode("utf-8") for t in texts]
    if info.max_batch_size > 0:
        arr = arr.reshape(-1, 1)
    return make_request(info.name, {info.text_input: arr})


def _ids_request(info: ModelInfo, seqs: list[list[int]]) -> Any:
    width = max(len(s) for s in seqs)
    tok = info.tokenizer
    pad = tok.pad_id if tok is not None else 0
    ids = np.full((len(seqs), width), pad, dtype=np.int64)
    mask = np.zeros((len(seqs), width), dtype=np.int64)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = s
        mask[i, :len(s)] = 1
    arrays = {"input_ids": ids, "attention_mask": mask,
              "token_type_ids": np.zeros_like(ids)}
    inputs = {name: arrays[name].astype(_NP_INT[info.inputs[name]], copy=False)
              for name in info.inputs}
    return make_request(info.name, inputs)
