"""What the image tasks share: the pre-processing settings every pipeline takes."""

from __future__ import annotations

from naiad.protocol import model_config_pb2 as mc
from naiad.tools.tasks import base as tasks
from naiad.tools.tasks.base import TaskContext, TaskError

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

def pre_options(normalization: str) -> dict[str, str]:
    """The documented pre-processing options; ``normalization`` names mean/std's default."""
    return {
        "size": "HEIGHTxWIDTH of the network input when the network's is variable",
        "layout": "NCHW or NHWC (default: from the input's format or shape)",
        "scale": "multiplies the 0..255 pixel values first (default 1/255)",
        "mean": f"per-channel mean subtracted after scaling (default {normalization})",
        "std": f"per-channel divisor after the mean (default {normalization})",
    }


def network_image(ctx: TaskContext) -> tuple[tasks.ImageInput, int, int]:
    """The network's image input and the size images are resized to."""
    image = tasks.image_input(ctx.model_config, ctx.option("layout", ""))
    height, width = tasks.image_size(ctx, image)
    return image, height, width


def chosen_output(ctx: TaskContext):
    """The network output named by ``output=`` (default: the first)."""
    net = ctx.model_config
    name = ctx.option("output", net.output[0].name if net.output else "")
    outs = [o for o in net.output if o.name == name]
    if not outs:
        raise TaskError(f"the network has no output '{name}'")
    return outs[0]


def pre_settings(ctx: TaskContext, image: tasks.ImageInput, height: int, width: int,
                 mean: list[float], std: list[float]) -> dict[str, str]:
    """The settings of a pre-processing model, from the network and the task options."""
    mean = ctx.floats("mean", mean)
    std = ctx.floats("std", std)
    if len(mean) not in (0, 1, image.channels) or len(std) not in (0, 1, image.channels):
        raise TaskError(f"mean and std need 1 or {image.channels} values")
    return {"output": image.name, "layout": image.layout, "height": str(height),
            "width": str(width), "channels": str(image.channels),
            "data_type": mc.DataType.Name(image.data_type),
            "batch_dim": "true" if image.batch_dim else "false",
            "scale": str(ctx.option("scale", 1 / 255.0, float)),
            "mean": ",".join(str(v) for v in mean), "std": ",".join(str(v) for v in std)}


def labels_files(ctx: TaskContext) -> dict[str, str]:
    if ctx.labels_file:
        return {"labels.txt": ctx.labels_file}
    ctx.warnings.append("no --labels: LABELS carries class indices")
    return {}
