"""SOLVER.OPTIMIZER: Detectron2's SGD or Adam, with Detectron2's parameter groups and gradient clipping."""
import pytest
import torch
from torch import nn

from detectron2.config import get_cfg
from detectron2.utils.events import EventStorage

from kern_d2.config import add_kern_config
from kern_d2.solver import build_sgg_optimizer


def _cfg(**solver):
    cfg = add_kern_config(get_cfg())
    for key, value in solver.items():
        setattr(cfg.SOLVER, key, value)
    return cfg


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))


def test_default_is_detectron2_sgd():
    optimizer = build_sgg_optimizer(_cfg(), _model())
    assert isinstance(optimizer, torch.optim.SGD)


def test_adam_step_matches_torch_adam_with_the_same_groups():
    cfg = _cfg(OPTIMIZER="ADAM", BASE_LR=0.01, WEIGHT_DECAY=0.0, WEIGHT_DECAY_NORM=0.0)
    ours, reference = _model(), _model()
    optimizer = build_sgg_optimizer(cfg, ours)
    assert isinstance(optimizer, torch.optim.Adam)
    expected = torch.optim.Adam(reference.parameters(), lr=0.01)
    x = torch.randn(8, 3)
    for model, opt in ((ours, optimizer), (reference, expected)):
        for _ in range(3):
            opt.zero_grad()
            model(x).square().sum().backward()
            opt.step()
    for a, b in zip(ours.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b)


def test_adam_weight_decay_spares_norm_layers():
    cfg = _cfg(OPTIMIZER="ADAM", BASE_LR=0.01, WEIGHT_DECAY=0.1, WEIGHT_DECAY_NORM=0.0)
    model = _model()
    optimizer = build_sgg_optimizer(cfg, model)
    decay = {id(p): g["weight_decay"] for g in optimizer.param_groups for p in g["params"]}
    assert decay[id(model[0].weight)] == pytest.approx(0.1)
    assert decay[id(model[1].weight)] == 0.0


def test_adam_clips_gradients_like_detectron2():
    cfg = _cfg(OPTIMIZER="ADAM", BASE_LR=0.01)
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "norm"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 5.0
    model = nn.Linear(2, 1, bias=False)
    optimizer = build_sgg_optimizer(cfg, model)
    assert isinstance(optimizer, torch.optim.Adam)
    model.weight.grad = torch.tensor([[300.0, 400.0]])  # norm 500 -> clipped to 5
    optimizer.step()
    torch.testing.assert_close(model.weight.grad, torch.tensor([[3.0, 4.0]]))


def _two_parameter_step(clip_type):
    """One SGD step (lr 1) of two parameters with gradients of norms 5 and 10, under CLIP_VALUE 5; the gradients after
    the step."""
    cfg = _cfg(BASE_LR=1.0, MOMENTUM=0.0, WEIGHT_DECAY=0.0)
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = clip_type
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 5.0
    model = nn.ParameterList([nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))])
    optimizer = build_sgg_optimizer(cfg, model)
    model[0].grad, model[1].grad = torch.tensor([3.0, 4.0]), torch.tensor([6.0, 8.0])
    with EventStorage() as storage:
        optimizer.step()
    torch.testing.assert_close(model[0].data, -model[0].grad)  # the step used the clipped gradients
    return [p.grad for p in model], storage


def test_full_model_clipping_scales_all_gradients_together_as_the_released_code():
    # Total norm sqrt(5^2 + 10^2) = 11.18: every gradient is scaled by 5 / 11.18, their directions kept.
    (first, second), storage = _two_parameter_step("full_model")
    scale = 5.0 / 125 ** 0.5
    torch.testing.assert_close(first, torch.tensor([3.0, 4.0]) * scale)
    torch.testing.assert_close(second, torch.tensor([6.0, 8.0]) * scale)
    assert torch.cat([first, second]).norm().item() == pytest.approx(5.0)
    assert storage.history("grad_norm").latest() == pytest.approx(125 ** 0.5)


def test_norm_clipping_is_detectron2s_per_tensor_rule():
    # Each tensor on its own: the first (norm 5) is left as is, the second halved; the total norm stays 7.07 > 5.
    (first, second), storage = _two_parameter_step("norm")
    torch.testing.assert_close(first, torch.tensor([3.0, 4.0]))
    torch.testing.assert_close(second, torch.tensor([3.0, 4.0]))
    assert "grad_norm" not in storage.histories()


def test_unknown_clip_type_is_a_clear_error():
    cfg = _cfg()
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "global"
    with pytest.raises(ValueError, match="CLIP_TYPE must be one of .*full_model"):
        build_sgg_optimizer(cfg, _model())


def test_unknown_optimizer_is_a_clear_error():
    with pytest.raises(ValueError, match="SOLVER.OPTIMIZER must be one of"):
        build_sgg_optimizer(_cfg(OPTIMIZER="LAMB"), _model())
