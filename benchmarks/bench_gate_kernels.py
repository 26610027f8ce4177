#!/usr/bin/env python
"""The fused GGNN gate kernels alone (``kern_d2.layers.ggnn_gates``) at the relation routing's inference size, with
the PyTorch ops they replace, bf16, no_grad; and the GEMMs over the nodes with the gate arithmetic as epilogue
(``kern_d2.layers.ggnn_gemm``, Triton) against cuBLAS GEMMs followed by the fused kernels.

    python benchmarks/bench_gate_kernels.py            # R=4,032 pairs x 51 nodes x D=512 on CUDA
    python benchmarks/bench_gate_kernels.py --sweep    # + every tile configuration of the Triton kernels
    python benchmarks/bench_gate_kernels.py --cpu      # small sizes on the CPU (checks the code paths)

Reports ms per call and the memory traffic the call cannot avoid (reads + writes of its [R, K, .] tensors) per
second: the kernels are memory-bound, so that rate against the device's bandwidth shows the headroom.
"""
import argparse
import itertools

import torch
import torch.nn.functional as F

from common import environment_header, format_table, measure, resolve_device
from kern_d2.layers import ggnn_gemm
from kern_d2.layers.ggnn_gates import ggnn_blend, ggnn_gates
from kern_d2.modeling.ggnn import blend_candidate, update_and_reset_gates


def cases(pairs: int, nodes: int, dim: int, device: torch.device):
    """(name, call, node-sized tensors read + written) per case."""
    options = dict(device=device, dtype=torch.bfloat16)
    g = torch.Generator(device="cpu").manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(**options)

    state_zr, h = randn(pairs, nodes, 2 * dim), randn(pairs, nodes, dim)
    scale = torch.rand(pairs, nodes, generator=g).to(**options)
    terms = randn(pairs, 3 * dim)  # the model's message terms; the kernels read column slices of it
    z, state_h = torch.rand(pairs, nodes, dim, generator=g).to(**options), randn(pairs, nodes, dim)
    message_zr, message_h = terms[:, : 2 * dim], terms[:, 2 * dim :]
    s3 = scale[:, :, None]
    return [
        ("gates (fused)", lambda: ggnn_gates(state_zr, message_zr, h, scale, nodes), 5),
        ("gates, PyTorch ops", lambda: update_and_reset_gates(message_zr[:, None], state_zr, h, s3), 5),
        ("gates before step 1 (shared state and h; fused)",
         lambda: ggnn_gates(state_zr[:, :1], message_zr, h[:, :1], scale, nodes), 2),
        ("blend (fused)", lambda: ggnn_blend(state_h, message_h, z, h, scale), 4),
        ("blend, PyTorch ops", lambda: blend_candidate(message_h[:, None], state_h, z, h, s3), 4),
        ("blend + sum_k a_k h'_k (fused)", lambda: ggnn_blend(state_h, message_h, z, h, scale, weighted_sum=True), 4),
        ("sum_k a_k h_k alone (bmm)", lambda: torch.bmm(scale[:, None, :], h), 1),
    ]


def gemm_cases(pairs: int, nodes: int, dim: int, device: torch.device):
    """(name, call, node-sized tensors read + written, Triton kernel or None, its arguments) per case: each GEMM
    over the nodes with what follows it, as cuBLAS + the fused kernels and as one Triton kernel."""
    options = dict(device=device, dtype=torch.bfloat16)
    g = torch.Generator(device="cpu").manual_seed(1)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(**options)

    h, reset_h, z = randn(pairs, nodes, dim), randn(pairs, nodes, dim), torch.rand(pairs, nodes, dim).to(**options)
    scale = torch.rand(pairs, nodes, generator=g).to(**options)
    terms = randn(pairs, 3 * dim)
    w_zr, b_zr = randn(2 * dim, dim, scale=dim**-0.5), randn(2 * dim)
    w_h, b_h = randn(dim, dim, scale=dim**-0.5), randn(dim)
    w_o, pair_bias = randn(dim, dim, scale=dim**-0.5), randn(pairs, dim)
    gates_args = (h, w_zr, b_zr, terms, scale)
    blend_args = (reset_h, w_h, b_h, terms[:, 2 * dim :], z, h, scale, True)
    output_args = (h, w_o, pair_bias)
    return [
        ("U_zr h + gates: cuBLAS + fused kernel",
         lambda: ggnn_gates(F.linear(h, w_zr, b_zr), terms[:, : 2 * dim], h, scale, nodes), 3, None, None),
        ("U_zr h + gates: one Triton kernel", None, 3, ggnn_gemm.gates_gemm, gates_args),
        ("U_h (r h) + blend + sum: cuBLAS + fused kernel",
         lambda: ggnn_blend(F.linear(reset_h, w_h, b_h), terms[:, 2 * dim :], z, h, scale, True), 4, None, None),
        ("U_h (r h) + blend + sum: one Triton kernel", None, 4, ggnn_gemm.blend_gemm, blend_args),
        ("output W h + pair bias + ReLU: cuBLAS + add + relu",
         lambda: F.relu(F.linear(h, w_o) + pair_bias[:, None]), 2, None, None),
        ("output W h + pair bias + ReLU: one Triton kernel", None, 2, ggnn_gemm.pair_bias_relu_gemm, output_args),
    ]


SWEEP = [c + (w, st) for c in itertools.product((64, 128), (64, 128), (64,)) for w in (4, 8) for st in (3, 4)]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="small sizes on the CPU")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--sweep", action="store_true", help="time the Triton kernels in every tile configuration")
    args = parser.parse_args()
    device = resolve_device("cpu" if args.cpu else "auto")
    pairs, nodes, dim = (4032, 51, 512) if device.type == "cuda" else (64, 51, 64)
    print(environment_header("Fused GGNN gate kernels vs the PyTorch ops they replace (bf16, no_grad)", device))
    print(f"R={pairs} pairs x K={nodes} nodes x D={dim}; median of {args.repeats} calls after 5 warm-up calls")
    node_bytes = pairs * nodes * dim * 2  # one bf16 [R, K, D] tensor
    rows = []
    with torch.no_grad():
        for name, call, tensors in cases(pairs, nodes, dim, device):
            ms = measure(call, device, warmup=5, repeats=args.repeats).median_ms
            rows.append((name, f"{ms:.3f}", f"{tensors * node_bytes / ms / 1e9:.2f}"))
    print(format_table(("case", "ms", "TB/s of unavoidable traffic"), rows))
    if not ggnn_gemm.gemm_epilogues_available(torch.empty(0, device=device)):
        print("GEMM epilogues: not run (they need Triton and a CUDA device)")
        return
    rows = []
    with torch.no_grad():
        for name, call, tensors, kernel, kernel_args in gemm_cases(pairs, nodes, dim, device):
            configs = [None] + (SWEEP if args.sweep and kernel is not None else [])
            for config in configs:
                run = call if kernel is None else (lambda: kernel(*kernel_args, config=config))
                ms = measure(run, device, warmup=5, repeats=args.repeats).median_ms
                label = name if config is None else f"  tiles {config}"
                rows.append((label, f"{ms:.3f}", f"{tensors * node_bytes / ms / 1e9:.2f}"))
    print("\nGEMMs over the nodes with what follows them (default tiles; --sweep: (BLOCK_M, BLOCK_N, BLOCK_K, warps, "
          "stages))")
    print(format_table(("case", "ms", "TB/s of unavoidable traffic"), rows))


if __name__ == "__main__":
    main()
