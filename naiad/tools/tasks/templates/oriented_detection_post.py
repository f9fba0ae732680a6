"""Oriented detection post-processing (naiad import --task oriented_detection).

YOLOv8-obb output for one image: ROWS [1, N, 4+C+1] (or [1, 4+C+1, N]): centre
x, centre y, width, height in the network input's pixels, C class scores,
the angle in radians. Rows under score_threshold are dropped, then class-wise
rotated NMS (polygon overlap, OpenCV) at iou_threshold, at most
max_detections, best first. Boxes are mapped back onto the image through
GEOMETRY by their corners.

Out: BOXES (FP32 [K, 5]: cx, cy, w, h, angle in (-pi/2, pi/2]), CORNERS (FP32
[K, 4, 2]), SCORES, CLASS_IDS, LABELS, DETS (FP32 [K, 6]: BOXES and the score).
"""

import cv2
import imagelib
import numpy as np

import triton_python_backend_utils as pb_utils


def corners(rboxes: np.ndarray) -> np.ndarray:
    """[K, 5] (cx, cy, w, h, angle) -> [K, 4, 2] corners."""
    cx, cy, w, h, a = (rboxes[:, i] for i in range(5))
    c, s = np.cos(a), np.sin(a)
    local = np.array([[0.5, 0.5], [-0.5, 0.5], [-0.5, -0.5], [0.5, -0.5]], dtype=np.float32)
    dx = local[None, :, 0] * w[:, None]
    dy = local[None, :, 1] * h[:, None]
    return np.stack([cx[:, None] + dx * c[:, None] - dy * s[:, None],
                     cy[:, None] + dx * s[:, None] + dy * c[:, None]], axis=-1)


def from_corners(pts: np.ndarray) -> np.ndarray:
    """[K, 4, 2] corners (a parallelogram after non-uniform scaling: its best rectangle)
    -> [K, 5], the angle folded into (-pi/2, pi/2]."""
    out = np.zeros((len(pts), 5), dtype=np.float32)
    for i, p in enumerate(pts):
        centre = p.mean(axis=0)
        e1, e2 = p[0] - p[1], p[1] - p[2]
        w, h = float(np.hypot(*e1)), float(np.hypot(*e2))
        angle = float(np.arctan2(e1[1], e1[0]))
        if angle > np.pi / 2:
            angle -= np.pi
        elif angle <= -np.pi / 2:
            angle += np.pi
        out[i] = (centre[0], centre[1], w, h, angle)
    return out


def rotated_nms(rboxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS on rotated boxes by their polygons' overlap; kept indices, best first."""
    order = np.argsort(-scores, kind="stable")
    rects = [((float(b[0]), float(b[1])), (float(b[2]), float(b[3])), float(np.degrees(b[4])))
             for b in rboxes]
    areas = rboxes[:, 2] * rboxes[:, 3]
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = []
        for j in order[1:]:
            kind, region = cv2.rotatedRectangleIntersection(rects[i], rects[j])
            inter = 0.0
            if kind != cv2.INTERSECT_NONE and region is not None and len(region) > 2:
                inter = float(cv2.contourArea(cv2.convexHull(region)))
            iou = inter / max(float(areas[i] + areas[j]) - inter, 1e-9)
            if iou <= iou_threshold:
                rest.append(j)
        order = np.array(rest, dtype=np.int64)
    return np.array(keep, dtype=np.int64)


class TritonPythonModel:
    def initialize(self, args):
        s = imagelib.settings(args)
        self.score_threshold = float(s["score_threshold"])
        self.iou_threshold = float(s["iou_threshold"])
        self.max_detections = int(s["max_detections"])
        self.labels = imagelib.here_labels(__file__)

    def execute(self, requests):
        responses = []
        for request in requests:
            geometry = imagelib.Geometry(
                pb_utils.get_input_tensor_by_name(request, "GEOMETRY").as_numpy())
            x = imagelib.rows(pb_utils.get_input_tensor_by_name(request, "ROWS").as_numpy())
            rboxes = np.concatenate([x[:, :4], x[:, -1:]], axis=1)
            ids, scores = imagelib.best_class(x[:, 4:-1])
            keep = np.nonzero(scores >= self.score_threshold)[0]
            keep = keep[imagelib.classwise_nms(rboxes[keep], scores[keep], ids[keep],
                                               self.iou_threshold, overlap=rotated_nms)]
            keep = keep[:self.max_detections]
            pts = geometry.points(corners(rboxes[keep])).reshape(-1, 4, 2)
            boxes = from_corners(pts)
            scores, ids = scores[keep].astype(np.float32), ids[keep].astype(np.int64)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("BOXES", boxes),
                pb_utils.Tensor("CORNERS", pts.astype(np.float32)),
                pb_utils.Tensor("SCORES", scores),
                pb_utils.Tensor("CLASS_IDS", ids),
                pb_utils.Tensor("LABELS", imagelib.label_list(self.labels, ids)),
                pb_utils.Tensor("DETS", np.concatenate([boxes, scores[:, None]], axis=1)),
            ]))
        return responses
