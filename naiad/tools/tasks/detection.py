"""``--task detection``: image file in, boxes with classes and scores out.

    IMAGE ─▶ <name>_preprocess ─▶ <name>_model ─▶ <name>_postprocess ─▶ BOXES, SCORES,
             (letterbox)   └─ GEOMETRY ───────────────────┘              CLASS_IDS, LABELS

The network's output formats (``format=``) are documented in
``templates/detection_post.py``: ``yolo`` (one [N, 4+C] tensor, centre/size
boxes and class scores, optionally YOLOv5's objectness column; suppression
done here) or ``boxes`` (x1/y1/x2/y2 boxes, scores and class ids, already
suppressed).
"""

from __future__ import annotations

from naiad.tools.tasks import base as tasks
from naiad.tools.tasks._image import labels_files, network_image, pre_options, pre_settings
from naiad.tools.tasks.base import TaskContext, TaskError


class Detection(tasks.Task):
    name = "detection"
    description = "image -> boxes, classes, scores"
    options = {
        **pre_options("none"),
        "resize": "letterbox (default: keep the aspect ratio, pad with grey) or stretch",
        "format": "yolo (default) or boxes: the network's output format",
        "objectness": "yolo: rows carry an objectness score after the box (YOLOv5)",
        "outputs": "boxes: the network outputs holding boxes,scores,classes (default: the "
                   "first three, in order)",
        "normalized": "boxes: the boxes are in 0..1 rather than input pixels",
        "score_threshold": "drop detections below this score (default 0.25)",
        "iou_threshold": "yolo: non-maximum suppression overlap (default 0.45)",
        "max_detections": "at most this many detections (default 100)",
    }

    def build(self, ctx: TaskContext) -> list[str]:
        net = ctx.model_config
        image, height, width = network_image(ctx)
        fmt = ctx.option("format", "yolo")
        resize = ctx.option("resize", "letterbox")
        if resize not in ("letterbox", "stretch"):
            raise TaskError(f"resize={resize}: expected letterbox or stretch")
        pre, post = f"{ctx.name}_preprocess", f"{ctx.name}_postprocess"
        settings = pre_settings(ctx, image, height, width, [], [])
        settings["resize"] = resize
        post_settings = {
            "format": fmt, "height": height, "width": width,
            "objectness": str(ctx.option("objectness", False, bool)).lower(),
            "normalized": str(ctx.option("normalized", False, bool)).lower(),
            "score_threshold": ctx.option("score_threshold", 0.25, float),
            "iou_threshold": ctx.option("iou_threshold", 0.45, float),
            "max_detections": ctx.option("max_detections", 100, int),
        }
        outputs = {o.name: o for o in net.output}
        if fmt == "yolo":
            if len(net.output) != 1 and "outputs" not in ctx.options:
                raise TaskError("format=yolo expects one network output (or give outputs=NAME)")
            name = ctx.option("outputs", net.output[0].name)
            if name not in outputs:
                raise TaskError(f"the network has no output '{name}'")
            post_inputs = [tasks.tensor("PREDICTIONS", outputs[name].data_type,
                                        tasks.network_output_dims(net, outputs[name]))]
            mapping = {name: "predictions"}
            post_map = {"PREDICTIONS": "predictions"}
        elif fmt == "boxes":
            names = ctx.option("outputs", ",".join(o.name for o in net.output[:3])).split(",")
            if len(names) != 3 or any(n not in outputs for n in names):
                raise TaskError("format=boxes needs three network outputs: boxes, scores, "
                                f"classes (got {names}; the network has {list(outputs)})")
            roles = ("BOXES_IN", "SCORES_IN", "CLASSES_IN")
            post_inputs = [tasks.tensor(role, outputs[n].data_type,
                                        tasks.network_output_dims(net, outputs[n]))
                           for role, n in zip(roles, names)]
            mapping = {n: role.lower() for n, role in zip(names, roles)}
            post_map = {role: role.lower() for role in roles}
        else:
            raise TaskError(f"format={fmt}: expected yolo or boxes")
        tasks.python_model(
            ctx.repository, pre, "detection_pre.py",
            [tasks.tensor("IMAGE", "TYPE_UINT8", [-1])],
            [tasks.tensor(image.name, image.data_type, image.dims(height, width), output=True),
             tasks.tensor("GEOMETRY", "TYPE_FP32", [6], output=True)],
            settings,
            comment=f"Decodes and letterboxes images for {ctx.model_name} (naiad import --task "
                    "detection).")
        tasks.python_model(
            ctx.repository, post, "detection_post.py",
            post_inputs + [tasks.tensor("GEOMETRY", "TYPE_FP32", [6])],
            [tasks.tensor("BOXES", "TYPE_FP32", [-1, 4], output=True),
             tasks.tensor("SCORES", "TYPE_FP32", [-1], output=True),
             tasks.tensor("CLASS_IDS", "TYPE_INT64", [-1], output=True),
             tasks.tensor("LABELS", "TYPE_STRING", [-1], output=True),
             tasks.tensor("DETS", "TYPE_FP32", [-1, 5], output=True)],
            {k: str(v) for k, v in post_settings.items()}, labels_files(ctx),
            comment=f"Boxes from {ctx.model_name}'s {fmt} output, in image pixels.")
        tasks.ensemble(
            ctx.repository, ctx.name,
            [tasks.tensor("IMAGE", "TYPE_UINT8", [-1])],
            [tasks.tensor("BOXES", "TYPE_FP32", [-1, 4], output=True),
             tasks.tensor("SCORES", "TYPE_FP32", [-1], output=True),
             tasks.tensor("CLASS_IDS", "TYPE_INT64", [-1], output=True),
             tasks.tensor("LABELS", "TYPE_STRING", [-1], output=True),
             tasks.tensor("DETS", "TYPE_FP32", [-1, 5], output=True)],
            [(pre, {"IMAGE": "IMAGE"}, {image.name: "pixels", "GEOMETRY": "geometry"}),
             (ctx.model_name, {image.name: "pixels"}, mapping),
             (post, {**post_map, "GEOMETRY": "geometry"},
              {"BOXES": "BOXES", "SCORES": "SCORES", "CLASS_IDS": "CLASS_IDS",
               "LABELS": "LABELS", "DETS": "DETS"})],
            comment=f"Object detection with {ctx.model_name}: IMAGE (an image file's bytes) "
                    "-> BOXES (x1, y1, x2, y2 in image pixels), SCORES, CLASS_IDS, LABELS, "
                    "DETS (boxes and scores, [N, 5]).")
        return tasks.finish(ctx, [ctx.name, pre, post])


TASK = Detection()
