"""Hand mapped dataset dicts from data-loader workers to the main process with one shared-memory block each.

A DataLoader worker's result is pickled with PyTorch's ``ForkingPickler``, which moves every tensor into its own
shared-memory block; the main process then opens each block, one at a time (with the default "file_descriptor"
sharing strategy, a socket connection and handshake per tensor). A mapped SGG dict holds five tensors: the image,
and gt boxes, gt classes and the relations twice, a few hundred bytes each. Opening them serially in the main
process is what the training step waits for (BENCHMARKS.md, "VG scale"): more workers do not shorten it.

``CompactTransfer`` wraps a mapper so that the large tensors (the image) still travel through shared memory and
everything else travels as one ordinary pickle, rebuilt in the main process into the same dict. Use it only for
loaders with worker processes: without workers nothing is pickled, and the wrapper's items would reach the model.
"""
import io
import pickle
from typing import Callable, Optional

import torch

__all__ = ["CompactTransfer", "LARGE_TENSOR_BYTES"]

# Top-level tensors at least this large keep their shared-memory block (a 600 x 800 image is 1.4 MB); smaller ones
# are copied, which is cheaper than opening a block.
LARGE_TENSOR_BYTES = 64 * 1024


def _is_large(value) -> bool:
    return torch.is_tensor(value) and value.numel() * value.element_size() >= LARGE_TENSOR_BYTES


class _TensorsAsArrays(pickle.Pickler):
    """Pickles CPU tensors as numpy arrays (rebuilt with ``torch.from_numpy``): a plain copy of their bytes,
    without torch's serialization or shared memory."""

    def reducer_override(self, obj):
        if torch.is_tensor(obj) and obj.device.type == "cpu" and not obj.requires_grad:
            try:
                return torch.from_numpy, (obj.numpy(),)
            except TypeError:  # a dtype numpy lacks (e.g. bfloat16): torch's own pickling
                pass
        return NotImplemented


def _dumps(value) -> bytes:
    buffer = io.BytesIO()
    _TensorsAsArrays(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    return buffer.getvalue()


def _rebuild(large: dict, rest: bytes) -> dict:
    """The mapped dict again, in the receiving process (``large``: the tensors that came through shared memory)."""
    mapped = pickle.loads(rest)
    mapped.update(large)
    return mapped


class _CompactItem:
    """A mapped dict on its way from a worker: pickles as its large tensors plus one byte string of the rest."""

    __slots__ = ("mapped",)

    def __init__(self, mapped: dict):
        self.mapped = mapped

    def __reduce__(self):
        large = {k: v for k, v in self.mapped.items() if _is_large(v)}
        rest = {k: v for k, v in self.mapped.items() if k not in large}
        return _rebuild, (large, _dumps(rest))


class CompactTransfer:
    """Wrap ``mapper`` (dataset dict -> mapped dict or None) for a DataLoader with worker processes: its results
    reach the main process as the same dicts, with one shared-memory block per large tensor instead of one per
    tensor. None (an image the mapper skipped) stays None."""

    def __init__(self, mapper: Callable[[dict], Optional[dict]]):
        self.mapper = mapper

    def __call__(self, dataset_dict: dict):
        mapped = self.mapper(dataset_dict)
        return None if mapped is None else _CompactItem(mapped)

    def __repr__(self):
        return f"CompactTransfer({self.mapper!r})"
