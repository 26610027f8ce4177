"""Why a random R-101 gave loss_relation 88,833: the loss is a mean (its scale on known logits), the activations of
a random FrozenBN ResNet explode; training refuses an untrained detector unless MODEL.UNTRAINED_DETECTOR says
otherwise, and 'calibrate' gives the FrozenBN layers data statistics."""
import math
import os

import pytest
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model

import kern_d2.modeling  # noqa: F401  (registers the models)
from kern_d2.config import add_kern_config
from kern_d2.data import register_toy
from kern_d2.engine import SGGTrainer
from kern_d2.modeling.roi_heads import _mean_cross_entropy
from kern_d2.modeling.untrained_detector import (
    calibrate_frozen_bn,
    frozen_bn_without_statistics,
    untrained_frozen_detector_parts,
)

from tests.helpers import REPO_ROOT



def test_relation_loss_is_a_mean_over_the_sampled_pairs():
    # Uniform logits over P = 51 predicates: log(51) per pair, whatever the number of pairs (a sum would grow).
    for pairs in (3, 768):
        targets = torch.arange(pairs) % 51
        assert _mean_cross_entropy(torch.zeros(pairs, 51), targets).item() == pytest.approx(math.log(51), rel=1e-6)
    # Target logit a, the others 0: log(1 + (P - 1) e^-a); ignored pairs (-1) count neither in sum nor in count.
    logits = torch.zeros(4, 51)
    logits[torch.arange(4), torch.tensor([5, 0, 7, 9])] = 2.0
    loss = _mean_cross_entropy(logits, torch.tensor([5, 0, -1, -1]))
    assert loss.item() == pytest.approx(math.log(1 + 50 * math.exp(-2.0)), rel=1e-6)
    # The same as PyTorch's mean reduction; no pair at all gives 0.
    assert loss.item() == pytest.approx(F.cross_entropy(logits[:2], torch.tensor([5, 0])).item(), rel=1e-6)
    assert _mean_cross_entropy(torch.zeros(2, 51), torch.tensor([-1, -1])).item() == 0.0


def vg_detector_cfg(**overrides):
    cfg = get_cfg()
    add_kern_config(cfg)
    cfg.merge_from_file(os.path.join(REPO_ROOT, "configs", "VG-Detection", "faster_rcnn_R_101_FPN.yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""] + [x for kv in overrides.items() for x in kv])
    return cfg


def test_random_r101_activations_explode_and_calibration_brings_them_back():
    torch.manual_seed(0)
    model = build_model(vg_detector_cfg()).eval()
    image = torch.rand(3, 128, 160, generator=torch.Generator().manual_seed(1)) * 255
    batch = [{"image": image}]

    def feature_std():
        with torch.no_grad():
            return {k: v.std().item() for k, v in model.backbone(model.preprocess_image(batch).tensor).items()}

    before = feature_std()
    assert before["p4"] > 1e3 and before["p5"] > 1e3  # ~2x variance per residual block, 33 blocks
    layers = frozen_bn_without_statistics(model, None)
    assert len(layers) == 104  # stem + 33 blocks x 3 convs + 4 shortcuts
    assert calibrate_frozen_bn(model, batch, layers) == 104
    after = feature_std()
    assert all(0.01 < v < 10 for v in after.values()), after


def test_untrained_parts_from_the_missing_keys():
    model = build_model(vg_detector_cfg())
    keys = list(model.state_dict())
    assert frozen_bn_without_statistics(model, []) == []
    stem = [k for k in keys if k.startswith("backbone.bottom_up.stem.")]
    assert frozen_bn_without_statistics(model, stem) == ["backbone.bottom_up.stem.conv1.norm"]
    assert untrained_frozen_detector_parts(model, None) == {}  # a plain detector trains all of itself


@pytest.fixture(scope="module")
def frozen_bn_toy(toy_dataset_root):
    register_toy(toy_dataset_root, prefix="untrained_toy")
    return toy_dataset_root


def toy_trainer(config: str, output_dir, *opts):
    cfg = get_cfg()
    add_kern_config(cfg)
    cfg.merge_from_file(os.path.join(REPO_ROOT, "configs", "toy", config))
    cfg.merge_from_list([
        "DATASETS.TRAIN", "('untrained_toy_train',)", "DATASETS.TEST", "()", "MODEL.WEIGHTS", "",
        "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2", "INPUT.MIN_SIZE_TRAIN", "(96,)",
        "INPUT.MAX_SIZE_TRAIN", "128", "OUTPUT_DIR", str(output_dir), *opts,
    ])
    return SGGTrainer(cfg)


def test_training_refuses_a_random_frozen_bn_backbone_and_calibrates_on_request(frozen_bn_toy, tmp_path):
    frozen_bn = ["MODEL.FPN.NORM", "FrozenBN"]  # the toy backbone with Detectron2's ResNet normalisation
    with pytest.raises(ValueError, match=r"MODEL.WEIGHTS is empty .* FrozenBatchNorm2d layers .* 'calibrate'"):
        toy_trainer("toy_detector.yaml", tmp_path / "a", *frozen_bn).resume_or_load(resume=False)
    trainer = toy_trainer("toy_detector.yaml", tmp_path / "b", *frozen_bn, "MODEL.UNTRAINED_DETECTOR", "calibrate")
    trainer.resume_or_load(resume=False)
    norms = [m for m in trainer.model.backbone.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert norms and all(not torch.equal(m.running_var, torch.ones_like(m.running_var)) for m in norms)
    # the toy detector's trainable BN is not FrozenBN: nothing to refuse
    toy_trainer("toy_detector.yaml", tmp_path / "c").resume_or_load(resume=False)


def test_kern_training_refuses_a_frozen_untrained_detector(frozen_bn_toy, tmp_path):
    opts = ["MODEL.ROI_RELATION_HEAD.USE_PRIORS", "False", "MODEL.ROI_RELATION_HEAD.PRIORS_FILE", ""]
    frozen = r"frozen by MODEL.ROI_RELATION_HEAD.FREEZE_DETECTOR.*backbone \(\d+ tensors\)"
    with pytest.raises(ValueError, match=frozen):
        toy_trainer("kern_predcls.yaml", tmp_path / "a", *opts).resume_or_load(resume=False)
    toy_trainer("kern_predcls.yaml", tmp_path / "b", *opts, "MODEL.UNTRAINED_DETECTOR", "allow").resume_or_load(
        resume=False)


def test_divergence_message_names_the_step_the_cause_and_the_way_back():
    from kern_d2.engine.trainer import divergence_message

    text = divergence_message(125, 0.011031, "", "/out/model_0000099.pth")
    assert text.startswith("Training diverged at iteration 125 (learning rate 0.011).")
    assert "MODEL.WEIGHTS is empty" in text and "lower SOLVER.BASE_LR" in text
    assert text.endswith("The last good checkpoint is /out/model_0000099.pth: change the setting and train again "
                         "with --resume.")
    text = divergence_message(3, 0.02, "output/vg_detector/model_final.pth", "")
    assert "MODEL.WEIGHTS is empty" not in text and "Lower SOLVER.BASE_LR" in text
    assert text.endswith("No checkpoint was written before it.")
