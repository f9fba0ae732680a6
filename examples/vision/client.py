"""Send an image to one of the vision pipelines, print the result, write an annotated PNG.

    python examples/vision/client.py shapes_detection picture.png --out annotated.png
    python examples/vision/client.py text_direction word.png --protocol grpc --url localhost:8001

Works with any pipeline of ``examples/vision`` (and any ``naiad import --task``
pipeline): it asks the server which outputs the model has, and draws what it
gets back: boxes and labels, rotated boxes, masks (instance or per-pixel
classes), keypoints, text boxes and text, or the top classes. Uses the
official tritonclient, so it works against naiad and Triton alike.
"""

from __future__ import annotations

import argparse
import io
import json
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
           (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128)]


def infer(model: str, data: bytes, url: str = "localhost:8000", protocol: str = "http",
          timeout: float = 120.0) -> dict[str, np.ndarray]:
    """The pipeline's outputs for one encoded image (all of them)."""
    if protocol == "grpc":
        import tritonclient.grpc as client_mod

        client = client_mod.InferenceServerClient(url)
        outputs = [o.name for o in client.get_model_metadata(model).outputs]
        kwargs = {"client_timeout": timeout}
    else:
        import tritonclient.http as client_mod

        client = client_mod.InferenceServerClient(url, network_timeout=timeout)
        outputs = [o["name"] for o in client.get_model_metadata(model)["outputs"]]
        kwargs = {}
    array = np.frombuffer(data, dtype=np.uint8)
    image = client_mod.InferInput("IMAGE", [len(array)], "UINT8")
    image.set_data_from_numpy(array)
    result = client.infer(model, [image], outputs=[client_mod.InferRequestedOutput(n)
                                                   for n in outputs], **kwargs)
    client.close()
    return {n: result.as_numpy(n) for n in outputs}


def _text(values) -> list[str]:
    return [v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
            for v in np.asarray(values).reshape(-1)]


def summary(outputs: dict[str, np.ndarray]) -> list[dict]:
    """One JSON-able record per object (or per class, for classification)."""
    o = outputs
    if "TEXT" in o:
        boxes = o.get("BOXES")
        texts, scores = _text(o["TEXT"]), o["SCORES"].reshape(-1)
        return [{"text": t, "score": round(float(s), 4),
                 **({"box": boxes[i].round(1).tolist()} if boxes is not None else {})}
                for i, (t, s) in enumerate(zip(texts, scores))]
    if "MASK" in o:  # semantic: the classes present and their share of the image
        mask = o["MASK"]
        return [{"label": label, "class_id": int(c),
                 "pixels": int((mask == c).sum()), "share": round(float((mask == c).mean()), 4)}
                for c, label in zip(o["CLASS_IDS"], _text(o["LABELS"]))]
    if "BOXES" not in o:  # classification
        return [{"label": label, "score": round(float(s), 4), "class_id": int(c)}
                for label, s, c in zip(_text(o["LABELS"]), o["SCORES"], o["CLASS_IDS"])]
    labels = _text(o["LABELS"]) if "LABELS" in o else [""] * len(o["SCORES"])
    out = []
    for i, s in enumerate(o["SCORES"].reshape(-1)):
        rec = {"label": labels[i], "score": round(float(s), 4),
               "box": np.round(o["BOXES"][i], 2).tolist()}
        if "CLASS_IDS" in o:
            rec["class_id"] = int(o["CLASS_IDS"][i])
        if "MASKS" in o:
            rec["mask_pixels"] = int(o["MASKS"][i].sum())
        if "KEYPOINTS" in o:
            names = _text(o.get("KEYPOINT_NAMES", []))
            rec["keypoints"] = {(names[k] if k < len(names) else str(k)):
                                np.round(p, 1).tolist() for k, p in enumerate(o["KEYPOINTS"][i])}
        out.append(rec)
    return out


def annotate(data: bytes, outputs: dict[str, np.ndarray]) -> Image.Image:
    """The image with the pipeline's answer drawn on it."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    o = outputs
    font = ImageFont.load_default(size=max(12, img.height // 30))
    if "MASKS" in o and len(o["MASKS"]):  # instances: a colour per object
        arr = np.asarray(img, dtype=np.float32)
        for i, m in enumerate(o["MASKS"]):
            colour = np.array(PALETTE[i % len(PALETTE)], dtype=np.float32)
            arr[m.astype(bool)] = arr[m.astype(bool)] * 0.45 + colour * 0.55
        img = Image.fromarray(arr.astype(np.uint8))
    if "MASK" in o:  # semantic: a colour per class (class 0, the background, left as is)
        arr = np.asarray(img, dtype=np.float32)
        for c in np.unique(o["MASK"]):
            if c:
                sel = o["MASK"] == c
                arr[sel] = arr[sel] * 0.4 + np.array(PALETTE[c % len(PALETTE)]) * 0.6
        img = Image.fromarray(arr.astype(np.uint8))
    draw = ImageDraw.Draw(img)
    if "MASK" in o:
        y = 4
        for c, label in zip(o["CLASS_IDS"], _text(o["LABELS"])):
            if c:
                draw.text((4, y), label, fill=PALETTE[c % len(PALETTE)], font=font,
                          stroke_width=2, stroke_fill="white")
                y += font.size + 4
        return img
    if "BOXES" not in o:
        if "TEXT" in o:
            draw.text((4, 4), _text(o["TEXT"])[0], fill=(230, 25, 75), font=font,
                      stroke_width=2, stroke_fill="white")
        else:
            line = ", ".join(f"{lab} {s:.2f}" for lab, s in zip(_text(o["LABELS"]), o["SCORES"]))
            draw.text((4, 4), line, fill=(230, 25, 75), font=font, stroke_width=2,
                      stroke_fill="white")
        return img
    boxes = o["BOXES"]
    texts = _text(o["TEXT"]) if "TEXT" in o else _text(o["LABELS"]) if "LABELS" in o else []
    for i, box in enumerate(boxes):
        colour = PALETTE[int(o["CLASS_IDS"][i]) % len(PALETTE)] if "CLASS_IDS" in o else \
            PALETTE[0]
        if "CORNERS" in o or box.shape == (4, 2):
            pts = o["CORNERS"][i] if "CORNERS" in o else box
            draw.polygon([tuple(p) for p in pts.tolist()], outline=colour, width=2)
            x, y = float(pts[:, 0].min()), float(pts[:, 1].min())
        else:
            draw.rectangle(box.tolist(), outline=colour, width=2)
            x, y = float(box[0]), float(box[1])
        label = texts[i] if i < len(texts) else ""
        if label:
            if "SCORES" in o:
                label += f" {float(o['SCORES'][i]):.2f}"
            draw.text((x, max(0, y - font.size - 2)), label, fill=colour, font=font,
                      stroke_width=2, stroke_fill="white")
        if "KEYPOINTS" in o:
            pts = o["KEYPOINTS"][i]
            xy = [tuple(p[:2]) for p in pts.tolist()]
            draw.line(xy + xy[:1], fill=(255, 255, 255), width=1)
            for k, (px, py) in enumerate(xy):
                c = PALETTE[(k + 3) % len(PALETTE)]
                draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=c, outline="black")
    return img


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Query a vision pipeline served by naiad.")
    parser.add_argument("model", help="the pipeline (ensemble) name, e.g. shapes_detection")
    parser.add_argument("image", help="an image file (PNG, JPEG, ...)")
    parser.add_argument("--url", default="localhost:8000")
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http")
    parser.add_argument("--out", default="", help="write the annotated image here (PNG)")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    with open(args.image, "rb") as f:
        data = f.read()
    outputs = infer(args.model, data, args.url, args.protocol)
    records = summary(outputs)
    if args.json:
        print(json.dumps(records))
    else:
        for rec in records:
            print("\t".join(f"{k}={v}" for k, v in rec.items()))
        if not records:
            print("(nothing found)")
    if args.out:
        annotate(data, outputs).save(args.out)
        print(f"annotated image: {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
