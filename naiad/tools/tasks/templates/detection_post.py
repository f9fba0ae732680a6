"""Detection post-processing (naiad import --task detection).

Two network output formats (the ``format`` setting):

* ``yolo``: one tensor [1, N, 4+C] (or [1, 4+C, N], transposed automatically
  when N > 4+C), each row a box centre x, centre y, width, height in the
  network input's pixels followed by C class scores; with objectness=true a
  YOLOv5-style row [cx, cy, w, h, objectness, C class scores] instead.
  Boxes under score_threshold are dropped, then class-wise non-maximum
  suppression at iou_threshold.
* ``boxes``: three tensors (already suppressed, as SSD/Faster R-CNN exports
  give them): BOXES_IN [1, N, 4] or [N, 4] as x1, y1, x2, y2 in input pixels
  (normalized=true: in 0..1), SCORES_IN [N] and CLASSES_IN [N].

Out: BOXES (FP32 [K, 4], x1, y1, x2, y2 in the original image's pixels),
SCORES (FP32 [K]), CLASS_IDS (INT64 [K]), LABELS (BYTES [K], labels.txt beside
this file), best first, at most max_detections; and DETS (FP32 [K, 5]: x1, y1,
x2, y2, score, MMDeploy's layout).
"""

import imagelib
import numpy as np

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        s = imagelib.settings(args)
        self.format = s["format"]
        self.objectness = s["objectness"] == "true"
        self.normalized = s["normalized"] == "true"
        self.score_threshold = float(s["score_threshold"])
        self.iou_threshold = float(s["iou_threshold"])
        self.max_detections = int(s["max_detections"])
        self.height, self.width = int(s["height"]), int(s["width"])
        self.labels = imagelib.here_labels(__file__)

    def _yolo(self, request):
        x = imagelib.rows(pb_utils.get_input_tensor_by_name(request, "PREDICTIONS").as_numpy())
        boxes = imagelib.xywh_to_xyxy(x)
        if self.objectness:
            cls = x[:, 5:] * x[:, 4:5]
        else:
            cls = x[:, 4:]
        ids, scores = imagelib.best_class(cls)
        mask = scores >= self.score_threshold
        boxes, scores, ids = boxes[mask], scores[mask], ids[mask]
        keep = imagelib.classwise_nms(boxes, scores, ids, self.iou_threshold)
        return boxes[keep], scores[keep], ids[keep]

    def _boxes(self, request):
        def get(name):
            return pb_utils.get_input_tensor_by_name(request, name).as_numpy()

        boxes = get("BOXES_IN").reshape(-1, 4).astype(np.float32)
        scores = get("SCORES_IN").reshape(-1).astype(np.float32)
        ids = get("CLASSES_IN").reshape(-1).astype(np.int64)
        if self.normalized:
            boxes = boxes * np.array([self.width, self.height, self.width, self.height],
                                     dtype=np.float32)
        mask = scores >= self.score_threshold
        return boxes[mask], scores[mask], ids[mask]

    def execute(self, requests):
        responses = []
        for request in requests:
            geometry = imagelib.Geometry(
                pb_utils.get_input_tensor_by_name(request, "GEOMETRY").as_numpy())
            boxes, scores, ids = self._yolo(request) if self.format == "yolo" else \
                self._boxes(request)
            order = np.argsort(-scores, kind="stable")[:self.max_detections]
            boxes, scores, ids = boxes[order], scores[order], ids[order].astype(np.int64)
            # from the network input's pixels back onto the image
            boxes = geometry.boxes(boxes).reshape(-1, 4).astype(np.float32)
            scores = scores.astype(np.float32)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("BOXES", boxes),
                pb_utils.Tensor("SCORES", scores),
                pb_utils.Tensor("CLASS_IDS", ids),
                pb_utils.Tensor("LABELS", imagelib.label_list(self.labels, ids)),
                pb_utils.Tensor("DETS", np.concatenate([boxes, scores[:, None]], axis=1)),
            ]))
        return responses
