"""naiad on a Ray cluster: a Ray Serve application whose replicas each run naiad.

    naiad ray --address auto --model-repository s3://bucket/models --num-replicas 4

or from Python (``serve.run``) and Serve config files (``serve deploy``)::

    from ray import serve
    import naiad.ray
    serve.run(naiad.ray.build_app({"model_repository": "/models", "num_replicas": 2}))

    # config.yaml
    applications:
      - name: naiad
        route_prefix: /
        import_path: naiad.ray:app_builder
        args: {model_repository: /models, num_replicas: 2}

Clients talk to Serve's proxy as to one Triton server: KServe v2 HTTP with
Triton's extensions, and ``inference.GRPCInferenceService`` when the proxy's
``grpc_servicer_functions`` names ``naiad.ray.proxy.add_inference_services``
(``naiad.ray.serve_options`` builds the Serve options that do). docs/scale-out.md
walks through it.

Needs the ``ray`` extra (``pip install -e '.[ray]'`` in naiad's folder); importing naiad itself
never imports Ray.
"""

from __future__ import annotations

from typing import Any

__all__ = ["AppSettings", "app_builder", "build_app", "main", "serve_options"]


def __getattr__(name: str) -> Any:
    if name in ("build_app", "app_builder", "serve_options"):
        from naiad.ray import deployment

        return getattr(deployment, name)
    if name == "AppSettings":
        from naiad.ray.settings import AppSettings

        return AppSettings
    if name == "main":
        from naiad.ray.cli import main

        return main
    raise AttributeError(f"module 'naiad.ray' has no attribute '{name}'")
