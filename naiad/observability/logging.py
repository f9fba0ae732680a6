"""Server logging in Triton's formats, with settings that change at run time.

``default``:  ``I1121 22:57:11.877876 3156 manager.py:412] "successfully loaded 'm'"``
``ISO8601``:  ``2026-11-21T22:57:11Z I 3156 manager.py:412] "successfully loaded 'm'"``
``json``:     ``{"time":"2026-11-21T22:57:11.877876Z","level":"INFO","pid":3156,
              "file":"manager.py:412","message":"successfully loaded 'm'","model":"m"}``

As Triton 2.51 does, a message is written as a JSON string (quoted, with
newlines and quotes escaped) so that one entry is one line;
``TRITON_SERVER_ESCAPE_LOG_MESSAGES=0`` turns that off. Tables are Triton's
multi-line entries: the heading line, then the table as it is. The ``json``
format (not in Triton) writes one JSON object per line, with the model's name
where the entry concerns one model.

The severities follow tritonserver's switches: --log-info, --log-warning,
--log-error turn each on or off, --log-verbose N turns on verbose (DEBUG)
messages. ``LogSettings`` is what the logging extension (GET/POST
/v2/logging, gRPC LogSettings) reads and changes.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time

import orjson

_LETTER = {logging.DEBUG: "V", logging.INFO: "I", logging.WARNING: "W", logging.ERROR: "E",
           logging.CRITICAL: "E"}
_LEVEL_NAME = {"I": "INFO", "W": "WARNING", "E": "ERROR", "V": "VERBOSE"}

FORMATS = ("default", "ISO8601", "json")

# ``log.info("%s", table, extra=MULTILINE)``: a multi-line entry, written unescaped
MULTILINE = {"multiline": True}


def escape_messages() -> bool:
    """Whether messages are JSON-escaped (Triton's default; TRITON_SERVER_ESCAPE_LOG_MESSAGES=0: no)."""
    return os.environ.get("TRITON_SERVER_ESCAPE_LOG_MESSAGES", "") != "0"


def for_model(name: str) -> dict:
    """``extra=`` for an entry that concerns one model (the json format's ``model`` field)."""
    return {"model": name}


def verbose_logger_level(verbose: int) -> int:
    """The ``naiad`` loggers' level for --log-verbose N: INFO at 0, DEBUG at 1, one lower
    per extra level (code that adapts to the verbose level, such as onnxruntime's
    own log severity, reads it from the logger)."""
    if verbose <= 0:
        return logging.INFO
    return max(1, logging.DEBUG - (verbose - 1))


# Triton's verbose log names the handler of each gRPC call it takes, and numbers them
_GRPC_HANDLERS = {"ModelInfer": "ModelInferHandler", "ModelStreamInfer": "ModelStreamInferHandler"}
_grpc_call_ids = iter(range(1 << 62))


def log_grpc_call(logger: logging.Logger, method: str) -> None:
    """Triton's verbose line for a gRPC call received (``Process for ModelInferHandler, ...``)."""
    logger.debug("Process for %s, rpc_ok=1, %d step START", _GRPC_HANDLERS.get(method, method),
                 next(_grpc_call_ids), stacklevel=2)


def log_response_outputs(logger: logging.Logger, response) -> None:
    """Triton's verbose line per output of a response sent (``add response output: ...``)."""
    extra = {"model": getattr(response, "model_name", "") or None}
    for t in getattr(response, "outputs", None) or ():
        logger.debug("add response output: output: %s, type: %s, shape: [%s]", t.name,
                     t.datatype, ",".join(str(d) for d in t.data.shape), extra=extra,
                     stacklevel=2)


class TritonFormatter(logging.Formatter):
    def __init__(self, fmt: str = "default", escape: bool | None = None):
        super().__init__()
        self.style_name = fmt
        self.escape = escape_messages() if escape is None else escape

    def format(self, record: logging.LogRecord) -> str:
        letter = _LETTER.get(record.levelno, "I")
        verbose = letter == "V" or record.levelno < logging.DEBUG
        msg = record.getMessage()
        if record.exc_info and record.levelno >= logging.WARNING:
            msg = msg + "\n" + self.formatException(record.exc_info)
        where = f"{record.filename}:{record.lineno}"
        style = self.style_name
        if style == "json":
            entry = {
                "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                + f".{int((record.created % 1) * 1_000_000):06d}Z",
                "level": "VERBOSE" if verbose else _LEVEL_NAME[letter],
                "pid": record.process,
                "file": where,
                "message": msg,
            }
            model = getattr(record, "model", None)
            if model:
                entry["model"] = model
            return orjson.dumps(entry, default=str).decode()
        if verbose:
            letter = "I"  # Triton prints verbose messages with the I prefix
        if getattr(record, "multiline", False):
            msg = "\n" + msg.strip("\n") + "\n"
        elif self.escape:
            msg = orjson.dumps(msg).decode()
        if style.upper() == "ISO8601":
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created))
            return f"{stamp} {letter} {record.process} {where}] {msg}"
        lt = time.localtime(record.created)
        micros = int((record.created % 1) * 1_000_000)
        stamp = time.strftime("%m%d %H:%M:%S", lt)
        return f"{letter}{stamp}.{micros:06d} {record.process} {where}] {msg}"


class _SeverityFilter(logging.Filter):
    def __init__(self, settings: "LogSettings"):
        super().__init__()
        self.settings = settings

    def filter(self, record: logging.LogRecord) -> bool:
        s = self.settings
        if record.levelno >= logging.ERROR:
            return s.log_error
        if record.levelno >= logging.WARNING:
            return s.log_warning
        if record.levelno >= logging.INFO:
            return s.log_info
        return s.log_verbose_level > 0


class LogSettings:
    """The live logging configuration of one server process."""

    def __init__(self, log_file: str = "", log_info: bool = True, log_warning: bool = True,
                 log_error: bool = True, log_verbose_level: int = 0, log_format: str = "default"):
        self._lock = threading.Lock()
        self.log_file = log_file
        self.log_info = log_info
        self.log_warning = log_warning
        self.log_error = log_error
        self.log_verbose_level = log_verbose_level
        self.log_format = log_format
        self._handler: logging.Handler | None = None
        self._filter = _SeverityFilter(self)

    def install(self) -> None:
        """Route the ``naiad`` loggers to stderr (or the log file) in Triton's format."""
        with self._lock:
            self._install_handler()

    def _install_handler(self) -> None:
        root = logging.getLogger("naiad")
        if self._handler is not None:
            root.removeHandler(self._handler)
            try:
                self._handler.close()
            except Exception:
                pass
        if self.log_file:
            handler: logging.Handler = logging.FileHandler(self.log_file, encoding="utf-8")
        else:
            handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(TritonFormatter(self.log_format))
        handler.addFilter(self._filter)
        root.addHandler(handler)
        root.setLevel(verbose_logger_level(self.log_verbose_level))
        root.propagate = False
        self._handler = handler

    def get(self) -> dict:
        return {
            "log_file": self.log_file,
            "log_info": self.log_info,
            "log_warning": self.log_warning,
            "log_error": self.log_error,
            "log_verbose_level": self.log_verbose_level,
            "log_format": self.log_format,
        }

    def update(self, changes: dict) -> dict:
        """Apply a partial update (the logging extension); returns the new settings."""
        from naiad.core.errors import InvalidArgument

        with self._lock:
            new = self.get()
            for key, value in changes.items():
                if key not in new:
                    raise InvalidArgument(f"unknown log setting '{key}'")
                if value is None:
                    continue
                if key in ("log_info", "log_warning", "log_error"):
                    if not isinstance(value, bool):
                        raise InvalidArgument(f"log setting '{key}' must be a boolean")
                elif key == "log_verbose_level":
                    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                        raise InvalidArgument("log_verbose_level must be a non-negative integer")
                elif key == "log_format":
                    if not isinstance(value, str) or value not in FORMATS:
                        raise InvalidArgument("log_format must be 'default', 'ISO8601' or 'json'")
                elif key == "log_file":
                    if not isinstance(value, str):
                        raise InvalidArgument("log_file must be a string")
                    if value:
                        folder = os.path.dirname(os.path.abspath(value))
                        if not os.path.isdir(folder):
                            raise InvalidArgument(f"unable to open log file '{value}'")
                new[key] = value
            for key, value in new.items():
                setattr(self, key, value)
            self._install_handler()
            return self.get()


def render_table(headers: list[str], rows: list[tuple]) -> str:
    """A table in tritonserver's ASCII style."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(str(cell)))
    sep = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells) -> str:
        return "|" + "|".join(f" {str(c):<{w}} " for c, w in zip(cells, widths)) + "|"

    out = [sep, line(headers), sep]
    out += [line(r) for r in rows]
    out.append(sep)
    return "\n".join(out)
