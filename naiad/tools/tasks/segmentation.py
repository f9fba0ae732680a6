"""``--task segmentation``: image file in, a class mask at the image's size out.

    IMAGE ─▶ <name>_preprocess ─▶ <name>_model ─▶ <name>_postprocess ─▶ MASK, CLASS_IDS, LABELS
                         └─ IMAGE_SIZE ───────────────────┘

The network: one image input and one per-pixel output, [C, H, W] class
scores (argmax), [1, H, W] a foreground probability (threshold), or [H, W]
class ids (class_ids=true); see ``templates/segmentation_post.py``.
"""

from __future__ import annotations

from naiad.tools.tasks import base as tasks
from naiad.tools.tasks._image import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    chosen_output,
    labels_files,
    network_image,
    pre_options,
    pre_settings,
)
from naiad.tools.tasks.base import TaskContext, TaskError


class Segmentation(tasks.Task):
    name = "segmentation"
    description = "image -> per-pixel class mask"
    options = {
        **pre_options("ImageNet's"),
        "output": "the network output holding the per-pixel scores (default: the first)",
        "threshold": "one-channel outputs: foreground at or above this (default 0.5)",
        "class_ids": "the output already holds class ids (default false)",
        "output_layout": "NCHW (default) or NHWC: where the class scores are in the output",
        "resize": "stretch (default: to the network's size, as MMSegmentation's Resize "
                  "without keep_ratio) or letterbox (keep the aspect ratio, pad with grey; "
                  "the mask is cropped back)",
    }

    def build(self, ctx: TaskContext) -> list[str]:
        net = ctx.model_config
        image, height, width = network_image(ctx)
        output = chosen_output(ctx)
        out_name = output.name
        layout = ctx.option("output_layout", "NCHW")
        if layout not in ("NCHW", "NHWC"):
            raise TaskError(f"output_layout={layout}: expected NCHW or NHWC")
        resize = ctx.option("resize", "stretch")
        if resize not in ("stretch", "letterbox"):
            raise TaskError(f"resize={resize}: expected stretch or letterbox")
        pre, post = f"{ctx.name}_preprocess", f"{ctx.name}_postprocess"
        tasks.python_model(
            ctx.repository, pre, "segmentation_pre.py",
            [tasks.tensor("IMAGE", "TYPE_UINT8", [-1])],
            [tasks.tensor(image.name, image.data_type, image.dims(height, width), output=True),
             tasks.tensor("IMAGE_SIZE", "TYPE_INT64", [2], output=True)],
            {**pre_settings(ctx, image, height, width, IMAGENET_MEAN, IMAGENET_STD),
             "resize": resize},
            comment=f"Decodes and resizes images for {ctx.model_name} (naiad import --task "
                    "segmentation).")
        tasks.python_model(
            ctx.repository, post, "segmentation_post.py",
            [tasks.tensor("LOGITS", output.data_type, tasks.network_output_dims(net, output)),
             tasks.tensor("IMAGE_SIZE", "TYPE_INT64", [2])],
            [tasks.tensor("MASK", "TYPE_INT32", [-1, -1], output=True),
             tasks.tensor("CLASS_IDS", "TYPE_INT64", [-1], output=True),
             tasks.tensor("LABELS", "TYPE_STRING", [-1], output=True)],
            {"threshold": str(ctx.option("threshold", 0.5, float)),
             "class_ids": str(ctx.option("class_ids", False, bool)).lower(),
             "layout": layout, "resize": resize}, labels_files(ctx),
            comment=f"Class mask at the image's size from {ctx.model_name}'s output.")
        tasks.ensemble(
            ctx.repository, ctx.name,
            [tasks.tensor("IMAGE", "TYPE_UINT8", [-1])],
            [tasks.tensor("MASK", "TYPE_INT32", [-1, -1], output=True),
             tasks.tensor("CLASS_IDS", "TYPE_INT64", [-1], output=True),
             tasks.tensor("LABELS", "TYPE_STRING", [-1], output=True)],
            [(pre, {"IMAGE": "IMAGE"}, {image.name: "pixels", "IMAGE_SIZE": "image_size"}),
             (ctx.model_name, {image.name: "pixels"}, {out_name: "logits"}),
             (post, {"LOGITS": "logits", "IMAGE_SIZE": "image_size"},
              {"MASK": "MASK", "CLASS_IDS": "CLASS_IDS", "LABELS": "LABELS"})],
            comment=f"Semantic segmentation with {ctx.model_name}: IMAGE (an image file's "
                    "bytes) -> MASK (class per pixel), CLASS_IDS and LABELS present.")
        return tasks.finish(ctx, [ctx.name, pre, post])


TASK = Segmentation()
