"""The ``naiad`` command: tritonserver's flags, names, defaults and meanings.

``naiad --model-repository=./models`` starts the server exactly like
``tritonserver --model-repository=./models``. Flags take ``--flag=value`` or
``--flag value``; booleans accept what tritonserver accepts: true/false, on/off,
1/0, in any case.

``naiad <sub-command> ...`` runs a tool instead (``naiad perf``, ``naiad
analyze``, ``naiad validate``, ``naiad import``, ``naiad ray``): see ``SUBCOMMANDS``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from naiad.options import ServerOptions, parse_bool
from naiad.version import __version__

log = logging.getLogger("naiad.server")


class CliError(Exception):
    pass


# Sub-commands: ``naiad NAME ARGS...`` calls ``module:function(ARGS)`` (a list of
# strings; it returns the exit code). Adding one is one line here; the module is
# imported only when its sub-command runs. Anything else starts the server.
SUBCOMMANDS: dict[str, str] = {
    "perf": "naiad.tools.perf:main",
    "analyze": "naiad.tools.analyze:main",
    "validate": "naiad.tools.validate:main",
    "import": "naiad.tools.importer:main",
    "ray": "naiad.ray.cli:main",  # deploy on a Ray cluster (Ray Serve)
}


def run_subcommand(argv: list[str]) -> int | None:
    """Run ``argv[0]``'s sub-command if it names one; None when it does not."""
    if not argv or argv[0] not in SUBCOMMANDS:
        return None
    import importlib

    module, _, function = SUBCOMMANDS[argv[0]].partition(":")
    return int(getattr(importlib.import_module(module), function)(argv[1:]) or 0)


def bool_option(text: str) -> bool:
    value = parse_bool(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"invalid value for bool option: {text}")
    return value


def _setting(text: str) -> tuple[str, str, str]:
    """'<group>,<key>=<value>' or '<key>=<value>' -> (group, key, value)."""
    group, _, kv = text.rpartition(",")
    key, eq, value = kv.partition("=")
    if not eq or not key:
        raise argparse.ArgumentTypeError(
            f"expected <group>,<setting>=<value> or <setting>=<value>, got '{text}'")
    return group, key, value


def _kv(text: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise argparse.ArgumentTypeError(f"expected <setting>=<value>, got '{text}'")
    return key, value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, non-zero exit
        raise CliError(message)


# (flag, dest, type, default, help). type None: a switch without a value.
_B, _I, _F, _S = bool_option, int, float, str
_FLAGS: list[tuple[str, str, Any, Any, str]] = [
    ("--id", "server_id", _S, "triton", "Identifier for this server."),
    ("--exit-timeout-secs", "exit_timeout_secs", _I, 30,
     "Seconds to wait for in-flight inferences when exiting."),
    ("--log-verbose", "log_verbose", _I, 0, "Verbose logging level (0 disables)."),
    ("--log-info", "log_info", _B, True, "Enable/disable info-level logging."),
    ("--log-warning", "log_warning", _B, True, "Enable/disable warning-level logging."),
    ("--log-error", "log_error", _B, True, "Enable/disable error-level logging."),
    ("--log-format", "log_format", _S, "default", "Log format: default, ISO8601 or json (one JSON object per line)."),
    ("--log-file", "log_file", _S, "", "Write the log to this file instead of stderr."),
    ("--exit-on-error", "exit_on_error", _B, True,
     "Exit if an error (such as a model failing to load) occurs during initialization."),
    ("--strict-model-config", "strict_model_config", _B, False,
     "Require a complete config.pbtxt for every model (disables auto-complete)."),
    ("--strict-readiness", "strict_readiness", _B, True,
     "Ready only when all models are ready (true) or as soon as the server is up (false)."),
    ("--model-control-mode", "model_control_mode", _S, "none",
     "Model management mode: none, poll or explicit."),
    ("--repository-poll-secs", "repository_poll_secs", _F, 15.0,
     "Seconds between repository polls (poll mode)."),
    ("--model-config-name", "model_config_name", _S, "",
     "Use configs/<name>.pbtxt instead of config.pbtxt where present."),
    ("--model-load-thread-count", "model_load_thread_count", _I, 4,
     "Threads used to load models concurrently."),
    ("--model-load-retry-count", "model_load_retry_count", _I, 0,
     "Retries of a failed model load."),
    ("--model-namespacing", "model_namespacing", _B, False,
     "Allow the same model name in several repositories."),
    ("--model-load-on-demand", "model_load_on_demand", _B, False,
     "Load a model on its first request (explicit mode, or none: nothing loads at start)."),
    ("--model-memory-limit", "model_memory_limit", _S, "",
     "Memory for loaded models, in bytes or N% of the machine's; least recently used idle "
     "models are unloaded to stay under it (needs --model-load-on-demand)."),
    ("--model-idle-unload-secs", "model_idle_unload_secs", _F, 0.0,
     "Unload a model unused for this long (0: never; needs --model-load-on-demand)."),
    ("--model-load-on-demand-timeout-secs", "model_load_on_demand_timeout_secs", _F, 120.0,
     "How long a request waits for its model's on-demand load before it fails."),
    ("--enable-peer-access", "enable_peer_access", _B, True, "GPU peer access (no effect)."),
    ("--allow-http", "allow_http", _B, True, "Serve HTTP/REST."),
    ("--http-address", "http_address", _S, "0.0.0.0", "HTTP bind address."),
    ("--http-port", "http_port", _I, 8000, "HTTP port."),
    ("--reuse-http-port", "reuse_http_port", _B, False, "Set SO_REUSEPORT on the HTTP port."),
    ("--http-header-forward-pattern", "http_header_forward_pattern", _S, "",
     "Forward HTTP headers matching this regex as request parameters."),
    ("--http-thread-count", "http_thread_count", _I, 8, "HTTP threads (accepted; naiad "
     "serves HTTP on its event loop)."),
    ("--http-max-input-size", "http_max_input_size", _I, 64 * 1024 * 1024,
     "Largest accepted HTTP request body, in bytes (after decompression)."),
    ("--allow-grpc", "allow_grpc", _B, True, "Serve gRPC."),
    ("--grpc-address", "grpc_address", _S, "0.0.0.0", "gRPC bind address."),
    ("--grpc-port", "grpc_port", _I, 8001, "gRPC port."),
    ("--reuse-grpc-port", "reuse_grpc_port", _B, False, "Set SO_REUSEPORT on the gRPC port."),
    ("--grpc-header-forward-pattern", "grpc_header_forward_pattern", _S, "",
     "Forward gRPC metadata matching this regex as request parameters."),
    ("--grpc-infer-allocation-pool-size", "grpc_infer_allocation_pool_size", _I, 8,
     "Accepted for compatibility."),
    ("--grpc-max-response-pool-size", "grpc_max_response_pool_size", _I, 0,
     "Accepted for compatibility."),
    ("--grpc-use-ssl", "grpc_use_ssl", _B, False, "Serve gRPC over TLS."),
    ("--grpc-use-ssl-mutual", "grpc_use_ssl_mutual", _B, False, "Require client certificates."),
    ("--grpc-server-cert", "grpc_server_cert", _S, "", "Server certificate (PEM)."),
    ("--grpc-server-key", "grpc_server_key", _S, "", "Server private key (PEM)."),
    ("--grpc-root-cert", "grpc_root_cert", _S, "", "Root certificate for client checks."),
    ("--grpc-infer-response-compression-level", "grpc_infer_response_compression_level", _S,
     "none", "none, low, medium or high."),
    ("--grpc-keepalive-time", "grpc_keepalive_time", _I, 7200000, "Keepalive ping period (ms)."),
    ("--grpc-keepalive-timeout", "grpc_keepalive_timeout", _I, 20000,
     "Keepalive ping timeout (ms)."),
    ("--grpc-keepalive-permit-without-calls", "grpc_keepalive_permit_without_calls", _B, False,
     "Allow keepalive pings without calls."),
    ("--grpc-http2-max-pings-without-data", "grpc_http2_max_pings_without_data", _I, 2,
     "HTTP/2 pings without data."),
    ("--grpc-http2-min-recv-ping-interval-without-data",
     "grpc_http2_min_recv_ping_interval_without_data", _I, 300000,
     "Minimum interval between received pings without data (ms)."),
    ("--grpc-http2-max-ping-strikes", "grpc_http2_max_ping_strikes", _I, 2,
     "Bad pings tolerated before closing."),
    ("--grpc-max-connection-age", "grpc_max_connection_age", _I, 0, "Max connection age (ms)."),
    ("--grpc-max-connection-age-grace", "grpc_max_connection_age_grace", _I, 0,
     "Grace period after max connection age (ms)."),
    ("--allow-sagemaker", "allow_sagemaker", _B, False, "SageMaker endpoint (not served)."),
    ("--sagemaker-port", "sagemaker_port", _I, 8080, "SageMaker port."),
    ("--sagemaker-safe-port-range", "sagemaker_safe_port_range", _S, "", "Accepted."),
    ("--sagemaker-thread-count", "sagemaker_thread_count", _I, 8, "Accepted."),
    ("--allow-vertex-ai", "allow_vertex_ai", _B, False, "Vertex AI endpoint (not served)."),
    ("--vertex-ai-port", "vertex_ai_port", _I, 8080, "Vertex AI port."),
    ("--vertex-ai-thread-count", "vertex_ai_thread_count", _I, 8, "Accepted."),
    ("--vertex-ai-default-model", "vertex_ai_default_model", _S, "", "Accepted."),
    ("--allow-openai", "allow_openai", _B, False,
     "Serve the OpenAI-compatible API (/v1/...) on its own port (needs 'naiad[openai]')."),
    ("--openai-address", "openai_address", _S, "",
     "OpenAI API bind address (default: the HTTP address)."),
    ("--openai-port", "openai_port", _I, 9000, "OpenAI API port."),
    ("--openai-tokenizer", "openai_tokenizer", _S, "",
     "tokenizer.json (or its folder) for generation models that have none."),
    ("--openai-chat-template", "openai_chat_template", _S, "",
     "Chat template file for generation models that have none."),
    ("--openai-tool-call-parser", "openai_tool_call_parser", _S, "",
     "Tool call format of models that name none: hermes or llama3."),
    ("--openai-default-max-tokens", "openai_default_max_tokens", _I, 16,
     "max_tokens of a completion request that sets none."),
    ("--allow-metrics", "allow_metrics", _B, True, "Serve Prometheus metrics."),
    ("--allow-gpu-metrics", "allow_gpu_metrics", _B, True, "GPU metrics (none without a GPU)."),
    ("--allow-cpu-metrics", "allow_cpu_metrics", _B, True, "CPU metrics."),
    ("--metrics-address", "metrics_address", _S, "",
     "Metrics bind address (default: the HTTP address)."),
    ("--metrics-port", "metrics_port", _I, 8002, "Metrics port."),
    ("--metrics-interval-ms", "metrics_interval_ms", _F, 2000.0,
     "Metrics collection interval (ms)."),
    ("--backend-directory", "backend_directory", _S, "", "Accepted for compatibility."),
    ("--repoagent-directory", "repoagent_directory", _S, "", "Accepted for compatibility."),
    ("--cache-directory", "cache_directory", _S, "", "Accepted for compatibility."),
    ("--rate-limit", "rate_limit", _S, "off", "Rate limiting: off or execution_count."),
    ("--pinned-memory-pool-byte-size", "pinned_memory_pool_byte_size", _I, 268435456,
     "Accepted for compatibility."),
    ("--min-supported-compute-capability", "min_supported_compute_capability", _F, 6.0,
     "Accepted for compatibility."),
    ("--buffer-manager-thread-count", "buffer_manager_thread_count", _I, 0,
     "Accepted for compatibility."),
    ("--response-cache-byte-size", "response_cache_byte_size", _I, 0,
     "Deprecated: use --cache-config local,size=N."),
    ("--trace-file", "trace_file", _S, "", "Deprecated: use --trace-config triton,file=..."),
    ("--trace-level", "trace_level", _S, "", "Deprecated: use --trace-config level=..."),
    ("--trace-rate", "trace_rate", _I, 0, "Deprecated: use --trace-config rate=..."),
    ("--trace-count", "trace_count", _I, 0, "Deprecated: use --trace-config count=..."),
    ("--trace-log-frequency", "trace_log_frequency", _I, 0,
     "Deprecated: use --trace-config log-frequency=..."),
]

# repeatable flags: (flag, dest, type, help)
_LISTS: list[tuple[str, str, Callable, str]] = [
    ("--load-model", "load_models", _S, "Model to load at startup (explicit mode; '*' for all)."),
    ("--backend-config", "backend_config", _setting,
     "<backend>,<setting>=<value> (or <setting>=<value> for all backends)."),
    ("--trace-config", "trace_config", _setting, "<mode>,<setting>=<value>."),
    ("--cache-config", "cache_config", _setting, "<cache>,<setting>=<value>."),
    ("--metrics-config", "metrics_config", _kv, "<setting>=<value>."),
    ("--rate-limit-resource", "rate_limit_resources", _S, "<name>:<count>[:<device>]."),
    ("--host-policy", "host_policy", _S, "Accepted for compatibility."),
    ("--cuda-memory-pool-byte-size", "cuda_memory_pool_byte_size", _S, "Accepted."),
    ("--cuda-virtual-address-size", "cuda_virtual_address_size", _S, "Accepted."),
    ("--model-load-gpu-limit", "model_load_gpu_limit", _S, "Accepted."),
    ("--http-restricted-api", "http_restricted_api", _S, "<groups>:<key>=<value>: requests to those API groups need the header (else 403)."),
    ("--grpc-restricted-protocol", "grpc_restricted_protocol", _S, "<groups>:<key>=<value>: those RPC groups need the metadata (else UNAVAILABLE)."),
]


def _shown_default(value: Any) -> str:
    """A default as --help shows it: booleans as tritonserver spells them, '' as none."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value == "":
        return "none"
    return str(value).replace("%", "%%")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="naiad", description="naiad: a Triton-compatible inference server",
                add_help=True, formatter_class=argparse.RawDescriptionHelpFormatter,
                epilog="tools: naiad {" + ",".join(SUBCOMMANDS) + "} --help")
    p.add_argument("--version", action="version", version=f"naiad {__version__}")
    p.add_argument("--model-repository", "--model-store", dest="model_repositories",
                   action="append", default=[], metavar="PATH",
                   help="Model repository path (repeatable).")
    p.add_argument("--disable-auto-complete-config", dest="disable_auto_complete_config",
                   action="store_true", help="Disable config auto-completion.")
    for flag, dest, typ, default, help_ in _FLAGS:
        if "(default:" not in help_:
            help_ = f"{help_} (default: {_shown_default(default)})"
        p.add_argument(flag, dest=dest, type=typ, default=default, metavar="VALUE",
                       help=help_.replace("%", "%%"))
    for flag, dest, typ, help_ in _LISTS:
        p.add_argument(flag, dest=dest, type=typ, action="append", default=[], help=help_,
                       metavar="VALUE")
    return p


def options_from_args(argv: list[str]) -> ServerOptions:
    ns = build_parser().parse_args(argv)
    if ns.model_control_mode not in ("none", "poll", "explicit"):
        raise CliError(f"unexpected value for --model-control-mode: '{ns.model_control_mode}'"
                       " (expected none, poll or explicit)")
    if ns.log_format not in ("default", "ISO8601", "json"):
        raise CliError(f"unexpected value for --log-format: '{ns.log_format}'")
    if ns.rate_limit not in ("off", "execution_count"):
        raise CliError(f"unexpected value for --rate-limit: '{ns.rate_limit}'")
    if ns.grpc_infer_response_compression_level not in ("none", "low", "medium", "high"):
        raise CliError("unexpected value for --grpc-infer-response-compression-level: "
                       f"'{ns.grpc_infer_response_compression_level}'")
    if not ns.model_repositories:
        raise CliError("--model-repository must be specified")
    if ns.load_models and ns.model_control_mode != "explicit":
        raise CliError("Use of '--load-model' requires setting '--model-control-mode=explicit' "
                       "as well.")
    if "*" in ns.load_models and len(ns.load_models) > 1:
        raise CliError("Wildcard model name '*' must be the ONLY startup model if specified "
                       "at all.")
    for port_flag in ("http_port", "grpc_port", "metrics_port", "openai_port"):
        port = getattr(ns, port_flag)
        if not 0 <= port <= 65535:
            raise CliError(f"--{port_flag.replace('_', '-')} must be in [0, 65535], got {port}")

    def grouped(items) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for group, key, value in items:
            out.setdefault(group, {})[key] = value
        return out

    opts = ServerOptions(model_repositories=list(ns.model_repositories))
    skip = {"model_repositories", "disable_auto_complete_config", "strict_model_config",
            "backend_config", "trace_config", "cache_config", "metrics_config"}
    for key, value in vars(ns).items():
        if key in skip:
            continue
        if hasattr(opts, key):
            setattr(opts, key, value)
    opts.auto_complete_config = not (ns.disable_auto_complete_config or ns.strict_model_config)
    opts.backend_config = grouped(ns.backend_config)
    opts.trace_config = grouped(ns.trace_config)
    # trace levels may be given several times (level=TIMESTAMPS, level=TENSORS)
    levels = [v for group, key, v in ns.trace_config if group == "" and key == "level"]
    if len(levels) > 1:
        opts.trace_config[""]["level"] = ",".join(levels)
    opts.cache_config = grouped(ns.cache_config)
    opts.metrics_config = dict(ns.metrics_config)
    # deprecated trace flags fold into --trace-config, as tritonserver does
    legacy = {"file": ns.trace_file, "level": ns.trace_level,
              "rate": ns.trace_rate or "", "count": ns.trace_count or "",
              "log-frequency": ns.trace_log_frequency or ""}
    for key, value in legacy.items():
        if value not in ("", None):
            opts.trace_config.setdefault("triton" if key == "file" else "", {})[key] = str(value)
    if ns.response_cache_byte_size:
        opts.cache_config.setdefault("local", {})["size"] = str(ns.response_cache_byte_size)
    _check_access_flags(opts)
    if opts.allow_openai:
        from naiad.frontends.openai import check_options

        try:
            check_options(opts)
        except ValueError as exc:
            raise CliError(str(exc)) from None
    return opts


def _check_access_flags(opts: ServerOptions) -> None:
    """Refuse malformed restriction and header-forwarding flags before anything starts."""
    from naiad.core.errors import NaiadError
    from naiad.frontends import restrictions

    try:
        restrictions.parse_restrictions(opts.http_restricted_api, "--http-restricted-api")
        restrictions.parse_restrictions(opts.grpc_restricted_protocol,
                                        "--grpc-restricted-protocol", "protocol")
        restrictions.compile_forward_pattern(opts.http_header_forward_pattern,
                                             "--http-header-forward-pattern")
        restrictions.compile_forward_pattern(opts.grpc_header_forward_pattern,
                                             "--grpc-header-forward-pattern")
    except NaiadError as exc:
        raise CliError(exc.message) from None


# Flags whose features are owned by later work: accepted, refused while unbuilt.
# Each entry: (predicate on options, message).
UNBUILT: list[tuple[Callable[[ServerOptions], bool], str]] = [
    (lambda o: o.allow_sagemaker, "--allow-sagemaker: the SageMaker endpoint is not served"),
    (lambda o: o.allow_vertex_ai, "--allow-vertex-ai: the Vertex AI endpoint is not served"),
    # accepted silently these would change nothing: refused until they are built
    (lambda o: o.model_namespacing, "--model-namespacing is not supported yet"),
]


def _fail(message: str, code: int = 1) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


# TRITONSERVER_ErrorCodeString: how tritonserver names an error's kind
_KIND_LABEL = {
    "UNKNOWN": "Unknown", "INTERNAL": "Internal", "NOT_FOUND": "Not found",
    "INVALID_ARG": "Invalid argument", "UNAVAILABLE": "Unavailable",
    "UNSUPPORTED": "Unsupported", "ALREADY_EXISTS": "Already exists", "CANCELLED": "Cancelled",
}


def _creating_server_error(exc: Any) -> str:
    """``creating server: <Kind> - <message>``, tritonserver's exit line."""
    label = _KIND_LABEL.get(exc.kind.value, "Internal")
    return f"creating server: {label} - {exc.message}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    code = run_subcommand(argv)
    if code is not None:
        return code
    try:
        options = options_from_args(argv)
    except CliError as exc:
        return _fail(str(exc), 2)
    for predicate, message in UNBUILT:
        if predicate(options):
            return _fail(message, 2)
    from naiad.core.errors import NaiadError
    from naiad.observability import validate_options

    try:
        validate_options(options)
    except NaiadError as exc:
        return _fail(exc.message, 2)
    # --rate-limit-resource, --cache-config: refused as a server that cannot start
    from naiad.scheduling import check_options

    try:
        check_options(options)
    except NaiadError as exc:
        return _fail(f"creating server: {exc.message}")
    from naiad.frontends.http import default_loop_policy

    default_loop_policy()
    try:
        return asyncio.run(run(options))
    except KeyboardInterrupt:
        return 0


async def run(options: ServerOptions) -> int:
    """Start the server, serve until SIGINT/SIGTERM, shut down gracefully."""
    from naiad.core.errors import NaiadError
    from naiad.observability.logging import MULTILINE, LogSettings, render_table
    from naiad.server import Server

    settings = LogSettings(options.log_file, options.log_info, options.log_warning,
                           options.log_error, options.log_verbose, options.log_format)
    try:
        settings.install()
    except OSError as exc:
        return _fail(f"unable to open log file: {exc}")
    server = Server(options)
    server.log_settings = settings  # the logging extension

    try:
        await server.check()
    except NaiadError as exc:
        return _fail(_creating_server_error(exc))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    signals = {"count": 0}

    def on_signal() -> None:
        signals["count"] += 1
        if signals["count"] > 1:
            log.warning("second signal received: exiting now")
            os._exit(1)
        log.info("signal received, shutting down (waiting up to %ss for in-flight requests)",
                 options.exit_timeout_secs)
        server.begin_shutdown()  # not ready, new inference refused, from this moment
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, on_signal)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - non-Unix
            pass

    starting = asyncio.ensure_future(server.start())
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if not starting.done():  # a signal during startup: stop loading, shut down
        starting.cancel()
        try:
            await starting
        except (asyncio.CancelledError, Exception):
            pass
        clean = await server.stop()
        if not clean:
            _exit_now(1)
        log.info("server stopped")
        return 0
    try:
        starting.result()
    except NaiadError as exc:
        stopping.cancel()
        await server.stop(timeout=5)
        return _fail(_creating_server_error(exc))
    rows = server.manager.status_rows()
    log.info("%s", render_table(["Model", "Version", "Status"], rows), extra=MULTILINE)
    # tritonserver prints the option table, then gives up if a model failed
    log.info("%s", render_table(["Option", "Value"], server.option_rows()), extra=MULTILINE)
    # Everything loaded so far lives as long as the server: move it out of the
    # garbage collector's sight, so full collections stay short while serving.
    gc.collect()
    gc.freeze()
    if server.load_failures():
        log.error("failed to load all models")
        if options.exit_on_error:
            stopping.cancel()
            await server.stop(timeout=options.exit_timeout_secs)
            return _fail("creating server: Internal - failed to load all models")
    # as tritonserver: the endpoints open once the startup loads are done
    try:
        await server.start_frontends()
    except OSError as exc:
        stopping.cancel()
        await server.stop(timeout=5)
        # "[Errno 98] ..." is noise: the message already names the address
        return _fail(exc.strerror if exc.errno is not None and exc.strerror else str(exc))
    except NaiadError as exc:  # a frontend's settings are wrong (TLS files, restrictions)
        stopping.cancel()
        await server.stop(timeout=5)
        return _fail(exc.message)
    await stopping
    clean = await server.stop()
    if not clean:
        log.error("failed to stop server: Internal - Exit timeout expired. Exiting immediately.")
        _exit_now(1)  # threads still busy in models must not hold the process
    log.info("server stopped")
    return 0


def _exit_now(code: int) -> None:
    for handler in logging.getLogger().handlers + logging.getLogger("naiad").handlers:
        try:
            handler.flush()
        except Exception:
            pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
