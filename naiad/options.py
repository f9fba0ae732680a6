"""ServerOptions: every setting of the server, typed, with tritonserver's defaults.

The command line (``naiad.cli``) fills one of these from tritonserver's
flags; embedding applications build one directly (``Server(ServerOptions(
model_repositories=["./models"]))`` or ``Server(model_repository="./models")``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

_TRUE = frozenset({"true", "on", "1"})
_FALSE = frozenset({"false", "off", "0"})


def parse_bool(text: Any) -> bool | None:
    """A boolean option value as Triton reads one (true/on/1, false/off/0, any case);
    None when it is neither (each caller words its own error)."""
    v = str(text).strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    return None


MODE_NONE = "none"
MODE_POLL = "poll"
MODE_EXPLICIT = "explicit"


@dataclasses.dataclass
class ServerOptions:
    model_repositories: list[str] = dataclasses.field(default_factory=list)
    server_id: str = "triton"

    # model management
    model_control_mode: str = MODE_NONE
    load_models: list[str] = dataclasses.field(default_factory=list)
    repository_poll_secs: float = 15.0
    model_load_thread_count: int = 4
    model_load_retry_count: int = 0
    model_config_name: str = ""
    auto_complete_config: bool = True
    strict_readiness: bool = True
    exit_timeout_secs: int = 30
    exit_on_error: bool = True
    model_namespacing: bool = False
    # many models per server (naiad's own flags; docs/model-management.md): load a
    # model on its first request, keep the loaded ones under a memory budget
    # (bytes, or "N%" of the machine's memory; "" for none), unload idle ones
    model_load_on_demand: bool = False
    model_memory_limit: str = ""
    model_idle_unload_secs: float = 0.0
    model_load_on_demand_timeout_secs: float = 120.0

    # backends: {backend name or "" for global: {setting: value}}
    backend_config: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    backend_directory: str = ""

    # HTTP
    allow_http: bool = True
    http_address: str = "0.0.0.0"
    http_port: int = 8000
    http_thread_count: int = 8
    reuse_http_port: bool = False
    http_header_forward_pattern: str = ""
    http_max_input_size: int = 64 * 1024 * 1024
    http_restricted_api: list[str] = dataclasses.field(default_factory=list)

    # gRPC
    allow_grpc: bool = True
    grpc_address: str = "0.0.0.0"
    grpc_port: int = 8001
    reuse_grpc_port: bool = False
    grpc_header_forward_pattern: str = ""
    grpc_infer_allocation_pool_size: int = 8
    grpc_max_response_pool_size: int = 0
    grpc_use_ssl: bool = False
    grpc_use_ssl_mutual: bool = False
    grpc_server_cert: str = ""
    grpc_server_key: str = ""
    grpc_root_cert: str = ""
    grpc_infer_response_compression_level: str = "none"
    grpc_keepalive_time: int = 7200000
    grpc_keepalive_timeout: int = 20000
    grpc_keepalive_permit_without_calls: bool = False
    grpc_http2_max_pings_without_data: int = 2
    grpc_http2_min_recv_ping_interval_without_data: int = 300000
    grpc_http2_max_ping_strikes: int = 2
    grpc_max_connection_age: int = 0
    grpc_max_connection_age_grace: int = 0
    grpc_restricted_protocol: list[str] = dataclasses.field(default_factory=list)

    # metrics
    allow_metrics: bool = True
    allow_gpu_metrics: bool = True
    allow_cpu_metrics: bool = True
    metrics_address: str = ""  # empty: same as http_address
    metrics_port: int = 8002
    metrics_interval_ms: float = 2000.0
    metrics_config: dict[str, str] = dataclasses.field(default_factory=dict)

    # logging
    log_verbose: int = 0
    log_info: bool = True
    log_warning: bool = True
    log_error: bool = True
    log_format: str = "default"
    log_file: str = ""

    # tracing: {mode or "" for global: {setting: value}}
    trace_config: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)

    # scheduling
    rate_limit: str = "off"
    rate_limit_resources: list[str] = dataclasses.field(default_factory=list)
    cache_config: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)
    cache_directory: str = ""
    response_cache_byte_size: int = 0

    # accepted for compatibility; no effect on a CPU-only python server
    pinned_memory_pool_byte_size: int = 268435456
    cuda_memory_pool_byte_size: list[str] = dataclasses.field(default_factory=list)
    cuda_virtual_address_size: list[str] = dataclasses.field(default_factory=list)
    min_supported_compute_capability: float = 6.0
    buffer_manager_thread_count: int = 0
    host_policy: list[str] = dataclasses.field(default_factory=list)
    repoagent_directory: str = ""
    enable_peer_access: bool = True
    model_load_gpu_limit: list[str] = dataclasses.field(default_factory=list)

    # OpenAI-compatible frontend (naiad.frontends.openai, extra 'naiad[openai]')
    allow_openai: bool = False
    openai_address: str = ""  # empty: same as http_address
    openai_port: int = 9000
    openai_tokenizer: str = ""  # tokenizer.json (or its folder) for models without their own
    openai_chat_template: str = ""  # chat template file for models without their own
    openai_tool_call_parser: str = ""  # hermes or llama3, for models that name none
    openai_default_max_tokens: int = 16

    # other frontends (accepted; not served)
    allow_sagemaker: bool = False
    sagemaker_port: int = 8080
    allow_vertex_ai: bool = False
    vertex_ai_port: int = 8080

    def __post_init__(self) -> None:
        if isinstance(self.model_repositories, str):
            self.model_repositories = [self.model_repositories]

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> "ServerOptions":
        """Build options from keyword arguments; ``model_repository`` is an alias."""
        repo = kwargs.pop("model_repository", None)
        if repo is not None:
            kwargs.setdefault("model_repositories", [repo] if isinstance(repo, str) else list(repo))
        return cls(**kwargs)

    @property
    def effective_metrics_address(self) -> str:
        return self.metrics_address or self.http_address
