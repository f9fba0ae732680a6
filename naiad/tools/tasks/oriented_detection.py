"""``--task oriented_detection``: image file in, rotated boxes with classes and scores out.

    IMAGE ─▶ <name>_preprocess ─▶ <name>_model ─▶ <name>_postprocess ─▶ BOXES, CORNERS, SCORES,
             (letterbox)   └─ GEOMETRY ───────────────────┘              CLASS_IDS, LABELS, DETS

The network's output is YOLOv8-obb's (``templates/oriented_detection_post.py``):
one tensor [1, N, 4+C+1] (or transposed): centre x, centre y, width, height in
the network input's pixels, C class scores, the angle in radians. Suppression
is rotated-box NMS (the boxes' polygon overlap, OpenCV's
``rotatedRectangleIntersection``): the python models need ``opencv-python``.
"""

from __future__ import annotations

from naiad.tools.tasks import base as tasks
from naiad.tools.tasks._image import (
    detector_options,
    detector_pre,
    detector_settings,
    labels_files,
    network_image,
    network_outputs,
)
from naiad.tools.tasks.base import TaskContext


class OrientedDetection(tasks.Task):
    name = "oriented_detection"
    description = "image -> rotated boxes, classes, scores (YOLOv8-obb output)"
    options = detector_options({
        "outputs": "the network output holding the rows (default: the first)",
    })

    def build(self, ctx: TaskContext) -> list[str]:
        net = ctx.model_config
        image, height, width = network_image(ctx)
        (output,) = network_outputs(ctx, ("rows",))
        pre = detector_pre(ctx, image, height, width, self.name)
        post = f"{ctx.name}_postprocess"
        outs = [tasks.tensor("BOXES", "TYPE_FP32", [-1, 5], output=True),
                tasks.tensor("CORNERS", "TYPE_FP32", [-1, 4, 2], output=True),
                tasks.tensor("SCORES", "TYPE_FP32", [-1], output=True),
                tasks.tensor("CLASS_IDS", "TYPE_INT64", [-1], output=True),
                tasks.tensor("LABELS", "TYPE_STRING", [-1], output=True),
                tasks.tensor("DETS", "TYPE_FP32", [-1, 6], output=True)]
        tasks.python_model(
            ctx.repository, post, "oriented_detection_post.py",
            [tasks.tensor("ROWS", output.data_type, tasks.network_output_dims(net, output)),
             tasks.tensor("GEOMETRY", "TYPE_FP32", [6])],
            outs, detector_settings(ctx, height, width), labels_files(ctx),
            comment=f"Rotated boxes from {ctx.model_name}'s YOLOv8-obb output, in image "
                    "pixels.")
        tasks.ensemble(
            ctx.repository, ctx.name, [tasks.tensor("IMAGE", "TYPE_UINT8", [-1])], outs,
            [(pre, {"IMAGE": "IMAGE"}, {image.name: "pixels", "GEOMETRY": "geometry"}),
             (ctx.model_name, {image.name: "pixels"}, {output.name: "rows"}),
             (post, {"ROWS": "rows", "GEOMETRY": "geometry"}, {o.name: o.name for o in outs})],
            comment=f"Oriented object detection with {ctx.model_name}: IMAGE (an image file's "
                    "bytes) -> BOXES ([N, 5]: centre x, centre y, width, height in image "
                    "pixels, angle in radians), CORNERS ([N, 4, 2]), SCORES, CLASS_IDS, "
                    "LABELS, DETS ([N, 6]: the box and its score).")
        return tasks.finish(ctx, [ctx.name, pre, post])


TASK = OrientedDetection()
