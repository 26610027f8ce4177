"""A small FPN backbone for CPU work on the toy dataset (``MODEL.BACKBONE.NAME: build_toy_fpn_backbone``).

Four strided conv stages (strides 2, 4, 8, 16) and a top-down pathway give ``p3`` (stride 8) and ``p4``
(stride 16) with ``MODEL.FPN.OUT_CHANNELS`` channels. Trains from scratch in minutes on two CPU cores.
"""
import torch.nn.functional as F
from torch import nn

from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, Backbone


def _conv_stage(in_channels: int, out_channels: int, norm: str) -> nn.Sequential:
    return nn.Sequential(
        Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=not norm, norm=get_norm(norm, out_channels)),
        nn.ReLU(inplace=True),
        Conv2d(out_channels, out_channels, 3, padding=1, bias=not norm, norm=get_norm(norm, out_channels)),
        nn.ReLU(inplace=True),
    )


class ToyFPN(Backbone):
    """Input [B,3,H,W] -> {"p3": [B,F,H/8,W/8], "p4": [B,F,H/16,W/16]}."""

    def __init__(self, widths=(24, 32, 64, 96), out_channels: int = 64, norm: str = "BN"):
        super().__init__()
        stages, in_channels = [], 3
        for width in widths:
            stages.append(_conv_stage(in_channels, width, norm))
            in_channels = width
        self.stages = nn.ModuleList(stages)
        self.lateral3 = Conv2d(widths[2], out_channels, 1)
        self.lateral4 = Conv2d(widths[3], out_channels, 1)
        self.output3 = Conv2d(out_channels, out_channels, 3, padding=1)
        self.output4 = Conv2d(out_channels, out_channels, 3, padding=1)
        self._out_features = ["p3", "p4"]
        self._out_feature_strides = {"p3": 8, "p4": 16}
        self._out_feature_channels = {"p3": out_channels, "p4": out_channels}

    @property
    def size_divisibility(self) -> int:
        return 16

    def forward(self, x):
        c3 = c4 = None
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index == 2:
                c3 = x
            elif index == 3:
                c4 = x
        top4 = self.lateral4(c4)
        top3 = self.lateral3(c3) + F.interpolate(top4, size=c3.shape[-2:], mode="nearest")
        return {"p3": self.output3(top3), "p4": self.output4(top4)}

    def output_shape(self):
        return {
            name: ShapeSpec(channels=self._out_feature_channels[name], stride=self._out_feature_strides[name])
            for name in self._out_features
        }


@BACKBONE_REGISTRY.register()
def build_toy_fpn_backbone(cfg, input_shape: ShapeSpec):
    return ToyFPN(out_channels=cfg.MODEL.FPN.OUT_CHANNELS, norm=cfg.MODEL.FPN.NORM or "BN")
