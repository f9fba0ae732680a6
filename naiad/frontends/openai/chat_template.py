"""Chat templates: Hugging Face's ``chat_template`` rendered with sandboxed Jinja2.

The template comes from a model's ``tokenizer_config.json`` (a string, or a
list of named templates where ``default`` is used), a ``chat_template.jinja``
file beside it, the config parameter ``openai_chat_template`` (a file in the
model folder or the template text itself) or ``--openai-chat-template``. It
is rendered as ``transformers`` does: an immutable sandboxed environment with
``trim_blocks`` and ``lstrip_blocks``, the loop-controls extension,
``raise_exception``, ``strftime_now`` and a ``tojson`` that keeps non-ASCII
text, with ``messages``, ``tools``, ``add_generation_prompt`` and the
tokenizer's special tokens (``bos_token``, ``eos_token``, ...) in scope. A
template that raises answers 400 with its message.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from pathlib import Path
from typing import Any

from naiad.frontends.openai.errors import bad_request


class TemplateError(Exception):
    pass


def _raise(message: str) -> None:
    raise TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: Any = None, sort_keys: bool = False) -> str:
    from markupsafe import Markup

    return Markup(json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                             separators=separators, sort_keys=sort_keys))


@functools.lru_cache(maxsize=1)
def _environment():
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


class ChatTemplate:
    """One compiled template and the special tokens it may refer to."""

    def __init__(self, source: str, special_tokens: dict[str, str] | None = None):
        from jinja2 import TemplateSyntaxError

        self.source = source
        self.special_tokens = dict(special_tokens or {})
        try:
            self._template = _environment().from_string(source)
        except TemplateSyntaxError as exc:
            raise ValueError(f"the chat template does not compile: {exc}") from None

    def render(self, messages: list[dict], tools: list[dict] | None = None,
               add_generation_prompt: bool = True, **extra: Any) -> str:
        from jinja2 import TemplateError as JinjaError

        context = dict(self.special_tokens)
        context.update(extra)
        try:
            return self._template.render(messages=messages, tools=tools,
                                         add_generation_prompt=add_generation_prompt,
                                         **context)
        except TemplateError as exc:
            raise bad_request(f"the chat template refused the conversation: {exc}",
                              "messages") from None
        except JinjaError as exc:  # the sandbox refused an operation, or a bad template
            raise bad_request(f"the chat template failed: {exc}", "messages") from None
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise bad_request(f"the chat template failed on this conversation: {exc}",
                              "messages") from None


def _token_text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]  # an AddedToken written out as a dict
    return None


SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token",
                      "cls_token", "mask_token")


def load_tokenizer_config(folder: Path) -> dict:
    path = folder / "tokenizer_config.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    return data if isinstance(data, dict) else {}


def template_from_folder(folder: Path, tokenizer_config: dict) -> str | None:
    """The chat template a Hugging Face tokenizer folder declares, if any."""
    source = tokenizer_config.get("chat_template")
    if isinstance(source, list):  # named templates: [{"name": "default", "template": ...}]
        named = {t.get("name"): t.get("template") for t in source if isinstance(t, dict)}
        source = named.get("default") or next(iter(named.values()), None)
    if isinstance(source, str) and source:
        return source
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    return None


def special_tokens(tokenizer_config: dict) -> dict[str, str]:
    out = {}
    for key in SPECIAL_TOKEN_KEYS:
        text = _token_text(tokenizer_config.get(key))
        if text is not None:
            out[key] = text
    return out
