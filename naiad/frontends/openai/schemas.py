"""Request bodies of the OpenAI API, validated with pydantic.

Field names, types and bounds follow OpenAI's API reference. Validation is
strict (``"max_tokens": "10"`` is refused, not coerced); fields this server
does not know are accepted and passed to the model inside
``sampling_parameters`` (as vLLM and Triton's frontend do with ``top_k``,
``min_p`` and the like), so a client sending vendor extensions still works.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from naiad.frontends.openai.errors import OpenAIError, bad_request

MAX_STOP = 4
MAX_N = 128


class _Open(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class ChatMessage(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Union[str, list[dict[str, Any]], None] = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def text(self) -> str | None:
        """The message's text: a string, or its text parts joined (other parts refused)."""
        if self.content is None or isinstance(self.content, str):
            return self.content
        pieces = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad_request(
                    f"content part of type '{part.get('type')}' is not supported: this server "
                    "takes text parts only", "messages")
            pieces.append(part["text"])
        return "".join(pieces)


class FunctionSpec(_Open):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Open):
    type: Literal["function"]
    function: FunctionSpec


class NamedFunction(_Open):
    name: str


class NamedToolChoice(_Open):
    type: Literal["function"]
    function: NamedFunction


class StreamOptions(_Open):
    include_usage: bool = False


Probability = Annotated[float, Field(ge=0.0, le=1.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]
Stop = Union[str, Annotated[list[str], Field(max_length=MAX_STOP)], None]


class _Sampling(_Open):
    model: str = Field(min_length=1)
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] | None = None
    top_p: Probability | None = None
    n: Annotated[int, Field(ge=1, le=MAX_N)] = 1
    stop: Stop = None
    seed: int | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    tools: list[Tool] | None = None
    tool_choice: Union[Literal["none", "auto", "required"], NamedToolChoice, None] = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None

    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None \
            else self.max_tokens


TokenIds = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)]


class CompletionRequest(_Sampling):
    prompt: Union[str, Annotated[list[str], Field(min_length=1, max_length=MAX_N)], TokenIds,
                  Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_N)]]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    echo: bool = False
    logprobs: Annotated[int, Field(ge=0, le=5)] | None = None
    suffix: str | None = None
    best_of: Annotated[int, Field(ge=1)] | None = None

    @field_validator("suffix")
    @classmethod
    def _no_suffix(cls, value: str | None) -> str | None:
        if value:
            raise ValueError("'suffix' (insertion) is not supported")
        return value

    def token_limit(self) -> int | None:
        return self.max_tokens


MAX_INPUTS = 2048  # OpenAI's limit of inputs per embeddings request


class EmbeddingRequest(_Open):
    model: str = Field(min_length=1)
    input: Union[Annotated[str, Field(min_length=1)],
                 Annotated[list[Annotated[str, Field(min_length=1)]],
                           Field(min_length=1, max_length=MAX_INPUTS)],
                 TokenIds, Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_INPUTS)]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Field(ge=1)] | None = None
    user: str | None = None


def parse(cls: type[BaseModel], body: bytes | bytearray) -> Any:
    """A request object from a JSON body, or OpenAIError 400 naming the bad field."""
    if not bytes(body).strip():
        raise bad_request("the request body is empty: a JSON object is expected")
    try:
        return cls.model_validate_json(body)
    except ValidationError as exc:
        raise _validation_error(exc) from None


def _validation_error(exc: ValidationError) -> OpenAIError:
    errors = exc.errors(include_url=False)
    if not errors:
        return bad_request("invalid request")
    first = errors[0]
    if first.get("type") == "json_invalid":
        return bad_request(f"the request body is not valid JSON: {first.get('msg', '')}")
    # a union reports every alternative; the shortest location is the field itself
    loc = min((e.get("loc", ()) for e in errors), key=len)
    param = ".".join(str(p) for p in loc if not _is_union_tag(p)) or None
    messages = []
    for e in errors:
        if tuple(e.get("loc", ())[:len(loc)]) != tuple(loc):
            continue
        msg = e.get("msg", "invalid value")
        if msg not in messages:
            messages.append(msg)
    if first.get("type") == "missing":
        text = f"'{param}' is a required property"
    elif param:
        text = f"invalid value for '{param}': " + "; or ".join(messages[:3])
    else:
        text = "; ".join(messages[:3])
    return bad_request(text, param)


def _is_union_tag(part: Any) -> bool:
    """Pydantic names union members in error locations ('str', 'list[str]',
    'constrained-str', 'NamedToolChoice', "literal['none',...]"): request fields
    are snake_case identifiers, list positions are integers."""
    if not isinstance(part, str):
        return False
    return not (part.isidentifier() and part.islower()) or part in (
        "str", "int", "float", "bool", "list", "dict", "none")
