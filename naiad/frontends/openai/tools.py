"""Tool calls parsed from a model's text, in the formats common chat models write.

- ``hermes`` (Hermes, Qwen 2.5/3 and others): each call is
  ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``; text before
  the first call is the message's content.
- ``llama3`` (Llama 3.1/3.2 JSON tool calling): the whole answer is one JSON
  object ``{"name": ..., "parameters": {...}}`` (``arguments`` is accepted
  too), optionally after ``<|python_tag|>``, several separated by ``;``.

A parser returns the content and the calls in OpenAI's shape (``id``,
``type: function``, ``function.name``, ``function.arguments`` as a JSON
string). Text that does not parse stays content, as vLLM does.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

_HERMES = re.compile(r"<tool_call>\s*(.*?)\s*</tool_call>", re.S)
_HERMES_OPEN = "<tool_call>"
_PYTHON_TAG = "<|python_tag|>"


def _call(name: Any, arguments: Any) -> dict | None:
    if not isinstance(name, str) or not name:
        return None
    if arguments is None:
        arguments = {}
    text = arguments if isinstance(arguments, str) else json.dumps(arguments,
                                                                   ensure_ascii=False)
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": name, "arguments": text}}


def parse_hermes(text: str) -> tuple[str | None, list[dict]]:
    calls = []
    for match in _HERMES.finditer(text):
        try:
            obj = json.loads(match.group(1))
        except ValueError:
            return text, []
        call = _call(obj.get("name"), obj.get("arguments")) if isinstance(obj, dict) else None
        if call is None:
            return text, []
        calls.append(call)
    if not calls:
        return text, []
    content = text[:text.index(_HERMES_OPEN)].strip()
    return content or None, calls


def parse_llama3(text: str) -> tuple[str | None, list[dict]]:
    body = text.strip()
    if body.startswith(_PYTHON_TAG):
        body = body[len(_PYTHON_TAG):].strip()
    if not body.startswith("{"):
        return text, []
    decoder = json.JSONDecoder()
    calls = []
    pos = 0
    while pos < len(body):
        try:
            obj, end = decoder.raw_decode(body, pos)
        except ValueError:
            return text, []
        if not isinstance(obj, dict):
            return text, []
        call = _call(obj.get("name"), obj.get("parameters", obj.get("arguments")))
        if call is None:
            return text, []
        calls.append(call)
        pos = end
        while pos < len(body) and body[pos] in " \t\r\n;":
            pos += 1
    return None, calls


PARSERS = {"hermes": parse_hermes, "llama3": parse_llama3}


def may_start_call(parser: str, text: str) -> bool:
    """Whether streamed text so far could be the start of a tool call (hold it back)."""
    head = text.lstrip()
    if not head:
        return True
    if parser == "hermes":
        return head.startswith(_HERMES_OPEN) or _HERMES_OPEN.startswith(head)
    return head.startswith("{") or head.startswith(_PYTHON_TAG) or _PYTHON_TAG.startswith(head)


def parse(parser: str, text: str) -> tuple[str | None, list[dict]]:
    return PARSERS[parser](text)
