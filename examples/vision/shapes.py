"""The vision examples' own model: a small network trained on shapes it renders.

No PyPI package ships an object detector, an instance segmenter, a keypoint
detector or an oriented detector that installs beside torch 2.13 (see the
README), so the setup script builds one: a CenterNet-style network with one
shared trunk and a head per task, trained for two or three minutes on images of
rectangles, ellipses and isosceles triangles that :func:`render_scene` draws
with Pillow (random sizes, angles and colours, several per image). From the
one trained network, :func:`export` writes a model file per task in the
output format real exports of that task use, so the task templates of
``naiad import`` treat them exactly as they would a real model's:

=====================  =======================================================  ===========
task                   outputs (N = 24 x 24 grid cells, stride 4)                  written as
=====================  =======================================================  ===========
detection              ``output0`` [B, N, 4+3]: YOLO (cx, cy, w, h, class scores)  ONNX
instance segmentation  ``output0`` [B, N, 4+3+8] + ``output1`` [B, 8, 24, 24]:      ONNX
                       YOLOv8-seg (mask coefficients, prototypes)
semantic segmentation  ``logits`` [B, 4, 96, 96]: background + 3 classes            ONNX
keypoints              ``output0`` [B, N, 4+1+3*3]: YOLOv8-pose (triangle, its      TorchScript
                       apex and two base corners, each x, y, confidence)
oriented detection     ``output0`` [B, N, 4+3+1]: YOLOv8-obb (cx, cy, w, h,         OpenVINO IR
                       class scores, angle in radians)
=====================  =======================================================  ===========

Every box score is kept only at a local maximum (5x5 cells) of the heatmap's
best class (CenterNet's peak extraction, in the graph, across classes), so the
templates' class-wise NMS sees one candidate per object. The semantic logits
take object-or-background from the semantic head and an object pixel's class
from the detected object whose mask is strongest there.

    python examples/vision/shapes.py --out /tmp/shapes      # train + export (about 2-3 min)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("rectangle", "ellipse", "triangle")
KEYPOINTS = ("apex", "base_right", "base_left")
SIZE = 96  # the network input (square)
STRIDE = 4
GRID = SIZE // STRIDE
PROTOS = 8
PEAK_WINDOW = 5  # cells: one detection per object within it (in the export)
SEMANTIC_OBJECTS = 8  # detected objects the semantic export takes classes from
SEMANTIC_MIN_SCORE = 0.3  # and the score they need
SEED = 17
TRAIN_SIZE = 64  # training crops: the network is fully convolutional
TRAIN_IMAGES = 4000
TRAIN_STEPS = 3200
BATCH = 16
LR = 8e-3
HEAT_WEIGHT = 1.0  # the heatmap focal loss against the other heads
MAX_SHAPES = 4  # per training image (0 to this many)
SHAPE_SIZES = (20.0, 36.0)  # long side in network-input pixels
PAD_FRACTION = 0.5  # training images with a band of letterbox grey at an edge


# ---------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------


def polygon(cls: int, cx: float, cy: float, w: float, h: float, theta: float) -> np.ndarray:
    """The shape's outline [P, 2] in image pixels: long axis ``w`` along ``theta``."""
    if cls == 0:
        local = [(w / 2, h / 2), (-w / 2, h / 2), (-w / 2, -h / 2), (w / 2, -h / 2)]
    elif cls == 1:
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        local = np.stack([w / 2 * np.cos(t), h / 2 * np.sin(t)], axis=1)
    else:  # the apex first, then the base corners (the keypoints, in order)
        local = [(w / 2, 0.0), (-w / 2, h / 2), (-w / 2, -h / 2)]
    local = np.asarray(local, dtype=np.float64)
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    return local @ rot.T + np.array([cx, cy])


def random_shapes(rng: np.random.Generator, width: int, height: int, count: int,
                  sizes: tuple[float, float] = SHAPE_SIZES) -> list[dict]:
    """Up to ``count`` shapes that do not touch each other (and stay inside the image)."""
    shapes: list[dict] = []
    for _ in range(count * 20):
        if len(shapes) == count:
            break
        cls = int(rng.integers(0, len(CLASSES)))
        w = float(rng.uniform(*sizes))
        h = w / float(rng.uniform(1.35, 2.2))
        r = w / 2 + 2
        cx, cy = float(rng.uniform(r, width - r)), float(rng.uniform(r, height - r))
        if any(math.hypot(cx - o["cx"], cy - o["cy"]) < r + o["w"] / 2 + 4 for o in shapes):
            continue
        shapes.append({"cls": cls, "cx": cx, "cy": cy, "w": w, "h": h,
                       "theta": float(rng.uniform(0, 2 * np.pi))})
    return shapes


def _colors(rng: np.random.Generator, n: int) -> tuple[tuple, list[tuple]]:
    bg = rng.integers(0, 256, 3)
    fills = []
    for _ in range(n):
        while True:
            c = rng.integers(0, 256, 3)
            if np.abs(c.astype(int) - bg.astype(int)).sum() > 200:
                break
        fills.append(tuple(int(v) for v in c))
    return tuple(int(v) for v in bg), fills


def render_scene(shapes: list[dict], width: int = SIZE, height: int = SIZE,
                 rng: np.random.Generator | None = None, background=None, fills=None
                 ) -> tuple[Image.Image, list[dict]]:
    """Draw the shapes; return the image and, per shape, its annotations: class, polygon,
    axis-aligned box, oriented box (cx, cy, w, h, angle mod pi), keypoints (triangles) and
    its mask (bool [height, width])."""
    rng = rng or np.random.default_rng(SEED)
    bg, random_fills = _colors(rng, len(shapes))
    img = Image.new("RGB", (width, height), background or bg)
    draw = ImageDraw.Draw(img)
    out = []
    for shape, fill in zip(shapes, fills or random_fills):
        pts = polygon(shape["cls"], shape["cx"], shape["cy"], shape["w"], shape["h"],
                      shape["theta"])
        flat = [tuple(p) for p in pts.tolist()]
        draw.polygon(flat, fill=fill)
        mask_img = Image.new("L", (width, height), 0)
        ImageDraw.Draw(mask_img).polygon(flat, fill=1)
        mask = np.asarray(mask_img, dtype=bool)
        ys, xs = np.nonzero(mask)
        box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)] \
            if len(xs) else [0.0, 0.0, 0.0, 0.0]
        out.append({**shape, "label": CLASSES[shape["cls"]], "polygon": pts, "box": box,
                    "rbox": [shape["cx"], shape["cy"], shape["w"], shape["h"],
                             shape["theta"] % np.pi],
                    "keypoints": pts if shape["cls"] == 2 else None, "mask": mask})
    return img, out


def training_scene(rng: np.random.Generator, size: int = TRAIN_SIZE):
    """One training image (uint8 [size, size, 3]) and its annotations, made the way the
    task pipelines see a picture: shapes drawn on a larger canvas, then shrunk (Pillow's
    bilinear resize, as the pre-processing's letterbox does), with sometimes a band of the
    letterbox's grey (114) at an edge, where a picture of another aspect would be padded."""
    left, top, right, bottom = 0, 0, size, size
    if rng.random() < PAD_FRACTION:  # the letterbox padding at one or two opposite edges
        band = int(rng.integers(3, size // 4))
        if rng.random() < 0.5:
            top, bottom = (band, size) if rng.random() < 0.5 else (0, size - band)
        else:
            left, right = (band, size) if rng.random() < 0.5 else (0, size - band)
    w, h = right - left, bottom - top
    found = random_shapes(rng, w, h, int(rng.integers(0, MAX_SHAPES + 1)))
    for shape in found:
        shape["cx"] += left
        shape["cy"] += top
    bg, fills = _colors(rng, len(found))
    zoom = float(rng.uniform(1.0, 3.0))  # the picture's pixels per network-input pixel
    big = [{**a, "cx": a["cx"] * zoom, "cy": a["cy"] * zoom, "w": a["w"] * zoom,
            "h": a["h"] * zoom} for a in found]
    canvas = round(size * zoom)
    img, _ = render_scene(big, canvas, canvas, rng=rng, background=bg, fills=fills)
    arr = np.asarray(img.resize((size, size), Image.BILINEAR), dtype=np.float32).copy()
    _, annotations = render_scene(found, size, size, rng=rng, background=bg, fills=fills)
    arr += rng.normal(0, float(rng.uniform(0, 6)), arr.shape)  # a little sensor noise
    arr[:top], arr[bottom:], arr[:, :left], arr[:, right:] = 114, 114, 114, 114
    return np.clip(arr, 0, 255).astype(np.uint8), annotations


def training_set(n: int, seed: int = SEED):
    """``n`` rendered scenes (uint8 [n, S, S, 3]) and their annotations."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, TRAIN_SIZE, TRAIN_SIZE, 3), dtype=np.uint8)
    annotations = []
    for i in range(n):
        images[i], ann = training_scene(rng)
        annotations.append(ann)
    return images, annotations


# ---------------------------------------------------------------------------
# targets
# ---------------------------------------------------------------------------


def targets(annotations: list[dict], size: int = TRAIN_SIZE) -> dict[str, np.ndarray]:
    """CenterNet-style targets on the stride-4 grid of one image."""
    c = len(CLASSES)
    grid = size // STRIDE
    t = {
        "heat": np.zeros((c, grid, grid), np.float32),
        "ind": np.zeros((8,), np.int64),  # grid cell of each object (up to 8)
        "valid": np.zeros((8,), np.float32),
        "off": np.zeros((8, 2), np.float32),
        "ltrb": np.zeros((8, 4), np.float32),
        "rbox": np.zeros((8, 4), np.float32),
        "kps": np.zeros((8, 6), np.float32),
        "is_tri": np.zeros((8,), np.float32),
        "masks": np.zeros((8, grid, grid), np.float32),
        "mask_box": np.zeros((8, 4), np.float32),
        "semantic": np.zeros((size, size), np.int64),
    }
    ys, xs = np.mgrid[0:grid, 0:grid]
    for k, a in enumerate(annotations[:8]):
        cx, cy = a["cx"] / STRIDE, a["cy"] / STRIDE
        gx, gy = min(grid - 1, int(cx)), min(grid - 1, int(cy))
        x1, y1, x2, y2 = a["box"]
        sigma = max(0.6, 0.12 * math.sqrt((x2 - x1) * (y2 - y1)) / STRIDE)
        g = np.exp(-((xs - gx) ** 2 + (ys - gy) ** 2) / (2 * sigma ** 2))
        t["heat"][a["cls"]] = np.maximum(t["heat"][a["cls"]], g)
        t["ind"][k], t["valid"][k] = gy * grid + gx, 1.0
        t["off"][k] = (cx - gx, cy - gy)
        px, py = a["cx"], a["cy"]
        t["ltrb"][k] = np.log(np.maximum([px - x1, py - y1, x2 - px, y2 - py], 1.0))
        theta = a["theta"]
        t["rbox"][k] = (math.log(a["w"]), math.log(a["h"]), math.cos(2 * theta),
                        math.sin(2 * theta))
        if a["cls"] == 2:
            t["kps"][k] = ((a["keypoints"] - [px, py]) / 32.0).reshape(-1)
            t["is_tri"][k] = 1.0
        m = a["mask"].reshape(grid, STRIDE, grid, STRIDE).mean(axis=(1, 3))
        t["masks"][k] = m
        t["mask_box"][k] = [v / STRIDE for v in a["box"]]
        t["semantic"][a["mask"]] = a["cls"] + 1
    return t


# ---------------------------------------------------------------------------
# the network
# ---------------------------------------------------------------------------


def build_network():
    import torch
    from torch import nn

    def conv(cin, cout, stride=1):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
                             nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    class ShapesNet(nn.Module):
        """A small trunk (strides 2..16), a top-down path back to stride 4 and one shared
        3x3 layer under a 1x1 output per head (about 50 M multiply-adds per 128x128 image)."""

        def __init__(self):
            super().__init__()
            self.s2 = conv(3, 16, 2)
            self.s4 = nn.Sequential(conv(16, 24, 2), conv(24, 24))
            self.s8 = nn.Sequential(conv(24, 48, 2), conv(48, 48))
            self.s16 = nn.Sequential(conv(48, 64, 2), conv(64, 64))
            self.top16 = nn.Conv2d(64, 32, 1)
            self.lat8 = nn.Conv2d(48, 32, 1)
            self.lat4 = nn.Conv2d(24, 32, 1)
            self.fuse = conv(32, 32)
            self.shared = conv(32, 48)
            self.sizes = {"heat": len(CLASSES), "off": 2, "ltrb": 4, "rbox": 4, "kps": 6,
                          "coef": PROTOS, "protos": PROTOS, "semantic": len(CLASSES) + 1}
            self.out = nn.Conv2d(48, sum(self.sizes.values()), 1)
            with torch.no_grad():
                self.out.bias.zero_()
                self.out.bias[:len(CLASSES)] = -2.2  # CenterNet's prior for the heatmap

        def forward(self, x):
            f4 = self.s4(self.s2(x))
            f8 = self.s8(f4)
            f16 = self.s16(f8)
            up = nn.functional.interpolate
            p8 = self.lat8(f8) + up(self.top16(f16), scale_factor=2.0, mode="nearest")
            p4 = self.fuse(self.lat4(f4) + up(p8, scale_factor=2.0, mode="nearest"))
            y = self.out(self.shared(p4))
            return dict(zip(self.sizes, torch.split(y, list(self.sizes.values()), dim=1)))

    torch.manual_seed(SEED)
    return ShapesNet()


def to_input(images: np.ndarray):
    """uint8 NHWC -> the network's float NCHW in 0..1 (what the task templates feed it)."""
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)


def _gather(x, ind):
    # x [B, C, G, G] -> [B, K, C] at the flat grid indices ind [B, K]
    b, c = x.shape[:2]
    flat = x.reshape(b, c, -1).permute(0, 2, 1)
    return flat.gather(1, ind[..., None].expand(-1, -1, c))


def loss_fn(out: dict, t: dict):
    import torch
    import torch.nn.functional as F

    heat = out["heat"].sigmoid().clamp(1e-4, 1 - 1e-4)
    gt = t["heat"]
    pos = gt.eq(1).float()
    neg = 1 - pos
    focal = -(torch.log(heat) * (1 - heat) ** 2 * pos
              + torch.log(1 - heat) * heat ** 2 * (1 - gt) ** 4 * neg).sum()
    valid = t["valid"]
    n = valid.sum().clamp(min=1)
    focal = focal / n * HEAT_WEIGHT
    v = valid[..., None]

    def l1(name, target, mask=v, weight=1.0):
        pred = _gather(out[name], t["ind"])
        return weight * (F.l1_loss(pred * mask, target * mask, reduction="sum")
                         / mask.sum().clamp(min=1))

    loss = focal + l1("off", t["off"]) + l1("ltrb", t["ltrb"], weight=0.5)
    loss = loss + l1("rbox", t["rbox"], weight=1.0)
    loss = loss + l1("kps", t["kps"], mask=(valid * t["is_tri"])[..., None], weight=2.0)
    # instance masks: sigmoid(coefficients . prototypes), learnt inside each object's box
    coef = _gather(out["coef"], t["ind"])  # [B, K, P]
    protos = out["protos"]  # [B, P, 32, 32]
    logits = torch.einsum("bkp,bphw->bkhw", coef, protos)
    g = protos.shape[-1]
    yy = torch.arange(g, dtype=torch.float32).view(1, 1, g, 1)
    xx = torch.arange(g, dtype=torch.float32).view(1, 1, 1, g)
    mb = t["mask_box"]
    inside = ((xx >= mb[..., 0, None, None] - 1) & (xx <= mb[..., 2, None, None] + 1)
              & (yy >= mb[..., 1, None, None] - 1) & (yy <= mb[..., 3, None, None] + 1))
    weight = inside.float() * valid[..., None, None]
    bce = F.binary_cross_entropy_with_logits(logits, t["masks"], reduction="none")
    loss = loss + (bce * weight).sum() / weight.sum().clamp(min=1) * 2.0
    sem = F.interpolate(out["semantic"], scale_factor=float(STRIDE), mode="bilinear",
                        align_corners=False)
    loss = loss + F.cross_entropy(sem, t["semantic"])
    return loss


def say(message: str) -> None:
    print(message, flush=True)


def train(steps: int = TRAIN_STEPS, images: int = TRAIN_IMAGES, log=say):
    """Render a training set, train the network on it; returns the network (eval mode)."""
    import torch

    torch.manual_seed(SEED)
    t0 = time.monotonic()
    data, annotations = training_set(images)
    tg = [targets(a) for a in annotations]
    stacked = {k: torch.from_numpy(np.stack([t[k] for t in tg])) for k in tg[0]}
    log(f"rendered {images} training images in {time.monotonic() - t0:.1f} s")
    net = build_network()
    opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=steps,
                                                pct_start=0.15)
    rng = np.random.default_rng(SEED)
    net.train()
    t1 = time.monotonic()
    for step in range(steps):
        idx = torch.from_numpy(rng.integers(0, images, BATCH))
        x = to_input(data[idx.numpy()])
        batch = {k: v[idx] for k, v in stacked.items()}
        loss = loss_fn(net(x), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 200 == 0 or step == steps - 1:
            log(f"step {step:5d}  loss {loss.item():.3f}  ({time.monotonic() - t1:.0f} s)")
    net.eval()
    return net


# ---------------------------------------------------------------------------
# the task exports
# ---------------------------------------------------------------------------


def _heads():
    import torch
    from torch import nn

    def atan2(y, x):
        # ONNX has no atan2: atan of the ratio, moved into the right quadrant
        eps = 1e-6
        base = torch.atan(y / torch.where(x.abs() < eps, torch.full_like(x, eps), x))
        pi = torch.full_like(base, math.pi)
        return torch.where(x >= 0, base, torch.where(y >= 0, base + pi, base - pi))

    class Decode(nn.Module):
        """The shared decoding: peaks, centres, boxes, all in network-input pixels."""

        def __init__(self, net):
            super().__init__()
            self.net = net
            gy, gx = torch.meshgrid(torch.arange(GRID, dtype=torch.float32),
                                    torch.arange(GRID, dtype=torch.float32), indexing="ij")
            self.register_buffer("gx", gx.reshape(1, 1, -1))
            self.register_buffer("gy", gy.reshape(1, 1, -1))

        def common(self, x):
            out = self.net(x)
            b = x.shape[0]
            heat = out["heat"].sigmoid()
            # one peak per object whatever its class: a class's score is kept only where
            # it is the best of all classes over the cell's neighbourhood
            best = heat.amax(dim=1, keepdim=True)
            peaks = nn.functional.max_pool2d(best, PEAK_WINDOW, 1, PEAK_WINDOW // 2)
            scores = (heat * (heat >= peaks).float()).reshape(b, len(CLASSES), -1)
            off = out["off"].reshape(b, 2, -1)
            cx = (self.gx + off[:, 0:1]) * STRIDE
            cy = (self.gy + off[:, 1:2]) * STRIDE
            ltrb = out["ltrb"].reshape(b, 4, -1).exp()
            x1, y1 = cx - ltrb[:, 0:1], cy - ltrb[:, 1:2]
            x2, y2 = cx + ltrb[:, 2:3], cy + ltrb[:, 3:4]
            box = torch.cat([(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], dim=1)
            return out, scores, cx, cy, box

    class Detection(Decode):
        def forward(self, images):
            _, scores, _, _, box = self.common(images)
            return torch.cat([box, scores], dim=1).permute(0, 2, 1)

    class InstanceSegmentation(Decode):
        def forward(self, images):
            out, scores, _, _, box = self.common(images)
            b = images.shape[0]
            coef = out["coef"].reshape(b, PROTOS, -1)
            return torch.cat([box, scores, coef], dim=1).permute(0, 2, 1), out["protos"]

    class Keypoints(Decode):
        def forward(self, images):
            out, scores, cx, cy, box = self.common(images)
            b = images.shape[0]
            tri = scores[:, 2:3]
            kps = out["kps"].reshape(b, 6, -1) * 32.0
            parts = []
            for k in range(3):
                parts += [cx + kps[:, 2 * k:2 * k + 1], cy + kps[:, 2 * k + 1:2 * k + 2], tri]
            return torch.cat([box, tri] + parts, dim=1).permute(0, 2, 1)

    class Oriented(Decode):
        def forward(self, images):
            out, scores, cx, cy, _ = self.common(images)
            b = images.shape[0]
            r = out["rbox"].reshape(b, 4, -1)
            angle = atan2(r[:, 3:4], r[:, 2:3]) / 2
            return torch.cat([cx, cy, r[:, 0:1].exp(), r[:, 1:2].exp(), scores, angle],
                             dim=1).permute(0, 2, 1)

    class Semantic(Decode):
        """Background or object per pixel from the semantic head; which class an object
        pixel has from the detected object whose mask is strongest there (a network this
        small is surer of an object's class at its centre than at each of its pixels), the
        semantic head's own class where no detected object covers the pixel."""

        def forward(self, images):
            out, scores, _, _, box = self.common(images)
            b = images.shape[0]
            sem = out["semantic"]  # [B, 1 + classes, G, G]
            best, cls = scores.max(dim=1)  # [B, N]
            top, idx = best.topk(SEMANTIC_OBJECTS, dim=1)  # [B, K]
            coef = torch.gather(out["coef"].reshape(b, PROTOS, -1), 2,
                                idx.unsqueeze(1).expand(-1, PROTOS, -1))  # [B, P, K]
            masks = torch.einsum("bpk,bphw->bkhw", coef, out["protos"])  # [B, K, G, G]
            k_box = torch.gather(box, 2, idx.unsqueeze(1).expand(-1, 4, -1)) / STRIDE
            x1 = (k_box[:, 0] - k_box[:, 2] / 2)[..., None, None]
            x2 = (k_box[:, 0] + k_box[:, 2] / 2)[..., None, None]
            y1 = (k_box[:, 1] - k_box[:, 3] / 2)[..., None, None]
            y2 = (k_box[:, 1] + k_box[:, 3] / 2)[..., None, None]
            g = masks.shape[-1]
            yy = torch.arange(g, dtype=torch.float32).view(1, 1, g, 1)
            xx = torch.arange(g, dtype=torch.float32).view(1, 1, 1, g)
            usable = ((xx >= x1) & (xx <= x2) & (yy >= y1) & (yy <= y2)
                      & (top[..., None, None] >= SEMANTIC_MIN_SCORE))
            masks = torch.where(usable, masks, torch.full_like(masks, -1e4))
            strongest, which = masks.max(dim=1)  # [B, G, G]
            k_cls = torch.gather(cls, 1, idx)  # [B, K]
            object_cls = torch.gather(k_cls, 1, which.reshape(b, -1)).reshape(which.shape)
            chosen = torch.where(strongest > -1e4, object_cls, sem[:, 1:].argmax(dim=1))
            # object or background as the semantic head has it (its logits upsampled as they
            # are), the whole object probability on the chosen class (upsampled as a label)
            up = nn.functional.interpolate(sem, scale_factor=float(STRIDE), mode="bilinear",
                                           align_corners=False)
            chosen = nn.functional.interpolate(chosen.unsqueeze(1).float(),
                                               scale_factor=float(STRIDE), mode="nearest")
            ids = torch.arange(len(CLASSES), dtype=torch.float32).view(1, -1, 1, 1)
            onehot = (chosen == ids).float()
            foreground = torch.logsumexp(up[:, 1:], dim=1, keepdim=True)
            return torch.cat([up[:, :1], foreground + (onehot - 1.0) * 50.0], dim=1)

    return {"detection": Detection, "instance_segmentation": InstanceSegmentation,
            "keypoints": Keypoints, "oriented_detection": Oriented,
            "semantic_segmentation": Semantic}


#: task -> (file name, output names)
EXPORTS = {
    "detection": ("shapes_det.onnx", ["output0"]),
    "instance_segmentation": ("shapes_seg.onnx", ["output0", "output1"]),
    "semantic_segmentation": ("shapes_semseg.onnx", ["logits"]),
    "keypoints": ("shapes_pose.pt", ["output0"]),
    "oriented_detection": ("shapes_obb.xml", ["output0"]),
}


def export(net, out_dir: str) -> dict[str, str]:
    """Write one model file per task (see the module docstring); returns task -> path."""
    import torch

    os.makedirs(out_dir, exist_ok=True)
    heads = _heads()
    example = torch.zeros(1, 3, SIZE, SIZE)
    written = {}
    for task, (filename, outputs) in EXPORTS.items():
        module = heads[task](net).eval()
        path = os.path.join(out_dir, filename)
        if filename.endswith(".pt"):
            with torch.no_grad():
                torch.jit.trace(module, example).save(path)
        else:
            onnx_path = path if filename.endswith(".onnx") else path[:-4] + ".onnx"
            axes = {"images": {0: "batch"}, **{o: {0: "batch"} for o in outputs}}
            with torch.no_grad():
                torch.onnx.export(module, (example,), onnx_path, input_names=["images"],
                                  output_names=outputs, dynamic_axes=axes, opset_version=17,
                                  dynamo=False)
            if filename.endswith(".xml"):
                import openvino as ov

                ov.save_model(ov.convert_model(onnx_path), path)
                os.remove(onnx_path)
        written[task] = path
    with open(os.path.join(out_dir, "labels.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(CLASSES) + "\n")
    with open(os.path.join(out_dir, "keypoints.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(KEYPOINTS) + "\n")
    with open(os.path.join(out_dir, "label_mapping.json"), "w", encoding="utf-8") as f:
        json.dump({str(i): name for i, name in enumerate(CLASSES)}, f, indent=1)
    return written


def build(out_dir: str, steps: int = TRAIN_STEPS, log=say) -> dict[str, str]:
    """Train and export, or reuse the files of an earlier build with the same settings."""
    stamp = os.path.join(out_dir, "trained.json")
    settings = {"steps": steps, "images": TRAIN_IMAGES, "seed": SEED, "size": TRAIN_SIZE,
                "batch": BATCH, "version": 6}
    if os.path.isfile(stamp):
        with open(stamp, encoding="utf-8") as f:
            done = json.load(f)
        paths = {t: os.path.join(out_dir, name) for t, (name, _) in EXPORTS.items()}
        if done.get("settings") == settings and all(os.path.isfile(p) for p in paths.values()):
            log(f"reusing the shapes models in {out_dir}")
            return paths
    import torch

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    t0 = time.monotonic()
    net = train(steps, log=log)
    written = export(net, out_dir)
    with open(stamp, "w", encoding="utf-8") as f:
        json.dump({"settings": settings, "seconds": round(time.monotonic() - t0, 1)}, f)
    log(f"trained and exported in {time.monotonic() - t0:.0f} s -> {out_dir}")
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for the model files")
    parser.add_argument("--steps", type=int, default=TRAIN_STEPS)
    args = parser.parse_args(argv)
    build(args.out, args.steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
