"""A load request's overrides (``config``, ``file:<path>``) when they cannot be used.

Triton answers a ``config`` that does not parse, or a ``file:`` path it cannot
write (escaping the model folder, too long, clashing with another), with
``failed to load '<model>', failed to poll from model repository`` (what
tritonclient's model-control example and Triton's own tests look for) and logs
``Poll failed for model directory '<model>': <reason>``. naiad answers the
same text followed by the reason, as a client error (400 / INVALID_ARGUMENT,
where Triton says 500 / INTERNAL), never an OS error's raw text. Nothing is
loaded or unloaded: the version serving keeps serving.
"""

from __future__ import annotations

import logging

from naiad.core.errors import InvalidArgument, NaiadError
from naiad.protocol import model_config_pb2 as mc
from naiad.protocol.config_json import parse_config_json

log = logging.getLogger("naiad.repository")


def poll_failed(name: str, reason: str) -> InvalidArgument:
    """The error for a load whose overrides cannot be used (and the log line Triton writes)."""
    log.error("Poll failed for model directory '%s': %s", name, reason, extra={"model": name})
    return InvalidArgument(
        f"failed to load '{name}', failed to poll from model repository: {reason}")


def parse_config_override(name: str, text: str) -> mc.ModelConfig:
    """The ``config`` parameter of a load request for ``name``."""
    try:
        return parse_config_json(text)
    except NaiadError as exc:
        raise poll_failed(name, f"Invalid config override: {exc.message}") from None


def file_error(name: str, exc: BaseException) -> InvalidArgument:
    """Writing the ``file:`` parameters failed (a bad path, or the file system refused)."""
    if isinstance(exc, NaiadError):
        return poll_failed(name, exc.message)
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return poll_failed(name, f"unable to write the file parameters: {reason}")
