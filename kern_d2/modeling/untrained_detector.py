"""Detectors without trained weights: what is untrained, and a data-dependent start for FrozenBN backbones.

Detectron2's ResNets normalise with FrozenBatchNorm2d, whose statistics come from the pretrained file. Built
from random init they are the identity (mean 0, variance 1), and each residual block adds a branch of about
the variance of its input: activations roughly double in variance per block. In R-101 (33 blocks) res4 has a
standard deviation of ~1e6 on a normal image, the box head's and the relation head's logits follow, and the
losses are 1e5-1e6 (e.g. loss_relation 88,833 on one image): not a reduction bug but exploding activations.
:func:`calibrate_frozen_bn` gives each such layer the statistics of its input on one batch instead.
"""
from typing import Dict, Iterable, List, Optional

import torch
from torch import nn

from detectron2.layers import FrozenBatchNorm2d

# MODEL.UNTRAINED_DETECTOR: what training does when the detector has no trained weights.
UNTRAINED_DETECTOR_POLICIES = ("error", "calibrate", "allow")


def frozen_bn_without_statistics(model: nn.Module, missing_keys: Optional[Iterable[str]]) -> List[str]:
    """Names of the backbone's FrozenBatchNorm2d layers whose statistics were not loaded (``missing_keys`` of the
    load; None = nothing was loaded)."""
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        return []
    missing = None if missing_keys is None else set(missing_keys)
    return [
        f"backbone.{name}" for name, m in backbone.named_modules()
        if isinstance(m, FrozenBatchNorm2d) and (missing is None or f"backbone.{name}.running_var" in missing)
    ]


def untrained_frozen_detector_parts(model: nn.Module, missing_keys: Optional[Iterable[str]]) -> Dict[str, int]:
    """{state-dict prefix: missing tensors} of the detector parts that a scene-graph model keeps frozen
    (``FREEZE_DETECTOR``) and that got no weights: backbone and box head always, the RPN in SGDet. Empty for
    other models."""
    heads = getattr(model, "roi_heads", None)
    if heads is None or not getattr(heads, "freeze_detector", False):
        return {}
    prefixes = ["backbone.", "roi_heads.box_head.", "roi_heads.box_predictor."]
    if getattr(heads, "mode", None) == "sgdet":
        prefixes.append("proposal_generator.")
    keys = list(model.state_dict()) if missing_keys is None else list(missing_keys)
    counts = {p: sum(1 for k in keys if k.startswith(p)) for p in prefixes}
    return {p: n for p, n in counts.items() if n}


@torch.no_grad()
def calibrate_frozen_bn(model: nn.Module, batch: List[dict], names: Optional[Iterable[str]] = None) -> int:
    """Give the backbone's FrozenBatchNorm2d layers (all, or those named ``backbone.<name>``) the per-channel mean
    and variance of their input on ``batch`` (one fp32 forward of the backbone, layer after layer, so each sees
    its predecessors already calibrated). Returns the number of layers set.

    With identity statistics a random ResNet amplifies its input at every block (FPN features with std ~1e3-1e6),
    RPN scores saturate and losses are huge; calibrated, activations keep the scale of a trained network.
    """
    wanted = None if names is None else set(names)
    handles = []

    def set_statistics(module, inputs):
        x = inputs[0].float()
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3)))

    for name, m in model.backbone.named_modules():
        if isinstance(m, FrozenBatchNorm2d) and (wanted is None or f"backbone.{name}" in wanted):
            handles.append(m.register_forward_pre_hook(set_statistics))
    try:
        model.backbone(model.preprocess_image(batch).tensor.float())
    finally:
        for handle in handles:
            handle.remove()
    return len(handles)


def average_frozen_bn_statistics(model: nn.Module) -> None:
    """Average the backbone's FrozenBatchNorm2d statistics over the processes (after each calibrated on its own
    batch), so that every process trains the same network."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for m in model.backbone.modules():
        if isinstance(m, FrozenBatchNorm2d):
            for buffer in (m.running_mean, m.running_var):
                dist.all_reduce(buffer)
                buffer.div_(dist.get_world_size())
