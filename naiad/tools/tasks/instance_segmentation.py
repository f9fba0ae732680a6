"""``--task instance_segmentation``: image file in, boxes, classes, scores and a mask per
object out.

    IMAGE ─▶ <name>_preprocess ─▶ <name>_model ─▶ <name>_postprocess ─▶ BOXES, SCORES, CLASS_IDS,
             (letterbox)   └─ GEOMETRY ───────────────────┘              LABELS, DETS, MASKS

The network's outputs are YOLOv8-seg's (``templates/instance_segmentation_post.py``):
detections [1, N, 4+C+K] (centre/size box, C class scores, K mask coefficients;
or transposed) and prototypes [1, K, h, w]. A mask is the sigmoid of the
coefficients times the prototypes, cut to its box, pasted onto the image.
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
from naiad.tools.tasks.base import TaskContext, TaskError


class InstanceSegmentation(tasks.Task):
    name = "instance_segmentation"
    description = "image -> boxes, classes, scores and a mask per object (YOLOv8-seg outputs)"
    options = detector_options({
        "outputs": "the network outputs holding detections,prototypes (default: the first "
                   "two, in order)",
        "mask_threshold": "mask pixels at or above this probability (default 0.5)",
    })

    def build(self, ctx: TaskContext) -> list[str]:
        net = ctx.model_config
        image, height, width = network_image(ctx)
        dets, protos = network_outputs(ctx, ("detections", "prototypes"))
        proto_dims = tasks.network_output_dims(net, protos)
        if len(proto_dims) != 4 or proto_dims[1] < 1:
            raise TaskError(f"prototypes output {protos.name} has dims {proto_dims}: expected "
                            "[1, K, h, w]")
        pre = detector_pre(ctx, image, height, width, self.name)
        post = f"{ctx.name}_postprocess"
        settings = detector_settings(ctx, height, width)
        settings["mask_threshold"] = str(ctx.option("mask_threshold", 0.5, float))
        settings["prototypes"] = str(proto_dims[1])
        outs = [tasks.tensor("BOXES", "TYPE_FP32", [-1, 4], output=True),
                tasks.tensor("SCORES", "TYPE_FP32", [-1], output=True),
                tasks.tensor("CLASS_IDS", "TYPE_INT64", [-1], output=True),
                tasks.tensor("LABELS", "TYPE_STRING", [-1], output=True),
                tasks.tensor("DETS", "TYPE_FP32", [-1, 5], output=True),
                tasks.tensor("MASKS", "TYPE_UINT8", [-1, -1, -1], output=True)]
        tasks.python_model(
            ctx.repository, post, "instance_segmentation_post.py",
            [tasks.tensor("DETECTIONS", dets.data_type, tasks.network_output_dims(net, dets)),
             tasks.tensor("PROTOTYPES", protos.data_type, proto_dims),
             tasks.tensor("GEOMETRY", "TYPE_FP32", [6])],
            outs, settings, labels_files(ctx),
            comment=f"Boxes and masks from {ctx.model_name}'s YOLOv8-seg outputs, in image "
                    "pixels.")
        names = [o.name for o in outs]
        tasks.ensemble(
            ctx.repository, ctx.name, [tasks.tensor("IMAGE", "TYPE_UINT8", [-1])], outs,
            [(pre, {"IMAGE": "IMAGE"}, {image.name: "pixels", "GEOMETRY": "geometry"}),
             (ctx.model_name, {image.name: "pixels"},
              {dets.name: "detections", protos.name: "prototypes"}),
             (post, {"DETECTIONS": "detections", "PROTOTYPES": "prototypes",
                     "GEOMETRY": "geometry"}, {n: n for n in names})],
            comment=f"Instance segmentation with {ctx.model_name}: IMAGE (an image file's "
                    "bytes) -> BOXES (x1, y1, x2, y2 in image pixels), SCORES, CLASS_IDS, "
                    "LABELS, DETS ([N, 5]), MASKS ([N, height, width], 1 inside the object).")
        return tasks.finish(ctx, [ctx.name, pre, post])


TASK = InstanceSegmentation()
