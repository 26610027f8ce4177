#!/usr/bin/env python
"""KERN's two routings, ours against literal implementations of the same equations (tests/routing_reference.py).

  python benchmarks/bench_routing.py              # CUDA when available, else CPU at small sizes
  python benchmarks/bench_routing.py --compile    # also ours under torch.compile

(2) object routing, fp32 forward+backward: ours vs a per-object loop (N = 64, C = 151, D = 512, T = 3 on GPU).
(3) relation routing, bf16 autocast: ours vs the batched literal form (six linear maps on all R x (P + 2) nodes,
    messages by bmm with the (P + 2) x (P + 2) adjacency), P = 51, D = 512, T = 3; R = 4,032 forward (no_grad),
    R = 2,048 forward+backward. Errors are max |ours - literal| with both in fp32.
Times are medians of repeats after warm-up, synchronised after each (so they include launch overhead); peak memory
is the CUDA allocator's peak above the inputs and weights (n/a on CPU and for CUDA graphs).
"""
import argparse
import os
import statistics
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from kern_d2.modeling.object_routing import ObjectRouting  # noqa: E402
from kern_d2.modeling.relation_routing import RelationRouting  # noqa: E402
from routing_reference import object_routing_literal, relation_routing_batched  # noqa: E402

GPU_SIZES = dict(objects=64, classes=151, predicates=51, hidden=512, feature=1024, pairs_infer=4032, pairs_train=2048)
CPU_SIZES = dict(objects=12, classes=151, predicates=51, hidden=64, feature=128, pairs_infer=512, pairs_train=256)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn, device, repeats, warmup):
    """(median ms, peak MB above the memory in use before) of fn()."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    peak = float("nan")
    if device.type == "cuda":
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        sync(device)
        peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return statistics.median(times), peak


def forward_backward(module, call):
    def run():
        module.zero_grad(set_to_none=True)
        call().float().sum().backward()

    return run


def report(title, rows):
    print(f"\n{title}")
    print(f"  {'variant':<34}{'median ms':>12}{'peak MB':>10}{'speed-up':>10}")
    baseline = rows[0][1]
    for name, ms, peak in rows:
        # CUDA graphs keep their memory in a pool allocated at capture: the allocator's peak does not see it.
        memory = "n/a" if peak != peak or "CUDA graphs" in name else f"{peak:.0f}"
        print(f"  {name:<34}{ms:>12.2f}{memory:>10}{baseline / ms:>9.1f}x")


def bench_object_routing(s, device, args):
    n, c, d = s["objects"], s["classes"], s["hidden"]
    torch.manual_seed(0)
    module = ObjectRouting(s["feature"], c, hidden_dim=d, output_dim=d, num_steps=3).to(device)
    x = torch.randn(n, s["feature"], device=device)
    cooc = torch.rand(c, c, device=device)
    cooc = cooc * (cooc > 0.7)  # sparse-ish, like real co-occurrence
    with torch.no_grad():
        error = (module(x, [n], cooc) - object_routing_literal(module, x, [n], cooc, per_edge=False)).abs().max()
    rows = [
        ("literal per-object loop",) + measure(
            forward_backward(module, lambda: object_routing_literal(module, x, [n], cooc, per_edge=False)),
            device, max(1, args.repeats // 4), 1),
        ("ours",) + measure(forward_backward(module, lambda: module(x, [n], cooc)), device, args.repeats, 3),
    ]
    if args.compile:
        compiled = torch.compile(module)
        rows.append(("ours + torch.compile",) + measure(
            forward_backward(module, lambda: compiled(x, [n], cooc)), device, args.repeats, 3))
    report(f"(2) object routing, fp32 forward+backward: N={n} C={c} D={d} T=3; max abs err (fp32) {error:.2e}", rows)


def relation_inputs(s, r, device):
    g = torch.Generator(device="cpu").manual_seed(1)
    subj = torch.randn(r, s["feature"], generator=g).to(device)
    obj = torch.randn(r, s["feature"], generator=g).to(device)
    union = torch.randn(r, s["feature"], generator=g).to(device)
    weights = torch.softmax(3 * torch.randn(r, s["predicates"], generator=g), dim=1).to(device)
    return subj, obj, union, weights


def bench_relation_routing(s, device, args):
    p, d = s["predicates"], s["hidden"]
    torch.manual_seed(0)
    module = RelationRouting(s["feature"], s["feature"], p, hidden_dim=d, output_dim=d, num_steps=3).to(device)
    # (name, callable, the module whose parameters it trains)
    variants = [("literal batched (adjacency bmm)", lambda *a: relation_routing_batched(module, *a), module),
                ("ours", module, module)]
    if args.compile:
        variants.append(("ours + torch.compile", torch.compile(module), module))
        if device.type == "cuda":
            graphs = torch.compile(module, mode="reduce-overhead")
            variants.append(("ours + compile, CUDA graphs", graphs, module))
        gates = RelationRouting(s["feature"], s["feature"], p, hidden_dim=d, output_dim=d, num_steps=3).to(device)
        gates.load_state_dict(module.state_dict())
        gates.update.compile_gate_math()
        variants.append(("ours + compiled gate math only", gates, gates))

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16)

    r = s["pairs_infer"]
    inputs = relation_inputs(s, r, device)
    with torch.no_grad():
        error = (module(*inputs) - relation_routing_batched(module, *inputs)).abs().max()

    def infer(fn):
        def run():
            with torch.no_grad(), autocast():
                fn(*inputs)
        return run

    rows = [(name,) + measure(infer(fn), device, args.repeats, 3) for name, fn, _ in variants]
    torch._dynamo.reset()  # the training variants compile their own graphs
    report(f"(3a) relation routing, bf16 autocast forward (no_grad): R={r} P={p} D={d} T=3; "
           f"max abs err (fp32) {error:.2e}", rows)

    r = s["pairs_train"]
    train_inputs = relation_inputs(s, r, device)

    def train(fn, owner):
        def call():
            with autocast():
                return fn(*train_inputs)
        return forward_backward(owner, call)

    rows = [(name,) + measure(train(fn, owner), device, args.repeats, 3) for name, fn, owner in variants]
    report(f"(3b) relation routing, bf16 autocast forward+backward: R={r} P={p} D={d} T=3", rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compile", action="store_true", help="also time ours under torch.compile")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--cpu", action="store_true", help="run on CPU (small sizes) even when CUDA is available")
    parser.add_argument("--only", choices=["object", "relation"], default=None)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    s = GPU_SIZES if device.type == "cuda" else CPU_SIZES
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (no CUDA: small sizes, see below)"
    print(f"device: {name}; torch {torch.__version__}; sizes: {s}")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 in the error figures
    if args.only in (None, "object"):
        bench_object_routing(s, device, args)
    if args.only in (None, "relation"):
        bench_relation_routing(s, device, args)


if __name__ == "__main__":
    main()
