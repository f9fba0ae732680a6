"""The HTTP/REST frontend: KServe v2 with Triton's extensions, as a raw ASGI app.

Served by naiad's own HTTP/1.1 server (``asgi_server.py``: httptools, uvloop),
or by uvicorn with ``NAIAD_HTTP_SERVER=uvicorn`` (the ``uvicorn`` extra).
Routing is a split of the path and a few comparisons: no framework sits on
the per-request path, because at high
request rates the ASGI layer alone costs half the budget (DESIGN.md). This
module only translates between HTTP and the core (``naiad.server.Server``);
it holds no model logic.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from naiad.core.errors import (
    InvalidArgument,
    NaiadError,
    Unsupported,
    as_naiad_error,
)
from naiad.core.extras import install_hint
from naiad.frontends import generate, restrictions
from naiad.frontends.asgi_server import AsgiServer, answer_lifespan
from naiad.frontends.status import http_status
from naiad.frontends.streaming import until_disconnect
from naiad.observability.logging import log_response_outputs
from naiad.protocol import http_codec

log = logging.getLogger("naiad.http")

JSON = (b"Content-Type", b"application/json")
OCTET = (b"Content-Type", b"application/octet-stream")
TEXT = (b"Content-Type", b"text/plain")


# how Triton's verbose log numbers HTTP methods (libevhtp's htp_method)
_METHOD_CODES = {"GET": 0, "HEAD": 1, "POST": 2, "PUT": 3, "DELETE": 4, "OPTIONS": 8,
                 "TRACE": 13, "CONNECT": 14, "PATCH": 15}


class HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class ClientGone(Exception):
    """The client disconnected before the request body arrived."""


def _parse_version(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise HttpError(404, "Not Found")
    return int(text)


_SUPPORTED_CODINGS = (b"gzip", b"deflate", b"identity")
_encoding_cache: dict[bytes, bytes | None] = {}


def _response_encoding(accept: bytes) -> bytes | None:
    """The coding an Accept-Encoding value asks for: b"gzip", b"deflate" or None.

    As Triton: the supported coding with the highest q-value, the first listed
    on a tie; q=0 refuses a coding; "identity" winning means no compression.
    Clients send the same few values over and over, so results are cached.
    """
    try:
        return _encoding_cache[accept]
    except KeyError:
        pass
    best = None
    best_q = 0.0
    for token in accept.split(b","):
        name, _, params = token.partition(b";")
        name = name.strip().lower()
        if name not in _SUPPORTED_CODINGS:
            continue
        q = 1.0
        for param in params.split(b";"):
            key, _, value = param.partition(b"=")
            if key.strip().lower() == b"q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > best_q:
            best, best_q = name, q
    if best == b"identity":
        best = None
    if len(_encoding_cache) < 256:
        _encoding_cache[accept] = best
    return best


def _watch_disconnect(receive: Callable, model: Any, request: Any) -> asyncio.Task:
    """Cancel a queued request when its client disconnects (only queued requests pay).

    The body has been read, so the next ASGI message is ``http.disconnect``
    when the connection drops; the task is cancelled as soon as the response
    is ready.
    """
    return asyncio.get_running_loop().create_task(_await_disconnect(receive, model, request))


async def _await_disconnect(receive: Callable, model: Any, request: Any) -> None:
    message = await receive()
    if message["type"] == "http.disconnect":
        model.cancel(request)
    # anything else: this server does not signal disconnects this way; stop watching


class HttpApp:
    """The ASGI application."""

    def __init__(self, server: Any, max_input_size: int = 64 * 1024 * 1024):
        self.server = server
        self.max_input_size = max_input_size
        opts = getattr(server, "options", None)
        self.restricted = restrictions.parse_restrictions(
            list(getattr(opts, "http_restricted_api", None) or []), "--http-restricted-api")
        self.forward = restrictions.compile_forward_pattern(
            getattr(opts, "http_header_forward_pattern", "") or "",
            "--http-header-forward-pattern")

    # -- ASGI entry --------------------------------------------------------------

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await answer_lifespan(scope, receive, send)
            return
        path = scope["path"]
        method = scope["method"]
        if log.isEnabledFor(logging.DEBUG):  # --log-verbose: one line per request, as Triton
            log.debug("HTTP request: %d %s", _METHOD_CODES.get(method, 16), path)
        parts = path.split("/")
        try:
            if self.restricted:
                self._check_restricted(parts, scope["headers"])
            if len(parts) >= 5 and parts[1] == "v2" and parts[2] == "models":
                await self._model_route(parts, method, scope, receive, send)
            else:
                await self._other_route(parts, method, scope, receive, send)
        except HttpError as exc:
            await self._send_json(send, exc.status, {"error": exc.message})
        except NaiadError as exc:
            await self._send_json(send, http_status(exc.kind), {"error": exc.message})
        except ClientGone:
            return
        except RecursionError:  # a client's structure deeper than the code handling it
            await self._send_json(send, 400, {"error": "the request is nested too deeply"})
        except Exception as exc:  # never a traceback on the wire
            log.exception("unhandled error serving %s %s", method, path)
            err = as_naiad_error(exc)
            await self._send_json(send, 500, {"error": err.message})

    # -- restricted APIs ------------------------------------------------------------------

    def _check_restricted(self, parts: list[str], headers: list) -> None:
        rule = self.restricted.get(_api_group(parts))
        if rule is None:
            return
        key, value = rule
        want = (key.encode("latin-1"), value.encode("latin-1"))
        for pair in headers:
            if pair == want:
                return
        raise HttpError(403, restrictions.restricted_message("API", key))

    def _forward_headers(self, request, headers: list) -> None:
        search = self.forward.search
        for name, value in headers:
            text = name.decode("latin-1")
            if search(text) is not None:
                request.parameters[text] = value.decode("latin-1")

    # -- routing ------------------------------------------------------------------------

    async def _model_route(self, parts, method, scope, receive, send) -> None:
        # /v2/models/{name}[/versions/{v}]/{action...}
        name = parts[3]
        rest = parts[4:]
        version = -1
        if rest and rest[0] == "versions":
            if len(rest) < 2:
                raise HttpError(404, "Not Found")
            version = _parse_version(rest[1])
            rest = rest[2:]
        action = rest[0] if rest else ""
        if action == "infer" and len(rest) == 1:
            if method != "POST":
                raise HttpError(405, "Method Not Allowed")
            self.server.refuse_if_shutting_down()
            await self.infer(name, version, scope, receive, send)
            return
        if action == "" and not rest:
            self._require(method, "GET")
            await self._send_json(send, 200, self.server.model_metadata(name, version))
        elif action == "ready" and len(rest) == 1:
            self._require(method, "GET")
            if self.server.model_ready(name, version):
                await self._send_empty(send, 200)
            else:
                await self._send_json(send, 400, {"error": "Model version not ready"})
        elif action == "config" and len(rest) == 1:
            self._require(method, "GET")
            await self._send_json(send, 200, self.server.model_config_dict(name, version))
        elif action == "stats" and len(rest) == 1:
            self._require(method, "GET")
            await self._send_json(send, 200, self.server.model_statistics(name, version))
        elif action in ("generate", "generate_stream") and len(rest) == 1:
            self._require(method, "POST")
            self.server.refuse_if_shutting_down()
            body = await self._read_body(scope, receive)
            if action == "generate":
                await generate.serve(self.server, name, version, body, False, send)
            else:  # a client that goes away mid-stream cancels the model's request
                await until_disconnect(
                    generate.serve(self.server, name, version, body, True, send), receive)
        elif action == "trace" and rest[1:] == ["setting"]:
            await self._trace_setting(name, method, scope, receive, send)
        else:
            raise HttpError(404, "Not Found")

    async def _other_route(self, parts, method, scope, receive, send) -> None:
        n = len(parts)
        if n < 2 or parts[1] != "v2":
            raise HttpError(404, "Not Found")
        if n == 2:
            self._require(method, "GET")
            await self._send_json(send, 200, self.server.metadata())
            return
        section = parts[2]
        rest = parts[3:]
        server = self.server
        if section == "health" and len(rest) == 1:
            self._require(method, "GET")
            if rest[0] == "live":
                await self._send_empty(send, 200 if server.live() else 400)
                return
            if rest[0] == "ready":
                await self._send_empty(send, 200 if server.ready() else 400)
                return
        elif section == "models":
            if rest == ["stats"]:
                self._require(method, "GET")
                await self._send_json(send, 200, server.model_statistics())
                return
            if len(rest) == 1 and rest[0]:
                # /v2/models/{name}
                self._require(method, "GET")
                await self._send_json(send, 200, server.model_metadata(rest[0], -1))
                return
        elif section == "repository":
            await self._repository(rest, method, scope, receive, send)
            return
        elif section in ("systemsharedmemory", "cudasharedmemory"):
            await self._shared_memory(section, rest, method, scope, receive, send)
            return
        elif section == "trace" and rest == ["setting"]:
            await self._trace_setting("", method, scope, receive, send)
            return
        elif section == "logging" and not rest:
            await self._logging(method, scope, receive, send)
            return
        raise HttpError(404, "Not Found")

    @staticmethod
    def _require(method: str, want: str) -> None:
        if method != want:
            raise HttpError(405, "Method Not Allowed")

    # -- inference ---------------------------------------------------------------------------

    async def infer(self, name: str, version: int, scope, receive, send) -> None:
        server = self.server
        tracer = server.tracer
        traced = tracer.active  # False unless a trace level is on
        recv_start = time.monotonic_ns() if traced else 0
        headers = scope["headers"]
        header_len = None
        accept = None
        for k, v in headers:
            if k == b"inference-header-content-length":
                try:
                    header_len = int(v)
                except ValueError:
                    raise InvalidArgument(
                        "Inference-Header-Content-Length must be an integer") from None
            elif k == b"accept-encoding":
                accept = v
        body = await self._read_body(scope, receive)
        recv_end = time.monotonic_ns() if traced else 0
        shm = server.shared_memory
        if header_len == 0:
            # Triton's raw binary request: the body is the single input's data
            model = server.get_model(name, version)
            request = http_codec.decode_raw_request(body, model, name, version)
            binary_default = True
        else:
            request, binary_default = http_codec.decode_infer_request(
                body, header_len, name, version, shm)
        if self.forward is not None:
            self._forward_headers(request, headers)
        trace = tracer.sample(request, "HTTP", recv_start, recv_end) if traced else None
        watch = functools.partial(_watch_disconnect, receive)
        if trace is None:
            response = await server.infer(request, watch)
        else:
            try:
                response = await server.infer(request, watch)
            except BaseException:
                tracer.finish(trace, request)
                raise
            trace.response(response)
        if log.isEnabledFor(logging.DEBUG):
            log_response_outputs(log, response)
        parts, json_len = http_codec.encode_infer_response(
            response, request, binary_default, shm)
        out_headers = [OCTET if json_len is not None else JSON]
        if json_len is not None:
            out_headers.append((b"Inference-Header-Content-Length", str(json_len).encode()))
        body_out = parts[0] if len(parts) == 1 else b"".join(parts)
        if accept is not None:
            coding = _response_encoding(accept)
            if coding is not None:
                body_out = self._compress(body_out, coding, out_headers)
        out_headers.append((b"Content-Length", str(len(body_out)).encode()))
        if trace is not None:
            trace.stamp("HTTP_SEND_START")
        await send({"type": "http.response.start", "status": 200, "headers": out_headers})
        await send({"type": "http.response.body", "body": body_out})
        if trace is not None:
            trace.stamp("HTTP_SEND_END")
            tracer.finish(trace, request)

    # -- bodies ----------------------------------------------------------------------------------

    async def _read_body(self, scope, receive) -> bytearray:
        """The whole request body, decompressed, as a writable buffer (bounded).

        Memory follows the bytes that actually arrived, never a declared
        Content-Length: a client announcing a large body and sending little
        must not make the server commit the announced size.
        """
        limit = self.max_input_size
        declared = None
        encoding = None
        for k, v in scope["headers"]:
            if k == b"content-length":
                try:
                    declared = int(v)
                except ValueError:
                    raise InvalidArgument("invalid Content-Length") from None
                if declared > limit:
                    raise HttpError(
                        413, f"request body of {declared} bytes exceeds the limit of {limit} "
                        "bytes")
            elif k == b"content-encoding":
                encoding = v
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise ClientGone()
        body = msg.get("body", b"")
        # naiad's own server hands over a fresh bytearray: use it, no copy
        buf = body if type(body) is bytearray else bytearray(body)
        if msg.get("more_body", False):
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    raise ClientGone()
                buf += msg.get("body", b"")
                if len(buf) > limit:
                    raise HttpError(413, f"request body exceeds the limit of {limit} bytes")
                if not msg.get("more_body", False):
                    break
        elif len(buf) > limit:
            raise HttpError(413, f"request body exceeds the limit of {limit} bytes")
        if declared is not None and len(buf) != declared:
            raise InvalidArgument(
                f"request body has {len(buf)} bytes but its Content-Length says {declared}")
        if encoding is not None:
            buf = self._decompress(buf, encoding, limit)
        return buf

    @staticmethod
    def _decompress(data: bytearray, encoding: bytes, limit: int) -> bytearray:
        enc = encoding.strip().lower()
        if enc in (b"identity", b""):
            return data
        if enc == b"gzip":
            wbits = 31
        elif enc == b"deflate":
            # zlib-wrapped per RFC; raw deflate is tried if the header is missing
            wbits = 15 if len(data) >= 2 and (data[0] * 256 + data[1]) % 31 == 0 else -15
        else:
            # 415, the status for this (Triton answers 501, a server error)
            raise HttpError(415, f"unsupported Content-Encoding '{encoding.decode('latin-1')}'"
                            " (supported: gzip, deflate, identity)")
        d = zlib.decompressobj(wbits)
        try:
            out = d.decompress(data, limit + 1)
        except zlib.error as exc:
            raise InvalidArgument(f"failed to decompress the request body: {exc}") from None
        if len(out) > limit or d.unconsumed_tail:
            raise HttpError(413, f"decompressed request body exceeds the limit of {limit} bytes")
        if not d.eof:
            raise InvalidArgument("failed to decompress the request body: truncated stream")
        return bytearray(out)

    @staticmethod
    def _compress(body: bytes, coding: bytes, headers: list) -> bytes:
        if coding == b"gzip":
            c = zlib.compressobj(6, zlib.DEFLATED, 31)
        else:
            c = zlib.compressobj(6, zlib.DEFLATED, 15)
        headers.append((b"Content-Encoding", coding))
        return c.compress(body) + c.flush()

    async def _json_body(self, scope, receive) -> dict:
        body = await self._read_body(scope, receive)
        if not body.strip():
            return {}
        try:
            obj = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidArgument(f"failed to parse the request JSON buffer: {exc}") from None
        if not isinstance(obj, dict):
            raise InvalidArgument("the request body must be a JSON object")
        return obj

    # -- responses ---------------------------------------------------------------------------

    @staticmethod
    async def _send_json(send, status: int, obj: Any) -> None:
        body = orjson.dumps(obj)
        await send({"type": "http.response.start", "status": status,
                    "headers": [JSON, (b"Content-Length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    async def _send_empty(send, status: int) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [TEXT, (b"Content-Length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    # -- repository extension ----------------------------------------------------------------

    async def _repository(self, rest, method, scope, receive, send) -> None:
        server = self.server
        if rest == ["index"]:
            self._require(method, "POST")
            body = await self._json_body(scope, receive)
            ready = body.get("ready", False)
            if not isinstance(ready, bool):
                raise InvalidArgument("'ready' must be a boolean")
            await self._send_json(send, 200, server.repository_index(ready))
            return
        if len(rest) == 3 and rest[0] == "models" and rest[2] in ("load", "unload"):
            self._require(method, "POST")
            body = await self._json_body(scope, receive)
            params = body.get("parameters", {})
            if not isinstance(params, dict):
                raise InvalidArgument("'parameters' must be a JSON object")
            name = rest[1]
            if rest[2] == "load":
                await server.load_model_from_parameters(name, params)
            else:
                dependents = params.get("unload_dependents", False)
                if not isinstance(dependents, bool):
                    raise InvalidArgument("'unload_dependents' must be a boolean")
                await server.unload_model(name, dependents)
            await self._send_empty(send, 200)
            return
        raise HttpError(404, "Not Found")

    # -- shared memory extension ------------------------------------------------------------------

    async def _shared_memory(self, section, rest, method, scope, receive, send) -> None:
        cuda = section == "cudasharedmemory"
        region = ""
        if len(rest) >= 2 and rest[0] == "region":
            region = rest[1]
            rest = rest[2:]
        if len(rest) != 1 or rest[0] not in ("status", "register", "unregister"):
            raise HttpError(404, "Not Found")
        action = rest[0]
        if cuda:
            shm = getattr(self.server, "cuda_shared_memory", None)
        else:
            shm = self.server.shared_memory
        if action == "status":
            self._require(method, "GET")
        else:
            self._require(method, "POST")
        if shm is None:
            raise Unsupported(f"{section} is not supported")
        if action == "status":
            await self._send_json(send, 200, shm.status(region))
        elif action == "register":
            body = await self._json_body(scope, receive)
            shm.register_from_json(region, body)
            await self._send_empty(send, 200)
        else:
            shm.unregister(region)
            await self._send_empty(send, 200)

    # -- trace and logging extensions -----------------------------------------------------------

    async def _trace_setting(self, model: str, method, scope, receive, send) -> None:
        tracer = self.server.tracer
        if method == "GET":
            await self._send_json(send, 200, tracer.get_settings(model))
        elif method == "POST":
            body = await self._json_body(scope, receive)
            await self._send_json(send, 200, tracer.update_settings(model, body))
        else:
            raise HttpError(405, "Method Not Allowed")

    async def _logging(self, method, scope, receive, send) -> None:
        settings = self.server.logging_settings()
        if method == "GET":
            await self._send_json(send, 200, settings.get())
        elif method == "POST":
            body = await self._json_body(scope, receive)
            await self._send_json(send, 200, settings.update(body))
        else:
            raise HttpError(405, "Method Not Allowed")


_MODEL_ACTION_GROUPS = {
    "": "metadata",
    "ready": "health",
    "config": "model-config",
    "infer": "inference",
    "generate": "inference",
    "generate_stream": "inference",
    "stats": "statistics",
    "trace": "trace",
}
_SECTION_GROUPS = {
    "health": "health",
    "repository": "model-repository",
    "systemsharedmemory": "shared-memory",
    "cudasharedmemory": "shared-memory",
    "logging": "logging",
    "trace": "trace",
}


def _api_group(parts: list[str]) -> str | None:
    """Triton's API group of a request path (for --http-restricted-api)."""
    if len(parts) < 2 or parts[1] != "v2":
        return None
    if len(parts) == 2:
        return "metadata"
    section = parts[2]
    if section != "models":
        return _SECTION_GROUPS.get(section)
    rest = parts[3:]
    if rest == ["stats"]:
        return "statistics"
    rest = rest[1:]
    if rest[:1] == ["versions"]:
        rest = rest[2:]
    return _MODEL_ACTION_GROUPS.get(rest[0] if rest else "")


def bind_socket(address: str, port: int, reuse_port: bool = False) -> socket.socket:
    """Bind a listening TCP socket; raises OSError with a clear message if busy."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port and hasattr(socket, "SO_REUSEPORT"):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((address, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"unable to bind {address}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class HttpFrontend:
    """Serves the ASGI app (naiad's own server, or uvicorn) on a socket we bind ourselves."""

    name = "HTTPService"

    def __init__(self, server: Any, address: str, port: int, reuse_port: bool = False,
                 max_input_size: int = 64 * 1024 * 1024,
                 app: Callable[..., Awaitable[None]] | None = None):
        self.server = server
        self.address = address
        self.port = port
        self.reuse_port = reuse_port
        self.app = app or HttpApp(server, max_input_size)
        self._uv = None
        self._own = None
        self.max_input_size = max_input_size
        self._sock: socket.socket | None = None

    async def start(self) -> None:
        self._sock = bind_socket(self.address, self.port, self.reuse_port)
        self.port = self._sock.getsockname()[1]
        if os.environ.get("NAIAD_HTTP_SERVER", "").lower() == "uvicorn":
            await self._start_uvicorn()
            return

        self._own = AsgiServer(self.app, max_body_size=self.max_input_size)
        await self._own.start(self._sock)

    async def _start_uvicorn(self) -> None:
        try:
            import uvicorn
        except ImportError:
            raise InvalidArgument(
                f"NAIAD_HTTP_SERVER=uvicorn needs uvicorn: {install_hint('uvicorn')}") from None

        config = uvicorn.Config(
            self.app,
            http="httptools",
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            date_header=False,
            proxy_headers=False,
            timeout_graceful_shutdown=5,
        )
        config.load()
        uv = uvicorn.Server(config)
        uv.lifespan = config.lifespan_class(config)
        await uv.startup(sockets=[self._sock])
        self._uv = uv

    async def drain(self, timeout: float) -> bool:
        """Wait for the requests in progress to finish (shutdown's first step).

        The socket stays open meanwhile: health probes are answered (not
        ready) and new inference is refused with 503, so clients get a clear
        answer rather than a refused connection. False if ``timeout`` ran out.
        """
        if self._own is not None:
            tasks = self._own.state.tasks
        elif self._uv is not None:
            tasks = self._uv.server_state.tasks
        else:
            return True
        current = asyncio.current_task()
        pending = [t for t in tasks if t is not current and not t.done()]
        if not pending:
            return True
        _, still = await asyncio.wait(pending, timeout=max(0.0, timeout))
        return not still

    async def stop(self) -> None:
        own = self._own
        if own is not None:
            self._own = None
            await own.stop()
            return
        uv = self._uv
        if uv is None:
            return
        self._uv = None
        try:
            await uv.shutdown(sockets=[self._sock] if self._sock else None)
        except Exception:
            log.exception("HTTP shutdown failed")


def default_loop_policy() -> None:
    """Use uvloop when it is installed (it is a core dependency on Linux/macOS)."""
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover
        pass
