"""Test pictures for the vision pipelines: a scene of shapes, a line of text, a page.

    python examples/vision/pictures.py OUT_DIR     # writes shapes.png, word.png, page.png

The shapes are drawn by ``shapes.render_scene`` at known places, so what a
pipeline finds can be checked against what was drawn (the tests do).
"""

from __future__ import annotations

import io
import os
import sys

from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import shapes  # noqa: E402

#: a rectangle, an ellipse and a triangle at known places on a 240x180 picture
SCENE = [
    {"cls": 0, "cx": 62.0, "cy": 58.0, "w": 74.0, "h": 38.0, "theta": 0.5},
    {"cls": 1, "cx": 178.0, "cy": 62.0, "w": 70.0, "h": 38.0, "theta": 2.0},
    {"cls": 2, "cx": 120.0, "cy": 132.0, "w": 66.0, "h": 40.0, "theta": 1.1},
]
SCENE_SIZE = (240, 180)
PAGE_LINES = (((30, 30), "HELLO NAIAD"), ((30, 130), "inference 2024"), ((360, 200), "Triton"))


def png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def scene(shape_list=SCENE, size=SCENE_SIZE) -> tuple[bytes, list[dict]]:
    """The shapes picture (PNG bytes) and each shape's annotations (box, mask, keypoints...)."""
    img, ann = shapes.render_scene(
        shape_list, *size, background=(235, 235, 225),
        fills=[(200, 40, 40), (30, 110, 200), (40, 150, 60)][:len(shape_list)])
    return png(img), ann


def text_line(text: str = "HELLO NAIAD", size=(420, 70), rotate: bool = False) -> bytes:
    """One line of black text on white (PNG bytes), upside down with ``rotate``."""
    img = Image.new("RGB", size, "white")
    ImageDraw.Draw(img).text((14, 12), text, font=ImageFont.load_default(size=40),
                             fill="black")
    return png(img.rotate(180) if rotate else img)


def page(lines=PAGE_LINES, size=(640, 280)) -> tuple[bytes, list[tuple]]:
    """Several lines of text (PNG bytes) and each line's drawn box."""
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=40)
    boxes = []
    for xy, text in lines:
        draw.text(xy, text, font=font, fill="black")
        boxes.append(draw.textbbox(xy, text, font=font))
    return png(img), boxes


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    out = argv[0] if argv else "."
    os.makedirs(out, exist_ok=True)
    for name, data in (("shapes.png", scene()[0]), ("word.png", text_line()),
                       ("word_upside_down.png", text_line(rotate=True)),
                       ("page.png", page()[0])):
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
        print(os.path.join(out, name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
