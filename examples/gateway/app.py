"""The I/O gateway: a small HTTP service in front of naiad, as detectron2 deployments have.

Clients post an image; the gateway checks it, sends it to a vision pipeline on
naiad (Triton's protocols, through the official tritonclient), maps the class
ids to names and answers JSON. Configured by environment variables only:

==========================  ===============================================================
``HOST``, ``PORT``          where the gateway listens (default 0.0.0.0:8080)
``mode``                    ``debug`` (debug logs, tracebacks), ``develop`` (info logs,
                            access log, reload on code changes) or ``production``
                            (default: warnings only, no access log)
``TRITON_HOST``             naiad's (or Triton's) host (default localhost)
``TRITON_PORT``             its HTTP or gRPC port (default 8000, or 8001 for grpc)
``TRITON_MODEL_PROTOCOL``   ``http`` (tritonclient.http.aio, default) or ``grpc``
                            (tritonclient.grpc.aio)
``TRITON_MODEL_NAME``       the pipeline to call (default ``shapes_detection``)
``LABEL_MAPPING_FILE``      JSON mapping class ids to names (``{"0": "rectangle", ...}`` or
                            a list); without it, the pipeline's own LABELS are used
==========================  ===============================================================

Endpoints:

* ``POST /predict``: the image as a multipart upload (any file field; ``image``
  preferred), as JSON ``{"image": "<base64>"}``, or as the raw body with an
  ``image/*`` content type. Answers ``{"model", "width", "height",
  "predictions": [...]}``; a bad upload is a 4xx with ``{"error": "..."}``
  (400 empty or not an image, 413 larger than 10 MiB or 40 megapixels, 415 a
  content type it does not take); naiad unreachable is a 503, at once.
* ``GET /health``: 200 when naiad is ready and serves the model, else 503.

    HOST=127.0.0.1 PORT=8080 TRITON_PORT=8000 python examples/gateway/app.py
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import json
import logging
import os
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 40_000_000
TRITON_TIMEOUT_S = 60.0
#: outputs the gateway does not ship (an image-sized array per object)
HEAVY_OUTPUTS = {"MASKS", "MASK"}

log = logging.getLogger("gateway")


class Settings:
    """The environment variables, read once."""

    def __init__(self, env=os.environ):
        self.host = env.get("HOST", "0.0.0.0")
        self.port = int(env.get("PORT", "8080"))
        self.mode = env.get("mode", "production")
        if self.mode not in ("debug", "develop", "production"):
            raise SystemExit(f"mode={self.mode}: expected debug, develop or production")
        self.protocol = env.get("TRITON_MODEL_PROTOCOL", "http").lower()
        if self.protocol not in ("http", "grpc"):
            raise SystemExit(f"TRITON_MODEL_PROTOCOL={self.protocol}: expected http or grpc")
        self.triton_host = env.get("TRITON_HOST", "localhost")
        self.triton_port = int(env.get("TRITON_PORT",
                                       "8001" if self.protocol == "grpc" else "8000"))
        self.model = env.get("TRITON_MODEL_NAME", "shapes_detection")
        self.labels = read_label_mapping(env.get("LABEL_MAPPING_FILE", ""))


def read_label_mapping(path: str) -> dict[int, str]:
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if isinstance(data, list):
            return dict(enumerate(str(v) for v in data))
        return {int(k): str(v) for k, v in data.items()}
    except (OSError, ValueError, AttributeError) as exc:
        raise SystemExit(f"LABEL_MAPPING_FILE={path}: not a JSON object of class id -> name "
                         f"or a JSON list of names ({exc})") from None


class ClientError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Unavailable(Exception):
    pass


class Triton:
    """naiad over tritonclient's asyncio clients (HTTP or gRPC)."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.url = f"{settings.triton_host}:{settings.triton_port}"
        self.grpc = settings.protocol == "grpc"
        if self.grpc:
            import tritonclient.grpc.aio as mod
        else:
            import tritonclient.http.aio as mod
        self.mod = mod
        self.client = None
        self.outputs: list[str] | None = None

    def _client(self):
        if self.client is None:
            self.client = self.mod.InferenceServerClient(self.url) if self.grpc else \
                self.mod.InferenceServerClient(self.url, conn_timeout=5.0)
        return self.client

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None

    async def _call(self, coro):
        try:
            return await asyncio.wait_for(coro, TRITON_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise Unavailable(f"naiad did not answer within {TRITON_TIMEOUT_S:.0f} s") from None
        except OSError as exc:  # refused, reset, unreachable (aiohttp's errors are OSErrors)
            raise Unavailable(f"naiad at {self.url} is unreachable: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - tritonclient's and aiohttp's own
            if self._unreachable(exc):
                raise Unavailable(f"naiad at {self.url} is unreachable: {exc}") from None
            raise

    @staticmethod
    def _unreachable(exc: Exception) -> bool:
        status = getattr(exc, "status", lambda: None)
        status = status() if callable(status) else status
        text = str(exc)
        return (status in ("StatusCode.UNAVAILABLE", "StatusCode.DEADLINE_EXCEEDED")
                or "Cannot connect" in text or "Connection refused" in text
                or type(exc).__name__ in ("ClientConnectorError", "ServerDisconnectedError",
                                          "ClientOSError"))

    async def ready(self) -> tuple[bool, str]:
        c = self._client()
        try:
            if not await self._call(c.is_server_ready()):
                return False, "naiad is not ready"
            if not await self._call(c.is_model_ready(self.settings.model)):
                return False, f"model '{self.settings.model}' is not ready"
        except Unavailable as exc:
            return False, str(exc)
        return True, "ready"

    async def _output_names(self) -> list[str]:
        if self.outputs is None:
            meta = await self._call(self._client().get_model_metadata(self.settings.model))
            names = [o.name for o in meta.outputs] if self.grpc else \
                [o["name"] for o in meta["outputs"]]
            self.outputs = [n for n in names if n not in HEAVY_OUTPUTS]
        return self.outputs

    async def infer(self, data: bytes) -> dict[str, np.ndarray]:
        names = await self._output_names()
        array = np.frombuffer(data, dtype=np.uint8)
        image = self.mod.InferInput("IMAGE", [len(array)], "UINT8")
        image.set_data_from_numpy(array)
        wanted = [self.mod.InferRequestedOutput(n) for n in names]
        result = await self._call(self._client().infer(self.settings.model, [image],
                                                       outputs=wanted))
        return {n: result.as_numpy(n) for n in names}


def check_image(data: bytes) -> tuple[int, int]:
    """The image's size, or a ClientError saying what is wrong with the upload."""
    if not data:
        raise ClientError(400, "the upload is empty: send an image file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                if width * height > MAX_PIXELS:
                    raise ClientError(413, f"the image is {width}x{height}: at most "
                                           f"{MAX_PIXELS // 1_000_000} megapixels")
                img.verify()
    except ClientError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ClientError(413, f"the image is larger than {MAX_PIXELS // 1_000_000} "
                               "megapixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ClientError(400, f"the upload is not an image file Pillow can read "
                               f"({type(exc).__name__})") from None
    return width, height


async def read_upload(request: Request) -> bytes:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        try:
            form = await request.form(max_files=4, max_fields=16)
        except Exception as exc:  # noqa: BLE001 - python-multipart's parse errors
            if isinstance(exc, BodyTooLarge):
                raise
            raise ClientError(400, f"the multipart body cannot be read: {exc}") from None
        files = [v for v in form.values() if hasattr(v, "read")]
        if "image" in form and hasattr(form["image"], "read"):
            files = [form["image"]]
        if not files:
            raise ClientError(400, "the multipart body has no file: send the image as a "
                                   "file field named 'image'")
        data = await files[0].read()
        await form.close()
        return data
    if ctype == "application/json":
        try:
            body = json.loads(await request.body())
            text = body["image"]
            return base64.b64decode(text, validate=True)
        except (ValueError, KeyError, TypeError, binascii.Error):
            raise ClientError(400, 'the JSON body must be {"image": "<base64 of an image '
                                   'file>"}') from None
    if ctype.startswith("image/") or ctype == "application/octet-stream":
        return await request.body()
    raise ClientError(415, f"content type '{ctype or 'none'}' is not taken: send "
                           "multipart/form-data, application/json or image/*")


class BodyTooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: refuse bodies over the limit before reading them (by Content-Length)
    or as soon as they pass it (chunked)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        too_large = JSONResponse(
            {"error": f"the upload is larger than {self.limit // (1024 * 1024)} MiB"}, 413)
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await too_large(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise BodyTooLarge()
            return message

        try:
            await self.app(scope, limited, send)
        except BodyTooLarge:
            await too_large(scope, receive, send)


def predictions(outputs: dict[str, np.ndarray], labels: dict[int, str]) -> list[dict]:
    """The pipeline's answer as a list of records with mapped labels."""
    o = outputs

    def label(i: int, cid: int | None) -> str:
        if cid is not None and cid in labels:
            return labels[cid]
        if "LABELS" in o and i < len(o["LABELS"]):
            v = o["LABELS"][i]
            return v.decode() if isinstance(v, bytes) else str(v)
        return str(cid)

    if "TEXT" in o:
        boxes = o.get("BOXES")
        return [{"text": t.decode() if isinstance(t, bytes) else str(t),
                 "score": float(s),
                 **({"box": boxes[i].tolist()} if boxes is not None else {})}
                for i, (t, s) in enumerate(zip(o["TEXT"], o["SCORES"]))]
    ids = [int(c) for c in o["CLASS_IDS"]] if "CLASS_IDS" in o else None
    out = []
    for i, score in enumerate(np.asarray(o.get("SCORES", [])).reshape(-1)):
        cid = ids[i] if ids else None
        rec = {"label": label(i, cid), "class_id": cid, "score": round(float(score), 5)}
        if "BOXES" in o:
            rec["box"] = np.round(o["BOXES"][i], 2).tolist()
        if "KEYPOINTS" in o:
            rec["keypoints"] = np.round(o["KEYPOINTS"][i], 2).tolist()
        out.append(rec)
    return out


def create_app(settings: Settings | None = None) -> Starlette:
    settings = settings or Settings()
    triton = Triton(settings)

    async def predict(request: Request):
        try:
            data = await read_upload(request)
            width, height = check_image(data)
            outputs = await triton.infer(data)
        except BodyTooLarge:
            raise  # answered 413 by BodyLimit
        except ClientError as exc:
            return JSONResponse({"error": str(exc)}, exc.status)
        except Unavailable as exc:
            return JSONResponse({"error": str(exc)}, 503)
        except Exception as exc:  # noqa: BLE001 - naiad's answer to the request
            status = getattr(exc, "status", lambda: None)
            status = status() if callable(status) else status
            message = exc.message() if hasattr(exc, "message") and callable(exc.message) \
                else str(exc)
            code = 400 if str(status) in ("400", "StatusCode.INVALID_ARGUMENT") else 502
            if code == 502:
                log.warning("naiad failed on a request: %s", message)
            return JSONResponse({"error": f"naiad: {message}"}, code)
        return JSONResponse({"model": settings.model, "width": width, "height": height,
                             "predictions": predictions(outputs, settings.labels)})

    async def health(request: Request):
        ok, detail = await triton.ready()
        return JSONResponse({"status": "ready" if ok else "unavailable", "detail": detail,
                             "model": settings.model, "triton": triton.url},
                            200 if ok else 503)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await triton.close()

    app = Starlette(debug=settings.mode == "debug",
                    routes=[Route("/predict", predict, methods=["POST"]),
                            Route("/health", health, methods=["GET"])],
                    lifespan=lifespan)
    app.add_middleware(BodyLimit, limit=MAX_UPLOAD_BYTES)
    return app


def main() -> None:
    import uvicorn

    settings = Settings()
    level = {"debug": "debug", "develop": "info", "production": "warning"}[settings.mode]
    logging.basicConfig(level=level.upper())
    if settings.mode == "develop":  # reload needs the app by import string
        os.chdir(os.path.dirname(os.path.abspath(__file__)))
        uvicorn.run("app:create_app", factory=True, host=settings.host, port=settings.port,
                    log_level=level, reload=True)
        return
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port,
                log_level=level, access_log=settings.mode != "production")


if __name__ == "__main__":
    main()
