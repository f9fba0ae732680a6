"""``--task classification``: image file in, top-k labels and scores out.

    IMAGE ─▶ <name>_preprocess ─▶ <name>_model ─▶ <name>_postprocess ─▶ LABELS, SCORES, CLASS_IDS,
                                                                          PROBS

The network: one image input ([C,H,W] or [H,W,C], plus the batch dimension
if it batches) and one output of class scores ([C] logits or probabilities).
With ``--labels``, the ensemble's PROBS output (every class's probability)
carries them, so Triton's classification extension works on it: ask for
PROBS with ``class_count=k`` and get "score:index:label" strings.
"""

from __future__ import annotations

import os
import shutil

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


class Classification(tasks.Task):
    name = "classification"
    description = "image -> top-k labels and scores"
    options = {
        **pre_options("ImageNet's"),
        "topk": "how many classes to return (default 5)",
        "softmax": "auto (default: unless the scores already sum to 1), true or false",
        "output": "the network output holding the class scores (default: the first)",
    }

    def build(self, ctx: TaskContext) -> list[str]:
        net = ctx.model_config
        image, height, width = network_image(ctx)
        output = chosen_output(ctx)
        out_name = output.name
        scores_dims = tasks.network_output_dims(net, output)
        softmax = ctx.option("softmax", "auto")
        if softmax not in ("auto", "true", "false"):
            raise TaskError(f"softmax={softmax}: expected auto, true or false")
        pre, post = f"{ctx.name}_preprocess", f"{ctx.name}_postprocess"
        settings = pre_settings(ctx, image, height, width, IMAGENET_MEAN, IMAGENET_STD)
        topk = ctx.option("topk", 5, int)
        if topk < 1:
            raise TaskError("topk must be >= 1")
        tasks.python_model(
            ctx.repository, pre, "classification_pre.py",
            [tasks.tensor("IMAGE", "TYPE_UINT8", [-1])],
            [tasks.tensor(image.name, image.data_type, image.dims(height, width), output=True)],
            settings,
            comment=f"Decodes and prepares images for {ctx.model_name} (naiad import --task "
                    "classification).")
        files = labels_files(ctx)
        tasks.python_model(
            ctx.repository, post, "classification_post.py",
            [tasks.tensor("SCORES_IN", output.data_type, scores_dims)],
            [tasks.tensor("CLASS_IDS", "TYPE_INT64", [-1], output=True),
             tasks.tensor("SCORES", "TYPE_FP32", [-1], output=True),
             tasks.tensor("LABELS", "TYPE_STRING", [-1], output=True),
             tasks.tensor("PROBS", "TYPE_FP32", [-1], output=True)],
            {"topk": topk, "softmax": softmax}, files,
            comment=f"Top-{topk} classes from {ctx.model_name}'s scores.")
        probs = tasks.tensor("PROBS", "TYPE_FP32", [-1], output=True)
        if ctx.labels_file:  # Triton's classification extension: PROBS with class_count=k
            probs.label_filename = "labels.txt"
        tasks.ensemble(
            ctx.repository, ctx.name,
            [tasks.tensor("IMAGE", "TYPE_UINT8", [-1])],
            [tasks.tensor("LABELS", "TYPE_STRING", [-1], output=True),
             tasks.tensor("SCORES", "TYPE_FP32", [-1], output=True),
             tasks.tensor("CLASS_IDS", "TYPE_INT64", [-1], output=True), probs],
            [(pre, {"IMAGE": "IMAGE"}, {image.name: "pixels"}),
             (ctx.model_name, {image.name: "pixels"}, {out_name: "scores"}),
             (post, {"SCORES_IN": "scores"},
              {"LABELS": "LABELS", "SCORES": "SCORES", "CLASS_IDS": "CLASS_IDS",
               "PROBS": "PROBS"})],
            comment=f"Image classification with {ctx.model_name}: IMAGE (an image file's "
                    "bytes) -> LABELS, SCORES, CLASS_IDS (top first), PROBS (every class; "
                    "with labels, ask for it with class_count=k).")
        if ctx.labels_file:
            shutil.copyfile(ctx.labels_file, os.path.join(ctx.repository, ctx.name,
                                                          "labels.txt"))
        return tasks.finish(ctx, [ctx.name, pre, post])


TASK = Classification()

__all__ = ["Classification"]
