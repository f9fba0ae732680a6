"""An example naiad backend: affine models (y = x W + b) described by a JSON file.

It shows every part of the plugin interface (docs/backends.md):

* ``AffineBackend`` — the factory naiad finds through the ``naiad.backends``
  entry point; ``auto_complete_config`` fills the config from the model file;
  ``load`` builds one ``AffineModel`` per model version.
* ``AffineModel`` — what the instances share (the weights); ``create_instance``
  is called once per instance of ``instance_group``.
* ``AffineInstance`` — runs batches. It subclasses naiad's
  ``BatchingInstance``, which concatenates the requests of a dynamic batch along
  dim 0, calls ``run`` once and gives each request its rows back.
"""

from __future__ import annotations

import json
import os

import numpy as np

from naiad.backends.base import Backend, BackendModel, InstanceSpec, ModelLoadContext
from naiad.backends.framework import (
    BatchingInstance,
    OutputPlan,
    TensorSpec,
    complete_io,
)
from naiad.core.errors import InvalidArgument, Unavailable

MODEL_FILE = "model.json"


def read_model(name: str, version_dir: str, filename: str = "") -> dict:
    path = os.path.join(version_dir, filename or MODEL_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
        weight = np.asarray(spec["weight"], dtype=np.float32)
        bias = np.asarray(spec.get("bias", np.zeros(weight.shape[1])), dtype=np.float32)
    except FileNotFoundError:
        raise Unavailable(f"unable to find '{path}' for model '{name}'") from None
    except (ValueError, KeyError, TypeError) as exc:
        # a load error: the model is UNAVAILABLE with this reason, others keep serving
        raise Unavailable(f"unable to load model '{name}': bad '{path}': {exc}") from None
    if weight.ndim != 2 or bias.shape != (weight.shape[1],):
        raise Unavailable(f"unable to load model '{name}': weight must be [in, out] and bias "
                          f"[out], got {list(weight.shape)} and {list(bias.shape)}")
    return {"input": spec.get("input", "X"), "output": spec.get("output", "Y"),
            "weight": weight, "bias": bias}


class AffineBackend(Backend):
    name = "affine"
    default_model_filename = MODEL_FILE

    def auto_complete_config(self, config, model_dir, version_dir, backend_config):
        if version_dir is None:
            return
        m = read_model(config.name, version_dir, config.default_model_filename)
        ins = [TensorSpec(m["input"], "TYPE_FP32", (-1, m["weight"].shape[0]))]
        outs = [TensorSpec(m["output"], "TYPE_FP32", (-1, m["weight"].shape[1]))]
        # max_batch_size (default-max-batch-size), dynamic_batching {}, input and output
        complete_io(config, ins, outs, backend_config)

    def load(self, ctx: ModelLoadContext) -> "AffineModel":
        return AffineModel(ctx)


class AffineModel(BackendModel):
    def __init__(self, ctx: ModelLoadContext):
        self.name = ctx.name
        self.config = ctx.config
        self.spec = read_model(ctx.name, ctx.version_dir, ctx.config.default_model_filename)
        names = [i.name for i in ctx.config.input]
        if names != [self.spec["input"]]:
            raise InvalidArgument(f"unable to load model '{ctx.name}': the model's input is "
                                  f"'{self.spec['input']}', the configuration names {names}")
        self.plan = OutputPlan(ctx.config)

    def create_instance(self, spec: InstanceSpec) -> "AffineInstance":
        return AffineInstance(self, spec)


class AffineInstance(BatchingInstance):
    def __init__(self, model: AffineModel, spec: InstanceSpec):
        self.model = model
        self.model_name = model.name
        self.max_batch_size = int(model.config.max_batch_size)
        self.plan = model.plan

    def run(self, feed, outputs):
        x = feed[self.model.spec["input"]]
        if not np.isfinite(x).all():
            # a client's mistake: INVALID_ARG reaches HTTP as 400, gRPC as INVALID_ARGUMENT
            raise InvalidArgument(f"model '{self.model_name}' takes finite numbers only")
        y = x @ self.model.spec["weight"] + self.model.spec["bias"]
        return {self.model.spec["output"]: y.astype(np.float32)}

    def finalize(self):
        self.model = None
