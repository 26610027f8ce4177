"""Generators of synthetic scene-graph datasets, written in the VG150 file format
(:mod:`kern_d2.data.datasets.vg_format`) so that the builtin ``toy_*`` / ``synth_*`` names (or ``register_toy``)
load them.

- :mod:`.toy` (``tools/make_toy_dataset.py``): a small dataset of shapes for tests and the toy configs.
- :mod:`.synth` (``tools/make_synth_dataset.py``): the benchmark of datasets/README.md, on which knowledge matters.
- :mod:`.vg_standin` (``tools/make_vg_standin.py``): VG150-sized files (150 classes, 50 predicates) for scale runs.
- :mod:`.shapes`: the drawing primitives they share.

Importing :mod:`kern_d2.data` does not import these.
"""
