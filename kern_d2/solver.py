"""The optimizer of kern_d2 trainings: Detectron2's SGD, or Adam as KERN's released code trains its relation part.

``SOLVER.OPTIMIZER`` picks it. Both use Detectron2's parameter groups (weight decay of norms and biases, bias
learning-rate factor) and its gradient clipping (``SOLVER.CLIP_GRADIENTS``), so the rest of the config means the
same for both. ``CLIP_TYPE`` "value" and "norm" are Detectron2's, which clip each parameter tensor on its own;
"full_model" clips the norm of all gradients together, as the released KERN code does (and Detectron2 projects such
as Mask2Former), and logs that norm, before clipping, as ``grad_norm``. The fine-tuned fc copies of the relation part (the union fc head and, with ``OBJECT_FEATURES``
"finetuned", the object fc head) train at ``SOLVER.FC_LR_FACTOR`` times the learning rate (the released code's
"lr / 10 on the fc layers"); Adam's eps is ``SOLVER.ADAM_EPS`` (both from ``MODEL.ROI_RELATION_HEAD.VARIANT`` when
negative).
"""
import itertools

import torch

from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from detectron2.utils.events import get_event_storage

from kern_d2.config import resolve_variant

OPTIMIZERS = ("SGD", "ADAM")
CLIP_TYPES = ("value", "norm", "full_model")
# Parameter-name parts of the fine-tuned fc copies (the released code's ``roi_fmap`` and ``roi_fmap_obj``).
FC_COPY_NAMES = ("union_feature.fc_head.", "object_fc_head.")


def is_fc_copy(name: str) -> bool:
    """Whether parameter ``name`` belongs to a fine-tuned fc copy of the relation part."""
    return any(part in name for part in FC_COPY_NAMES)


def build_sgg_optimizer(cfg, model: torch.nn.Module) -> torch.optim.Optimizer:
    """``SOLVER.OPTIMIZER`` "SGD": Detectron2's (momentum ``SOLVER.MOMENTUM``); "ADAM": ``torch.optim.Adam`` with
    L2 weight decay ``SOLVER.WEIGHT_DECAY`` (the form of the released KERN code), betas (0.9, 0.999) and eps
    ``SOLVER.ADAM_EPS``."""
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name not in OPTIMIZERS:
        raise ValueError(f"SOLVER.OPTIMIZER must be one of {OPTIMIZERS}, got {cfg.SOLVER.OPTIMIZER!r}")
    variant = resolve_variant(cfg) if cfg.MODEL.get("ROI_RELATION_HEAD", None) is not None else None
    fc_factor = variant["FC_LR_FACTOR"] if variant else 1.0
    params = get_default_optimizer_params(
        model,
        base_lr=cfg.SOLVER.BASE_LR,
        weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM,
        bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
        weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS,
        lr_factor_func=(lambda param_name: fc_factor if is_fc_copy(param_name) else 1.0) if fc_factor != 1.0 else None,
    )
    if name == "SGD":
        optimizer = torch.optim.SGD(params, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM,
                                    nesterov=cfg.SOLVER.NESTEROV, weight_decay=cfg.SOLVER.WEIGHT_DECAY, foreach=True)
    else:
        eps = variant["ADAM_EPS"] if variant else 1e-8
        optimizer = torch.optim.Adam(params, lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY, eps=eps)
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE not in CLIP_TYPES:
        raise ValueError(f"SOLVER.CLIP_GRADIENTS.CLIP_TYPE must be one of {CLIP_TYPES}, got {clip.CLIP_TYPE!r}")
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        return add_full_model_gradient_clipping(optimizer, clip.CLIP_VALUE, clip.NORM_TYPE)
    return maybe_add_gradient_clipping(cfg, optimizer)


def add_full_model_gradient_clipping(optimizer: torch.optim.Optimizer, max_norm: float,
                                     norm_type: float = 2.0) -> torch.optim.Optimizer:
    """``optimizer``, changed in place so that each ``step`` first scales all gradients of all its groups together
    to a total ``norm_type``-norm of at most ``max_norm`` (``torch.nn.utils.clip_grad_norm_`` over every parameter),
    and puts the total norm before clipping in the event storage as ``grad_norm`` when a trainer runs."""
    base = type(optimizer)

    class FullModelGradientClipping(base):
        def step(self, closure=None):
            params = itertools.chain(*(group["params"] for group in self.param_groups))
            total = torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
            try:
                get_event_storage().put_scalar("grad_norm", float(total), smoothing_hint=True)
            except AssertionError:  # no trainer's storage (a step outside training)
                pass
            return super().step(closure)

    FullModelGradientClipping.__name__ = f"{base.__name__}WithFullModelGradientClipping"
    optimizer.__class__ = FullModelGradientClipping
    return optimizer
