"""Old path of :mod:`kern_d2.data.datasets.vg_format`, which benchmarks/ import; new code imports that."""
import sys

from kern_d2.data.datasets import vg_format as _module

sys.modules[__name__] = _module  # the same module object: its names, private ones and patches included
