"""Writes N JPEG photos for the loader benchmark: random crops (about 500x375, some portrait) of
scikit-image's sample photos, resized and re-encoded at quality 90 like a camera or phone export,
in an ImageFolder layout <out>/<class>/<n>.jpg with 4 classes."""
import os
import sys

import numpy as np
from PIL import Image
from skimage import data as skd

out, n = sys.argv[1], int(sys.argv[2])
photos = [skd.astronaut(), skd.coffee(), skd.chelsea(), skd.rocket(), skd.immunohistochemistry(),
          skd.hubble_deep_field(), skd.retina(), skd.cat()]
rng = np.random.default_rng(0)
for i in range(n):
    src = Image.fromarray(photos[i % len(photos)])
    w, h = src.size
    cw, ch = int(w * rng.uniform(0.5, 1.0)), int(h * rng.uniform(0.5, 1.0))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    size = (500, 375) if i % 3 else (375, 500)
    img = src.crop((x, y, x + cw, y + ch)).resize(size, Image.BILINEAR)
    d = os.path.join(out, f"class{i % 4}")
    os.makedirs(d, exist_ok=True)
    img.save(os.path.join(d, f"{i:04d}.jpg"), quality=90)
