"""The task template interface and the helpers tasks build their pipelines with.

See the package docstring (``naiad/tools/tasks/__init__.py``) for how to add a task.
"""


from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable

from naiad.protocol import model_config_pb2 as mc
from naiad.tools.pbtxt import config_text

TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")


class TaskError(Exception):
    pass


@dataclasses.dataclass
class TaskContext:
    repository: str
    name: str  # the pipeline's (ensemble's) name
    model_name: str  # the imported network
    model_config: mc.ModelConfig  # the network's config as written
    options: dict[str, str]  # --task-option KEY=VALUE
    models: dict[str, str]  # --task-model ROLE=FILE
    labels_file: str = ""  # the labels copied beside the network, if any
    source_file: str = ""  # the imported network's own file (e.g. to read its metadata)
    # imports another model file as <repo>/<name> with a max_batch_size (None: auto-complete's)
    # and returns its config (naiad import's own code: tasks with several networks use it)
    import_network: Callable[[str, str, int | None], mc.ModelConfig] | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)
    used: set[str] = dataclasses.field(default_factory=set)

    def option(self, key: str, default=None, kind=str):
        self.used.add(key)
        if key not in self.options:
            return default
        text = self.options[key]
        try:
            if kind is bool:
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(text)
                return text.lower() in ("true", "1", "yes")
            return kind(text)
        except ValueError:
            raise TaskError(f"option {key}={text}: expected a {kind.__name__}") from None

    def floats(self, key: str, default: list[float]) -> list[float]:
        text = self.option(key, None)
        if text is None:
            return list(default)
        try:
            return [float(v) for v in text.split(",")]
        except ValueError:
            raise TaskError(f"option {key}={text}: expected comma-separated numbers") from None


class Task:
    name = ""
    description = ""
    options: dict[str, str] = {}
    #: the network's max_batch_size when --max-batch-size is not given (None: auto-complete's)
    max_batch_size: int | None = None

    def model_names(self, name: str) -> list[str]:
        """Model folders the task writes besides the network (the ensemble first)."""
        return [name, f"{name}_preprocess", f"{name}_postprocess"]

    def build(self, ctx: TaskContext) -> list[str]:
        raise NotImplementedError


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


@dataclasses.dataclass
class ImageInput:
    name: str
    data_type: int
    layout: str  # "NCHW" or "NHWC" (without the batch dimension: CHW / HWC)
    channels: int
    height: int  # -1: variable
    width: int
    batched: bool  # the network has max_batch_size > 0
    # the tensor has a batch dimension: batched, or a non-batching network's [1, C, H, W]
    # (False: a non-batching network that takes one image as [C, H, W])
    batch_dim: bool = True

    def dims(self, height: int, width: int) -> list[int]:
        """The pre-processing's output for one image: the network's input at this size."""
        core = [self.channels, height, width] if self.layout == "NCHW" else \
            [height, width, self.channels]
        return ([-1] if self.batched else [1] if self.batch_dim else []) + core


def image_input(config: mc.ModelConfig, layout: str = "") -> ImageInput:
    """The network's image tensor: one input of 3 dims (+ batch) with 1 or 3 channels."""
    batched = config.max_batch_size > 0
    if len(config.input) != 1:
        raise TaskError(f"the network has {len(config.input)} inputs; an image task needs one")
    t = config.input[0]
    dims = list(t.dims)
    batch_dim = batched or len(dims) == 4
    if not batched and len(dims) == 4:
        if dims[0] not in (1, -1):
            raise TaskError(f"input {t.name} has batch dimension {dims[0]}: expected 1")
        dims = dims[1:]
    if len(dims) != 3:
        raise TaskError(f"input {t.name} has dims {list(t.dims)}: expected an image "
                        "[C,H,W] or [H,W,C] (plus the batch dimension)")
    if not layout:
        if t.format == mc.ModelInput.FORMAT_NHWC:
            layout = "NHWC"
        elif t.format == mc.ModelInput.FORMAT_NCHW:
            layout = "NCHW"
        elif dims[0] in (1, 3) and dims[2] not in (1, 3):
            layout = "NCHW"
        elif dims[2] in (1, 3) and dims[0] not in (1, 3):
            layout = "NHWC"
        else:
            layout = "NCHW"
    if layout not in ("NCHW", "NHWC"):
        raise TaskError(f"layout {layout}: expected NCHW or NHWC")
    c, h, w = (dims[0], dims[1], dims[2]) if layout == "NCHW" else (dims[2], dims[0], dims[1])
    if c not in (1, 3, -1):
        raise TaskError(f"input {t.name}: {c} channels; expected 1 or 3 (or give layout=)")
    return ImageInput(t.name, t.data_type, layout, 3 if c == -1 else c, h, w, batched,
                      batch_dim)


def image_size(ctx: TaskContext, image: ImageInput) -> tuple[int, int]:
    """(height, width): the network's, or ``size=HxW`` when the network's is variable."""
    text = ctx.option("size", None)
    if text:
        try:
            h, w = (int(v) for v in text.lower().split("x"))
        except ValueError:
            raise TaskError(f"size={text}: expected HEIGHTxWIDTH, e.g. 224x224") from None
        if (image.height not in (-1, h)) or (image.width not in (-1, w)):
            raise TaskError(f"size={text} differs from the network's input "
                            f"{image.height}x{image.width}")
        return h, w
    if image.height < 1 or image.width < 1:
        raise TaskError("the network's input size is variable: give --task-option "
                        "size=HEIGHTxWIDTH")
    return image.height, image.width


def tensor(name: str, data_type: int | str, dims: list[int], output: bool = False):
    t = mc.ModelOutput() if output else mc.ModelInput()
    t.name = name
    t.data_type = mc.DataType.Value(data_type) if isinstance(data_type, str) else data_type
    t.dims.extend(dims)
    return t


def network_output_dims(config: mc.ModelConfig, output: mc.ModelOutput) -> list[int]:
    """An output's dims as a non-batching model sees them ([-1, ...] for batched networks)."""
    return ([-1] if config.max_batch_size > 0 else []) + list(output.dims)


def python_model(repository: str, name: str, template: str, inputs: list, outputs: list,
                 parameters: dict[str, str], files: dict[str, str] | None = None,
                 comment: str = "") -> str:
    """Write ``<repo>/<name>/config.pbtxt`` and ``1/model.py`` from a template (+ helpers)."""
    model_dir = os.path.join(repository, name)
    vdir = os.path.join(model_dir, "1")
    os.makedirs(vdir, exist_ok=True)
    config = mc.ModelConfig(name=name, backend="python", max_batch_size=0)
    config.input.extend(inputs)
    config.output.extend(outputs)
    group = config.instance_group.add()
    group.count, group.kind = 1, mc.ModelInstanceGroup.KIND_CPU
    for key, value in parameters.items():
        config.parameters[key].string_value = str(value)
    _write(model_dir, config, comment)
    shutil.copyfile(os.path.join(TEMPLATES, template), os.path.join(vdir, "model.py"))
    shutil.copyfile(os.path.join(TEMPLATES, "imagelib.py"), os.path.join(vdir, "imagelib.py"))
    for target, source in (files or {}).items():
        shutil.copyfile(source, os.path.join(vdir, target))
    return name


def ensemble(repository: str, name: str, inputs: list, outputs: list,
             steps: list[tuple[str, dict[str, str], dict[str, str]]], comment: str = "") -> str:
    """Write an ensemble: steps are (model, {model input: tensor}, {model output: tensor})."""
    model_dir = os.path.join(repository, name)
    os.makedirs(os.path.join(model_dir, "1"), exist_ok=True)
    config = mc.ModelConfig(name=name, platform="ensemble", max_batch_size=0)
    config.input.extend(inputs)
    config.output.extend(outputs)
    for model, ins, outs in steps:
        step = config.ensemble_scheduling.step.add()
        step.model_name, step.model_version = model, -1
        for k, v in ins.items():
            step.input_map[k] = v
        for k, v in outs.items():
            step.output_map[k] = v
    _write(model_dir, config, comment)
    return name


def _write(model_dir: str, config: mc.ModelConfig, comment: str) -> None:
    head = "".join(f"# {line}\n" for line in comment.splitlines()) if comment else ""
    with open(os.path.join(model_dir, "config.pbtxt"), "w", encoding="utf-8") as f:
        f.write(head + config_text(config))


def finish(ctx: TaskContext, names: list[str]) -> list[str]:
    """Refuse unknown options; check every written model as a load would."""
    unknown = sorted(set(ctx.options) - ctx.used)
    if unknown:
        raise TaskError(f"unknown option(s) {', '.join(unknown)}")
    from naiad.tools.validate import validate_repositories

    reports, problems = validate_repositories([ctx.repository])
    wanted = set(names) | {ctx.model_name}
    errors = [f"{r.name}: {r.errors[0]}" for r in reports if r.name in wanted and r.errors]
    if problems or errors:
        raise TaskError("the pipeline does not load: " + "; ".join(problems + errors))
    return names


def read_labels(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]
