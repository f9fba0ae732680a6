"""The OpenAI-compatible HTTP API as a plain ASGI app, and the frontend that serves it.

Routes: ``GET /v1/models``, ``GET /v1/models/{model}``,
``POST /v1/chat/completions``, ``POST /v1/completions``,
``POST /v1/embeddings``, plus ``GET /health/ready`` and ``GET /metrics`` as
Triton's OpenAI frontend has them. Every call goes through the data plane
(``naiad.dataplane.DataPlane``: ``repository_index``, ``model_ready``,
``get_model``, ``infer``, ``infer_stream``), as in the other frontends. Streamed answers are server-sent events ending
with ``data: [DONE]``; a client that disconnects cancels its model requests.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson

from naiad.frontends.asgi_server import AsgiServer, answer_lifespan
from naiad.frontends.openai import generation as gen
from naiad.frontends.openai import schemas, tools
from naiad.frontends.openai.catalog import EMBEDDINGS, GENERATE, Catalog, ModelInfo
from naiad.frontends.openai.errors import OpenAIError, bad_request
from naiad.frontends.openai.metrics import GenerationMetrics, attach, detach
from naiad.frontends.streaming import until_disconnect

log = logging.getLogger("naiad.openai")

JSON = (b"content-type", b"application/json")
SSE = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]
OWNED_BY = "naiad"
_DUMPS = orjson.OPT_SERIALIZE_NUMPY


def _too_large(limit: int) -> bytes:
    return OpenAIError(413, f"request body exceeds the limit of {limit} bytes",
                       code="request_too_large").json()


class OpenAIApp:
    """The ASGI application (also usable in-process: any ASGI server or test client).

    ``server`` is the data plane (``Server.dataplane`` for an embedding application).
    """

    def __init__(self, server: Any, max_input_size: int = 64 * 1024 * 1024,
                 tokenizer: str = "", chat_template: str = "", tool_call_parser: str = "",
                 default_max_tokens: int = 16):
        self.server = server
        self.max_input_size = max_input_size
        self.catalog = Catalog(server, tokenizer, chat_template, tool_call_parser,
                               default_max_tokens)
        self.metrics = GenerationMetrics()

    # -- ASGI entry ---------------------------------------------------------------------

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await answer_lifespan(scope, receive, send)
            return
        path = scope["path"].rstrip("/")
        method = scope["method"]
        try:
            if path == "/v1/chat/completions":
                self._require(method, "POST")
                await self._generate(scope, receive, send, chat=True)
            elif path == "/v1/completions":
                self._require(method, "POST")
                await self._generate(scope, receive, send, chat=False)
            elif path == "/v1/embeddings":
                self._require(method, "POST")
                await self._embeddings(scope, receive, send)
            elif path == "/v1/models":
                self._require(method, "GET")
                data = [self._model_object(info) for info in self.catalog.listing()]
                await self._send_json(send, 200, {"object": "list", "data": data})
            elif path.startswith("/v1/models/"):
                self._require(method, "GET")
                name = path[len("/v1/models/"):]
                await self._send_json(send, 200, self._model_object(self.catalog.get(name)))
            elif path == "/health/ready":
                self._require(method, "GET")
                ready = self.server.ready()
                await self._send_json(send, 200 if ready else 503, {"ready": ready})
            elif path == "/metrics":
                self._require(method, "GET")
                await self._metrics(send)
            else:
                raise OpenAIError(404, f"no route for {method} {scope['path']}",
                                  code="unknown_url")
        except OpenAIError as exc:
            await self._send_error(send, exc)
        except _ClientGone:
            return
        except Exception:  # never a traceback on the wire
            log.exception("unhandled error serving %s %s", method, scope["path"])
            await self._send_error(send, OpenAIError(500, "internal server error",
                                                     "server_error"))

    @staticmethod
    def _require(method: str, want: str) -> None:
        if method != want:
            raise OpenAIError(405, f"method {method} is not allowed here (use {want})",
                              code="method_not_allowed")

    def _model_object(self, info: ModelInfo | None) -> dict:
        return {"id": info.name, "object": "model", "created": info.created,
                "owned_by": OWNED_BY}

    # -- bodies and answers ---------------------------------------------------------------

    async def _read_body(self, scope: dict, receive: Callable) -> bytearray:
        limit = self.max_input_size
        for k, v in scope["headers"]:
            if k == b"content-length":
                try:
                    declared = int(v)
                except ValueError:
                    raise bad_request("invalid Content-Length") from None
                if declared > limit:
                    raise OpenAIError(413, f"request body exceeds the limit of {limit} bytes",
                                      code="request_too_large")
            elif k == b"content-encoding" and v.strip().lower() not in (b"identity", b""):
                raise bad_request("compressed request bodies are not accepted here")
        body = bytearray()
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                raise _ClientGone()
            body += msg.get("body", b"")
            if len(body) > limit:
                raise OpenAIError(413, f"request body exceeds the limit of {limit} bytes",
                                  code="request_too_large")
            if not msg.get("more_body", False):
                return body

    @staticmethod
    async def _send_json(send: Callable, status: int, obj: Any) -> None:
        body = orjson.dumps(obj, option=_DUMPS)
        await send({"type": "http.response.start", "status": status,
                    "headers": [JSON, (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def _send_error(self, send: Callable, exc: OpenAIError) -> None:
        status = exc.status if exc.status != 499 else 400
        await self._send_json(send, status, exc.body())

    async def _metrics(self, send: Callable) -> None:
        server_metrics = getattr(self.server, "metrics", None)
        if server_metrics is None:
            raise OpenAIError(503, "metrics are disabled (--allow-metrics=false)",
                              "service_unavailable_error")
        body = await asyncio.get_running_loop().run_in_executor(None, server_metrics.render)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def _check_serving(self) -> None:
        if getattr(self.server, "shutting_down", False):
            raise OpenAIError(503, "the server is shutting down", "service_unavailable_error")

    async def _ensure_loaded(self, name: str) -> None:
        """--model-load-on-demand: a request for a model that is not loaded loads it."""
        from naiad.core.errors import NaiadError

        try:
            await self.server.ensure_loaded(name)
        except NaiadError as exc:
            raise OpenAIError(503, exc.message, "service_unavailable_error") from None

    # -- embeddings ---------------------------------------------------------------------------

    async def _embeddings(self, scope: dict, receive: Callable, send: Callable) -> None:
        from naiad.frontends.openai.embeddings import embed

        started = time.perf_counter()
        body = await self._read_body(scope, receive)
        req = schemas.parse(schemas.EmbeddingRequest, body)
        self._check_serving()
        await self._ensure_loaded(req.model)
        info = self.catalog.get(req.model)
        if info.kind != EMBEDDINGS:
            raise bad_request(f"model '{req.model}' is not an embedding model", "model")
        try:
            answer, tokens = await embed(self.server, info, req)
        except OpenAIError:
            self.metrics.record_request(info.name, "embeddings", False, 0.0)
            raise
        self.metrics.record_embeddings(info.name, tokens)
        self.metrics.record_request(info.name, "embeddings", True,
                                    time.perf_counter() - started)
        await self._send_json(send, 200, answer)

    # -- chat and completions --------------------------------------------------------------------

    async def _generate(self, scope: dict, receive: Callable, send: Callable, chat: bool) -> None:
        body = await self._read_body(scope, receive)
        cls = schemas.ChatCompletionRequest if chat else schemas.CompletionRequest
        req = schemas.parse(cls, body)
        self._check_serving()
        await self._ensure_loaded(req.model)
        info = self.catalog.get(req.model)
        if info.kind != GENERATE:
            raise bad_request(f"model '{req.model}' is an embedding model: use /v1/embeddings",
                              "model")
        endpoint = "chat/completions" if chat else "completions"
        plan = self._plan_chat(info, req) if chat else self._plan_completion(info, req)
        runs, parser, named_tool = plan
        started = time.perf_counter()
        if req.stream:
            ok = False
            try:
                ok = await self._stream(send, receive, info, req, runs, chat, parser, named_tool)
            finally:
                self._record(info, runs, endpoint, ok, started)
            return
        done: list[gen.ChoiceResult] = []

        async def work() -> None:
            done.extend(await _all(run.run() for run in runs))

        try:  # a client that goes away cancels the model's requests, streamed or not
            finished = await until_disconnect(work(), receive)
        except OpenAIError:
            self._record(info, runs, endpoint, False, started)
            raise
        self._record(info, runs, endpoint, finished, started)
        if not finished:
            return
        results = done
        created = int(time.time())
        prompts = 1 if chat else max(1, len(runs) // req.n)
        top = gen.logprobs_wanted(req)
        if chat:
            choices = [self._chat_choice(r, parser, named_tool, top) for r in results]
            answer = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                      "created": created, "model": req.model, "system_fingerprint": None,
                      "choices": choices, "usage": gen.usage(results, prompts)}
        else:
            choices = [{"index": r.index, "text": r.text,
                        "logprobs": None if top is None else
                        gen.completion_logprobs(r.logprobs, top),
                        "finish_reason": r.finish_reason} for r in results]
            answer = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                      "created": created, "model": req.model, "system_fingerprint": None,
                      "choices": choices, "usage": gen.usage(results, prompts)}
        await self._send_json(send, 200, answer)

    def _record(self, info: ModelInfo, runs: list[gen.ChoiceRun], endpoint: str, ok: bool,
                started: float) -> None:
        prompt_tokens = gen.usage([r.result for r in runs], 1)["prompt_tokens"] if ok else 0
        for i, run in enumerate(runs):
            r = run.result
            span = (run.last_at - run.first_at) if run.first_at is not None and \
                run.last_at is not None else None
            ttft = (run.first_at - run.accepted_at) if run.first_at is not None else None
            self.metrics.record_generation(info.name, ttft, run.gaps,
                                           prompt_tokens if i == 0 else 0,
                                           r.completion_tokens if ok else 0, span)
        self.metrics.record_request(info.name, endpoint, ok, time.perf_counter() - started)

    def _limit(self, info: ModelInfo, req: Any) -> int:
        limit = req.token_limit()
        return limit if limit is not None else (info.default_max_tokens or 16)

    def _plan_chat(self, info: ModelInfo, req: schemas.ChatCompletionRequest):
        if info.template is None:
            raise bad_request(f"model '{info.name}' has no chat template (add one to its "
                              "tokenizer_config.json, or set the openai_chat_template "
                              "parameter): use /v1/completions", "model")
        messages = []
        for m in req.messages:
            item: dict[str, Any] = {"role": m.role, "content": m.text()}
            if m.name is not None:
                item["name"] = m.name
            if m.tool_calls is not None:
                item["tool_calls"] = m.tool_calls
            if m.tool_call_id is not None:
                item["tool_call_id"] = m.tool_call_id
            messages.append(item)
        tool_dicts = None
        named_tool = None
        parser = None
        choice = req.tool_choice
        if req.tools and choice != "none":
            tool_dicts = [t.model_dump(exclude_none=True) for t in req.tools]
            parser = info.tool_parser
            if isinstance(choice, schemas.NamedToolChoice):
                named_tool = choice.function.name
                if named_tool not in {t.function.name for t in req.tools}:
                    raise bad_request(f"tool_choice names function '{named_tool}', which is "
                                      "not in 'tools'", "tool_choice")
            elif choice == "required" and parser is None:
                raise bad_request(f"model '{info.name}' has no tool call parser: "
                                  "tool_choice 'required' cannot be honoured", "tool_choice")
        elif choice is not None and choice != "none" and not req.tools:
            raise bad_request("'tool_choice' is set but 'tools' is empty", "tool_choice")
        prompt = info.template.render(messages, tools=tool_dicts, add_generation_prompt=True)
        return self._runs(info, req, [prompt], echo=False), parser, named_tool

    def _plan_completion(self, info: ModelInfo, req: schemas.CompletionRequest):
        value = req.prompt
        if isinstance(value, str):
            prompts = [value]
        elif isinstance(value[0], str):
            prompts = list(value)
        else:
            seqs = [value] if isinstance(value[0], int) else value
            tok = info.tokenizer
            if tok is None:
                raise bad_request(f"model '{info.name}' has no tokenizer to read token-id "
                                  "prompts: send text", "prompt")
            vocab = tok.impl.get_vocab_size(with_added_tokens=True)
            if any(t >= vocab for seq in seqs for t in seq):
                raise bad_request(f"token id out of range (vocabulary size {vocab})", "prompt")
            prompts = [tok.decode(list(seq)) for seq in seqs]
        if req.best_of is not None and req.best_of != req.n:
            raise bad_request("'best_of' other than 'n' is not supported", "best_of")
        if len(prompts) * req.n > schemas.MAX_N:
            raise bad_request(f"at most {schemas.MAX_N} choices per request (prompts x n)", "n")
        return self._runs(info, req, prompts, echo=req.echo), None, None

    def _runs(self, info: ModelInfo, req: Any, prompts: list[str],
              echo: bool) -> list[gen.ChoiceRun]:
        limit = self._limit(info, req)
        stops = req.stop_list()
        runs = []
        for p, prompt in enumerate(prompts):
            for j in range(req.n):
                seed = None if req.seed is None else req.seed + j
                params = gen.sampling_parameters(req, limit, seed)
                runs.append(gen.ChoiceRun(self.server, info, p * req.n + j, prompt, params,
                                          bool(req.stream), echo, limit, stops))
        return runs

    @staticmethod
    def _chat_choice(r: gen.ChoiceResult, parser: str | None, named_tool: str | None,
                     top: int | None = None) -> dict:
        content: str | None = r.text
        calls: list[dict] = []
        if parser is not None:
            content, calls = tools.parse(parser, r.text)
        if not calls and named_tool is not None:
            # as Triton's frontend: the answer is the named function's arguments
            calls = [tools._call(named_tool, r.text)]
            content = None
        message: dict[str, Any] = {"role": "assistant", "content": content}
        finish = r.finish_reason
        if calls:
            message["tool_calls"] = calls
            if finish == "stop":
                finish = "tool_calls"
        logprobs = None if top is None else gen.chat_logprobs(r.logprobs, top)
        return {"index": r.index, "message": message, "logprobs": logprobs,
                "finish_reason": finish}

    # -- streaming ---------------------------------------------------------------------------------

    async def _stream(self, send: Callable, receive: Callable, info: ModelInfo, req: Any,
                      runs: list[gen.ChoiceRun], chat: bool, parser: str | None,
                      named_tool: str | None) -> bool:
        """Server-sent events; errors before the first event are plain OpenAI errors."""
        events = gen.merged(runs)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        try:
            first = await events.__anext__()  # submission failures answer with their status
        except StopAsyncIteration:
            first = None
        except BaseException:
            await events.aclose()
            raise
        writer = _SseWriter(send, info, req, chat, include_usage, parser, named_tool, runs)

        async def produce() -> None:
            try:
                await writer.start()
                if first is not None:
                    await writer.event(*first)
                    async for run, text in events:
                        await writer.event(run, text)
                await writer.finish()
            except OpenAIError as exc:  # the model failed mid-stream: an error event, then end
                await writer.error(exc)
            finally:
                await events.aclose()

        finished = await until_disconnect(produce(), receive)
        return finished and not writer.failed


class _SseWriter:
    """OpenAI's chunk objects for one streamed request."""

    def __init__(self, send: Callable, info: ModelInfo, req: Any, chat: bool,
                 include_usage: bool, parser: str | None, named_tool: str | None,
                 runs: list[gen.ChoiceRun]):
        self.send = send
        self.req = req
        self.chat = chat
        self.include_usage = include_usage
        self.parser = parser
        self.named_tool = named_tool
        self.runs = runs
        self.failed = False
        self.id = f"chatcmpl-{uuid.uuid4().hex}" if chat else f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.object = "chat.completion.chunk" if chat else "text_completion"
        self.role_sent: set[int] = set()
        self.top = gen.logprobs_wanted(req)
        self.held: dict[int, str] = {}  # text held back while it may be a tool call
        self.holding: set[int] = set()

    async def _write(self, obj: Any) -> None:
        data = b"data: " + orjson.dumps(obj, option=_DUMPS) + b"\n\n"
        await self.send({"type": "http.response.body", "body": data, "more_body": True})

    def _chunk(self, choice: dict) -> dict:
        out = {"id": self.id, "object": self.object, "created": self.created,
               "model": self.req.model, "system_fingerprint": None, "choices": [choice]}
        if self.include_usage:
            out["usage"] = None
        return out

    async def start(self) -> None:
        await self.send({"type": "http.response.start", "status": 200, "headers": SSE})
        if self.chat:
            for run in self.runs:
                await self._role(run.result.index)

    async def _role(self, index: int) -> None:
        if index in self.role_sent:
            return
        self.role_sent.add(index)
        await self._write(self._chunk({"index": index,
                                       "delta": {"role": "assistant", "content": ""},
                                       "logprobs": None, "finish_reason": None}))

    async def _text(self, index: int, text: str, run: gen.ChoiceRun | None = None) -> None:
        logprobs = None
        if self.top is not None and run is not None:
            entries = run.take_logprobs()
            if self.chat:
                logprobs = gen.chat_logprobs(entries, self.top)
            else:
                logprobs = gen.completion_logprobs(entries, self.top, run.text_offset)
        if run is not None:
            run.text_offset += len(text)
        if self.chat:
            choice = {"index": index, "delta": {"content": text}, "logprobs": logprobs,
                      "finish_reason": None}
        else:
            choice = {"index": index, "text": text, "logprobs": logprobs,
                      "finish_reason": None}
        await self._write(self._chunk(choice))

    async def event(self, run: gen.ChoiceRun, text: str | None) -> None:
        index = run.result.index
        if text is not None:
            if self.chat and (self.parser is not None or self.named_tool is not None):
                so_far = self.held.get(index, "") + text
                if self.named_tool is not None or tools.may_start_call(self.parser, so_far):
                    self.held[index] = so_far
                    return
                self.held.pop(index, None)
                text = so_far
            await self._text(index, text, run)
            return
        # the choice ended
        r = run.result
        finish = r.finish_reason
        held = self.held.pop(index, None)
        if held is not None:
            choice = OpenAIApp._chat_choice(gen.ChoiceResult(index, held, finish), self.parser,
                                            self.named_tool)
            message = choice["message"]
            if message.get("tool_calls"):
                calls = [{"index": k, **call} for k, call in enumerate(message["tool_calls"])]
                delta: dict[str, Any] = {"tool_calls": calls}
                if message.get("content"):
                    delta["content"] = message["content"]
                await self._write(self._chunk({"index": index, "delta": delta,
                                               "logprobs": None, "finish_reason": None}))
                finish = choice["finish_reason"]
            elif held:
                await self._text(index, held, run)
        if self.chat:
            choice = {"index": index, "delta": {}, "logprobs": None, "finish_reason": finish}
        else:
            choice = {"index": index, "text": "", "logprobs": None, "finish_reason": finish}
        await self._write(self._chunk(choice))

    async def finish(self) -> None:
        if self.include_usage:
            results = [run.result for run in self.runs]
            prompts = 1 if self.chat else max(1, len(self.runs) // self.req.n)
            await self._write({"id": self.id, "object": self.object, "created": self.created,
                               "model": self.req.model, "system_fingerprint": None,
                               "choices": [], "usage": gen.usage(results, prompts)})
        await self.send({"type": "http.response.body", "body": b"data: [DONE]\n\n",
                         "more_body": False})

    async def error(self, exc: OpenAIError) -> None:
        self.failed = True
        await self._write(exc.body())
        await self.send({"type": "http.response.body", "body": b"data: [DONE]\n\n",
                         "more_body": False})


class _ClientGone(Exception):
    pass


async def _all(coros) -> list:
    """Like ``asyncio.gather``, but the first failure cancels the others (and their
    model requests) instead of leaving them running."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class OpenAIFrontend:
    """Serves ``OpenAIApp`` on its own port (``--openai-port``) with naiad's HTTP server."""

    name = "OpenAI-compatible service"

    def __init__(self, server: Any, address: str, port: int,
                 max_input_size: int = 64 * 1024 * 1024, **settings: Any):
        self.server = server
        self.address = address
        self.port = port
        self.max_input_size = max_input_size
        self.app = OpenAIApp(server, max_input_size, **settings)
        self._http: AsgiServer | None = None

    async def start(self) -> None:
        from naiad.frontends.http import bind_socket

        sock = bind_socket(self.address, self.port)
        self.port = sock.getsockname()[1]
        self._http = AsgiServer(self.app, max_body_size=self.max_input_size,
                                too_large_body=_too_large)
        try:
            await self._http.start(sock)
        except BaseException:
            sock.close()
            raise
        attach(self.server, self.app.metrics)

    async def drain(self, timeout: float) -> bool:
        """Let the requests in progress (streams included) finish, up to ``timeout``."""
        if self._http is None:
            return True
        current = asyncio.current_task()
        pending = [t for t in self._http.state.tasks if t is not current and not t.done()]
        if not pending:
            return True
        _, still = await asyncio.wait(pending, timeout=max(0.0, timeout))
        return not still

    async def stop(self) -> None:
        http = self._http
        self._http = None
        detach(self.server, self.app.metrics)
        if http is not None:
            await http.stop()

