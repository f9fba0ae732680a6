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
this file), best first, at most max_detections.
"""

import os

import imagelib
import numpy as np

import triton_python_backend_utils as pb_utils


def nms(boxes, scores, iou_threshold):
    """Indices kept by greedy non-maximum suppression, best first."""
    order = np.argsort(-scores, kind="stable")
    keep = []
    areas = np.maximum(0, boxes[:, 2] - boxes[:, 0]) * np.maximum(0, boxes[:, 3] - boxes[:, 1])
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        x1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        y1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        x2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        y2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.maximum(0, x2 - x1) * np.maximum(0, y2 - y1)
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return np.array(keep, dtype=np.int64)


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
        here = os.path.dirname(os.path.abspath(__file__))
        self.labels = imagelib.read_labels(os.path.join(here, "labels.txt"))

    def _yolo(self, request):
        x = pb_utils.get_input_tensor_by_name(request, "PREDICTIONS").as_numpy()
        x = x.reshape(x.shape[-2], x.shape[-1]).astype(np.float32)
        if x.shape[0] < x.shape[1]:  # [4+C, N]: one column per box
            x = x.T
        boxes = np.stack([x[:, 0] - x[:, 2] / 2, x[:, 1] - x[:, 3] / 2,
                          x[:, 0] + x[:, 2] / 2, x[:, 1] + x[:, 3] / 2], axis=1)
        if self.objectness:
            cls = x[:, 5:] * x[:, 4:5]
        else:
            cls = x[:, 4:]
        ids = cls.argmax(axis=1)
        scores = cls[np.arange(len(cls)), ids]
        mask = scores >= self.score_threshold
        boxes, scores, ids = boxes[mask], scores[mask], ids[mask]
        keep = []
        for c in np.unique(ids):
            idx = np.nonzero(ids == c)[0]
            keep.extend(idx[nms(boxes[idx], scores[idx], self.iou_threshold)])
        keep = np.array(keep, dtype=np.int64)
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
            geometry = pb_utils.get_input_tensor_by_name(request, "GEOMETRY").as_numpy()
            sx, sy, px, py, w, h = (float(v) for v in geometry.reshape(-1))
            boxes, scores, ids = self._yolo(request) if self.format == "yolo" else \
                self._boxes(request)
            order = np.argsort(-scores, kind="stable")[:self.max_detections]
            boxes, scores, ids = boxes[order], scores[order], ids[order].astype(np.int64)
            # from the network input's pixels back onto the image
            boxes = (boxes - np.array([px, py, px, py], dtype=np.float32)) / \
                np.array([sx, sy, sx, sy], dtype=np.float32)
            boxes = np.clip(boxes, 0, np.array([w, h, w, h], dtype=np.float32))
            labels = [(self.labels[i] if 0 <= i < len(self.labels) and self.labels[i]
                       else str(i)).encode() for i in ids]
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("BOXES", boxes.reshape(-1, 4).astype(np.float32)),
                pb_utils.Tensor("SCORES", scores.astype(np.float32)),
                pb_utils.Tensor("CLASS_IDS", ids),
                pb_utils.Tensor("LABELS", np.array(labels, dtype=np.object_).reshape(-1)),
            ]))
        return responses
