#!/usr/bin/env python
"""Print the versions rs_detectron2 runs on and whether detectron2's compiled ops are present."""
import platform

import torch
import torchvision

import detectron2
import rs_detectron2

try:
    from detectron2 import _C  # noqa: F401

    compiled_ops = "present"
except ImportError:
    compiled_ops = "absent (pure-Python fallbacks; rotated boxes and DeformConv unavailable)"

print(f"python          {platform.python_version()}")
print(f"torch           {torch.__version__} (CUDA available: {torch.cuda.is_available()})")
print(f"torchvision     {torchvision.__version__}")
print(f"detectron2      {detectron2.__version__} at {detectron2.__file__}")
print(f"detectron2 ops  {compiled_ops}")
print(f"rs_detectron2   {rs_detectron2.__version__}")
