"""The optimizer of kern_d2 trainings: Detectron2's SGD, or Adam as KERN's released code trains its relation part.

``SOLVER.OPTIMIZER`` picks it. Both use Detectron2's parameter groups (weight decay of norms and biases, bias
learning-rate factor) and its gradient clipping (``SOLVER.CLIP_GRADIENTS``), so the rest of the config means the
same for both.
"""
import torch

from detectron2.solver import build_optimizer as build_sgd_optimizer
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

OPTIMIZERS = ("SGD", "ADAM")


def build_sgg_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """``SOLVER.OPTIMIZER`` "SGD": Detectron2's (momentum ``SOLVER.MOMENTUM``); "ADAM": ``torch.optim.Adam`` with
    L2 weight decay ``SOLVER.WEIGHT_DECAY`` (the form of the released KERN code) and betas (0.9, 0.999)."""
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name not in OPTIMIZERS:
        raise ValueError(f"SOLVER.OPTIMIZER must be one of {OPTIMIZERS}, got {cfg.SOLVER.OPTIMIZER!r}")
    if name == "SGD":
        return build_sgd_optimizer(cfg, model)
    params = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
    )
    adam = torch.optim.Adam(params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY)
    return maybe_add_gradient_clipping(cfg, adam)
