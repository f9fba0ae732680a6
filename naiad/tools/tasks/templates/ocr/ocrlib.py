"""The PP-OCR pre- and post-processing, in plain numpy and OpenCV.

One module for every way the example runs the pipeline: the python models of
the ensemble, the BLS model and the in-process baseline of the benchmark
import these same functions, so the three compare only how the steps are
wired, never what they compute.

The steps (PP-OCRv4 detection, the mobile angle classifier, PP-OCRv4
recognition):

1. ``decode_image`` and ``det_preprocess``: decode the file, resize so the
   longer side is at most ``DET_LIMIT`` and both sides are multiples of 32,
   normalise to [-1, 1], NCHW.
2. the detection model gives a per-pixel text probability map.
3. ``db_boxes`` (DB post-processing): threshold, dilate, contours, minimum
   area rectangles scored by the mean probability inside, grown by the
   unclip ratio, scaled back to the original image, ordered top to bottom
   and left to right; ``crop_boxes`` cuts each box out with a perspective
   warp (tall crops are turned upright).
4. ``cls_preprocess`` and ``apply_cls``: 48x192 inputs for the angle
   classifier; crops it finds upside down are turned by 180 degrees.
5. ``rec_preprocess``: crops resized to height 48, padded to one width.
6. the recognition model gives per-timestep character probabilities.
7. ``ctc_decode``: best path, repeats and blanks removed, with the model's
   own character dictionary; lines below ``TEXT_SCORE`` are dropped.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

DET_LIMIT = 960
DET_THRESH = 0.3
BOX_THRESH = 0.5
UNCLIP_RATIO = 1.6
MAX_CANDIDATES = 1000
MIN_SIZE = 3
CLS_SHAPE = (48, 192)
CLS_THRESH = 0.9
REC_HEIGHT = 48
REC_MIN_WIDTH = 320
REC_MAX_WIDTH = 3200  # a crop wider than 66:1 is squeezed rather than padding every crop
TEXT_SCORE = 0.5


def decode_image(data: bytes | np.ndarray) -> np.ndarray:
    """An encoded image file (PNG, JPEG, ...) as a BGR uint8 array."""
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, (bytes, bytearray)) \
        else np.ascontiguousarray(data, dtype=np.uint8).reshape(-1)
    img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError("the input is not an image file OpenCV can decode")
    return img


def _normalize_chw(img: np.ndarray) -> np.ndarray:
    """uint8 HWC -> float32 CHW in [-1, 1]."""
    x = img.astype(np.float32) * (2.0 / 255.0) - 1.0
    return x.transpose(2, 0, 1)


def det_preprocess(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The detection input [1, 3, H, W] and the shape record [orig_h, orig_w, H, W]."""
    h, w = img.shape[:2]
    ratio = min(1.0, DET_LIMIT / max(h, w))
    rh = max(32, int(round(h * ratio / 32)) * 32)
    rw = max(32, int(round(w * ratio / 32)) * 32)
    resized = cv2.resize(img, (rw, rh))
    x = _normalize_chw(resized)[None]
    return np.ascontiguousarray(x), np.array([h, w, rh, rw], dtype=np.float32)


def _ordered_box(rect) -> tuple[np.ndarray, float]:
    """The 4 corners of a rotated rectangle as [top-left, top-right, bottom-right, bottom-left]."""
    pts = sorted(cv2.boxPoints(rect).tolist(), key=lambda p: p[0])
    left = sorted(pts[:2], key=lambda p: p[1])
    right = sorted(pts[2:], key=lambda p: p[1])
    box = np.array([left[0], right[0], right[1], left[1]], dtype=np.float32)
    return box, min(rect[1])


def _box_score(prob: np.ndarray, box: np.ndarray) -> float:
    """Mean probability inside the box polygon."""
    h, w = prob.shape
    xmin = int(np.clip(np.floor(box[:, 0].min()), 0, w - 1))
    xmax = int(np.clip(np.ceil(box[:, 0].max()), 0, w - 1))
    ymin = int(np.clip(np.floor(box[:, 1].min()), 0, h - 1))
    ymax = int(np.clip(np.ceil(box[:, 1].max()), 0, h - 1))
    mask = np.zeros((ymax - ymin + 1, xmax - xmin + 1), dtype=np.uint8)
    pts = (box - np.array([xmin, ymin], dtype=np.float32)).astype(np.int32)
    cv2.fillPoly(mask, [pts], 1)
    return float(cv2.mean(prob[ymin:ymax + 1, xmin:xmax + 1], mask)[0])


def _sort_boxes(boxes: list[np.ndarray]) -> list[np.ndarray]:
    """Top to bottom; boxes on one line (tops within 10 px) left to right."""
    boxes = sorted(boxes, key=lambda b: (b[0][1], b[0][0]))
    for i in range(len(boxes) - 1):
        for j in range(i, -1, -1):
            if abs(boxes[j + 1][0][1] - boxes[j][0][1]) < 10 and \
                    boxes[j + 1][0][0] < boxes[j][0][0]:
                boxes[j], boxes[j + 1] = boxes[j + 1], boxes[j]
            else:
                break
    return boxes


def db_boxes(prob: np.ndarray, shape: np.ndarray) -> np.ndarray:
    """Text boxes [N, 4, 2] (original image coordinates) from the probability map."""
    return db_boxes_scores(prob, shape)[0]


def db_boxes_scores(prob: np.ndarray, shape: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Text boxes [N, 4, 2] (original image coordinates) and their scores (the mean
    probability inside each box) from the probability map, in reading order."""
    prob = prob.reshape(prob.shape[-2:])
    orig_h, orig_w, det_h, det_w = (float(v) for v in shape)
    bitmap = (prob > DET_THRESH).astype(np.uint8)
    bitmap = cv2.dilate(bitmap, np.ones((2, 2), np.uint8))
    contours, _ = cv2.findContours(bitmap * 255, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    sx, sy = orig_w / det_w, orig_h / det_h
    found = []
    for contour in contours[:MAX_CANDIDATES]:
        rect = cv2.minAreaRect(contour)
        box, side = _ordered_box(rect)
        if side < MIN_SIZE:
            continue
        score = _box_score(prob, box)
        if score < BOX_THRESH:
            continue
        # grow the rectangle by the DB unclip distance (area * ratio / perimeter) on every side
        (cx, cy), (rw, rh), angle = rect
        distance = rw * rh * UNCLIP_RATIO / (2 * (rw + rh))
        box, side = _ordered_box(((cx, cy), (rw + 2 * distance, rh + 2 * distance), angle))
        if side < MIN_SIZE + 2:
            continue
        box[:, 0] = np.clip(np.round(box[:, 0] * sx), 0, orig_w)
        box[:, 1] = np.clip(np.round(box[:, 1] * sy), 0, orig_h)
        if box[:, 0].max() - box[:, 0].min() <= 3 or box[:, 1].max() - box[:, 1].min() <= 3:
            continue
        found.append((box, score))
    if not found:
        return np.zeros((0, 4, 2), dtype=np.float32), np.zeros((0,), dtype=np.float32)
    scores = {id(b): s for b, s in found}
    boxes = _sort_boxes([b for b, _ in found])
    return (np.stack(boxes).astype(np.float32),
            np.array([scores[id(b)] for b in boxes], dtype=np.float32))


def crop_boxes(img: np.ndarray, boxes: np.ndarray) -> list[np.ndarray]:
    """Each box cut out of the image and warped to an axis-aligned crop."""
    crops = []
    for box in boxes:
        w = int(max(np.linalg.norm(box[0] - box[1]), np.linalg.norm(box[2] - box[3])))
        h = int(max(np.linalg.norm(box[0] - box[3]), np.linalg.norm(box[1] - box[2])))
        w, h = max(w, 1), max(h, 1)
        dst = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float32)
        m = cv2.getPerspectiveTransform(box.astype(np.float32), dst)
        crop = cv2.warpPerspective(img, m, (w, h), borderMode=cv2.BORDER_REPLICATE,
                                   flags=cv2.INTER_CUBIC)
        if h / w >= 1.5:
            crop = np.rot90(crop)
        crops.append(np.ascontiguousarray(crop))
    return crops


def blank_crop() -> np.ndarray:
    """A white crop standing in when nothing was detected (models need one input)."""
    return np.full((REC_HEIGHT, REC_HEIGHT, 3), 255, dtype=np.uint8)


def cls_preprocess(crops: list[np.ndarray]) -> np.ndarray:
    """The angle classifier input [N, 3, 48, 192]."""
    ch, cw = CLS_SHAPE
    out = np.zeros((len(crops), 3, ch, cw), dtype=np.float32)
    for i, crop in enumerate(crops):
        h, w = crop.shape[:2]
        rw = min(cw, int(math.ceil(ch * w / h)))
        out[i, :, :, :rw] = _normalize_chw(cv2.resize(crop, (rw, ch)))
    return out


def rec_resize(crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Crops at height 48, padded to one width: uint8 [N, 48, W, 3] and their widths."""
    widths = [min(REC_MAX_WIDTH, int(math.ceil(REC_HEIGHT * c.shape[1] / c.shape[0])))
              for c in crops]
    width = max([REC_MIN_WIDTH] + widths)
    out = np.zeros((len(crops), REC_HEIGHT, width, 3), dtype=np.uint8)
    for i, (crop, w) in enumerate(zip(crops, widths)):
        out[i, :, :w] = cv2.resize(crop, (w, REC_HEIGHT))
    return out, np.array(widths, dtype=np.int32)


def apply_cls(resized: np.ndarray, widths: np.ndarray, cls_prob: np.ndarray) -> np.ndarray:
    """Turn the crops the classifier finds upside down by 180 degrees (in place)."""
    for i, p in enumerate(cls_prob):
        if int(np.argmax(p)) == 1 and float(p[1]) > CLS_THRESH:
            w = int(widths[i])
            if w:
                resized[i, :, :w] = resized[i, ::-1, w - 1::-1].copy()
    return resized


def rec_preprocess(resized: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """The recognition input [N, 3, 48, W] (padding stays zero after normalising)."""
    x = resized.astype(np.float32) * (2.0 / 255.0) - 1.0
    for i, w in enumerate(widths):
        x[i, :, int(w):] = 0.0
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def load_characters(path: str) -> list[str]:
    """The recognition dictionary: index 0 is the CTC blank, then the file, then a space."""
    with open(path, encoding="utf-8") as f:
        chars = [line.rstrip("\r\n") for line in f]
    return ["blank"] + chars + [" "]


def ctc_decode(prob: np.ndarray, characters: list[str]) -> tuple[list[str], list[float]]:
    """Best-path CTC decoding of [N, T, C] probabilities."""
    idx = prob.argmax(axis=2)
    conf = prob.max(axis=2)
    texts, scores = [], []
    for row, crow in zip(idx, conf):
        keep = np.ones(len(row), dtype=bool)
        keep[1:] = row[1:] != row[:-1]
        keep &= row != 0
        chars = [characters[i] if i < len(characters) else "" for i in row[keep]]
        texts.append("".join(chars))
        scores.append(float(crow[keep].mean()) if keep.any() else 0.0)
    return texts, scores


def select(texts: list[str], scores: list[float], boxes: np.ndarray
           ) -> tuple[list[str], list[float], np.ndarray]:
    """The lines worth reporting: as many as there are boxes, scored at least TEXT_SCORE."""
    n = len(boxes)
    keep = [i for i in range(n) if scores[i] >= TEXT_SCORE and texts[i]]
    return ([texts[i] for i in keep], [scores[i] for i in keep],
            boxes[keep] if keep else np.zeros((0, 4, 2), dtype=np.float32))


# -- the whole pipeline in one process (the benchmark's ceiling) ------------------------


class InProcessOCR:
    """The same steps with onnxruntime sessions called directly, no server."""

    def __init__(self, det_path: str, cls_path: str, rec_path: str, keys_path: str,
                 threads: int = 0):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        providers = ["CPUExecutionProvider"]
        self.det = ort.InferenceSession(det_path, opts, providers=providers)
        self.cls = ort.InferenceSession(cls_path, opts, providers=providers)
        self.rec = ort.InferenceSession(rec_path, opts, providers=providers)
        self.characters = load_characters(keys_path)

    @staticmethod
    def _run(session, x: np.ndarray) -> np.ndarray:
        return session.run(None, {session.get_inputs()[0].name: x})[0]

    def __call__(self, data: bytes) -> tuple[list[str], list[float], np.ndarray]:
        img = decode_image(data)
        x, shape = det_preprocess(img)
        boxes = db_boxes(self._run(self.det, x), shape)
        crops = crop_boxes(img, boxes) or [blank_crop()]
        cls_prob = self._run(self.cls, cls_preprocess(crops))
        resized, widths = rec_resize(crops)
        apply_cls(resized, widths, cls_prob)
        prob = self._run(self.rec, rec_preprocess(resized, widths))
        texts, scores = ctc_decode(prob, self.characters)
        return select(texts, scores, boxes)
