"""Restricted API groups and header forwarding, shared by HTTP and gRPC.

``--http-restricted-api`` and ``--grpc-restricted-protocol`` take
``<group>[,<group>...]:<key>=<value>``: a request to an endpoint of a listed
group must carry the header (gRPC: metadata) ``key`` with exactly ``value``,
else HTTP answers 403 and gRPC UNAVAILABLE, with Triton's message.

``--http-header-forward-pattern`` / ``--grpc-header-forward-pattern``: headers
whose name matches the regular expression (anywhere in the name, ignoring
case, as Triton's partial match does) are added to the inference request's
parameters as strings.
"""

from __future__ import annotations

import re

from naiad.core.errors import InvalidArgument

# Triton's API groups
GROUPS: tuple[str, ...] = (
    "health",
    "metadata",
    "inference",
    "shared-memory",
    "model-config",
    "model-repository",
    "statistics",
    "trace",
    "logging",
)


def parse_restrictions(entries: list[str], flag: str,
                       noun: str = "API") -> dict[str, tuple[str, str]]:
    """The flag's entries as {group: (lower-case header name, value)}.

    ``noun`` names the groups in messages: "API" for HTTP, "protocol" for gRPC.
    """
    out: dict[str, tuple[str, str]] = {}
    for entry in entries:
        groups, sep, kv = entry.partition(":")
        key, eq, value = kv.partition("=")
        if not sep or not eq or not key.strip() or not groups.strip():
            raise InvalidArgument(
                f"{flag} expects <{noun.lower()}s>:<key>=<value>, got '{entry}'")
        for group in groups.split(","):
            group = group.strip()
            if group not in GROUPS:
                raise InvalidArgument(
                    f"unknown {noun} '{group}' in {flag}; expected one of {', '.join(GROUPS)}")
            if group in out:
                raise InvalidArgument(f"{noun} '{group}' is restricted more than once in {flag}")
            out[group] = (key.strip().lower(), value)
    return out


def restricted_message(kind: str, key: str) -> str:
    """Triton's refusal text (``kind`` is "API" for HTTP, "protocol" for gRPC)."""
    return f"This {kind} is restricted, expecting header '{key}'"


def compile_forward_pattern(pattern: str, flag: str) -> re.Pattern | None:
    if not pattern:
        return None
    try:
        return re.compile(pattern, re.IGNORECASE)
    except re.error as exc:
        raise InvalidArgument(f"invalid regular expression for {flag}: {exc}") from None
