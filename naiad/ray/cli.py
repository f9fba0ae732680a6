"""``naiad ray``: deploy naiad as a Ray Serve application on a running Ray cluster.

    naiad ray --address auto --model-repository /models --num-replicas 2
    naiad ray --address auto --model-repository s3://bucket/models --num-replicas auto \\
        --max-replicas 8 --autoscale-on queue_time --target-queue-time-us 2000
    naiad ray --address auto --model-repository /models --model-control-mode=explicit \\
        --load-model add_sub          # any other tritonserver flag goes to every replica
    naiad ray --address auto --delete  # remove the application

Deploys (or updates in place) the application and returns once it runs;
``--block`` stays in the foreground and removes the application on
Ctrl-C/SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading

from naiad.ray.settings import AUTOSCALE_ON, AppSettings, SettingsError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise SettingsError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="naiad ray", description="Run naiad on a Ray cluster (Ray Serve).",
                epilog="Other flags are tritonserver's, passed to every replica's naiad.")
    p.add_argument("--address", default="auto", help="Ray cluster address (default: auto).")
    p.add_argument("--model-repository", "--model-store", dest="model_repository",
                   action="append", default=[], metavar="PATH",
                   help="Model repository on every node, or s3:// gs:// as:// (repeatable).")
    p.add_argument("--name", default="naiad", help="Serve application name.")
    p.add_argument("--route-prefix", default="/", help="HTTP route prefix of the application.")
    p.add_argument("--num-replicas", default="1", help="Replicas, or 'auto' to autoscale.")
    p.add_argument("--min-replicas", type=int, default=1)
    p.add_argument("--max-replicas", type=int, default=4)
    p.add_argument("--autoscale-on", choices=AUTOSCALE_ON, default="ongoing_requests")
    p.add_argument("--target-ongoing-requests", type=float, default=2.0)
    p.add_argument("--target-queue-time-us", type=float, default=5000.0)
    p.add_argument("--upscale-delay-s", type=float, default=None)
    p.add_argument("--downscale-delay-s", type=float, default=None)
    p.add_argument("--look-back-period-s", type=float, default=None,
                   help="Window over which Serve averages the scaling metric.")
    p.add_argument("--num-cpus", type=float, default=None,
                   help="CPUs per replica (default: the models' CPU instance count).")
    p.add_argument("--max-ongoing-requests", type=int, default=64)
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="Environment variable for the replicas (repeatable).")
    p.add_argument("--http-host", default="0.0.0.0", help="Serve HTTP proxy host.")
    p.add_argument("--http-port", type=int, default=8000, help="Serve HTTP proxy port.")
    p.add_argument("--grpc-port", type=int, default=9000, help="Serve gRPC proxy port.")
    p.add_argument("--proxy-location", default="EveryNode",
                   choices=("EveryNode", "HeadOnly", "Disabled"))
    p.add_argument("--block", action="store_true",
                   help="Stay in the foreground; remove the application on exit.")
    p.add_argument("--delete", action="store_true", help="Remove the application and exit.")
    return p


def settings_from_args(ns: argparse.Namespace, server_args: list[str]) -> AppSettings:
    env = {}
    for item in ns.env:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise SettingsError(f"--env expects KEY=VALUE, got '{item}'")
        env[key] = value
    autoscaling = {}
    if ns.upscale_delay_s is not None:
        autoscaling["upscale_delay_s"] = ns.upscale_delay_s
    if ns.downscale_delay_s is not None:
        autoscaling["downscale_delay_s"] = ns.downscale_delay_s
    if ns.look_back_period_s is not None:
        autoscaling["look_back_period_s"] = ns.look_back_period_s
    return AppSettings.from_args(
        model_repository=ns.model_repository, server_args=server_args,
        num_replicas=ns.num_replicas, min_replicas=ns.min_replicas,
        max_replicas=ns.max_replicas, autoscale_on=ns.autoscale_on,
        target_ongoing_requests=ns.target_ongoing_requests,
        target_queue_time_us=ns.target_queue_time_us, autoscaling_config=autoscaling,
        num_cpus=ns.num_cpus, max_ongoing_requests=ns.max_ongoing_requests, env=env)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        ns, server_args = build_parser().parse_known_args(argv)
        settings = None if ns.delete else settings_from_args(ns, server_args)
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        import ray
        from ray import serve
    except ImportError:
        from naiad.core.extras import install_hint

        print(f"error: naiad ray needs Ray Serve: {install_hint('ray')}", file=sys.stderr)
        return 2
    from naiad.ray.deployment import build_app, serve_options

    ray.init(address=ns.address, logging_level="WARNING", log_to_driver=False)
    if ns.delete:
        serve.delete(ns.name)
        print(f"deleted application '{ns.name}'")
        return 0
    serve.start(**serve_options(ns.http_host, ns.http_port, ns.grpc_port, ns.proxy_location))
    try:
        serve.run(build_app(settings), name=ns.name, route_prefix=ns.route_prefix)
    except Exception as exc:  # a replica failed to start (a model failed to load ...)
        print(f"error: deploying '{ns.name}' failed: {exc}", file=sys.stderr)
        return 1
    replicas = "auto" if settings.autoscaling else settings.num_replicas
    print(f"naiad application '{ns.name}' running with {replicas} replica(s): "
          f"HTTP on port {ns.http_port} (route prefix {ns.route_prefix}), "
          f"gRPC on port {ns.grpc_port}", flush=True)
    if not ns.block:
        return 0
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    serve.delete(ns.name)
    print(f"deleted application '{ns.name}'", flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
