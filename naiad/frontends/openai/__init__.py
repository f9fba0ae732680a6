"""The OpenAI-compatible frontend (``--allow-openai``): see ``docs/openai.md``.

Its dependencies (jinja2, tokenizers, pydantic) come with the extra
``naiad[openai]``; they are imported only when the frontend starts.
"""

from __future__ import annotations

from typing import Any

REQUIREMENTS = ("jinja2", "tokenizers", "pydantic")


def check_options(opts: Any) -> None:
    """Refuse settings the frontend cannot use, before anything starts (raises ValueError)."""
    import importlib.util

    missing = [m for m in REQUIREMENTS if importlib.util.find_spec(m) is None]
    if missing:
        raise ValueError("--allow-openai needs " + ", ".join(missing) +
                         ": pip install 'naiad[openai]'")
    parser = opts.openai_tool_call_parser
    if parser:
        from naiad.frontends.openai.tools import PARSERS

        if parser not in PARSERS:
            raise ValueError(f"unexpected value for --openai-tool-call-parser: '{parser}' "
                             f"(expected {' or '.join(sorted(PARSERS))})")
    if opts.openai_default_max_tokens < 1:
        raise ValueError("--openai-default-max-tokens must be at least 1")
    if opts.openai_chat_template:
        from pathlib import Path

        if not Path(opts.openai_chat_template).is_file():
            raise ValueError(f"--openai-chat-template: no such file "
                             f"'{opts.openai_chat_template}'")


def openai_frontend(server: Any) -> Any:
    """The frontend ``Server.start_frontends`` starts, around its data plane, when
    ``allow_openai`` is set."""
    from naiad.core.errors import InvalidArgument
    from naiad.frontends.openai.app import OpenAIFrontend

    opts = server.options
    try:
        check_options(opts)
    except ValueError as exc:
        raise InvalidArgument(str(exc)) from None
    return OpenAIFrontend(
        server, opts.openai_address or opts.http_address, opts.openai_port,
        max_input_size=opts.http_max_input_size, tokenizer=opts.openai_tokenizer,
        chat_template=opts.openai_chat_template, tool_call_parser=opts.openai_tool_call_parser,
        default_max_tokens=opts.openai_default_max_tokens)
