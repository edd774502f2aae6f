"""Helpers shared by the tests of the built-in synthetic datasets."""
import os

import cv2
import numpy as np


def tight_box(mask):
    """[x, y, w, h] of the pixels of a 2-D mask."""
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]


def read_pixels(split_dir):
    d = os.path.join(split_dir, "images")
    return {f: cv2.imread(os.path.join(d, f), cv2.IMREAD_UNCHANGED) for f in sorted(os.listdir(d))}
