"""The long-tail switches (kern_d2/modeling/long_tail.py): formulas against hand computations, TDE against two
slow forward passes, refusals, and every switch training and evaluating in each mode on the toy dataset."""
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from detectron2.structures import Instances

from kern_d2.checkpoint import SGGCheckpointer
from kern_d2.evaluation.sgg_evaluator import gt_from_dataset_dict, prediction_from_output
from kern_d2.evaluation.sgg_metrics import compute_sgg_metrics
from kern_d2.modeling.long_tail import (
    LongTailSwitches,
    PairFeatureMeans,
    balanced_log_frequencies,
    mean_cross_entropy,
    predicate_class_weights,
)
from kern_d2.modeling.priors import KnowledgePriors, compute_predicate_counts, compute_priors, save_priors

from tests.helpers.toy_models import MODES, build, gt_like_detections, infer, map_dicts, train_losses
from tests.helpers.toy_tools import MODE_CONFIGS, read_sgg_metrics

pytestmark = pytest.mark.usefixtures("single_torch_thread")


KEY = "MODEL.ROI_RELATION_HEAD."
COUNTS = torch.tensor([0, 3, 1, 0])  # P = 4: "no relation", then predicates seen 3, 1 and 0 times


def _priors_with_counts(counts: torch.Tensor) -> KnowledgePriors:
    p = counts.shape[0]
    return KnowledgePriors(torch.eye(2), torch.full((2, 2, p), 1.0 / p), predicate_counts=counts)


def _switches(**kwargs) -> LongTailSwitches:
    return LongTailSwitches(feature_means=PairFeatureMeans(3, 2), **kwargs)


def _by_pair(instances: Instances):
    """(pairs [M, 2], rel_scores [M, P]) in the order of the pair indices, not of the triplet scores."""
    pairs = instances.rel_pair_idxs
    order = torch.argsort(pairs[:, 0] * (len(instances) + 1) + pairs[:, 1])
    return pairs[order], instances.rel_scores[order]


# ------------------------------------------------------------------------------------------------ formulas
def test_balanced_log_frequencies_by_hand():
    # Smoothed counts 4, 2, 1 of 7.
    expected = [0.0, math.log(4 / 7), math.log(2 / 7), math.log(1 / 7)]
    torch.testing.assert_close(balanced_log_frequencies(COUNTS), torch.tensor(expected))


def test_logit_adjustment_equals_hand_computation():
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, -1.0, 0.5, 2.0]])
    switches = _switches(logit_adjustment_tau=0.5).eval()
    head = lambda union, subj, obj, prior: logits  # noqa: E731
    out = switches.relation_logits(head, None, torch.zeros(2, 2), torch.zeros(2, 2), None, _priors_with_counts(COUNTS))
    offset = [0.0, -0.5 * math.log(4 / 7), -0.5 * math.log(2 / 7), -0.5 * math.log(1 / 7)]
    expected = [[1.0 + offset[0], 2.0 + offset[1], 3.0 + offset[2], 4.0 + offset[3]],
                [0.0 + offset[0], -1.0 + offset[1], 0.5 + offset[2], 2.0 + offset[3]]]
    torch.testing.assert_close(out, torch.tensor(expected))
    # Training leaves the logits alone.
    torch.testing.assert_close(switches.train().relation_logits(head, None, torch.zeros(2, 2), torch.zeros(2, 2), None,
                                                                _priors_with_counts(COUNTS)), logits)


def test_class_weights_equal_the_formula():
    counts = torch.tensor([0, 100, 10, 1, 0])
    # inverse: 1/m with m = max(n, 1) = 100, 10, 1, 1; c = sum n / sum n/m = 111 / 3 = 37.
    torch.testing.assert_close(predicate_class_weights(counts, "inverse"), torch.tensor([1.0, 0.37, 3.7, 37.0, 37.0]))
    beta = 0.9
    raw = [(1 - beta) / (1 - beta**m) for m in (100, 10, 1, 1)]
    c = 111 / (100 * raw[0] + 10 * raw[1] + 1 * raw[2])
    expected = torch.tensor([1.0] + [c * r for r in raw])
    torch.testing.assert_close(predicate_class_weights(counts, "effective_number", beta), expected)
    # beta = 0: every seen predicate weighs 1 (no re-weighting).
    torch.testing.assert_close(predicate_class_weights(counts, "effective_number", 0.0), torch.ones(5))
    with pytest.raises(ValueError, match="0 <= beta < 1"):
        predicate_class_weights(counts, "effective_number", 1.0)


def test_weighted_and_balanced_softmax_losses_by_hand():
    logits = torch.tensor([[2.0, 0.0, 1.0, -1.0], [0.5, 1.5, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    targets = torch.tensor([0, 2, -1])  # the third pair is ignored
    priors = _priors_with_counts(COUNTS)

    def ce(row, k):
        return math.log(sum(math.exp(v) for v in row)) - row[k]

    rows = logits.tolist()
    switches = _switches(loss_weighting="inverse")
    out, weight = switches.training_loss_inputs(logits, priors)
    # inverse weights of counts 3, 1, 0: raw 1/3, 1, 1; c = 4 / (3/3 + 1) = 2.
    torch.testing.assert_close(weight, torch.tensor([1.0, 2 / 3, 2.0, 2.0]))
    expected = (1.0 * ce(rows[0], 0) + 2.0 * ce(rows[1], 2)) / 2
    assert mean_cross_entropy(out, targets, weight).item() == pytest.approx(expected, rel=1e-6)

    out, weight = _switches(balanced_softmax=True).training_loss_inputs(logits, priors)
    assert weight is None
    shift = [0.0, math.log(4 / 7), math.log(2 / 7), math.log(1 / 7)]
    shifted = [[v + s for v, s in zip(row, shift)] for row in rows]
    expected = (ce(shifted[0], 0) + ce(shifted[1], 2)) / 2
    assert mean_cross_entropy(out, targets, weight).item() == pytest.approx(expected, rel=1e-6)
    # Off: the plain logits, no weights.
    out, weight = _switches().training_loss_inputs(logits, priors)
    assert out is logits and weight is None


def test_running_means_average_then_decay():
    means = PairFeatureMeans(union_dim=1, object_dim=1, momentum=0.25)
    batches = [1.0, 3.0, 8.0, 0.0, 4.0, 12.0]  # batch means of the union feature
    expected, value = [], 0.0
    for n, x in enumerate(batches):
        value += max(1 / (n + 1), 0.25) * (x - value)
        expected.append(value)
    # By hand: 1, 2, 4, 3 (exact mean of four), then 3 + (4-3)/4 = 3.25, 3.25 + (12-3.25)/4 = 5.4375.
    assert expected == pytest.approx([1, 2, 4, 3, 3.25, 5.4375])
    for x, e in zip(batches, expected):
        union = torch.tensor([[x - 1.0], [x + 1.0]])  # mean x
        means.update(union, 2 * union, -union)
        assert means.union_mean.item() == pytest.approx(e)
        assert means.subj_mean.item() == pytest.approx(2 * e) and means.obj_mean.item() == pytest.approx(-e)
    assert int(means.num_updates) == len(batches)


# ------------------------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize("overrides, message", [
    ({"BALANCED_SOFTMAX": True, "LOSS_WEIGHTING": "inverse"}, "alternative corrections of the training loss"),
    ({"LOSS_WEIGHTING": "focal"}, "LOSS_WEIGHTING must be one of"),
    ({"LOSS_WEIGHTING": "effective_number", "LOSS_WEIGHTING_BETA": 1.0}, r"LOSS_WEIGHTING_BETA must be in \[0, 1\)"),
    ({"LOGIT_ADJUSTMENT_TAU": -1.0}, "LOGIT_ADJUSTMENT_TAU must be >= 0"),
    ({"TDE_MOMENTUM": 0.0}, r"momentum must be in \(0, 1\]"),
])
def test_bad_switch_settings_are_refused_at_build(toy, overrides, message):
    with pytest.raises(ValueError, match=message):
        build(toy, "predcls", **{KEY + k: v for k, v in overrides.items()})


def test_tde_with_the_freq_head_is_refused(toy):
    with pytest.raises(ValueError, match="TDE_INFERENCE .* FREQ head has none"):
        build(toy, "predcls", "freq", **{KEY + "TDE_INFERENCE": True})


@pytest.mark.parametrize("overrides, training", [
    ({"LOGIT_ADJUSTMENT_TAU": 1.0}, False),
    ({"LOSS_WEIGHTING": "inverse"}, True),
    ({"BALANCED_SOFTMAX": True}, True),
])
def test_switches_refuse_a_priors_file_without_predicate_counts(toy, tmp_path, overrides, training):
    old = str(tmp_path / "old_priors.npz")
    cooccurrence, rel_prior = compute_priors(toy.train, len(toy.thing_classes), len(toy.predicate_classes))
    save_priors(old, cooccurrence, rel_prior, toy.thing_classes, toy.predicate_classes)  # no predicate_counts
    cfg, model = build(toy, "predcls", **{KEY + "PRIORS_FILE": old, **{KEY + k: v for k, v in overrides.items()}})
    with pytest.raises(ValueError, match=r"needs the number of training relations .*old_priors\.npz.*compute_priors"):
        if training:
            train_losses(model, map_dicts(cfg, toy.batch_train, is_train=True))
        else:
            infer(model, map_dicts(cfg, toy.batch_test, is_train=False))


def test_tde_refuses_weights_without_running_means(toy, tmp_path):
    """An untrained model, and weights of a model trained before the means existed, cannot run TDE; without TDE
    those old weights still serve."""
    cfg, model = build(toy, "predcls", **{KEY + "TDE_INFERENCE": True})
    inputs = map_dicts(cfg, toy.batch_test, is_train=False)
    with pytest.raises(RuntimeError, match="never updated"):
        infer(model, inputs)
    train_losses(model, map_dicts(cfg, toy.batch_train, is_train=True))
    old = {k: v for k, v in model.state_dict().items() if not k.startswith("roi_heads.long_tail.")}
    path = str(tmp_path / "old_model.pth")
    torch.save({"model": old}, path)
    for tde in (True, False):
        cfg, fresh = build(toy, "predcls", **{KEY + "TDE_INFERENCE": tde})
        SGGCheckpointer(fresh, for_inference=True).load(path)
        if tde:
            with pytest.raises(RuntimeError, match="TDE_INFERENCE needs the running means"):
                infer(fresh, inputs)
        else:
            infer(fresh, inputs)
    # The weights of the trained model carry the means.
    torch.save({"model": model.state_dict()}, path)
    cfg, fresh = build(toy, "predcls", **{KEY + "TDE_INFERENCE": True})
    SGGCheckpointer(fresh, for_inference=True).load(path)
    infer(fresh, inputs)


# ------------------------------------------------------------------------------------------------ through the model
def test_priors_of_the_model_hold_the_dataset_predicate_counts(toy):
    _, model = build(toy, "predcls")
    expected = compute_predicate_counts(toy.train, len(toy.thing_classes), len(toy.predicate_classes))
    assert model.roi_heads.priors.require_predicate_counts("test").tolist() == expected.tolist()
    assert expected[1:].sum() > 0


def test_logit_adjustment_through_the_model(toy):
    """SGCls scores with tau equal softmax(log(scores without it) - tau log f), f from the priors file's counts."""
    tau = 0.7
    cfg, model = build(toy, "sgcls")
    _, adjusted = build(toy, "sgcls", **{KEY + "LOGIT_ADJUSTMENT_TAU": tau})
    adjusted.load_state_dict(model.state_dict())
    counts = compute_predicate_counts(toy.train, len(toy.thing_classes), len(toy.predicate_classes))
    f = (counts[1:] + 1.0) / (counts[1:] + 1.0).sum()
    offset = torch.tensor([0.0] + [-tau * math.log(x) for x in f])
    inputs = map_dicts(cfg, toy.batch_test, is_train=False)
    for plain, out in zip(infer(model, inputs), infer(adjusted, inputs)):
        plain_pairs, plain_scores = _by_pair(plain["instances"])
        pairs, scores = _by_pair(out["instances"])
        assert torch.equal(pairs, plain_pairs)
        torch.testing.assert_close(scores, F.softmax(torch.log(plain_scores) + offset, dim=1), rtol=1e-4, atol=1e-6)
        assert not torch.allclose(scores, plain_scores, atol=1e-3)


@pytest.mark.parametrize("mode", MODES)
def test_tde_equals_the_difference_of_two_slow_forward_passes(toy, mode):
    """TDE scores = softmax(z_real - z_blank), where z_real and z_blank come from two complete forward passes of the
    model without TDE, the second one with the relation head's union, subject and object inputs replaced by the
    running means; TDE itself runs the detector and the union feature once and the relation head twice."""
    opts = {KEY + "MAX_DETECTIONS": 8}
    cfg, model = build(toy, mode, **opts)
    train_losses(model, map_dicts(cfg, toy.batch_train, is_train=True))  # one update of the running means
    means = model.roi_heads.long_tail.feature_means
    assert int(means.num_updates) == 1 and means.union_mean.abs().sum() > 0 and means.subj_mean.abs().sum() > 0
    inputs = map_dicts(cfg, toy.batch_test, is_train=False)
    head = model.roi_heads.relation_head

    real, blank = [], []
    hook = head.register_forward_hook(lambda module, args, out: real.append(out))
    infer(model, inputs)
    hook.remove()

    def blank_inputs(module, args):
        union, subj, obj, prior = args
        m = subj.shape[0]
        return means.union_mean.expand(m, -1), means.subj_mean.expand(m, -1), means.obj_mean.expand(m, -1), prior

    hooks = [head.register_forward_pre_hook(blank_inputs),
             head.register_forward_hook(lambda module, args, out: blank.append(out))]
    infer(model, inputs)
    for hook in hooks:
        hook.remove()
    # A third pass whose head returns the slow difference lets the model order and score it as usual.
    differences = iter([r - b for r, b in zip(real, blank)])
    hook = head.register_forward_hook(lambda module, args, out: next(differences))
    expected = infer(model, inputs)
    hook.remove()

    _, tde_model = build(toy, mode, **opts, **{KEY + "TDE_INFERENCE": True})
    tde_model.load_state_dict(model.state_dict())
    calls = {"head": 0, "union": 0, "backbone": 0}
    for name, module in (("head", tde_model.roi_heads.relation_head), ("union", tde_model.roi_heads.union_feature),
                         ("backbone", tde_model.backbone)):
        module.register_forward_hook(lambda *args, name=name: calls.__setitem__(name, calls[name] + 1))
    actual = infer(tde_model, inputs)
    assert calls == {"head": 2 * len(real), "union": len(real), "backbone": 1}
    for e, a in zip(expected, actual):
        e, a = e["instances"], a["instances"]
        assert torch.equal(a.rel_pair_idxs, e.rel_pair_idxs) and len(a.rel_pair_idxs) > 0
        torch.testing.assert_close(a.rel_scores, e.rel_scores, rtol=1e-5, atol=1e-6)
        assert torch.equal(a.pred_classes, e.pred_classes)


def test_tde_of_vrfc_is_the_classifier_of_the_feature_minus_its_mean(toy):
    """VRFC's logits are W u + b, so its TDE logits are W (u - u_mean): the bias and the class-pair prior drop out."""
    cfg, model = build(toy, "predcls", "vrfc", **{KEY + "TDE_INFERENCE": True})
    train_losses(model, map_dicts(cfg, toy.batch_train, is_train=True))
    heads = model.roi_heads
    unions = []
    heads.union_feature.register_forward_hook(lambda module, args, out: unions.append(out))
    outputs = infer(model, map_dicts(cfg, toy.batch_test, is_train=False))
    weight = heads.relation_head.classifier.weight
    expected = F.softmax((unions[0] - heads.long_tail.feature_means.union_mean) @ weight.t(), dim=1)
    sizes = [len(o["instances"]) for o in outputs]
    starts = np.cumsum([0] + [n * (n - 1) for n in sizes])
    for output, start, n in zip(outputs, starts, sizes):
        pairs, scores = _by_pair(output["instances"])
        torch.testing.assert_close(scores, expected[start : start + n * (n - 1)], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------ each mode
SETTINGS = {
    "logit_adjustment": {"LOGIT_ADJUSTMENT_TAU": 1.0},
    "inverse": {"LOSS_WEIGHTING": "inverse"},
    "effective_number": {"LOSS_WEIGHTING": "effective_number", "LOSS_WEIGHTING_BETA": 0.99},
    "balanced_softmax": {"BALANCED_SOFTMAX": True},
    "tde": {"TDE_INFERENCE": True},
    "reweighting_tde_logit_adjustment": {"LOSS_WEIGHTING": "inverse", "TDE_INFERENCE": True,
                                         "LOGIT_ADJUSTMENT_TAU": 0.5},
}
TRAINING_SWITCHES = {"LOSS_WEIGHTING", "BALANCED_SOFTMAX"}
ITERS = 3


def _train_and_evaluate(toy, cfg, model, inputs, test_inputs, mode):
    """ITERS Adam steps on ``inputs`` (in SGDet with detections that match the gt, so that some pairs are
    foreground: the untrained toy detector finds none), then the outputs and metrics on the test split."""
    if mode == "sgdet":
        fake = gt_like_detections(inputs)
        model.roi_heads._detect = lambda features, proposals: fake
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for i in range(ITERS):
        torch.manual_seed(i)  # the same pair samples for every model
        loss = train_losses(model, inputs)
        optimizer.zero_grad()
        sum(loss.values()).backward()
        optimizer.step()
        losses.append({k: v.item() for k, v in loss.items()})
    if mode == "sgdet":
        del model.roi_heads._detect  # the real detector at inference
    outputs = infer(model, test_inputs)
    predictions = [prediction_from_output(o, d["image_id"]) for o, d in zip(outputs, toy.test)]
    metrics = compute_sgg_metrics([gt_from_dataset_dict(d) for d in toy.test], predictions, mode)
    return losses, outputs, metrics


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("setting", SETTINGS)
def test_every_switch_trains_and_evaluates_in_each_mode(toy, mode, setting):
    """A few iterations next to plain KERN from the same weights: the training switches change the loss and the
    inference switches do not; the inference switches change the scores; the metrics are valid."""
    opts = {KEY + "MAX_DETECTIONS": 8}
    cfg, plain = build(toy, mode, **opts)
    _, switched = build(toy, mode, **opts, **{KEY + k: v for k, v in SETTINGS[setting].items()})
    switched.load_state_dict(plain.state_dict())
    inputs = map_dicts(cfg, toy.batch_train, is_train=True)
    test_inputs = map_dicts(cfg, toy.test, is_train=False)
    plain_losses, plain_outputs, _ = _train_and_evaluate(toy, cfg, plain, inputs, test_inputs, mode)
    losses, outputs, metrics = _train_and_evaluate(toy, cfg, switched, inputs, test_inputs, mode)

    assert all(math.isfinite(v) for step in losses for v in step.values())
    if TRAINING_SWITCHES & set(SETTINGS[setting]):
        assert losses[0]["loss_relation"] != pytest.approx(plain_losses[0]["loss_relation"], rel=1e-4)
    else:
        assert losses == plain_losses
    if mode != "predcls":
        assert losses[0]["loss_object"] == pytest.approx(plain_losses[0]["loss_object"], rel=1e-6)
    assert all(0.0 <= metrics[f"{name}@{k}"] <= 1.0 for name in ("R", "mR", "ng-R") for k in (20, 50, 100))
    assert sum(len(o["instances"].rel_pair_idxs) for o in outputs) > 0
    changed = any(not torch.allclose(_by_pair(a["instances"])[1], _by_pair(b["instances"])[1], atol=1e-4)
                  for a, b in zip(outputs, plain_outputs) if len(a["instances"].rel_pair_idxs))
    assert changed


# ------------------------------------------------------------------------------------------------ tools
@pytest.mark.slow
def test_switches_as_train_net_overrides(toy_tools):
    """tools/train_net.py takes the switches as command-line overrides: SGCls trained with effective-number weights
    and evaluated with TDE and logit adjustment; the checkpoint carries the running means."""
    output_dir = toy_tools.scratch("long_tail")
    toy_tools.train_net(
        MODE_CONFIGS["sgcls"], output_dir, "SOLVER.MAX_ITER", "2", KEY + "LOSS_WEIGHTING", "effective_number",
        KEY + "LOSS_WEIGHTING_BETA", "0.99", KEY + "TDE_INFERENCE", "True", KEY + "LOGIT_ADJUSTMENT_TAU", "0.5",
    )
    checkpoint = torch.load(os.path.join(output_dir, "model_final.pth"), map_location="cpu", weights_only=True)
    assert int(checkpoint["model"]["roi_heads.long_tail.feature_means.num_updates"]) == 2
    metrics = read_sgg_metrics(output_dir)["metrics"]
    assert all(0.0 <= metrics[f"{name}@{k}"] <= 100.0 for name in ("R", "mR", "ng-R") for k in (20, 50, 100))
