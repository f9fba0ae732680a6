"""``naiad perf``'s command line: perf_analyzer's option names, defaults and checks.

Options perf_analyzer has and ``naiad perf`` does not (C API, TF Serving,
TorchServe, OpenAI, MPI, CUDA shared memory, periodic/session concurrency,
Prometheus metrics collection) are refused with a clear message rather than
silently ignored. ``--workers`` and ``--plot`` are naiad's own.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

NO_LIMIT = 0


class UsageError(Exception):
    """A bad command line: the message is printed and ``naiad perf`` exits with 2."""


@dataclasses.dataclass
class PerfOptions:
    model: str = ""
    version: str = ""
    url: str = ""
    protocol: str = "http"
    batch_size: int = 1
    # load: concurrency (start, end, step) or request rate (start, end, step)
    mode: str = "concurrency"  # "concurrency" | "request_rate"
    concurrency_range: tuple[int, int, int] = (1, 1, 1)
    request_rate_range: tuple[float, float, float] = (1.0, 1.0, 1.0)
    request_distribution: str = "constant"
    binary_search: bool = False
    async_mode: bool = False
    async_given: bool = False  # --async or --sync given explicitly
    streaming: bool = False
    max_threads: int = 16
    # data
    shapes: dict[str, list[int]] = dataclasses.field(default_factory=dict)
    input_data: list[str] = dataclasses.field(default_factory=lambda: ["random"])
    string_length: int = 128
    string_data: str | None = None
    shared_memory: str = "none"
    output_shm_size: int = 102400
    input_tensor_format: str = "binary"
    output_tensor_format: str = "binary"
    request_parameters: list[tuple[str, object]] = dataclasses.field(default_factory=list)
    # sequences
    sequence_length: int = 20
    sequence_length_given: bool = False
    sequence_length_variation: float = 20.0
    sequence_id_range: tuple[int, int | None] = (1, None)
    num_of_sequences: int = 4
    serial_sequences: bool = False
    # measurement
    measurement_interval_ms: int = 5000
    measurement_mode: str = "time_windows"
    measurement_request_count: int = 50
    stability_percentage: float = 10.0
    max_trials: int = 10
    percentile: int = -1
    latency_threshold_ms: int = NO_LIMIT
    warmup_request_count: int = 0
    request_count: int = 0
    # report
    filename: str = ""
    profile_export_file: str = ""
    verbose_csv: bool = False
    verbose: bool = False
    plot: str = ""
    # transport
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    grpc_compression: str = "none"
    ssl_grpc_use_ssl: bool = False
    ssl_grpc_root_certifications_file: str = ""
    ssl_grpc_private_key_file: str = ""
    ssl_grpc_certificate_chain_file: str = ""
    ssl_https_verify_peer: int = 1
    ssl_https_verify_host: int = 2
    ssl_https_ca_certificates_file: str = ""
    ssl_https_client_certificate_file: str = ""
    ssl_https_private_key_file: str = ""
    # naiad's own
    workers: int = 1
    progress: bool = True

    @property
    def stability_threshold(self) -> float:
        return self.stability_percentage / 100.0

    def server_url(self) -> str:
        if self.url:
            return self.url
        return "localhost:8001" if self.protocol == "grpc" else "localhost:8000"

    def levels(self) -> list[float]:
        """The levels of a linear search (an open end is expanded lazily by the profiler)."""
        start, end, step = (self.concurrency_range if self.mode == "concurrency"
                            else self.request_rate_range)
        if end == NO_LIMIT:
            return []
        out, value = [], start
        while True:
            out.append(value)
            value += step
            if value > end:
                break
        return out


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise UsageError(message)


def _range(text: str, kind: type, name: str) -> tuple:
    parts = text.split(":")
    if not 1 <= len(parts) <= 3 or any(p == "" for p in parts):
        raise UsageError(f"Failed to parse {name}. The value does not match <start:end:step>.")
    try:
        values = [kind(p) for p in parts]
    except ValueError:
        raise UsageError(f"Failed to parse {name}. The value does not match <start:end:step>.")
    defaults = [kind(1), kind(1), kind(1)]
    values += defaults[len(values):]
    if any(v < 0 for v in values) or values[2] <= 0 or values[0] <= 0:
        raise UsageError(f"Failed to parse {name}. The start and step values must be > 0 "
                         "and the end value >= 0.")
    return tuple(values)


def _shape(text: str) -> tuple[str, list[int]]:
    name, sep, dims = text.rpartition(":")
    if not sep or not name:
        raise UsageError(f"Failed to parse --shape '{text}': expected NAME:D1,D2,...")
    try:
        shape = [int(d) for d in dims.split(",")] if dims else []
    except ValueError:
        raise UsageError(f"Failed to parse --shape '{text}': dimensions must be integers")
    if any(d < 0 for d in shape):
        raise UsageError(f"Failed to parse --shape '{text}': dimensions must be >= 0")
    return name, shape


def _request_parameter(text: str) -> tuple[str, object]:
    parts = text.split(":")
    if len(parts) != 3 or not parts[0]:
        raise UsageError(f"Failed to parse --request-parameter '{text}': expected name:value:type")
    name, value, kind = parts
    if kind == "bool":
        if value.lower() not in ("true", "false"):
            raise UsageError(f"--request-parameter '{text}': a bool is true or false")
        return name, value.lower() == "true"
    if kind == "int":
        try:
            return name, int(value)
        except ValueError:
            raise UsageError(f"--request-parameter '{text}': not an int")
    if kind == "string":
        return name, value
    raise UsageError(f"--request-parameter '{text}': type must be bool, int or string")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="naiad perf",
        description="Measure a model's throughput and latency over HTTP or gRPC, like "
                    "perf_analyzer: against naiad or any Triton-compatible server.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Output, CSV columns (-f) and profile export follow perf_analyzer's.\n"
               "Example: naiad perf -m add_sub --concurrency-range 1:8:2 -f perf.csv",
    )
    g = p.add_argument_group("general")
    g.add_argument("-m", dest="model", required=True, help="Model name (required).")
    g.add_argument("-x", dest="version", default="", help="Model version (default: latest).")
    g.add_argument("-v", dest="verbose", action="count", default=0, help="Verbose output.")
    g.add_argument("--service-kind", default="triton",
                   help="Only 'triton' (the KServe v2 protocol) is supported.")
    m = p.add_argument_group("measurement")
    m.add_argument("--measurement-mode", default="time_windows",
                   choices=["time_windows", "count_windows"])
    m.add_argument("-p", "--measurement-interval", dest="measurement_interval", type=int,
                   default=5000, help="Window length in msec (time_windows). Default 5000.")
    m.add_argument("--measurement-request-count", type=int, default=50,
                   help="Minimum requests per window (count_windows). Default 50.")
    m.add_argument("-s", "--stability-percentage", dest="stability_percentage", type=float,
                   default=10.0, help="Allowed max/min variation over 3 windows. Default 10.")
    m.add_argument("--percentile", type=int, default=-1,
                   help="Stabilize on this latency percentile (default: average).")
    m.add_argument("--warmup-request-count", type=int, default=0)
    m.add_argument("--request-count", type=int, default=0,
                   help="Measure exactly this many requests (one window).")
    m.add_argument("-r", "--max-trials", dest="max_trials", type=int, default=10)
    m.add_argument("--concurrency-range", default=None, metavar="START:END:STEP")
    m.add_argument("--request-rate-range", default=None, metavar="START:END:STEP")
    m.add_argument("--request-distribution", default="constant", choices=["constant", "poisson"])
    m.add_argument("-l", "--latency-threshold", dest="latency_threshold", type=int, default=0,
                   help="Stop the search when latency exceeds this many msec (0: no limit).")
    m.add_argument("--binary-search", action="store_true")
    m.add_argument("--max-threads", type=int, default=None,
                   help="Connections for request-rate mode in --sync mode (default 4).")
    m.add_argument("-t", dest="legacy_concurrency", type=int, default=None,
                   help="Deprecated: --concurrency-range N.")
    sq = p.add_argument_group("sequence models")
    sq.add_argument("--num-of-sequences", type=int, default=4)
    sq.add_argument("--sequence-length", type=int, default=None)
    sq.add_argument("--sequence-length-variation", type=float, default=20.0)
    sq.add_argument("--sequence-id-range", default=None, metavar="START[:END]")
    sq.add_argument("--serial-sequences", action="store_true")
    d = p.add_argument_group("input data")
    d.add_argument("--input-data", action="append", default=None,
                   help="random (default), zero, a JSON file (perf_analyzer's format) or a "
                        "directory of per-input files; repeatable.")
    d.add_argument("-z", dest="zero_input", action="store_true", help="Deprecated: zero data.")
    d.add_argument("-b", dest="batch_size", type=int, default=1, help="Batch size. Default 1.")
    d.add_argument("--shape", action="append", default=[], metavar="NAME:D1,D2",
                   help="Shape of a variable-size input (without the batch dimension).")
    d.add_argument("--string-data", default=None)
    d.add_argument("--string-length", type=int, default=128)
    d.add_argument("--shared-memory", default="none", choices=["none", "system", "cuda"])
    d.add_argument("--output-shared-memory-size", type=int, default=102400)
    d.add_argument("--input-tensor-format", default="binary", choices=["binary", "json"])
    d.add_argument("--output-tensor-format", default="binary", choices=["binary", "json"])
    r = p.add_argument_group("requests")
    r.add_argument("-i", dest="protocol", default="http", type=str.lower,
                   choices=["http", "grpc"])
    r.add_argument("-a", "--async", dest="async_", action="store_true")
    r.add_argument("--sync", action="store_true")
    r.add_argument("--streaming", action="store_true",
                   help="gRPC bidirectional streams (decoupled models).")
    r.add_argument("-H", dest="headers", action="append", default=[], metavar="HEADER:VALUE")
    r.add_argument("--grpc-compression-algorithm", default="none",
                   choices=["none", "gzip", "deflate"])
    r.add_argument("--request-parameter", action="append", default=[],
                   metavar="NAME:VALUE:TYPE")
    s = p.add_argument_group("server")
    s.add_argument("-u", dest="url", default="", help="Server URL (default localhost:8000 "
                   "for HTTP, localhost:8001 for gRPC).")
    s.add_argument("--ssl-grpc-use-ssl", action="store_true")
    s.add_argument("--ssl-grpc-root-certifications-file", default="")
    s.add_argument("--ssl-grpc-private-key-file", default="")
    s.add_argument("--ssl-grpc-certificate-chain-file", default="")
    s.add_argument("--ssl-https-verify-peer", type=int, default=1, choices=[0, 1])
    s.add_argument("--ssl-https-verify-host", type=int, default=2, choices=[0, 1, 2])
    s.add_argument("--ssl-https-ca-certificates-file", default="")
    s.add_argument("--ssl-https-client-certificate-file", default="")
    s.add_argument("--ssl-https-client-certificate-type", default="PEM", choices=["PEM"])
    s.add_argument("--ssl-https-private-key-file", default="")
    s.add_argument("--ssl-https-private-key-type", default="PEM", choices=["PEM"])
    o = p.add_argument_group("report")
    o.add_argument("-f", dest="filename", default="", help="Write perf_analyzer's CSV here.")
    o.add_argument("--profile-export-file", default="")
    o.add_argument("--verbose-csv", action="store_true")
    n = p.add_argument_group("naiad")
    n.add_argument("--workers", type=int, default=1,
                   help="Load-generating processes (default 1). Use more when a level "
                        "is reported client-bound.")
    n.add_argument("--plot", default="", metavar="FILE.png",
                   help="Plot throughput against latency across the levels (matplotlib).")
    n.add_argument("--no-progress", action="store_true",
                   help="No live progress line (it is off anyway when stderr is no terminal).")
    return p


def parse(argv: list[str]) -> PerfOptions:
    ns = build_parser().parse_args(argv)
    if ns.service_kind != "triton":
        raise UsageError(f"--service-kind {ns.service_kind} is not supported by naiad perf "
                         "(only 'triton')")
    o = PerfOptions(model=ns.model, version=ns.version, url=ns.url, protocol=ns.protocol)
    if ns.batch_size <= 0:
        raise UsageError("Failed to parse -b (batch size). The value must be > 0.")
    o.batch_size = ns.batch_size
    o.verbose = ns.verbose > 0
    if ns.concurrency_range and ns.request_rate_range:
        raise UsageError("Cannot use both Request Rate and Concurrency inference load modes.")
    if ns.legacy_concurrency is not None and ns.concurrency_range:
        raise UsageError("Cannot use -t together with --concurrency-range.")
    if ns.request_rate_range:
        o.mode = "request_rate"
        o.request_rate_range = _range(ns.request_rate_range, float, "--request-rate-range")
    elif ns.concurrency_range:
        o.concurrency_range = _range(ns.concurrency_range, int, "--concurrency-range")
    elif ns.legacy_concurrency is not None:
        if ns.legacy_concurrency <= 0:
            raise UsageError("-t must be > 0")
        o.concurrency_range = (ns.legacy_concurrency, 1, 1)
    o.request_distribution = ns.request_distribution
    o.binary_search = ns.binary_search
    if ns.async_ and ns.sync:
        raise UsageError("Cannot use both --async and --sync.")
    o.async_mode = bool(ns.async_)
    o.async_given = bool(ns.async_ or ns.sync)
    o.streaming = ns.streaming
    if o.streaming and o.protocol != "grpc":
        raise UsageError("Streaming is only allowed with gRPC protocol.")
    if ns.max_threads is not None and ns.max_threads <= 0:
        raise UsageError("Failed to parse --max-threads. The value must be > 0.")
    o.max_threads = ns.max_threads or (4 if o.mode == "request_rate" else 16)
    for text in ns.shape:
        name, shape = _shape(text)
        o.shapes[name] = shape
    o.input_data = ns.input_data or (["zero"] if ns.zero_input else ["random"])
    if ns.string_length <= 0:
        raise UsageError("--string-length must be > 0")
    o.string_length = ns.string_length
    o.string_data = ns.string_data
    if ns.shared_memory == "cuda":
        raise UsageError("--shared-memory cuda is not supported by naiad perf (no CUDA): use "
                         "system or none")
    o.shared_memory = ns.shared_memory
    if ns.output_shared_memory_size <= 0:
        raise UsageError("--output-shared-memory-size must be > 0")
    o.output_shm_size = ns.output_shared_memory_size
    o.input_tensor_format = ns.input_tensor_format
    o.output_tensor_format = ns.output_tensor_format
    o.request_parameters = [_request_parameter(t) for t in ns.request_parameter]
    o.num_of_sequences = max(1, ns.num_of_sequences)
    if ns.sequence_length is not None:
        if ns.sequence_length <= 0:
            raise UsageError("--sequence-length must be > 0")
        o.sequence_length, o.sequence_length_given = ns.sequence_length, True
    o.sequence_length_variation = ns.sequence_length_variation
    if ns.sequence_id_range:
        parts = ns.sequence_id_range.split(":")
        try:
            start = int(parts[0])
            end = int(parts[1]) if len(parts) > 1 and parts[1] else None
        except ValueError:
            raise UsageError("Failed to parse --sequence-id-range. The value does not match "
                             "<start:end>.")
        if len(parts) > 2 or start < 0 or (end is not None and end <= start):
            raise UsageError("Failed to parse --sequence-id-range. The 'end' value must be "
                             "greater than 'start' value.")
        o.sequence_id_range = (start, end)
    o.serial_sequences = ns.serial_sequences
    if ns.measurement_interval <= 0:
        raise UsageError("Failed to parse --measurement-interval (-p). The value must be > 0 "
                         "msec.")
    o.measurement_interval_ms = ns.measurement_interval
    o.measurement_mode = ns.measurement_mode
    if ns.measurement_request_count <= 0:
        raise UsageError("--measurement-request-count must be > 0")
    o.measurement_request_count = ns.measurement_request_count
    if ns.stability_percentage < 0:
        raise UsageError("Failed to parse --stability-percentage (-s). The value must be >= "
                         "0.0.")
    o.stability_percentage = ns.stability_percentage
    if ns.max_trials <= 0:
        raise UsageError("Failed to parse --max-trials (-r). The value must be > 0.")
    o.max_trials = ns.max_trials
    if ns.percentile != -1 and not 0 < ns.percentile < 100:
        raise UsageError("Failed to parse --percentile. The value must be -1 for not reporting "
                         "or in range (0, 100).")
    o.percentile = ns.percentile
    if ns.latency_threshold < 0:
        raise UsageError("Failed to parse --latency-threshold (-l). The value must be >= 0 "
                         "msecs.")
    o.latency_threshold_ms = ns.latency_threshold
    o.warmup_request_count = max(0, ns.warmup_request_count)
    if ns.request_count < 0:
        raise UsageError("--request-count must be >= 0")
    o.request_count = ns.request_count
    o.filename = ns.filename
    o.profile_export_file = ns.profile_export_file
    o.verbose_csv = ns.verbose_csv
    o.plot = ns.plot
    for h in ns.headers:
        key, sep, value = h.partition(":")
        if not sep or not key.strip():
            raise UsageError(f"Failed to parse -H '{h}': expected Header:Value")
        o.headers.append((key.strip(), value.strip()))
    o.grpc_compression = ns.grpc_compression_algorithm
    o.ssl_grpc_use_ssl = ns.ssl_grpc_use_ssl
    o.ssl_grpc_root_certifications_file = ns.ssl_grpc_root_certifications_file
    o.ssl_grpc_private_key_file = ns.ssl_grpc_private_key_file
    o.ssl_grpc_certificate_chain_file = ns.ssl_grpc_certificate_chain_file
    o.ssl_https_verify_peer = ns.ssl_https_verify_peer
    o.ssl_https_verify_host = ns.ssl_https_verify_host
    o.ssl_https_ca_certificates_file = ns.ssl_https_ca_certificates_file
    o.ssl_https_client_certificate_file = ns.ssl_https_client_certificate_file
    o.ssl_https_private_key_file = ns.ssl_https_private_key_file
    if ns.workers <= 0:
        raise UsageError("--workers must be > 0")
    o.workers = ns.workers
    o.progress = not ns.no_progress and sys.stderr.isatty()
    # perf_analyzer's cross-option checks
    start, end, _ = o.concurrency_range if o.mode == "concurrency" else o.request_rate_range
    if end == NO_LIMIT and o.latency_threshold_ms == NO_LIMIT:
        raise UsageError("The end of the search range and the latency limit can not be both 0 "
                         "(or 0.0) simultaneously")
    if o.binary_search:
        if end == NO_LIMIT:
            raise UsageError("The end of the range can not be 0 (or 0.0) for binary search "
                             "mode.")
        if o.latency_threshold_ms == NO_LIMIT:
            raise UsageError("The --latency-threshold cannot be 0 for binary search mode.")
        if end < start:
            raise UsageError("The end of the range can not be less than start of the range "
                             "for binary search mode.")
    return o
