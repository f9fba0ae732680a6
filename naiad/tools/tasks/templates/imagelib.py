"""Image helpers shared by the task pipelines' python models (copied beside each model.py).

numpy and Pillow only, so a pipeline runs wherever its python models run
(naiad, or Triton's python backend with Pillow installed).
"""

import io
import json

import numpy as np
from PIL import Image, UnidentifiedImageError


def settings(args) -> dict:
    """The model's string parameters (the task's settings) from initialize's args."""
    config = json.loads(args["model_config"])
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


def floats(text: str) -> list:
    return [float(v) for v in text.split(",")] if text else []


def decode(data: np.ndarray, channels: int = 3) -> np.ndarray:
    """Encoded image bytes (UINT8 [-1]) -> HWC uint8 array (RGB, or L for one channel)."""
    raw = np.ascontiguousarray(data, dtype=np.uint8).tobytes()
    try:
        with Image.open(io.BytesIO(raw)) as img:
            img = img.convert("L" if channels == 1 else "RGB")
            arr = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ValueError(f"IMAGE is not an image file Pillow can read: {exc}") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def resize(img: np.ndarray, height: int, width: int, nearest: bool = False) -> np.ndarray:
    mode = Image.NEAREST if nearest else Image.BILINEAR
    squeeze = img.ndim == 3 and img.shape[2] == 1
    pil = Image.fromarray(img[:, :, 0] if squeeze else img)
    out = np.asarray(pil.resize((width, height), mode))
    return out[:, :, None] if squeeze else out


def letterbox(img: np.ndarray, height: int, width: int, fill: int = 114):
    """Resize keeping the aspect ratio, pad to height x width: (image, scale, pad_x, pad_y)."""
    h, w = img.shape[:2]
    scale = min(height / h, width / w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    resized = resize(img, nh, nw)
    out = np.full((height, width, img.shape[2]), fill, dtype=np.uint8)
    py, px = (height - nh) // 2, (width - nw) // 2
    out[py:py + nh, px:px + nw] = resized
    return out, scale, px, py


def to_tensor(img: np.ndarray, layout: str, dtype: str, scale: float, mean: list,
              std: list) -> np.ndarray:
    """HWC uint8 -> the network's tensor: (x * scale - mean) / std, in its layout, batch of 1."""
    x = img.astype(np.float32) * scale
    if mean:
        x = x - np.asarray(mean, dtype=np.float32)
    if std:
        x = x / np.asarray(std, dtype=np.float32)
    if layout == "NCHW":
        x = x.transpose(2, 0, 1)
    return np.ascontiguousarray(x[None]).astype(dtype)


class Preprocess:
    """The pre-processing every image pipeline shares, set from the model's parameters:
    the network input's name, layout, height, width, channels, data type, batch dimension,
    scale, mean, std."""

    def __init__(self, args, to_numpy):
        s = settings(args)
        self.settings = s
        self.output = s["output"]
        self.layout = s["layout"]
        self.height, self.width = int(s["height"]), int(s["width"])
        self.channels = int(s["channels"])
        self.dtype = to_numpy(s["data_type"])
        self.scale = float(s["scale"])
        self.mean, self.std = floats(s["mean"]), floats(s["std"])
        # "false": the network takes one image without a batch dimension ([C, H, W])
        self.batch_dim = s.get("batch_dim", "true") != "false"

    def tensor(self, img: np.ndarray) -> np.ndarray:
        x = to_tensor(img, self.layout, self.dtype, self.scale, self.mean, self.std)
        return x if self.batch_dim else x[0]

    def run(self, requests, pb_utils, handle) -> list:
        """One response per request: ``handle(image)`` -> output tensors, where ``image``
        is the request's IMAGE decoded; an undecodable file answers INVALID_ARG."""
        responses = []
        for request in requests:
            data = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
            try:
                img = decode(data, self.channels)
            except ValueError as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(
                    str(exc), pb_utils.TritonError.INVALID_ARG)))
                continue
            responses.append(pb_utils.InferenceResponse(handle(img)))
        return responses


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression of x1/y1/x2/y2 boxes, best first."""
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


def classwise_nms(boxes: np.ndarray, scores: np.ndarray, ids: np.ndarray,
                  iou_threshold: float, overlap=None) -> np.ndarray:
    """NMS within each class (``overlap``: another suppression, e.g. rotated boxes');
    the kept indices, best first."""
    keep = []
    for c in np.unique(ids):
        idx = np.nonzero(ids == c)[0]
        keep.extend(idx[(overlap or nms)(boxes[idx], scores[idx], iou_threshold)])
    keep = np.array(keep, dtype=np.int64)
    return keep[np.argsort(-scores[keep], kind="stable")]


def rows(x: np.ndarray, width: int = 0) -> np.ndarray:
    """A one-image [1, N, D] (or [1, D, N], as YOLOv8 exports give it) output as [N, D] rows;
    ``width``: D when known (otherwise the shorter side is taken as D)."""
    x = x.reshape(x.shape[-2], x.shape[-1]).astype(np.float32)
    if (width and x.shape[1] != width and x.shape[0] == width) or \
            (not width and x.shape[0] < x.shape[1]):
        x = x.T
    return x


def xywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    return np.stack([b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2,
                     b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2], axis=1)


def best_class(cls: np.ndarray) -> tuple:
    """Per row: the best class and its score."""
    ids = cls.argmax(axis=1)
    return ids, cls[np.arange(len(cls)), ids]


class Geometry:
    """Where the pre-processing put the image in the network input (GEOMETRY: scale_x,
    scale_y, pad_x, pad_y, image width, image height) and the way back."""

    def __init__(self, values: np.ndarray):
        self.sx, self.sy, self.px, self.py, self.w, self.h = (float(v) for v in
                                                              values.reshape(-1))

    def points(self, pts: np.ndarray) -> np.ndarray:
        """[..., 2] network-input pixels -> image pixels (not clipped)."""
        out = np.array(pts, dtype=np.float32, copy=True)
        out[..., 0] = (out[..., 0] - self.px) / self.sx
        out[..., 1] = (out[..., 1] - self.py) / self.sy
        return out

    def boxes(self, boxes: np.ndarray) -> np.ndarray:
        """x1/y1/x2/y2 network-input pixels -> image pixels, clipped to the image."""
        out = self.points(boxes.reshape(-1, 2, 2)).reshape(-1, 4)
        return np.clip(out, 0, np.array([self.w, self.h, self.w, self.h], dtype=np.float32))


def label_list(labels: list, ids) -> np.ndarray:
    """BYTES [K] labels of class ids (the id itself where there is no label)."""
    return np.array([(labels[i] if 0 <= i < len(labels) and labels[i] else str(i)).encode()
                     for i in ids], dtype=np.object_).reshape(-1)


def here_labels(module_file: str, name: str = "labels.txt") -> list:
    """The labels file beside a model.py."""
    import os

    return read_labels(os.path.join(os.path.dirname(os.path.abspath(module_file)), name))


def read_labels(path: str) -> list:
    try:
        with open(path, encoding="utf-8") as f:
            return [line.rstrip("\n") for line in f]
    except OSError:
        return []
