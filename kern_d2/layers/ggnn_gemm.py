"""GEMMs over the node states of KERN's relation routing with the elementwise work that follows them as their
epilogue (Triton kernels; inference on CUDA).

A GGNN step over R pairs of K predicate nodes computes, per node (S = state terms, M = the pair's message terms,
s = the node's scale; see :mod:`kern_d2.modeling.ggnn`):

    gates:   z = sigmoid(U_z h + b_z + s M_z),  r = sigmoid(U_r h + b_r + s M_r)      ->  z, r * h
    blend:   h' = h + z (tanh(U_h (r h) + b_h + s M_h) - h)                           ->  h' (and sum_k s_k h'_k)

and the output layer ReLU(W h + c_pair) with one bias per pair. With cuBLAS and the fused elementwise kernels of
:mod:`kern_d2.layers.ggnn_gates` each GEMM writes its [N, *] result and the next kernel reads it back; here the
elementwise arithmetic runs on the GEMM's fp32 accumulator before anything is written, which removes about 40% of
the memory traffic of a step. No backward: training uses the differentiable ops.

Each node tile adds its rows' weighted sum into the pair's row of an fp32 buffer with atomic adds; a pair of
K <= BLOCK_M nodes spans at most two tiles, and a sum of two terms does not depend on their order, so the result is
deterministic.
"""
import os
from typing import Optional, Tuple

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only torch builds come without Triton
    triton = None

__all__ = ["gemm_epilogues_available", "gates_gemm", "blend_gemm", "pair_bias_relu_gemm", "MAX_NODES_PER_PAIR"]

MAX_NODES_PER_PAIR = 64  # K <= the smallest BLOCK_M of _CONFIGS, for deterministic weighted sums

# Epilogues (constexpr switch of the kernel)
_GATES, _BLEND, _PAIR_BIAS_RELU = 0, 1, 2

# (BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) per epilogue; from a sweep on an H100 in bf16 at D = 512
# (benchmarks/bench_gate_kernels.py --sweep).
_CONFIGS = {
    _GATES: (64, 128, 64, 8, 3),
    _BLEND: (64, 128, 64, 4, 4),
    _PAIR_BIAS_RELU: (64, 128, 64, 4, 4),
}


def gemm_epilogues_available(x: torch.Tensor) -> bool:
    """Whether the kernels can run on ``x``: Triton is installed and ``x`` is a CUDA tensor (CPU tensors only in
    Triton's interpreter, ``TRITON_INTERPRET=1``, which the tests use)."""
    if triton is None:
        return False
    return x.is_cuda or (x.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")


if triton is not None:

    @triton.jit
    def _node_gemm_kernel(
        x_ptr, w_ptr, bias_ptr, message_ptr, scale_ptr, z_ptr, h_ptr, out_ptr, out2_ptr, sums_ptr,
        rows, in_dim, out_dim, nodes_per_pair, num_pairs, message_stride,
        EPILOGUE: tl.constexpr, HAS_SCALE: tl.constexpr, H_BROADCAST: tl.constexpr, WEIGHTED_SUM: tl.constexpr,
        PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):
        """out[rows, out_dim] = epilogue(x[rows, in_dim] @ w[:out_dim]^T) (gates: and w[out_dim:2 out_dim])."""
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        row_ok = rm < rows
        col_ok = rn < out_dim
        rm64 = rm.to(tl.int64)

        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc2 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)  # the reset gate's U_r h (gates only)
        for k0 in range(0, in_dim, BLOCK_K):
            k = k0 + rk
            k_ok = k < in_dim
            a = tl.load(x_ptr + rm64[:, None] * in_dim + k[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            w_mask = col_ok[:, None] & k_ok[None, :]
            w = tl.load(w_ptr + rn[:, None] * in_dim + k[None, :], mask=w_mask, other=0.0)
            acc = tl.dot(a, tl.trans(w), acc, input_precision=PRECISION)
            if EPILOGUE == 0:
                w2 = tl.load(w_ptr + (rn + out_dim)[:, None] * in_dim + k[None, :], mask=w_mask, other=0.0)
                acc2 = tl.dot(a, tl.trans(w2), acc2, input_precision=PRECISION)

        pair = rm // nodes_per_pair
        pair64 = pair.to(tl.int64)
        mask = row_ok[:, None] & col_ok[None, :]
        offsets = rm64[:, None] * out_dim + rn[None, :]
        if EPILOGUE == 2:  # ReLU(x W^T + bias of the row's pair)
            bias = tl.load(bias_ptr + pair64[:, None] * out_dim + rn[None, :], mask=mask, other=0.0)
            y = tl.maximum(acc + bias.to(tl.float32), 0.0)
            tl.store(out_ptr + offsets, y.to(out_ptr.dtype.element_ty), mask=mask)
        else:
            if HAS_SCALE:
                s = tl.load(scale_ptr + rm64, mask=row_ok, other=0.0).to(tl.float32)[:, None]
            else:
                s = 1.0
            h_rows = pair64 if H_BROADCAST else rm64
            h = tl.load(h_ptr + h_rows[:, None] * out_dim + rn[None, :], mask=mask, other=0.0).to(tl.float32)
            m_offsets = pair64[:, None] * message_stride + rn[None, :]
            m = tl.load(message_ptr + m_offsets, mask=mask, other=0.0).to(tl.float32)
            b = tl.load(bias_ptr + rn, mask=col_ok, other=0.0).to(tl.float32)[None, :]
            if EPILOGUE == 0:
                z = tl.sigmoid(acc + b + s * m)
                m_r = tl.load(message_ptr + m_offsets + out_dim, mask=mask, other=0.0).to(tl.float32)
                b_r = tl.load(bias_ptr + out_dim + rn, mask=col_ok, other=0.0).to(tl.float32)[None, :]
                r = tl.sigmoid(acc2 + b_r + s * m_r)
                tl.store(out_ptr + offsets, z.to(out_ptr.dtype.element_ty), mask=mask)
                tl.store(out2_ptr + offsets, (r * h).to(out2_ptr.dtype.element_ty), mask=mask)
            else:
                candidate = 2.0 * tl.sigmoid(2.0 * (acc + b + s * m)) - 1.0  # tanh
                z = tl.load(z_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
                h_new = h + z * (candidate - h)
                tl.store(out_ptr + offsets, h_new.to(out_ptr.dtype.element_ty), mask=mask)
                if WEIGHTED_SUM:
                    weighted = tl.where(mask, s * h_new, 0.0)
                    first = (pid_m * BLOCK_M) // nodes_per_pair
                    last = tl.minimum((pid_m * BLOCK_M + BLOCK_M - 1) // nodes_per_pair, num_pairs - 1)
                    for p in range(first, last + 1):
                        part = tl.sum(tl.where((pair == p)[:, None], weighted, 0.0), axis=0)
                        tl.atomic_add(sums_ptr + p * out_dim + rn, part, mask=col_ok)


def _launch(epilogue, x, weight, bias, out_dim, outputs, message=None, scale=None, z=None, h=None, sums=None,
            nodes_per_pair=1, h_broadcast=False, config=None):
    block_m, block_n, block_k, num_warps, num_stages = config or _CONFIGS[epilogue]
    if sums is not None and nodes_per_pair > block_m:  # a pair over more than two tiles: order-dependent sums
        raise ValueError(f"ggnn_gemm: BLOCK_M {block_m} < {nodes_per_pair} nodes per pair with a weighted sum")
    rows, in_dim = x.shape
    fp32_dots = x.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    dummy = outputs[0]
    grid = (triton.cdiv(rows, block_m), triton.cdiv(out_dim, block_n))
    _node_gemm_kernel[grid](
        x, weight, bias,
        dummy if message is None else message,
        dummy if scale is None else scale,
        dummy if z is None else z,
        dummy if h is None else h,
        outputs[0], outputs[-1],
        dummy if sums is None else sums,
        rows, in_dim, out_dim, nodes_per_pair,
        1 if message is None else message.shape[0],
        0 if message is None else message.stride(0),
        EPILOGUE=epilogue, HAS_SCALE=scale is not None, H_BROADCAST=h_broadcast, WEIGHTED_SUM=sums is not None,
        PRECISION="tf32" if fp32_dots else "ieee", BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=num_warps, num_stages=num_stages,
    )


def _check_message(name: str, message: torch.Tensor, pairs: int, width: int) -> None:
    if message.dim() != 2 or message.shape[0] != pairs or message.shape[1] < width or message.stride(1) != 1:
        raise ValueError(f"{name}: message must be [{pairs}, >= {width}] with unit column stride, got shape "
                         f"{tuple(message.shape)} and strides {message.stride()}")


def gates_gemm(
    h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, message: torch.Tensor,
    scale: Optional[torch.Tensor], config=None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Update gates z and reset states r * h of R pairs of K nodes, the GEMM U_zr h included.

    Args:
        h: [R, K, D] node states (their dtype is the compute dtype).
        weight: [2D, D] U_z stacked on U_r; bias: [2D] b_z ; b_r.
        message: [R, >= 2D] per pair W_z a ; W_r a in its first 2D columns (any row stride).
        scale: [R, K] per-node factor of the message, or None (factor 1).
    Returns:
        z [R, K, D], r * h [R, K, D] in h's dtype.
    """
    pairs, nodes, dim = h.shape
    _check_message("gates_gemm", message, pairs, 2 * dim)
    x = h.reshape(pairs * nodes, dim).contiguous()
    z, reset_h = torch.empty_like(x), torch.empty_like(x)
    _launch(_GATES, x, weight.to(h.dtype).contiguous(), bias.contiguous(), dim, (z, reset_h), message=message,
            scale=None if scale is None else scale.to(h.dtype).contiguous(), h=x, nodes_per_pair=nodes, config=config)
    return z.view(pairs, nodes, dim), reset_h.view(pairs, nodes, dim)


def blend_gemm(
    reset_h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, message: torch.Tensor, z: torch.Tensor,
    h: torch.Tensor, scale: Optional[torch.Tensor], weighted_sum: bool = False, config=None,
):
    """New states h' = h + z (tanh(U_h (r h) + b_h + s M_h) - h) of R pairs of K nodes, the GEMM U_h (r h) included.

    Args:
        reset_h, z: [R, K, D]; h: [R, K or 1, D] (one state shared by a pair's nodes).
        weight: [D, D] U_h; bias: [D] b_h.
        message: [R, >= D] per pair W_h a in its first D columns (any row stride).
        scale: [R, K] per-node factor of the message, or None.
        weighted_sum: also return sum_k scale_k h'_k [R, D] (needs ``scale`` and K <= MAX_NODES_PER_PAIR).
    Returns:
        h' [R, K, D] in reset_h's dtype (and the weighted sum).
    """
    pairs, nodes, dim = reset_h.shape
    _check_message("blend_gemm", message, pairs, dim)
    if weighted_sum and (scale is None or nodes > MAX_NODES_PER_PAIR):
        raise ValueError(f"blend_gemm: the weighted sum needs a scale and at most {MAX_NODES_PER_PAIR} nodes per "
                         f"pair (got {nodes})")
    dtype = reset_h.dtype
    x = reset_h.reshape(pairs * nodes, dim).contiguous()
    h_new = torch.empty_like(x)
    sums = torch.zeros(pairs, dim, device=x.device, dtype=torch.float32) if weighted_sum else None
    _launch(_BLEND, x, weight.to(dtype).contiguous(), bias.contiguous(), dim, (h_new,), message=message,
            scale=None if scale is None else scale.to(dtype).contiguous(), z=z.to(dtype).contiguous(),
            h=h.to(dtype).contiguous(), sums=sums, nodes_per_pair=nodes, h_broadcast=h.shape[1] != nodes,
            config=config)
    h_new = h_new.view(pairs, nodes, dim)
    return (h_new, sums.to(dtype)) if weighted_sum else h_new


def pair_bias_relu_gemm(x: torch.Tensor, weight: torch.Tensor, pair_bias: torch.Tensor, config=None) -> torch.Tensor:
    """ReLU(x W^T + c_r) for R pairs of K nodes: x [R, K, I], weight [O, I], pair_bias [R, O] -> [R, K, O]."""
    pairs, nodes, in_dim = x.shape
    out_dim = weight.shape[0]
    if pair_bias.shape != (pairs, out_dim):
        raise ValueError(f"pair_bias_relu_gemm: pair_bias must be [{pairs}, {out_dim}], got {tuple(pair_bias.shape)}")
    rows = x.reshape(pairs * nodes, in_dim).contiguous()
    out = rows.new_empty((pairs * nodes, out_dim))
    _launch(_PAIR_BIAS_RELU, rows, weight.to(x.dtype).contiguous(), pair_bias.contiguous(), out_dim, (out,),
            nodes_per_pair=nodes, config=config)
    return out.view(pairs, nodes, out_dim)
