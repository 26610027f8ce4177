"""Every shipped config loads with kern_d2's keys, and the VG config families are the variants they say: VG-KERN is
KERN as released (the paper's VG figures are its reference), VG-KERN-d2 kern_d2's own choices."""
import glob
import os

import pytest
from detectron2.config import get_cfg

from kern_d2.config import VARIANT_POINTS, add_kern_config, resolve_variant

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(glob.glob(os.path.join(ROOT, "configs", "**", "*.yaml"), recursive=True))


def load(path):
    cfg = add_kern_config(get_cfg())
    cfg.merge_from_file(path)
    return cfg


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: os.path.relpath(p, ROOT))
def test_config_loads_and_its_variant_resolves(path):
    resolve_variant(load(path))


@pytest.mark.parametrize("family, column", [("VG-KERN", 1), ("VG-KERN-d2", 0)])
def test_vg_families_are_their_variant(family, column):
    paths = [p for p in CONFIGS if os.path.basename(os.path.dirname(p)) == family and "Base" not in p]
    assert paths
    for path in paths:
        resolved = resolve_variant(load(path))
        for key, values in VARIANT_POINTS.items():
            assert resolved[key] == values[column], (path, key)
        priors = load(path).MODEL.ROI_RELATION_HEAD.PRIORS_FILE
        assert ("released" in os.path.basename(priors)) == (column == 1), path
