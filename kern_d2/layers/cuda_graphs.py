"""Inference through CUDA graphs: a function of row-batched tensors captured once per size bucket and replayed.

A forward of many small kernels spends part of its time waiting for the host to launch them (KERN's relation
routing: ~140 kernels, ~1 ms of gaps in a 5 ms call on an H100). A CUDA graph launches them all at once. The rows of
every input are padded up to a multiple of ``bucket`` so that a few graphs serve every batch size; this is only
correct for functions whose output rows depend on the same input rows alone (no reduction across rows).
"""
from collections import OrderedDict
from typing import Callable, Sequence

import torch
from torch import nn

__all__ = ["GraphedRowFunction"]


class GraphedRowFunction:
    """Calls ``fn(*inputs)`` (inputs [N, ...], output [N, ...]) through CUDA graphs, one per (padded N, dtypes,
    autocast state, parameter storage) key, keeping at most ``max_graphs`` (least recently used dropped).

    Only for inference: the graph has no autograd. The caller decides when to use it (CUDA tensors, no gradient, not
    under torch.compile). ``module`` is the owner of the parameters ``fn`` reads: a graph is recaptured when they
    move (e.g. ``.to()``), and follows in-place updates (``load_state_dict``, optimiser steps) by itself.
    """

    def __init__(self, fn: Callable, module: nn.Module, bucket: int = 256, max_graphs: int = 32):
        if bucket <= 0 or max_graphs <= 0:
            raise ValueError(f"GraphedRowFunction: bucket and max_graphs must be positive, got {bucket}, {max_graphs}")
        self.fn, self.module, self.bucket, self.max_graphs = fn, module, bucket, max_graphs
        self._graphs = OrderedDict()  # key -> (graph, static inputs, static output)
        self._pool = None  # one memory pool for all graphs: they never run at the same time

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        rows = inputs[0].shape[0]
        padded = -(-rows // self.bucket) * self.bucket
        key = self._key(inputs, padded)
        entry = self._graphs.get(key)
        if entry is None:
            entry = self._capture(inputs, padded)
            self._graphs[key] = entry
            while len(self._graphs) > self.max_graphs:
                self._graphs.popitem(last=False)
        else:
            self._graphs.move_to_end(key)
        graph, static_inputs, static_output = entry
        for static, x in zip(static_inputs, inputs):
            static[:rows].copy_(x)  # rows past `rows` keep earlier values: their outputs are dropped
        graph.replay()
        return static_output[:rows].clone()  # the next replay overwrites the static output

    def _key(self, inputs: Sequence[torch.Tensor], padded: int):
        device = inputs[0].device
        autocast = (torch.is_autocast_enabled(device.type), torch.get_autocast_dtype(device.type))
        shapes = tuple((x.shape[1:], x.dtype, x.device) for x in inputs)
        params = tuple((p.data_ptr(), p.dtype) for p in self.module.parameters())
        return padded, shapes, autocast, params

    def _capture(self, inputs: Sequence[torch.Tensor], padded: int):
        static_inputs = [x.new_zeros((padded,) + tuple(x.shape[1:])) for x in inputs]
        for static, x in zip(static_inputs, inputs):
            static[: x.shape[0]].copy_(x)
        device_type = inputs[0].device.type
        # Autocast's cache of cast weights lives outside the graph's memory: captured kernels must do the casts.
        no_cache = torch.autocast(device_type, dtype=torch.get_autocast_dtype(device_type),
                                  enabled=torch.is_autocast_enabled(device_type), cache_enabled=False)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), no_cache:  # warm-up (library handles, workspaces) off the capture
            self.fn(*static_inputs)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"), no_cache:
            static_output = self.fn(*static_inputs)
        return graph, static_inputs, static_output
