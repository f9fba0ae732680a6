"""Instance segmentation post-processing (naiad import --task instance_segmentation).

YOLOv8-seg outputs for one image: DETECTIONS [1, N, 4+C+K] (or [1, 4+C+K, N])
with rows cx, cy, w, h in the network input's pixels, C class scores, K mask
coefficients; PROTOTYPES [1, K, h, w] covering the network input. Detections
under score_threshold are dropped, class-wise NMS at iou_threshold, at most
max_detections. Each mask is sigmoid(coefficients . prototypes), upsampled to
the network input, cut to its box, mapped back onto the image through
GEOMETRY and thresholded at mask_threshold.

Out: BOXES (FP32 [K, 4], x1, y1, x2, y2 image pixels), SCORES, CLASS_IDS,
LABELS, DETS (FP32 [K, 5]) and MASKS (UINT8 [K, height, width], 1 inside).
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
        self.mask_threshold = float(s["mask_threshold"])
        self.k = int(s["prototypes"])
        self.height, self.width = int(s["height"]), int(s["width"])
        self.labels = imagelib.here_labels(__file__)

    def masks(self, coef, protos, boxes, geometry):
        """[K, H, W] uint8 masks at the image's size, from boxes in network-input pixels."""
        k, ph, pw = protos.shape
        h, w = int(geometry.h), int(geometry.w)
        out = np.zeros((len(coef), h, w), dtype=np.uint8)
        if not len(coef):
            return out
        logits = coef @ protos.reshape(k, -1)
        probs = (1 / (1 + np.exp(-logits))).reshape(-1, ph, pw).astype(np.float32)
        # image pixel centres -> network input pixels -> prototype cells
        ys = (np.arange(h) + 0.5) * geometry.sy + geometry.py
        xs = (np.arange(w) + 0.5) * geometry.sx + geometry.px
        rows = np.clip(ys * ph / self.height - 0.5, 0, ph - 1)
        cols = np.clip(xs * pw / self.width - 0.5, 0, pw - 1)
        r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
        r1, c1 = np.minimum(r0 + 1, ph - 1), np.minimum(c0 + 1, pw - 1)
        fr, fc = (rows - r0)[:, None], (cols - c0)[None, :]
        for i, p in enumerate(probs):  # bilinear, then cut to the box
            top = p[r0][:, c0] * (1 - fc) + p[r0][:, c1] * fc
            bottom = p[r1][:, c0] * (1 - fc) + p[r1][:, c1] * fc
            m = (top * (1 - fr) + bottom * fr) >= self.mask_threshold
            x1, y1, x2, y2 = boxes[i]
            inside = ((xs >= x1) & (xs <= x2))[None, :] & ((ys >= y1) & (ys <= y2))[:, None]
            out[i] = m & inside
        return out

    def execute(self, requests):
        responses = []
        for request in requests:
            def get(name, request=request):
                return pb_utils.get_input_tensor_by_name(request, name).as_numpy()

            geometry = imagelib.Geometry(get("GEOMETRY"))
            protos = get("PROTOTYPES").astype(np.float32)
            protos = protos.reshape(protos.shape[-3:])
            x = imagelib.rows(get("DETECTIONS"))
            c = x.shape[1] - 4 - self.k
            boxes = imagelib.xywh_to_xyxy(x)
            ids, scores = imagelib.best_class(x[:, 4:4 + c])
            coef = x[:, 4 + c:]
            keep = np.nonzero(scores >= self.score_threshold)[0]
            keep = keep[imagelib.classwise_nms(boxes[keep], scores[keep], ids[keep],
                                               self.iou_threshold)][:self.max_detections]
            boxes, scores, ids, coef = boxes[keep], scores[keep], ids[keep], coef[keep]
            masks = self.masks(coef, protos, boxes, geometry)
            image_boxes = geometry.boxes(boxes).astype(np.float32)
            scores = scores.astype(np.float32)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("BOXES", image_boxes),
                pb_utils.Tensor("SCORES", scores),
                pb_utils.Tensor("CLASS_IDS", ids.astype(np.int64)),
                pb_utils.Tensor("LABELS", imagelib.label_list(self.labels, ids)),
                pb_utils.Tensor("DETS", np.concatenate([image_boxes, scores[:, None]], axis=1)),
                pb_utils.Tensor("MASKS", masks),
            ]))
        return responses
