"""KERN's object routing: a GGNN over N objects x C class nodes per image, with edges weighted by the object
co-occurrence prior A [C, C] (A[i, j] = P(object j present | object i present)).

Node (i, c) starts from the projected feature f_i of object i and receives, at each step,

    a_(i,c) = [ sum_{j != i} (A^T h_j)_c ; sum_{j != i} (A h_j)_c ]          (h_j: the C x D states of object j)

The sum over the other objects of an image is computed as S_image - h_i with S_image = sum_j h_j (a segment sum
over the batch), so the cost is linear in N and there is no loop over objects or images.
"""
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from kern_d2.config import resolve_variant

from .ggnn import GatedGraphUpdate

__all__ = ["ObjectRouting"]


def _image_index(
    image_index: Union[torch.Tensor, Sequence[int]], num_objects: int, num_images: Optional[int], device
) -> Tuple[torch.Tensor, int]:
    """(image index int64 [N], number of images) from an index vector or from per-image object counts."""
    if isinstance(image_index, torch.Tensor):
        index = image_index.to(device=device, dtype=torch.int64)
        if index.shape != (num_objects,):
            raise ValueError(f"ObjectRouting: image_index must have shape ({num_objects},), got {tuple(index.shape)}")
        if num_images is None:
            num_images = int(index.max()) + 1 if num_objects else 0  # one sync per batch; pass num_images to avoid it
        return index, num_images
    counts = [int(n) for n in image_index]
    if sum(counts) != num_objects:
        raise ValueError(
            f"ObjectRouting: num_objects {counts} sum to {sum(counts)}, but there are {num_objects} objects"
        )
    # Filled on the device: a host->device copy of the counts would wait for the device's queue.
    index = torch.cat([torch.full((n,), i, dtype=torch.int64, device=device) for i, n in enumerate(counts)])
    return (index if counts else torch.zeros(0, dtype=torch.int64, device=device)), len(counts)


class ObjectRouting(nn.Module):
    """Object logits [N, C] (or [N, C + 1], see ``background_node``) from object features [N, input_dim] and the co-occurrence prior [C, C].

    Args:
        input_dim: size of the object features.
        num_classes: C, the number of object classes (class nodes per object).
        hidden_dim: D, the GGNN state size.
        output_dim: size of each node's output o = ReLU(W_o [h_T ; f_i]).
        num_steps: T, the number of propagation steps.
        released_code_gate: reuse U_z in the reset gate, as KERN's released code does.
        background_node: route over C + 1 nodes, the last one a background class whose prior edges are 0 (the
            released code routes over VG's 151 classes, background included); the logits are then [N, C + 1].
    """

    def __init__(
        self,
        input_dim: int,
        num_classes: int,
        hidden_dim: int = 512,
        output_dim: int = 512,
        num_steps: int = 3,
        released_code_gate: bool = False,
        background_node: bool = False,
    ):
        super().__init__()
        self.num_foreground = num_classes
        self.background_node = background_node
        num_classes = num_classes + int(background_node)
        self.num_classes = num_classes
        self.hidden_dim = hidden_dim
        self.num_steps = num_steps
        self.input_proj = nn.Linear(input_dim, hidden_dim)
        self.update = GatedGraphUpdate(hidden_dim, 2 * hidden_dim, released_code_gate)
        self.output = nn.Linear(2 * hidden_dim, output_dim)  # W_o over [h_T ; f_i]
        self.classifier = nn.Linear(num_classes * output_dim, num_classes)

    @classmethod
    def from_config(cls, cfg, input_dim: int) -> dict:
        """Constructor arguments from a config with kern_d2's keys (``ObjectRouting(**from_config(cfg, d))``)."""
        rel = cfg.MODEL.ROI_RELATION_HEAD
        variant = resolve_variant(cfg)
        return {
            "input_dim": input_dim,
            "num_classes": cfg.MODEL.ROI_HEADS.NUM_CLASSES,
            "hidden_dim": rel.HIDDEN_DIM,
            "output_dim": rel.OUTPUT_DIM,
            "num_steps": rel.NUM_STEPS,
            "released_code_gate": variant["RESET_GATE"] == "shared",
            "background_node": variant["OBJECT_ROUTING_BACKGROUND"] == "on",
        }

    def _messages(self, h: torch.Tensor, image_index: torch.Tensor, num_images: int, mixing: torch.Tensor):
        """[N, C, 2D] messages [A^T S_i ; A S_i], S_i = sum over the other objects of i's image of their states."""
        n, c, d = h.shape[0], self.num_classes, self.hidden_dim
        h = h.expand(n, c, d)
        # Accumulate in at least fp32: S_image - h_i cancels, which bf16 would not survive.
        acc = h.to(torch.promote_types(h.dtype, torch.float32))
        sums = acc.new_zeros((num_images, c, d)).index_add_(0, image_index, acc)
        others = (sums[image_index] - acc).to(h.dtype)
        # mixing [C, 2, C]: mixing[c, 0, k] = A[k, c] (incoming), mixing[c, 1, k] = A[c, k] (outgoing).
        return torch.einsum("cek,nkd->nced", mixing, others).reshape(n, c, 2 * d)

    def forward(
        self,
        obj_features: torch.Tensor,
        image_index: Union[torch.Tensor, List[int]],
        cooccurrence: torch.Tensor,
        num_images: Optional[int] = None,
    ) -> torch.Tensor:
        """
        Args:
            obj_features: [N, input_dim], the objects of all images of the batch.
            image_index: int64 [N], the image of each object, or a list with the number of objects per image.
            cooccurrence: [C, C] object co-occurrence prior (foreground classes).
            num_images: number of images when ``image_index`` is a tensor (else derived from it with one sync).
        Returns:
            object logits [N, C], or [N, C + 1] (background last) with ``background_node``.
        """
        if self.background_node:
            cooccurrence = F.pad(cooccurrence, (0, 1, 0, 1))  # the background node has no prior edges
        n, c, d = obj_features.shape[0], self.num_classes, self.hidden_dim
        if obj_features.dim() != 2 or obj_features.shape[1] != self.input_proj.in_features:
            raise ValueError(
                f"ObjectRouting: obj_features must be [N, {self.input_proj.in_features}], "
                f"got {tuple(obj_features.shape)}"
            )
        if cooccurrence.shape != (c, c):
            raise ValueError(f"ObjectRouting: cooccurrence must be [{c}, {c}], got {tuple(cooccurrence.shape)}")
        index, num_images = _image_index(image_index, n, num_images, obj_features.device)

        f = self.input_proj(obj_features)  # [N, D]
        mixing = torch.stack([cooccurrence.t(), cooccurrence], dim=1).to(f.dtype)
        h = f[:, None, :]  # [N, 1, D]: all class nodes of an object start equal; broadcasts until step 1 ends
        for _ in range(self.num_steps):
            h = self.update(h, self._messages(h, index, num_images, mixing))
        h = h.expand(n, c, d)

        # W_o [h_T ; f] = W_o,h h_T + W_o,f f: the f half once per object, not once per node.
        w_out = self.output.weight
        per_object = F.linear(f, w_out[:, d:], self.output.bias)[:, None, :]
        nodes = F.relu(F.linear(h, w_out[:, :d]) + per_object)  # [N, C, output_dim]
        return self.classifier(nodes.reshape(n, c * nodes.shape[2]))
