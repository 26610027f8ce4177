"""kern_d2::box_pair_masks against hand-drawn masks and a per-cell reference."""
import numpy as np
import pytest
import torch

from kern_d2.layers import box_pair_masks, box_pair_masks_reference

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def masks_by_cell(boxes: torch.Tensor, pair_idx: torch.Tensor, size: int) -> torch.Tensor:
    """One cell at a time, in numpy scalars of the compute dtype: the cell centre inside the box (borders
    included), tested as size * (lo - u_lo) <= (k + 1/2) * (u_hi - u_lo) <= size * (hi - u_lo)."""
    dtype = np.float64 if boxes.dtype == torch.float64 else np.float32
    b = boxes.to(torch.float64 if dtype is np.float64 else torch.float32).numpy()
    n = dtype(size)
    out = torch.zeros(len(pair_idx), 2, size, size)
    for m, (s, o) in enumerate(pair_idx.tolist()):
        union = [min(b[s][0], b[o][0]), min(b[s][1], b[o][1]), max(b[s][2], b[o][2]), max(b[s][3], b[o][3])]
        for channel, box in enumerate((b[s], b[o])):
            for r in range(size):
                for c in range(size):
                    inside = True
                    for k, lo, hi in ((c, 0, 2), (r, 1, 3)):
                        centre = (dtype(k) + dtype(0.5)) * (union[hi] - union[lo])
                        inside &= bool(n * (box[lo] - union[lo]) <= centre <= n * (box[hi] - union[lo]))
                    out[m, channel, r, c] = float(inside)
    return out


def random_boxes(num: int, generator: torch.Generator, integral: bool) -> torch.Tensor:
    if integral:  # coordinates on the cell borders and centres of small grids
        xy = torch.randint(0, 16, (num, 2), generator=generator).float()
        wh = torch.randint(0, 12, (num, 2), generator=generator).float()
    else:
        xy = torch.rand(num, 2, generator=generator) * 100
        wh = torch.rand(num, 2, generator=generator) * 60
    return torch.cat([xy, xy + wh], dim=1)


def test_side_by_side_boxes_by_hand():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [10.0, 0.0, 20.0, 10.0]])
    masks = box_pair_masks(boxes, torch.tensor([[0, 1], [1, 0]]), 4)
    left = torch.tensor([[1.0, 1, 0, 0]] * 4)
    assert masks.dtype == torch.float32 and masks.shape == (2, 2, 4, 4)
    assert torch.equal(masks[0, 0], left) and torch.equal(masks[0, 1], left.flip(1))
    assert torch.equal(masks[1], masks[0].flip(0))


def test_nested_box_by_hand():
    # union (0, 0, 8, 8): cell centres at 1, 3, 5, 7 -> the inner box [2, 6] x [4, 8] holds columns 1-2, rows 2-3.
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0], [2.0, 4.0, 6.0, 8.0]])
    masks = box_pair_masks(boxes, torch.tensor([[0, 1]]), 4)
    inner = torch.zeros(4, 4)
    inner[2:, 1:3] = 1
    assert torch.equal(masks[0, 0], torch.ones(4, 4))
    assert torch.equal(masks[0, 1], inner)


def test_degenerate_union_counts_whole_axis_inside():
    # Both boxes are vertical segments at x = 3: every column is inside; rows follow y (centres at 5 and 15
    # of the union's height 20, scaled by 2 cells).
    boxes = torch.tensor([[3.0, 0.0, 3.0, 20.0], [3.0, 10.0, 3.0, 20.0], [5.0, 5.0, 5.0, 5.0]])
    masks = box_pair_masks(boxes, torch.tensor([[0, 1], [2, 2]]), 2)
    assert torch.equal(masks[0, 0], torch.ones(2, 2))
    assert torch.equal(masks[0, 1], torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    assert torch.equal(masks[1], torch.ones(2, 2, 2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("integral", [True, False])
def test_random_pairs_match_per_cell_reference(dtype, integral):
    g = torch.Generator().manual_seed(3 + integral)
    boxes = random_boxes(9, g, integral).to(dtype)
    pair_idx = torch.randint(0, 9, (14, 2), generator=g)
    size = 7
    masks = box_pair_masks(boxes, pair_idx, size)
    assert torch.equal(masks, masks_by_cell(boxes, pair_idx, size))
    assert torch.equal(masks, box_pair_masks_reference(boxes, pair_idx, size))


def test_empty_pairs_and_no_gradient():
    boxes = torch.rand(3, 4, requires_grad=True)
    assert box_pair_masks(boxes, torch.zeros(0, 2, dtype=torch.long), 5).shape == (0, 2, 5, 5)
    masks = box_pair_masks(boxes, torch.tensor([[0, 1]]), 5)
    assert not masks.requires_grad


@pytest.mark.parametrize(
    "boxes, pair_idx, size, message",
    [
        (torch.rand(3, 5), torch.tensor([[0, 1]]), 4, "boxes must be \\[K, 4\\]"),
        (torch.ones(3, 4, dtype=torch.long), torch.tensor([[0, 1]]), 4, "floating-point"),
        (torch.rand(3, 4), torch.tensor([0, 1]), 4, "pair_idx must be \\[M, 2\\]"),
        (torch.rand(3, 4), torch.tensor([[0, 1]], dtype=torch.int32), 4, "pair_idx must be int64"),
        (torch.rand(3, 4), torch.tensor([[0, 3]]), 4, "pair 0 refers to box 3 but there are 3 boxes"),
        (torch.rand(3, 4), torch.tensor([[-1, 0]]), 4, "refers to box -1"),
        (torch.rand(3, 4), torch.tensor([[0, 1]]), 0, "size must be positive"),
    ],
)
def test_invalid_inputs_raise(boxes, pair_idx, size, message):
    with pytest.raises((ValueError, RuntimeError), match=message):
        box_pair_masks(boxes, pair_idx, size)


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.half])
def test_cuda_matches_cpu(dtype):
    g = torch.Generator().manual_seed(11)
    boxes = torch.cat([random_boxes(40, g, True), random_boxes(40, g, False)]).to(dtype)
    pair_idx = torch.randint(0, 80, (300, 2), generator=g)
    expected = box_pair_masks(boxes, pair_idx, 27)
    got = box_pair_masks(boxes.cuda(), pair_idx.cuda(), 27)
    assert got.is_cuda and torch.equal(got.cpu(), expected)
    assert torch.equal(box_pair_masks_reference(boxes.cuda(), pair_idx.cuda(), 27).cpu(), expected)
    assert box_pair_masks(boxes.cuda(), pair_idx[:0].cuda(), 27).shape == (0, 2, 27, 27)
