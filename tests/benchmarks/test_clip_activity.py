"""benchmarks/clip_activity.py on the toy data: it counts the steps in which each clipping rule acts."""
import json
import os

import pytest

from tests.helpers.toy_tools import MODE_CONFIGS


@pytest.mark.slow
@pytest.mark.parametrize("clip_value, clipped_steps", [("1e-9", 3), ("1e9", 0)])
def test_clip_activity_counts_the_steps_each_rule_clips(toy_tools, clip_value, clipped_steps):
    # A limit below every gradient norm: both rules act at each of the 3 steps; far above: at none.
    output = toy_tools.scratch("clip")
    toy_tools.run(os.path.join("..", "benchmarks", "clip_activity.py"), "--config-file", MODE_CONFIGS["predcls"],
                  "--iters", "3", "--output", output, *toy_tools.kern_opts(),
                  "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", clip_value)
    with open(os.path.join(output, "clip_activity.json")) as f:
        result = json.load(f)
    assert (result["mode"], result["steps"]) == ("predcls", 3)
    assert result["steps_total_norm_above"] == result["steps_a_tensor_norm_above"] == clipped_steps
    assert 0 < result["total_norm_median"] <= result["total_norm_max"]
