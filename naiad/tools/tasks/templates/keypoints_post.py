"""Keypoint post-processing (naiad import --task keypoints).

YOLOv8-pose output for one image: ROWS [1, N, 4+C+3K] (or [1, 4+C+3K, N]):
cx, cy, w, h and C class scores, then K keypoints (x, y, confidence) in the
network input's pixels. Rows under score_threshold are dropped, class-wise
NMS at iou_threshold, at most max_detections, best first.

Out: BOXES (FP32 [M, 4], image pixels), SCORES, CLASS_IDS, LABELS, DETS
(FP32 [M, 5]), KEYPOINTS (FP32 [M, K, 3]: x, y in image pixels, confidence)
and KEYPOINT_NAMES (BYTES [K], keypoints.txt beside this file, else indices).
"""

import imagelib
import numpy as np

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        s = imagelib.settings(args)
        self.score_threshold = float(s["score_threshold"])
        self.iou_threshold = float(s["iou_threshold"])
        self.max_detections = int(s["max_detections"])
        self.k = int(s["keypoints"])
        self.labels = imagelib.here_labels(__file__)
        names = imagelib.here_labels(__file__, "keypoints.txt")
        self.names = imagelib.label_list(names, range(self.k))

    def execute(self, requests):
        responses = []
        for request in requests:
            geometry = imagelib.Geometry(
                pb_utils.get_input_tensor_by_name(request, "GEOMETRY").as_numpy())
            x = imagelib.rows(pb_utils.get_input_tensor_by_name(request, "ROWS").as_numpy())
            c = x.shape[1] - 4 - 3 * self.k
            boxes = imagelib.xywh_to_xyxy(x)
            ids, scores = imagelib.best_class(x[:, 4:4 + c])
            points = x[:, 4 + c:].reshape(-1, self.k, 3)
            keep = np.nonzero(scores >= self.score_threshold)[0]
            keep = keep[imagelib.classwise_nms(boxes[keep], scores[keep], ids[keep],
                                               self.iou_threshold)][:self.max_detections]
            image_boxes = geometry.boxes(boxes[keep]).astype(np.float32)
            scores, ids, points = scores[keep].astype(np.float32), ids[keep], points[keep]
            points = np.concatenate([geometry.points(points[..., :2]), points[..., 2:]],
                                    axis=-1).astype(np.float32)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("BOXES", image_boxes),
                pb_utils.Tensor("SCORES", scores),
                pb_utils.Tensor("CLASS_IDS", ids.astype(np.int64)),
                pb_utils.Tensor("LABELS", imagelib.label_list(self.labels, ids)),
                pb_utils.Tensor("DETS", np.concatenate([image_boxes, scores[:, None]], axis=1)),
                pb_utils.Tensor("KEYPOINTS", points.reshape(-1, self.k, 3)),
                pb_utils.Tensor("KEYPOINT_NAMES", self.names),
            ]))
        return responses
