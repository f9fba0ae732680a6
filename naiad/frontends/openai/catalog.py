"""Which repository models the OpenAI frontend serves, and how (the model convention).

A **generation model** (chat and completions) has a BYTES input
``text_input`` and a BYTES output ``text_output`` — the names Triton's vLLM
backend uses — and optionally the inputs ``stream`` (BOOL),
``sampling_parameters`` (BYTES, JSON), ``exclude_input_in_output`` (BOOL),
``return_num_input_tokens`` / ``return_num_output_tokens`` (BOOL, answered
by the outputs ``num_input_tokens`` / ``num_output_tokens``) and the output
``finish_reason`` (BYTES). It is usually decoupled: one response per piece of
text. Chat needs a chat template.

An **embedding model** is recognised by its signature: one FP32 output of
shape [D] per item (``[-1, D]`` without batching), and either one BYTES input
(the texts, batched along the first dimension) or INT64/INT32 token inputs
``input_ids`` (with ``attention_mask`` / ``token_type_ids`` if it has them),
which the frontend fills from the model's tokenizer.

Config parameters (all optional) name what the signature cannot say:

- ``openai_task``: ``generate``, ``embeddings`` or ``none`` (not served here);
- ``openai_tokenizer``: a ``tokenizer.json`` or its folder, relative to the
  model folder (default: ``tokenizer.json`` in the version or model folder);
- ``openai_chat_template``: a template file in the model folder, or the
  template text (default: ``chat_template`` in ``tokenizer_config.json``);
- ``openai_tool_call_parser``: ``hermes`` or ``llama3``;
- ``openai_default_max_tokens``: the limit when a request sets none;
- ``openai_embedding_output``: which output holds the vectors;
- ``openai_embedding_dimensions``: ``truncate`` when the vectors may be cut
  to the request's ``dimensions`` (Matryoshka models) and renormalised.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from naiad.frontends.openai import chat_template as ct
from naiad.frontends.openai.errors import OpenAIError, bad_request, model_not_found

log = logging.getLogger("naiad.openai")

GENERATE = "generate"
EMBEDDINGS = "embeddings"
TOKEN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_INT_TYPES = ("INT64", "INT32")


@dataclass
class Tokenizer:
    """A Hugging Face ``tokenizers`` tokenizer and what the frontend needs from it."""

    impl: Any
    path: str
    max_length: int | None = None
    pad_id: int = 0

    def count(self, text: str) -> int:
        return len(self.impl.encode(text, add_special_tokens=False).ids)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Token ids with the tokenizer's special tokens, truncated to ``max_length``."""
        out = []
        for enc in self.impl.encode_batch(texts, add_special_tokens=True):
            ids = enc.ids
            if self.max_length is not None and len(ids) > self.max_length:
                ids = ids[:self.max_length - 1] + ids[-1:]  # keep the closing special token
            out.append(ids)
        return out

    def decode(self, ids: list[int]) -> str:
        return self.impl.decode(ids, skip_special_tokens=False)


@dataclass
class ModelInfo:
    name: str
    version: int
    kind: str
    created: int
    model_ref: Any = None  # weakref to the core Model this was derived from
    tokenizer: Tokenizer | None = None
    template: ct.ChatTemplate | None = None
    tool_parser: str | None = None
    default_max_tokens: int | None = None
    inputs: dict[str, str] = field(default_factory=dict)  # name -> datatype
    outputs: dict[str, str] = field(default_factory=dict)
    # embeddings
    text_input: str | None = None
    output: str | None = None
    dim: int = 0
    truncatable: bool = False
    max_batch_size: int = 0


def _param(config: Any, key: str) -> str | None:
    params = config.parameters
    if key in params:
        value = params[key].string_value.strip()
        return value or None
    return None


class Catalog:
    """Classifies ready models (once per loaded version) for the OpenAI endpoints."""

    def __init__(self, server: Any, tokenizer_path: str = "", chat_template: str = "",
                 tool_call_parser: str = "", default_max_tokens: int = 16):
        self.server = server
        self.default_tokenizer_path = tokenizer_path
        self.default_template_source = chat_template
        self.default_tool_parser = tool_call_parser or None
        self.default_max_tokens = default_max_tokens
        self._cache: dict[tuple[str, int], tuple[Any, ModelInfo | None]] = {}
        self._first_seen: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()
        self._default_template: ct.ChatTemplate | None = None
        if chat_template:
            self._default_template = ct.ChatTemplate(_read_template(Path("."), chat_template))

    # -- lookups -------------------------------------------------------------------

    def listing(self) -> list[ModelInfo]:
        """Every ready model that can serve chat, completions or embeddings."""
        out = []
        seen = set()
        for item in self.server.repository_index(ready_only=True):
            name = item.get("name")
            if not name or name in seen:
                continue
            seen.add(name)
            try:
                info = self.get(name, missing_ok=True)
            except OpenAIError:
                continue
            if info is not None:
                out.append(info)
        return out

    def get(self, name: str, missing_ok: bool = False) -> ModelInfo | None:
        """The served model called ``name`` (its newest ready version)."""
        from naiad.core.errors import NaiadError

        if not self.server.model_ready(name):
            if missing_ok:
                return None
            raise model_not_found(name)
        try:
            model = self.server.get_model(name)
        except NaiadError:
            if missing_ok:
                return None
            raise model_not_found(name) from None
        key = (name, int(model.version))
        cached = self._cache.get(key)
        if cached is not None and cached[0]() is model:
            info = cached[1]
        else:
            with self._lock:
                info = self._classify(model, key)
                self._cache[key] = (weakref.ref(model), info)
        if info is None and not missing_ok:
            raise bad_request(f"model '{name}' does not serve the OpenAI API: it has neither "
                              "the text_input/text_output signature of a generation model nor "
                              "the signature of an embedding model", "model")
        return info

    # -- classification ----------------------------------------------------------------

    def _classify(self, model: Any, key: tuple[str, int]) -> ModelInfo | None:
        config = model.config
        created = self._first_seen.setdefault(key, int(time.time()))
        inputs = {n: spec.datatype for n, spec in model.inputs.items()}
        outputs = {n: spec.datatype for n, spec in model.outputs.items()}
        task = (_param(config, "openai_task") or "").lower()
        if task in ("none", "off", "false"):
            return None
        kind = None
        if task in ("generate", "generation", "chat", "completions", "completion"):
            kind = GENERATE
        elif task in ("embeddings", "embedding", "embed"):
            kind = EMBEDDINGS
        elif task:
            log.warning("model '%s': unknown openai_task '%s'", model.name, task)
            return None
        elif inputs.get("text_input") == "BYTES" and outputs.get("text_output") == "BYTES":
            kind = GENERATE
        info = ModelInfo(name=model.name, version=int(model.version), kind=kind or "",
                         created=created, model_ref=weakref.ref(model), inputs=inputs,
                         outputs=outputs, max_batch_size=int(config.max_batch_size))
        model_dir = Path(model.model_dir) if model.model_dir else None
        version_dir = Path(model.version_dir) if model.version_dir else None
        try:
            info.tokenizer, folder = self._tokenizer(config, model_dir, version_dir)
            if kind is None or kind == EMBEDDINGS:
                if not self._embedding_signature(model, info):
                    if kind == EMBEDDINGS:
                        log.warning("model '%s' is named an embedding model but has no "
                                    "embedding signature", model.name)
                    return None
                info.kind = EMBEDDINGS
                return info
            if kind == GENERATE and ("text_input" not in inputs or "text_output" not in outputs):
                log.warning("model '%s': a generation model needs text_input and text_output",
                            model.name)
                return None
            info.template = self._template(config, model_dir, folder)
        except (OSError, ValueError) as exc:
            log.warning("model '%s' is not served by the OpenAI frontend: %s", model.name, exc)
            return None
        parser = (_param(config, "openai_tool_call_parser") or self.default_tool_parser)
        if parser is not None:
            from naiad.frontends.openai import tools

            if parser not in tools.PARSERS:
                log.warning("model '%s': unknown tool call parser '%s' (known: %s)", model.name,
                            parser, ", ".join(sorted(tools.PARSERS)))
                parser = None
        info.tool_parser = parser
        limit = _param(config, "openai_default_max_tokens")
        info.default_max_tokens = int(limit) if limit and limit.isdigit() else \
            self.default_max_tokens
        return info

    def _tokenizer(self, config: Any, model_dir: Path | None,
                   version_dir: Path | None) -> tuple[Tokenizer | None, Path | None]:
        candidates: list[Path] = []
        named = _param(config, "openai_tokenizer")
        if named and model_dir is not None:
            candidates.append(model_dir / named)
        else:
            candidates += [d for d in (version_dir, model_dir) if d is not None]
            if self.default_tokenizer_path:
                candidates.append(Path(self.default_tokenizer_path))
        for cand in candidates:
            path = cand / "tokenizer.json" if cand.is_dir() else cand
            if path.is_file():
                return _load_tokenizer(path), path.parent
        if named:
            raise ValueError(f"openai_tokenizer '{named}' names no tokenizer.json")
        return None, None

    def _template(self, config: Any, model_dir: Path | None,
                  folder: Path | None) -> ct.ChatTemplate | None:
        tok_config = ct.load_tokenizer_config(folder) if folder is not None else {}
        specials = ct.special_tokens(tok_config)
        named = _param(config, "openai_chat_template")
        if named:
            return ct.ChatTemplate(_read_template(model_dir or Path("."), named), specials)
        source = ct.template_from_folder(folder, tok_config) if folder is not None else None
        if source:
            return ct.ChatTemplate(source, specials)
        if self._default_template is not None:
            return ct.ChatTemplate(self._default_template.source,
                                   specials or self._default_template.special_tokens)
        return None

    def _embedding_signature(self, model: Any, info: ModelInfo) -> bool:
        batching = info.max_batch_size > 0
        wanted = _param(model.config, "openai_embedding_output")
        fp32 = [o for o in model.outputs.values() if o.datatype == "FP32" and
                (wanted is None or o.name == wanted)]
        if len(fp32) != 1:
            return False
        dims = fp32[0].dims
        if not batching:
            if len(dims) != 2 or (dims[0] != -1 and dims[0] <= 0):
                return False
            dims = dims[1:]
        if len(dims) != 1 or dims[0] <= 0:
            return False
        info.output = fp32[0].name
        info.dim = dims[0]
        info.truncatable = (_param(model.config, "openai_embedding_dimensions") or "") == \
            "truncate"
        inputs = model.inputs
        byte_inputs = [i for i in inputs.values() if i.datatype == "BYTES"]
        if len(inputs) == 1 and len(byte_inputs) == 1:
            dims_in = byte_inputs[0].dims
            if (batching and dims_in in ((1,), (-1,))) or \
                    (not batching and dims_in in ((-1,), (-1, 1))):
                info.text_input = byte_inputs[0].name
                return True
            return False
        if "input_ids" not in inputs or any(n not in TOKEN_INPUTS for n in inputs) or \
                any(i.datatype not in _INT_TYPES for i in inputs.values()):
            return False
        if any(i.dims != (-1,) for i in inputs.values()) or not batching:
            log.warning("model '%s': token inputs must have dims [-1] and the model must "
                        "batch: not served as an embedding model", info.name)
            return False
        if info.tokenizer is None:
            log.warning("model '%s' takes token ids but has no tokenizer.json: not served as "
                        "an embedding model", info.name)
            return False
        return True


def _read_template(base: Path, value: str) -> str:
    candidate = base / value
    if len(value) < 4096 and "{" not in value and candidate.is_file():
        return candidate.read_text(encoding="utf-8")
    if "{" in value:
        return value  # the template text itself
    raise ValueError(f"chat template file '{candidate}' does not exist")


def _load_tokenizer(path: Path) -> Tokenizer:
    from tokenizers import Tokenizer as HFTokenizer

    impl = HFTokenizer.from_file(str(path))
    impl.no_padding()
    impl.no_truncation()
    folder = path.parent
    max_length = None
    st_config = folder / "sentence_bert_config.json"
    tok_config = ct.load_tokenizer_config(folder)
    if st_config.is_file():
        try:
            max_length = int(json.loads(st_config.read_text())["max_seq_length"])
        except (ValueError, KeyError, TypeError):
            max_length = None
    if max_length is None:
        value = tok_config.get("model_max_length")
        if isinstance(value, int) and 0 < value < 1_000_000:
            max_length = value
    pad_id = 0
    pad = ct._token_text(tok_config.get("pad_token"))
    if pad is not None:
        found = impl.token_to_id(pad)
        if found is not None:
            pad_id = found
    return Tokenizer(impl, str(path), max_length, pad_id)
