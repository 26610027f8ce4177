"""Random cases of the pair-union ops (kern_d2.layers: pair_union_roi_align, PairUnionPooler), shared by their tests
and the tests of the ops' registration (torch.library.opcheck, torch.compile)."""
import torch

# Feature maps of IMAGE_SIZE images at SCALE: 12 x 15 features for 48 x 60 images.
IMAGE_SIZE = (48, 60)
SCALE = 0.25


def make_case(
    batch=2,
    channels=3,
    height=12,
    width=15,
    num_boxes=10,
    num_pairs=24,
    image_size=IMAGE_SIZE,
    integral=False,
    seed=0,
    dtype=torch.float32,
):
    """Random features, boxes [K, 5] (batch index, x1, y1, x2, y2) in image coordinates and pairs of boxes of the
    same image. Box 0 is a point, box 1 a vertical segment, box 2 covers more than the image; the others are
    spread over and beyond the image borders. `integral` puts samples on pixel borders."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(batch, channels, height, width, generator=g).to(dtype)
    img_h, img_w = image_size
    extent = torch.tensor([img_w, img_h], dtype=torch.float32)
    xy = torch.rand(num_boxes, 2, generator=g) * extent * 1.2 - extent * 0.1
    wh = torch.rand(num_boxes, 2, generator=g) * extent * 0.6
    if integral:
        xy, wh = xy.round(), wh.round()
    wh[0] = 0
    wh[1, 0] = 0
    xy[2], wh[2] = -0.25 * extent, 1.5 * extent
    image = torch.arange(num_boxes) % batch
    boxes = torch.cat([image[:, None].float(), xy, xy + wh], dim=1).to(dtype)
    candidates = [(s, o) for s in range(num_boxes) for o in range(num_boxes) if image[s] == image[o]]
    pick = torch.randperm(len(candidates), generator=g)[:num_pairs]
    pair_idx = torch.tensor([candidates[i] for i in pick.tolist()], dtype=torch.long)
    return features, boxes, pair_idx


# 64 x 80 images; with canonical size 32 at level 3, union boxes of sqrt(area) < 32 go to level 2, [32, 64) to
# level 3 and >= 64 to level 4.
IMAGE_H, IMAGE_W = 64, 80
CANONICAL = dict(canonical_box_size=32, canonical_level=3)


def make_batch(num_images=3, channels=4, num_levels=3, pairs_per_image=(7, 0, 9), seed=0):
    """Features per level (strides 4, 8, 16, ...), boxes per image (small and large, so that the unions spread over
    all levels) and pair indices per image; image 1 has no pairs."""
    g = torch.Generator().manual_seed(seed)
    features = [
        torch.randn(num_images, channels, IMAGE_H // 2 ** (2 + level), IMAGE_W // 2 ** (2 + level), generator=g)
        for level in range(num_levels)
    ]
    boxes, pair_idxs = [], []
    for i in range(num_images):
        k = 6
        xy = torch.rand(k, 2, generator=g) * torch.tensor([IMAGE_W, IMAGE_H]) - 4
        side = torch.tensor([4.0, 8, 14, 22, 40, 70])[:, None] * (0.5 + torch.rand(k, 2, generator=g))
        boxes.append(torch.cat([xy, xy + side], dim=1))
        pair_idxs.append(torch.randint(0, k, (pairs_per_image[i], 2), generator=g))
    return features, boxes, pair_idxs


def pooled_with_grads(pool, features, *args):
    features = [x.detach().requires_grad_(True) for x in features]
    out = pool(features, *args)
    r = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out)
    grads = torch.autograd.grad(out, features, r)
    return out.detach(), grads
