"""rs_detectron2: Rank & Sort Loss detectors as a detectron2 project."""
from setuptools import find_packages, setup

setup(
    name="rs_detectron2",
    version="0.4.0",
    description="Rank & Sort (RS) Loss (Oksuz et al., ICCV 2021) for detectron2",
    packages=find_packages(exclude=("tests", "tests.*", "benchmarks", "scripts")),
    python_requires=">=3.9",
    # detectron2 is not on PyPI, so pip cannot resolve it from here: scripts/install.py
    # installs it (scripts/install_detectron2.py keeps a working one, or installs and
    # checks the registry redistribution). torch and torchvision are left out for the
    # same reason detectron2 leaves them out: the right build depends on the machine,
    # and scripts/install.py picks a pair whose compiled ops load.
    install_requires=[
        "numpy",
        "fvcore>=0.1.5,<0.1.6",
        "iopath>=0.1.7,<0.1.10",
        "pycocotools>=2.0.2",
        "lvis",
        "opencv-python",
        "tqdm",
        "matplotlib",  # benchmarks plots; detectron2's Visualizer (demo.py)
        "setuptools<81",  # detectron2.model_zoo imports pkg_resources
    ],
    extras_require={"dev": ["pytest>=7"]},
)
