"""The optimizer of kern_d2 trainings: Detectron2's SGD, or Adam as KERN's released code trains its relation part.

``SOLVER.OPTIMIZER`` picks it. Both use Detectron2's parameter groups (weight decay of norms and biases, bias
learning-rate factor) and its gradient clipping (``SOLVER.CLIP_GRADIENTS``), so the rest of the config means the
same for both. The fine-tuned fc copies of the relation part (the union fc head and, with ``OBJECT_FEATURES``
"finetuned", the object fc head) train at ``SOLVER.FC_LR_FACTOR`` times the learning rate (the released code's
"lr / 10 on the fc layers"); Adam's eps is ``SOLVER.ADAM_EPS`` (both from ``MODEL.ROI_RELATION_HEAD.VARIANT`` when
negative).
"""
import torch

from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping

from kern_d2.config import resolve_variant

OPTIMIZERS = ("SGD", "ADAM")
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
    return maybe_add_gradient_clipping(cfg, optimizer)
