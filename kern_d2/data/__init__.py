"""Scene graph data, laid out as ``detectron2/data/``.

- :mod:`.datasets`: loaders of VG150, Open Images, GQA-200 and the simple JSON format, and their registration
  (importing this package registers the builtin dataset names, :mod:`kern_d2.data.datasets.builtin`).
- The training pipeline: :mod:`.mapper` (``SGGDatasetMapper``), :mod:`.transfer` (``CompactTransfer``).
- :mod:`.generators`: the toy, synth and VG stand-in dataset generators (not imported here).
- :mod:`.testing`: writers of the Open Images and GQA-200 file layouts, for tests and benchmarks.

The names below are those of :mod:`.datasets`, the mapper and the transfer, importable from here.
"""
from . import datasets
from .datasets import *  # noqa: F401,F403  (its public names; importing it registers the builtin names)
from .mapper import SGGDatasetMapper, sample_one_predicate_per_pair
from .transfer import CompactTransfer

__all__ = sorted(datasets.__all__ + ["CompactTransfer", "SGGDatasetMapper", "sample_one_predicate_per_pair"])
