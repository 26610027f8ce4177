"""Long-tail switches of the relation head: logit adjustment, re-weighted or balanced-softmax training loss, and
TDE-style counterfactual inference. Config keys under ``MODEL.ROI_RELATION_HEAD``, all off by default.

Predicate frequencies come from the priors' ``predicate_counts`` n_k (gt relation rows of predicate k in the training
split, ``tools/compute_priors.py``). Only the P-1 real predicates are re-balanced: column 0 ("no relation") keeps
offset 0 and weight 1, because how often a pair is unrelated in training is set by the pair sampler (at most a
quarter foreground), not by the annotations. With ``f_k = (n_k + 1) / sum_{j>=1} (n_j + 1)`` (k >= 1, +1 smoothed
like the predicate prior) and ``log_f = [0, log f_1, ..., log f_{P-1}]``:

- ``LOGIT_ADJUSTMENT_TAU`` tau > 0: inference logits ``z - tau * log_f`` (post-hoc logit adjustment).
- ``LOSS_WEIGHTING`` "inverse" | "effective_number": cross-entropy with class weights
  ``w_k = c * 1 / m_k`` or ``w_k = c * (1 - beta) / (1 - beta^m_k)`` (class-balanced loss, beta =
  ``LOSS_WEIGHTING_BETA``), m_k = max(n_k, 1), w_0 = 1; c makes the count-weighted mean of the foreground weights
  1 (``sum_k n_k w_k = sum_k n_k``), so a batch drawn from the training distribution keeps its loss scale. The
  summed weighted loss is divided by the number of targets, as the unweighted one.
- ``BALANCED_SOFTMAX``: training cross-entropy on ``z + log_f`` (balanced softmax); inference uses z. It replaces
  the re-weighting (both at once is an error).
- ``TDE_INFERENCE``: the relation logits of each pair minus those of its counterfactual "blank" pair (see
  :class:`PairFeatureMeans`): ``z_TDE = z(u, s, o, prior) - z(u_mean, s_mean, o_mean, prior)``, where u, s, o are
  the union feature and the subject and object box-head features that the relation head receives, and the means
  are running means kept as buffers in training. What stays: the class-pair prior edges
  A_rel[label_s, label_o, :] and, in SGCls/SGDet, the object labels and scores (object routing is not re-run).
  Cost: one extra pass of the relation head over the pairs; no second detector or union-feature pass.

Inference applies TDE first, then the logit adjustment; the softmax of the result gives the predicate scores.
"""
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LOSS_WEIGHTINGS",
    "LongTailSwitches",
    "PairFeatureMeans",
    "balanced_log_frequencies",
    "predicate_class_weights",
    "mean_cross_entropy",
]

LOSS_WEIGHTINGS = ("none", "inverse", "effective_number")  # MODEL.ROI_RELATION_HEAD.LOSS_WEIGHTING


def balanced_log_frequencies(counts: torch.Tensor) -> torch.Tensor:
    """float32 [P]: 0 for "no relation", then log f_k with f_k = (n_k + 1) / sum_{j>=1} (n_j + 1) (``counts`` [P])."""
    smoothed = counts[1:].double() + 1.0
    log_f = torch.log(smoothed / smoothed.sum())
    return torch.cat([log_f.new_zeros(1), log_f]).float()


def predicate_class_weights(counts: torch.Tensor, method: str, beta: float = 0.999) -> torch.Tensor:
    """float32 [P] cross-entropy weights from predicate counts [P] (see the module docstring for the formula).

    method: "inverse" (1 / n_k) or "effective_number" ((1 - beta) / (1 - beta^n_k), Cui et al., CVPR 2019).
    """
    n = counts[1:].double()
    m = n.clamp_min(1.0)  # a predicate absent from training is never a target; count it once
    if method == "inverse":
        raw = 1.0 / m
    elif method == "effective_number":
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"effective-number weights need 0 <= beta < 1, got {beta}")
        raw = (1.0 - beta) / (1.0 - beta**m)
    else:
        raise ValueError(f"predicate_class_weights: method must be 'inverse' or 'effective_number', got {method!r}")
    total = (n * raw).sum()
    scale = n.sum() / total if total > 0 else torch.ones_like(total)
    return torch.cat([raw.new_ones(1), raw * scale]).float()


def mean_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weight=None) -> torch.Tensor:
    """Cross-entropy (in float32, class weights ``weight`` [P] optional) summed over the targets >= 0 and divided by
    their number; 0 (still part of the graph) when there are none. No device sync: the count is divided on the
    device."""
    total = F.cross_entropy(logits.float(), targets, weight=weight, ignore_index=-1, reduction="sum")
    return total / (targets >= 0).sum().clamp_min(1)


class PairFeatureMeans(nn.Module):
    """Running means of the relation head's per-pair inputs, the counterfactual "blank" pair of TDE inference.

    Buffers (saved in checkpoints): ``union_mean`` [F], ``subj_mean`` [Fo], ``obj_mean`` [Fo] (float32), and
    ``num_updates`` (int64 []). Each training forward updates them with the means of its sampled pairs' inputs:
    ``mean += rate * (batch_mean - mean)`` with ``rate = max(1 / (num_updates + 1), momentum)``, an exact running
    average over the first 1 / momentum batches, an exponential one after (the union features drift as they train).
    """

    def __init__(self, union_dim: int, object_dim: int, momentum: float = 0.01):
        super().__init__()
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"PairFeatureMeans: momentum must be in (0, 1], got {momentum}")
        self.momentum = momentum
        self.register_buffer("union_mean", torch.zeros(union_dim))
        self.register_buffer("subj_mean", torch.zeros(object_dim))
        self.register_buffer("obj_mean", torch.zeros(object_dim))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.int64))
        self._updated = False  # a Python flag, so that inference checks it without a device sync

    @torch.no_grad()
    def update(self, union: torch.Tensor, subj: torch.Tensor, obj: torch.Tensor) -> None:
        """Fold in a batch of pairs: union [M, F], subj and obj [M, Fo] (``union`` None: the head takes none)."""
        if subj.shape[0] == 0:
            return
        rate = torch.clamp(1.0 / (self.num_updates + 1).double(), min=self.momentum).float()
        for mean, batch in ((self.union_mean, union), (self.subj_mean, subj), (self.obj_mean, obj)):
            if batch is not None:
                mean.add_(rate * (batch.detach().float().mean(dim=0) - mean))
        self.num_updates += 1
        self._updated = True

    def check_ready(self) -> None:
        if not self._updated:
            raise RuntimeError(
                "MODEL.ROI_RELATION_HEAD.TDE_INFERENCE needs the running means of the relation head's inputs "
                "(roi_heads.long_tail.feature_means.*), which training keeps, but this model's were never updated: "
                "it was not trained, or its weights come from a checkpoint trained before kern_d2 kept them. Train "
                "(or fine-tune for some iterations) with this version of kern_d2, or set TDE_INFERENCE False"
            )

    def blank(self, num_pairs: int, union: torch.Tensor, subj: torch.Tensor):
        """(union [M, F] or None, subj [M, Fo], obj [M, Fo]): the means repeated for ``num_pairs`` rows in the dtypes
        of the real inputs (``union`` None stays None). Materialised: GEMMs over stride-0 rows are slow on CPU."""
        def repeat(mean, like):
            return mean.to(like.dtype).expand(num_pairs, -1).contiguous()

        return None if union is None else repeat(self.union_mean, union), repeat(self.subj_mean, subj), \
            repeat(self.obj_mean, subj)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        count = state_dict.get(prefix + "num_updates")
        if count is not None:
            self._updated = bool(count > 0)


class LongTailSwitches(nn.Module):
    """The switches of the module docstring, between KERNROIHeads and its relation head.

    Args:
        logit_adjustment_tau: tau >= 0 (0 = off).
        loss_weighting: one of :data:`LOSS_WEIGHTINGS`.
        loss_weighting_beta: beta of "effective_number".
        balanced_softmax: train with balanced softmax.
        tde_inference: TDE logits at inference.
        feature_means: the running means of the head's inputs (kept whether TDE is on or not, so that any model
            trained with this code can be evaluated with TDE).
    """

    def __init__(
        self,
        *,
        feature_means: PairFeatureMeans,
        logit_adjustment_tau: float = 0.0,
        loss_weighting: str = "none",
        loss_weighting_beta: float = 0.999,
        balanced_softmax: bool = False,
        tde_inference: bool = False,
    ):
        super().__init__()
        if not logit_adjustment_tau >= 0.0:
            raise ValueError(f"MODEL.ROI_RELATION_HEAD.LOGIT_ADJUSTMENT_TAU must be >= 0 (0 = off), got "
                             f"{logit_adjustment_tau}")
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"MODEL.ROI_RELATION_HEAD.LOSS_WEIGHTING must be one of {LOSS_WEIGHTINGS}, got "
                             f"{loss_weighting!r}")
        if loss_weighting == "effective_number" and not 0.0 <= loss_weighting_beta < 1.0:
            raise ValueError(
                f"MODEL.ROI_RELATION_HEAD.LOSS_WEIGHTING_BETA must be in [0, 1), got {loss_weighting_beta}"
            )
        if balanced_softmax and loss_weighting != "none":
            raise ValueError(
                "MODEL.ROI_RELATION_HEAD.BALANCED_SOFTMAX and LOSS_WEIGHTING "
                f"{loss_weighting!r} are two alternative corrections of the training loss; turn one of them off"
            )
        self.feature_means = feature_means
        self.logit_adjustment_tau = float(logit_adjustment_tau)
        self.loss_weighting = loss_weighting
        self.loss_weighting_beta = float(loss_weighting_beta)
        self.balanced_softmax = balanced_softmax
        self.tde_inference = tde_inference

    @classmethod
    def from_config(cls, cfg, union_dim: int, object_dim: int) -> dict:
        """Constructor arguments from a config with kern_d2's keys (``LongTailSwitches(**from_config(cfg, ...))``)."""
        rel = cfg.MODEL.ROI_RELATION_HEAD
        if rel.TDE_INFERENCE and rel.NAME == "FREQ":
            raise ValueError(
                "MODEL.ROI_RELATION_HEAD.TDE_INFERENCE removes the effect of a pair's visual features, and the FREQ "
                "head has none (its blank pair gives the same logits: TDE would be all zeros); use KERN or VRFC"
            )
        return dict(
            feature_means=PairFeatureMeans(union_dim, object_dim, rel.TDE_MOMENTUM),
            logit_adjustment_tau=rel.LOGIT_ADJUSTMENT_TAU,
            loss_weighting=rel.LOSS_WEIGHTING,
            loss_weighting_beta=rel.LOSS_WEIGHTING_BETA,
            balanced_softmax=rel.BALANCED_SOFTMAX,
            tde_inference=rel.TDE_INFERENCE,
        )

    def relation_logits(self, head: nn.Module, union, subj, obj, prior, priors) -> torch.Tensor:
        """``head(union, subj, obj, prior)`` [M, P]; in training it also updates the running means, at inference
        it applies TDE and the logit adjustment (``priors``: the model's KnowledgePriors)."""
        if self.training:
            self.feature_means.update(union, subj, obj)
            return head(union, subj, obj, prior)
        if self.tde_inference:
            self.feature_means.check_ready()
        logits = head(union, subj, obj, prior)
        if self.tde_inference:
            # In float32: under bf16 autocast the difference of two close logits would lose its low bits.
            logits = logits.float() - head(*self.feature_means.blank(subj.shape[0], union, subj), prior).float()
        if self.logit_adjustment_tau > 0:
            counts = priors.require_predicate_counts("MODEL.ROI_RELATION_HEAD.LOGIT_ADJUSTMENT_TAU")
            log_f = balanced_log_frequencies(counts)
            logits = logits.float() - self.logit_adjustment_tau * log_f
        return logits

    def training_loss_inputs(self, logits: torch.Tensor, priors):
        """(logits [M, P], class weights [P] or None) of the relation cross-entropy in training."""
        if self.balanced_softmax:
            counts = priors.require_predicate_counts("MODEL.ROI_RELATION_HEAD.BALANCED_SOFTMAX")
            return logits.float() + balanced_log_frequencies(counts), None
        if self.loss_weighting != "none":
            counts = priors.require_predicate_counts(f"MODEL.ROI_RELATION_HEAD.LOSS_WEIGHTING {self.loss_weighting}")
            return logits, predicate_class_weights(counts, self.loss_weighting, self.loss_weighting_beta)
        return logits, None

    def extra_repr(self) -> str:
        return (f"logit_adjustment_tau={self.logit_adjustment_tau}, loss_weighting={self.loss_weighting!r}, "
                f"loss_weighting_beta={self.loss_weighting_beta}, balanced_softmax={self.balanced_softmax}, "
                f"tde_inference={self.tde_inference}")
