#!/usr/bin/env python
"""The fused GGNN gate kernels alone (``kern_d2.layers.ggnn_gates``) at the relation routing's inference size, with
the PyTorch ops they replace, bf16, no_grad.

    python benchmarks/bench_gate_kernels.py            # R=4,032 pairs x 51 nodes x D=512 on CUDA
    python benchmarks/bench_gate_kernels.py --cpu      # small sizes on the CPU (checks the code paths)

Reports ms per call and the memory traffic the call cannot avoid (reads + writes of its [R, K, .] tensors) per
second: the kernels are memory-bound, so that rate against the device's bandwidth shows the headroom.
"""

import torch

from common import environment_header, format_table, measure, parse_cpu_or_cuda_arguments
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


def main():
    args, device = parse_cpu_or_cuda_arguments(__doc__, repeats=50)
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


if __name__ == "__main__":
    main()
