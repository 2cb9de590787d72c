"""Draw the forward tab's example images (made by this repo, so free to ship: CC0).

python examples/make_examples.py
"""

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

HERE = Path(__file__).resolve().parent


def sunset(w=512, h=384):
    y = np.linspace(0, 1, h)[:, None, None]
    sky = (1 - y) * np.array([255, 140, 60]) + y * np.array([60, 40, 120])
    img = Image.fromarray(np.broadcast_to(sky, (h, w, 3)).astype(np.uint8))
    d = ImageDraw.Draw(img)
    d.ellipse((300, 120, 400, 220), fill=(255, 230, 120))
    d.polygon([(0, 300), (120, 200), (230, 290), (360, 180), (512, 300), (512, 384), (0, 384)], fill=(30, 30, 50))
    return img.filter(ImageFilter.GaussianBlur(1))


def shapes(w=384, h=384):
    img = Image.new("RGB", (w, h), (245, 245, 240))
    d = ImageDraw.Draw(img)
    d.rectangle((40, 40, 180, 180), fill=(220, 50, 50))
    d.ellipse((200, 60, 340, 200), fill=(40, 110, 220))
    d.polygon([(70, 340), (190, 210), (310, 340)], fill=(250, 190, 30))
    return img


def rings(w=384, h=384):
    yy, xx = np.mgrid[0:h, 0:w]
    r = np.hypot(xx - w / 2, yy - h / 2)
    v = (np.sin(r / 9) * 0.5 + 0.5) * 255
    return Image.fromarray(np.stack([v, v * 0.6 + 60, 255 - v], -1).astype(np.uint8))


def blank(side=256):
    """The 2D lab's empty canvas (in a folder of its own: not an example image)."""
    return Image.new("RGB", (side, side), (255, 255, 255))


if __name__ == "__main__":
    for name, fn in {"sunset": sunset, "shapes": shapes, "rings": rings, "canvas/blank": blank}.items():
        (HERE / f"{name}.png").parent.mkdir(exist_ok=True)
        fn().save(HERE / f"{name}.png", optimize=True)
        print(HERE / f"{name}.png")
