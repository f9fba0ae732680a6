"""A pipeline of the vision repository run in one process, with no server: the reference.

``Pipeline(repository, name)`` reads the ensemble's ``config.pbtxt`` and runs
its steps one after another in this process: each python step's own
``model.py`` (the same file the server runs, with naiad's ``pb_utils``), each
network with its framework called directly (onnxruntime, torch.jit,
OpenVINO). The end-to-end tests compare what the server answers with this,
and the benchmark uses it as the ceiling (the same work, without serving).

    pipe = Pipeline("examples/vision/model_repository", "shapes_detection")
    outputs = pipe({"IMAGE": np.frombuffer(png_bytes, np.uint8)})
"""

from __future__ import annotations

import json
import os

import numpy as np
from google.protobuf import text_format

from naiad.backends.python import isolation
from naiad.protocol import model_config_pb2 as mc
from naiad.protocol.config_json import config_to_dict


def read_config(model_dir: str) -> mc.ModelConfig:
    with open(os.path.join(model_dir, "config.pbtxt"), encoding="utf-8") as f:
        return text_format.Parse(f.read(), mc.ModelConfig())


class PythonStep:
    """A python model's ``model.py``, loaded and initialised as the python backend would."""

    def __init__(self, model_dir: str, config: mc.ModelConfig):
        import triton_python_backend_utils as pb_utils

        self.pb_utils = pb_utils
        vdir = os.path.join(model_dir, "1")
        # imported as naiad's python backend imports it: in a scope of its own, where its
        # helpers (imagelib, ocrlib) are its own modules, not ones shared by name
        module, _cls, self.scope = isolation.import_model_file(
            os.path.join(vdir, "model.py"), f"inprocess_{config.name}", vdir, model_dir)
        self.model = module.TritonPythonModel()
        if hasattr(self.model, "initialize"):
            self.model.initialize({
                "model_config": json.dumps(config_to_dict(config)),
                "model_name": config.name, "model_version": "1",
                "model_repository": model_dir, "model_instance_kind": "CPU",
                "model_instance_name": f"{config.name}_0", "model_instance_device_id": "0"})
        self.outputs = [o.name for o in config.output]

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pb = self.pb_utils
        request = pb.InferenceRequest(
            model_name="", inputs=[pb.Tensor(k, v) for k, v in inputs.items()],
            requested_output_names=self.outputs)
        (response,) = self.model.execute([request])
        if response.has_error():
            raise ValueError(response.error().message())
        return {t.name(): t.as_numpy() for t in response.output_tensors()}


class NetworkStep:
    """A network called with its own framework."""

    def __init__(self, model_dir: str, config: mc.ModelConfig, threads: int = 0):
        vdir = os.path.join(model_dir, "1")
        self.batched = config.max_batch_size > 0
        files = os.listdir(vdir)
        if "model.onnx" in files:
            import onnxruntime as ort

            opts = ort.SessionOptions()
            if threads:
                opts.intra_op_num_threads = threads
            self.session = ort.InferenceSession(os.path.join(vdir, "model.onnx"), opts,
                                                providers=["CPUExecutionProvider"])
            self.run = lambda feed: dict(zip([o.name for o in self.session.get_outputs()],
                                             self.session.run(None, feed)))
        elif "model.xml" in files:
            import openvino as ov

            compiled = ov.Core().compile_model(os.path.join(vdir, "model.xml"), "CPU")
            names = [o.get_any_name() for o in compiled.outputs]

            def run_ov(feed):
                request = compiled.create_infer_request()
                result = request.infer(feed)
                return {n: np.asarray(result[o]) for n, o in zip(names, compiled.outputs)}

            self.run = run_ov
        elif "model.pt" in files:
            import torch

            module = torch.jit.load(os.path.join(vdir, "model.pt"), map_location="cpu").eval()
            out_names = [o.name for o in config.output]

            def run_torch(feed):
                with torch.inference_mode():
                    result = module(*[torch.from_numpy(np.ascontiguousarray(v))
                                      for v in feed.values()])
                if not isinstance(result, (tuple, list)):
                    result = (result,)
                return {n: r.numpy() for n, r in zip(out_names, result)}

            self.run = run_torch
        else:
            raise ValueError(f"{model_dir}: no model.onnx, model.xml or model.pt")

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.run(inputs)


class Pipeline:
    """An ensemble of the repository, its steps called in order in this process."""

    def __init__(self, repository: str, name: str, threads: int = 0):
        config = read_config(os.path.join(repository, name))
        if config.platform != "ensemble":
            raise ValueError(f"{name} is not an ensemble")
        self.outputs = [o.name for o in config.output]
        self.steps = []
        for step in config.ensemble_scheduling.step:
            model_dir = os.path.join(repository, step.model_name)
            cfg = read_config(model_dir)
            runner = PythonStep(model_dir, cfg) if cfg.backend == "python" else \
                NetworkStep(model_dir, cfg, threads)
            self.steps.append((runner, dict(step.input_map), dict(step.output_map)))

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = dict(inputs)
        for runner, input_map, output_map in self.steps:
            produced = runner({k: tensors[v] for k, v in input_map.items()})
            for k, v in output_map.items():
                tensors[v] = produced[k]
        return {name: tensors[name] for name in self.outputs}
