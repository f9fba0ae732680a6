"""The settings of a naiad Ray Serve application, checked before anything is deployed.

``AppSettings.from_args`` takes what ``serve deploy`` passes an application
builder (the ``args`` of a Serve config file) or what ``naiad ray`` parses:

- ``model_repository``: a path present on every node, or ``s3://``, ``gs://``,
  ``as://`` (the object-storage support and its local cache); a list for several;
- ``server_args``: more tritonserver flags for every replica's naiad
  (``["--model-control-mode=explicit", "--load-model=add_sub"]``);
- ``num_replicas``: a number, or ``"auto"`` to autoscale between
  ``min_replicas`` and ``max_replicas``;
- ``autoscale_on``: ``"ongoing_requests"`` (Ray Serve's policy, aiming at
  ``target_ongoing_requests`` per replica) or ``"queue_time"`` (naiad's
  policy, aiming at ``target_queue_time_us`` of queue wait per request);
- ``autoscaling_config``: more of Ray Serve's autoscaling fields
  (``upscale_delay_s``, ``downscale_delay_s``, ``look_back_period_s`` ...);
- ``num_cpus``: CPUs each replica asks Ray for; by default the sum of the CPU
  instance counts of the models a replica loads at startup (local
  repositories; 1 when that cannot be known before loading);
- ``max_ongoing_requests``, ``ray_actor_options``, ``env`` (variables for
  the replicas' processes, e.g. object-storage credentials).

No Ray import here: the command line checks its flags with this alone.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from naiad.options import MODE_EXPLICIT, ServerOptions

AUTOSCALE_ON = ("ongoing_requests", "queue_time")


class SettingsError(ValueError):
    pass


@dataclasses.dataclass
class AppSettings:
    model_repository: list[str]
    server_args: list[str] = dataclasses.field(default_factory=list)
    num_replicas: int | str = 1
    min_replicas: int = 1
    max_replicas: int = 4
    autoscale_on: str = "ongoing_requests"
    target_ongoing_requests: float = 2.0
    target_queue_time_us: float = 5000.0
    autoscaling_config: dict = dataclasses.field(default_factory=dict)
    num_cpus: float | None = None
    max_ongoing_requests: int = 64
    ray_actor_options: dict = dataclasses.field(default_factory=dict)
    env: dict = dataclasses.field(default_factory=dict)
    deployment_name: str = "naiad"

    @classmethod
    def from_args(cls, args: dict | None = None, **kwargs: Any) -> "AppSettings":
        merged = dict(args or {})
        merged.update(kwargs)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(merged) - names)
        if unknown:
            raise SettingsError(f"unknown naiad Ray application setting(s): {', '.join(unknown)}"
                                f" (known: {', '.join(sorted(names))})")
        repo = merged.get("model_repository")
        if isinstance(repo, str):
            merged["model_repository"] = [repo]
        if not merged.get("model_repository"):
            raise SettingsError("model_repository is required")
        if isinstance(merged.get("server_args"), str):
            merged["server_args"] = merged["server_args"].split()
        settings = cls(**merged)
        settings.check()
        return settings

    # -- checks -------------------------------------------------------------------------

    def check(self) -> None:
        n = self.num_replicas
        if isinstance(n, str):
            if n != "auto":
                try:
                    self.num_replicas = int(n)
                except ValueError:
                    raise SettingsError(
                        f"num_replicas must be a number or 'auto', got '{n}'") from None
        if isinstance(self.num_replicas, int) and self.num_replicas < 1:
            raise SettingsError("num_replicas must be at least 1")
        if self.autoscale_on not in AUTOSCALE_ON:
            raise SettingsError(f"autoscale_on must be one of {', '.join(AUTOSCALE_ON)}, "
                                f"got '{self.autoscale_on}'")
        if not 0 <= self.min_replicas <= self.max_replicas or self.max_replicas < 1:
            raise SettingsError("need 0 <= min_replicas <= max_replicas and max_replicas >= 1")
        if self.target_queue_time_us <= 0 or self.target_ongoing_requests <= 0:
            raise SettingsError("autoscaling targets must be positive")
        if self.num_cpus is not None and float(self.num_cpus) < 0:
            raise SettingsError("num_cpus must not be negative")
        self.server_options()  # the flags must parse as tritonserver's do

    def server_options(self) -> ServerOptions:
        """Each replica's naiad options: the repository and the extra flags, as the CLI reads them."""
        from naiad.cli import UNBUILT, CliError, options_from_args
        from naiad.core.errors import NaiadError

        argv = [f"--model-repository={r}" for r in self.model_repository] + list(self.server_args)
        try:
            options = options_from_args(argv)
        except CliError as exc:
            raise SettingsError(f"server_args: {exc}") from None
        for predicate, message in UNBUILT:
            if predicate(options):
                raise SettingsError(message)
        from naiad.observability import validate_options
        from naiad.scheduling import check_options

        try:
            validate_options(options)
            check_options(options)
        except NaiadError as exc:
            raise SettingsError(exc.message) from None
        # the replicas serve through Ray's proxies: no sockets of their own
        options.allow_http = options.allow_grpc = False
        return options

    # -- what Ray is asked for ------------------------------------------------------------

    @property
    def autoscaling(self) -> bool:
        return self.num_replicas == "auto"

    def replica_cpus(self) -> float:
        if self.num_cpus is not None:
            return float(self.num_cpus)
        return float(startup_cpu_instances(self.server_options()) or 1)

    def autoscaling_config_dict(self) -> dict | None:
        if not self.autoscaling:
            return None
        config: dict[str, Any] = {"min_replicas": self.min_replicas,
                                  "max_replicas": self.max_replicas,
                                  "target_ongoing_requests": self.target_ongoing_requests}
        if self.autoscale_on == "queue_time":
            config["policy"] = {
                "policy_function": "naiad.ray.autoscaling:QueueTimePolicy",
                "policy_kwargs": {"target_queue_time_us": float(self.target_queue_time_us)},
            }
        config.update(self.autoscaling_config)
        return config


def _startup_models(options: ServerOptions, repo: str) -> list[str]:
    names = sorted(d for d in os.listdir(repo)
                   if not d.startswith(".") and os.path.isdir(os.path.join(repo, d)))
    if options.model_control_mode == MODE_EXPLICIT:
        wanted = options.load_models
        if "*" not in wanted:
            names = [n for n in names if n in wanted]
    return names


def startup_cpu_instances(options: ServerOptions) -> int:
    """CPU model instances the models loaded at startup run (local repositories; else 0).

    Each instance executes on its own thread, so this is how many cores a
    replica can keep busy. Models whose config cannot be read count one.
    """
    from naiad.protocol import model_config_pb2 as mc
    from naiad.repository.config import normalize, read_config

    total = 0
    for repo in options.model_repositories:
        if "://" in repo or not os.path.isdir(repo):
            return 0
        for name in _startup_models(options, repo):
            try:
                config, _, _ = read_config(os.path.join(repo, name), options.model_config_name)
                if not config.name:
                    config.name = name
                if config.platform == "ensemble":
                    continue
                normalize(config)
            except Exception:
                total += 1
                continue
            total += sum(g.count for g in config.instance_group
                         if g.kind == mc.ModelInstanceGroup.KIND_CPU)
    return total


__all__ = ["AUTOSCALE_ON", "AppSettings", "SettingsError", "startup_cpu_instances"]
