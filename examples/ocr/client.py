"""Send an image file to the OCR pipeline and print the text it reads, with the boxes.

    python examples/ocr/client.py picture.png                  # the ensemble, over HTTP
    python examples/ocr/client.py picture.png --model ocr_bls  # the BLS version
    python examples/ocr/client.py picture.png --protocol grpc --url localhost:8001

Uses the official tritonclient, so it works against naiad and Triton alike.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def recognise(path: str, url: str, model: str, protocol: str) -> list[dict]:
    with open(path, "rb") as f:
        data = np.frombuffer(f.read(), dtype=np.uint8)
    if protocol == "grpc":
        import tritonclient.grpc as client_mod
    else:
        import tritonclient.http as client_mod
    client = client_mod.InferenceServerClient(url)
    image = client_mod.InferInput("IMAGE", [len(data)], "UINT8")
    image.set_data_from_numpy(data)
    outputs = [client_mod.InferRequestedOutput(n) for n in ("TEXT", "SCORES", "BOXES")]
    result = client.infer(model, [image], outputs=outputs)
    texts = result.as_numpy("TEXT")
    scores = result.as_numpy("SCORES")
    boxes = result.as_numpy("BOXES")
    client.close()
    return [{"text": t.decode("utf-8"), "score": round(float(s), 4),
             "box": b.astype(int).tolist()}
            for t, s, b in zip(texts, scores, boxes)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Read the text in an image through naiad.")
    parser.add_argument("image", help="an image file (PNG, JPEG, ...)")
    parser.add_argument("--url", default="localhost:8000")
    parser.add_argument("--model", default="ocr", help="ocr (ensemble) or ocr_bls")
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    args = parser.parse_args(argv)
    lines = recognise(args.image, args.url, args.model, args.protocol)
    if args.json:
        print(json.dumps(lines, ensure_ascii=False))
        return 0
    if not lines:
        print("(no text found)")
    for line in lines:
        corners = " ".join(f"({x},{y})" for x, y in line["box"])
        print(f"{line['text']}\t{line['score']:.3f}\t{corners}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
