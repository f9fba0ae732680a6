"""``--task keypoints``: image file in, objects with their keypoints out.

    IMAGE ─▶ <name>_preprocess ─▶ <name>_model ─▶ <name>_postprocess ─▶ BOXES, SCORES, CLASS_IDS,
             (letterbox)   └─ GEOMETRY ───────────────────┘              LABELS, DETS, KEYPOINTS

The network's output is YOLOv8-pose's (``templates/keypoints_post.py``): one
tensor [1, N, 4+C+3K] (or transposed): centre/size box, C class scores (one,
usually: the person), then K keypoints as x, y, confidence in the network
input's pixels. ``keypoints=K`` says how many (default: the output's width
with one class); ``--task-option names=FILE`` gives their names (one a line),
copied beside the post-processing as ``keypoints.txt``.
"""

from __future__ import annotations

import os

from naiad.tools.tasks import base as tasks
from naiad.tools.tasks._image import (
    detector_options,
    detector_pre,
    detector_settings,
    labels_files,
    network_image,
    network_outputs,
    output_width,
)
from naiad.tools.tasks.base import TaskContext, TaskError


class Keypoints(tasks.Task):
    name = "keypoints"
    description = "image -> objects with keypoints (YOLOv8-pose output)"
    options = detector_options({
        "outputs": "the network output holding the rows (default: the first)",
        "keypoints": "keypoints per object (default: from the output width, one class)",
        "names": "a file naming the keypoints, one a line (written as keypoints.txt)",
    })

    def build(self, ctx: TaskContext) -> list[str]:
        net = ctx.model_config
        image, height, width = network_image(ctx)
        (output,) = network_outputs(ctx, ("rows",))
        row = output_width(ctx, output)
        k = ctx.option("keypoints", 0, int)
        if not k:
            if not row or (row - 5) % 3:
                raise TaskError(f"output {output.name}: give keypoints=K (the row width is "
                                f"{row or 'variable'})")
            k = (row - 5) // 3
        if row and row - 4 - 3 * k < 1:
            raise TaskError(f"output {output.name}: rows of {row} values cannot hold a box, "
                            f"a class score and {k} keypoints")
        pre = detector_pre(ctx, image, height, width, self.name)
        post = f"{ctx.name}_postprocess"
        settings = detector_settings(ctx, height, width)
        settings["keypoints"] = str(k)
        files = labels_files(ctx)
        names = ctx.option("names", "")
        if names:
            if not os.path.isfile(names):
                raise TaskError(f"names={names}: no such file")
            files["keypoints.txt"] = names
        outs = [tasks.tensor("BOXES", "TYPE_FP32", [-1, 4], output=True),
                tasks.tensor("SCORES", "TYPE_FP32", [-1], output=True),
                tasks.tensor("CLASS_IDS", "TYPE_INT64", [-1], output=True),
                tasks.tensor("LABELS", "TYPE_STRING", [-1], output=True),
                tasks.tensor("DETS", "TYPE_FP32", [-1, 5], output=True),
                tasks.tensor("KEYPOINTS", "TYPE_FP32", [-1, k, 3], output=True),
                tasks.tensor("KEYPOINT_NAMES", "TYPE_STRING", [k], output=True)]
        tasks.python_model(
            ctx.repository, post, "keypoints_post.py",
            [tasks.tensor("ROWS", output.data_type, tasks.network_output_dims(net, output)),
             tasks.tensor("GEOMETRY", "TYPE_FP32", [6])],
            outs, settings, files,
            comment=f"Objects and {k} keypoints each from {ctx.model_name}'s YOLOv8-pose "
                    "output, in image pixels.")
        tasks.ensemble(
            ctx.repository, ctx.name, [tasks.tensor("IMAGE", "TYPE_UINT8", [-1])], outs,
            [(pre, {"IMAGE": "IMAGE"}, {image.name: "pixels", "GEOMETRY": "geometry"}),
             (ctx.model_name, {image.name: "pixels"}, {output.name: "rows"}),
             (post, {"ROWS": "rows", "GEOMETRY": "geometry"}, {o.name: o.name for o in outs})],
            comment=f"Keypoint detection with {ctx.model_name}: IMAGE (an image file's bytes) "
                    "-> BOXES, SCORES, CLASS_IDS, LABELS, DETS, KEYPOINTS ([N, K, 3]: x, y in "
                    "image pixels, confidence), KEYPOINT_NAMES.")
        return tasks.finish(ctx, [ctx.name, pre, post])


TASK = Keypoints()
