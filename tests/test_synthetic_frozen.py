"""The built-in generators are frozen: a tiny split of every family hashes to the digest it
had when the published figures were made.

The README's numbers were measured on these datasets and their cache folders are named by
generator version, so a change of the pixels or annotations must bump that family's
``*_GENERATOR_VERSION`` (and update the digest here), never go unnoticed. Pixels are hashed
decoded (not the PNG bytes, which depend on the PNG encoder), annotations as the JSON bytes.
"""
import hashlib
import os

import cv2
import pytest

from rs_detectron2.data import (
    GENERATOR_VERSION,
    GLYPH_GENERATOR_VERSION,
    LVIS_GENERATOR_VERSION,
    generate_glyph_split,
    generate_lvis_split,
    generate_synthetic_split,
)
from rs_detectron2.data.synthetic_classification import (
    CLASSIFICATION_GENERATOR_VERSION,
    generate_classification_split,
)

NUM_IMAGES, IMAGE_SIZE, SEED = 8, 64, 11

# Family -> (its generator version, the md5 of its tiny split: _digest), measured with the
# generators that made the published figures.
FROZEN = {
    "rs_synthetic": (2, "8fec4862439dafae78e88c55bfd111d6"),
    "rs_synthetic_hard": (1, "48d187b09ca4ba83b7fe90a4df44d36a"),
    "rs_synthetic_lvis": (2, "aa4da689ab38f5ab590bb42020d3b5f6"),
    "rs_synthetic_classification": (1, "22def5b74e618e953c37be05f4764de6"),
}
VERSIONS = {
    "rs_synthetic": GENERATOR_VERSION,
    "rs_synthetic_hard": GLYPH_GENERATOR_VERSION,
    "rs_synthetic_lvis": LVIS_GENERATOR_VERSION,
    "rs_synthetic_classification": CLASSIFICATION_GENERATOR_VERSION,
}


def _split_digest(json_file: str) -> str:
    """md5 of a split's JSON bytes followed by the decoded pixels of its images."""
    md5 = hashlib.md5()
    with open(json_file, "rb") as f:
        md5.update(f.read())
    image_dir = os.path.join(os.path.dirname(json_file), "images")
    for name in sorted(os.listdir(image_dir)):
        md5.update(name.encode())
        md5.update(cv2.imread(os.path.join(image_dir, name), cv2.IMREAD_UNCHANGED).tobytes())
    return md5.hexdigest()


def _digest(family: str, out: str) -> str:
    args = (NUM_IMAGES, IMAGE_SIZE, SEED)
    if family == "rs_synthetic":
        return _split_digest(generate_synthetic_split(os.path.join(out, "val"), *args, "val"))
    if family == "rs_synthetic_hard":
        return _split_digest(generate_glyph_split(os.path.join(out, "val"), *args, "val"))
    if family == "rs_synthetic_lvis":  # train (the tail, the categories) and val (balanced)
        train = generate_lvis_split(os.path.join(out, "train"), *args, "train")
        val = generate_lvis_split(os.path.join(out, "val"), *args, "val", train_json=train)
        return hashlib.md5((_split_digest(train) + _split_digest(val)).encode()).hexdigest()
    images, labels = generate_classification_split(*args, split="val", progress=False)
    return hashlib.md5(images.tobytes() + labels.tobytes()).hexdigest()


@pytest.mark.parametrize("family", list(FROZEN))
def test_generator_output_is_frozen(family, tmp_path):
    version, digest = FROZEN[family]
    assert VERSIONS[family] == version, f"{family}: a new generator version, update FROZEN"
    assert _digest(family, str(tmp_path)) == digest, (
        f"the {family} generator's output changed: bump its generator version (v{version}) "
        "and update FROZEN")
