"""Names shared by the numpy core and the torch model, defined once (this module imports nothing).

Why a module of its own: ``distree_env`` must not import torch, and ``distree_env.model`` must not
define a second copy; both import from here.
"""

from __future__ import annotations

__all__ = ["CIFAR10_CLASS_NAMES", "TOPOLOGIES"]

#: How a multi-exit network is laid out over devices: ``parallel`` (DistrEE: one branch per device,
#: exits fuse all branches) or ``pipeline`` (MDI-Exit: one backbone cut into consecutive segments).
TOPOLOGIES = ("parallel", "pipeline")

#: CIFAR-10's classes in label order (label i is ``CIFAR10_CLASS_NAMES[i]``).
CIFAR10_CLASS_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
