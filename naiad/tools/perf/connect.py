"""Connections a plan asks for: the load transport, the control client, the event loop.

Shared by the runner (the parent process) and the engines (which may run in
worker processes).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from naiad.tools.perf.control import Control, GrpcControl, HttpControl

if TYPE_CHECKING:
    from naiad.tools.perf.engine import Plan


def install_loop_policy() -> None:
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover - uvloop is a core dependency off Windows
        pass


def _https_context(plan_ssl: dict):
    from naiad.tools.perf import http_wire

    return http_wire.ssl_context(plan_ssl.get("verify_peer", 1), plan_ssl.get("verify_host", 2),
                                 plan_ssl.get("ca", ""), plan_ssl.get("cert", ""),
                                 plan_ssl.get("key_https", ""))


def _channel(plan: Plan):
    from naiad.tools.perf.transports import grpc_channel

    s = plan.ssl
    return grpc_channel(plan.url, s.get("grpc", False), s.get("root", ""), s.get("key", ""),
                        s.get("chain", ""))


def make_transport(plan: Plan):
    from naiad.tools.perf import http_wire
    from naiad.tools.perf.transports import GrpcTransport, HttpTransport

    if plan.protocol == "grpc":
        tls = None
        if plan.ssl.get("grpc"):
            tls = http_wire.ssl_context(ca_file=plan.ssl.get("root", ""),
                                        cert_file=plan.ssl.get("chain", ""),
                                        key_file=plan.ssl.get("key", ""))
            tls.set_alpn_protocols(["h2"])
        return GrpcTransport(lambda: _channel(plan), plan.model, plan.version, plan.outputs,
                             plan.headers, plan.grpc_compression, plan.streaming,
                             plan.keep_outputs, url=plan.url, tls=tls)
    tls = _https_context(plan.ssl) if http_wire.parse_url(plan.url)[0] else None
    return HttpTransport(plan.url, plan.model, plan.version, plan.outputs, plan.headers,
                         plan.input_format, plan.output_format, tls, plan.keep_outputs)


def make_control(plan: Plan) -> Control:
    from naiad.tools.perf import http_wire

    if plan.protocol == "grpc":
        return GrpcControl(_channel(plan), plan.headers)
    tls = _https_context(plan.ssl) if http_wire.parse_url(plan.url)[0] else None
    return HttpControl(plan.url, plan.headers, tls)
