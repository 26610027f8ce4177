#!/usr/bin/env python
"""KERN's two routings, ours against literal implementations of the same equations (tests/helpers/routing_reference.py).

  python benchmarks/bench_routing.py              # CUDA when available, else CPU at small sizes
  python benchmarks/bench_routing.py --compile    # also torch.compile(mode="reduce-overhead") variants
  python benchmarks/bench_routing.py --profile    # + torch.profiler's top ops of the default relation routing

(2) object routing, fp32 forward+backward: ours vs a per-object loop (N = 64, C = 151, D = 512, T = 3 on GPU).
(3) relation routing, bf16 autocast: the batched literal form (six linear maps on all R x (P + 2) nodes, messages
    by bmm with the (P + 2) x (P + 2) adjacency) vs ours with each GGNN gate implementation (``gate_impl``: "fused"
    = kern_d2._C's gate kernels, the default; "eager" = PyTorch ops; "compile" = the whole routing under
    torch.compile), on CUDA also with INFERENCE_CUDA_GRAPHS, P = 51, D = 512, T = 3; (3a) R = 4,032 forward
    (no_grad), (3b) R = 2,048 forward+backward.
    Errors: max |ours - literal| of the logits (R = 4,032) and of the parameter gradients (R = 2,048), both in fp32.
Times are medians of repeats after warm-up, synchronised around each (so they include launch overhead); peak memory
is the CUDA allocator's peak above the memory in use before the timed calls (inputs and the weights of every
variant; n/a on CPU and for CUDA graphs, whose memory pool the allocator's peak does not see).
"""
import argparse
from dataclasses import dataclass, field
from functools import partial
from typing import Callable, Dict, List, Optional

import torch
from torch import nn

from common import (
    environment_header,
    format_gb,
    format_table,
    measure,
    profile_top_ops,
    resolve_device,
    targets_met,
)

# After common, which puts the repository root on sys.path (kern_d2, tests.helpers).
from kern_d2.modeling.object_routing import ObjectRouting  # noqa: E402
from kern_d2.modeling.relation_routing import GATE_IMPLS, RelationRouting  # noqa: E402
from tests.helpers.routing_reference import object_routing_literal, relation_routing_batched  # noqa: E402

GPU_SIZES = dict(objects=64, classes=151, predicates=51, hidden=512, feature=1024, pairs_infer=4032, pairs_train=2048)
CPU_SIZES = dict(objects=12, classes=151, predicates=51, hidden=64, feature=128, pairs_infer=512, pairs_train=256)
DEFAULT_GATE = "fused"  # what gate_impl "auto" (the config default) runs on CUDA
DEFAULT_SUFFIX = " (default on CUDA)"  # in the name of ours with the default gate
CPU_GATES = ("fused", "eager")
TARGET_OBJECT_RATIO = 20.0  # (2) literal / ours, forward+backward
TARGET_INFER_MS, TARGET_INFER_RATIO = 4.0, 5.0  # (3a) at R = 4,032
TARGET_TRAIN_RATIO = 2.5  # (3b) at R = 2,048
WARMUP = 3  # enough for torch.compile and for CUDA graphs to be recorded


@dataclass
class Variant:
    """One way of computing the relation logits: ``call(subj, obj, union, weights)``, training ``owner``'s
    parameters; the measurements and errors are filled in as the benchmark goes."""

    name: str
    call: Callable
    owner: nn.Module
    cuda_graphs: bool = False
    results: Dict[str, object] = field(default_factory=dict)


def forward_backward(module, call):
    def run():
        module.zero_grad(set_to_none=True)
        call().float().sum().backward()

    return run


def peak_gb(result, variant: Variant) -> str:
    return "n/a" if variant.cuda_graphs else format_gb(result.extra_gb)


def ratio(reference_ms: float, ms: float) -> str:
    return f"{reference_ms / ms:.1f}x"


# ---------------------------------------------------------------------------------------------- (2) object routing
def bench_object_routing(s, device, args):
    n, c, d = s["objects"], s["classes"], s["hidden"]
    torch.manual_seed(0)
    module = ObjectRouting(s["feature"], c, hidden_dim=d, output_dim=d, num_steps=3).to(device)
    x = torch.randn(n, s["feature"], device=device)
    cooc = torch.rand(c, c, device=device)
    cooc = cooc * (cooc > 0.7)  # sparse-ish, like real co-occurrence
    with torch.no_grad():
        error = (module(x, [n], cooc) - object_routing_literal(module, x, [n], cooc, per_edge=False)).abs().max()
    literal = forward_backward(module, lambda: object_routing_literal(module, x, [n], cooc, per_edge=False))
    cases = [("literal per-object loop", measure(literal, device, 1, args.literal_repeats)),
             ("ours", measure(forward_backward(module, lambda: module(x, [n], cooc)), device, WARMUP, args.repeats))]
    if args.compile:
        compiled = torch.compile(module)
        cases.append(("ours + torch.compile",
                      measure(forward_backward(module, lambda: compiled(x, [n], cooc)), device, WARMUP, args.repeats)))
    reference_ms = cases[0][1].median_ms
    rows = [[name, f"{r.median_ms:.2f}", format_gb(r.extra_gb), ratio(reference_ms, r.median_ms)] for name, r in cases]
    print(f"\n(2) object routing, fp32 forward+backward: N={n} C={c} D={d} T=3; max abs err (fp32) {error:.2e}")
    print(format_table(["variant", "fwd+bwd ms", "peak GB", "literal / ours"], rows))
    speedup = reference_ms / cases[1][1].median_ms
    print(f"target (2): literal / ours >= {TARGET_OBJECT_RATIO:g}x: "
          + targets_met([(f"{speedup:.1f}x < {TARGET_OBJECT_RATIO:g}x", speedup >= TARGET_OBJECT_RATIO)]))


# ---------------------------------------------------------------------------------------------- (3) relation routing
def relation_module(s, device, state=None, **kwargs) -> RelationRouting:
    """A RelationRouting of the benchmark's sizes, seeded, or with the weights ``state``."""
    torch.manual_seed(0)
    module = RelationRouting(s["feature"], s["feature"], s["predicates"], hidden_dim=s["hidden"],
                             output_dim=s["hidden"], num_steps=3, **kwargs)
    if state is not None:
        module.load_state_dict(state)
    return module.to(device)


def relation_variants(s, device, args) -> List[Variant]:
    """The literal form first (the reference), then ours per gate implementation, then the compiled modules."""
    reference = relation_module(s, device)
    state = reference.state_dict()
    variants = [Variant("literal batched (adjacency bmm)", partial(relation_routing_batched, reference), reference)]
    for impl in args.gates:
        module = relation_module(s, device, state, gate_impl=impl)
        name = f"ours, gate {impl}" + (DEFAULT_SUFFIX if impl == DEFAULT_GATE else "")
        variants.append(Variant(name, module, module))
    for impl in [g for g in (DEFAULT_GATE, "compile") if g in args.gates and device.type == "cuda"]:
        # INFERENCE_CUDA_GRAPHS: (3a) replays CUDA graphs; (3b) needs gradients, so it runs as without.
        module = relation_module(s, device, state, gate_impl=impl, inference_cuda_graphs=True)
        variants.append(Variant(f"ours, gate {impl} + INFERENCE_CUDA_GRAPHS", module, module, cuda_graphs=True))
    if args.compile:
        if device.type == "cuda":
            # torch.compile's own CUDA graphs (mode "reduce-overhead"), for comparison with INFERENCE_CUDA_GRAPHS;
            # Inductor fuses the gate arithmetic itself: the module it compiles keeps the gates in PyTorch ops.
            module = relation_module(s, device, state, gate_impl="eager")
            variants.append(Variant("ours (eager gates) + compile, CUDA graphs",
                                    torch.compile(module, mode="reduce-overhead"), module, cuda_graphs=True))
            # The fused gate kernels stay opaque custom ops (fake kernels) inside the compiled graph.
            fused = relation_module(s, device, state, gate_impl="fused")
            variants.append(Variant("ours (fused gates) + compile, CUDA graphs",
                                    torch.compile(fused, mode="reduce-overhead"), fused, cuda_graphs=True))
    return variants


def relation_inputs(s, r, device):
    """fp32 (subject, object, union features [R, F]; edge weights [R, P], rows summing to 1), seeded."""
    g = torch.Generator(device="cpu").manual_seed(1)
    subj = torch.randn(r, s["feature"], generator=g)
    obj = torch.randn(r, s["feature"], generator=g)
    union = torch.randn(r, s["feature"], generator=g)
    weights = torch.softmax(3 * torch.randn(r, s["predicates"], generator=g), dim=1)
    return tuple(x.to(device) for x in (subj, obj, union, weights))


def parameter_gradients(variant: Variant, inputs, grad_logits) -> Dict[str, torch.Tensor]:
    """fp32 gradients of sum(logits * grad_logits) w.r.t. the owner's parameters, by name."""
    variant.owner.zero_grad(set_to_none=True)
    (variant.call(*inputs).float() * grad_logits).sum().backward()
    return {name: p.grad.detach().clone() for name, p in variant.owner.named_parameters() if p.grad is not None}


def record_errors(variants: List[Variant], infer_inputs, train_inputs) -> None:
    """results["err_out"], results["err_grad"]: max |variant - literal| in fp32 of the logits and of the parameter
    gradients (over the parameters both have gradients for); the literal's results["max_out"], ["max_grad"]: the
    largest |logit| and |gradient|."""
    literal = variants[0]
    with torch.no_grad():
        reference_out = literal.call(*infer_inputs).float()
    grad_logits = torch.randn(reference_out.shape[1:], generator=torch.Generator().manual_seed(2))
    grad_logits = grad_logits.to(reference_out.device)
    reference_grads = parameter_gradients(literal, train_inputs, grad_logits)
    # The literal's own row shows the scale the errors compare with.
    literal.results["max_out"] = reference_out.abs().max().item()
    literal.results["max_grad"] = max(g.abs().max().item() for g in reference_grads.values())
    for variant in variants[1:]:
        with torch.no_grad():
            variant.results["err_out"] = (variant.call(*infer_inputs).float() - reference_out).abs().max().item()
        grads = parameter_gradients(variant, train_inputs, grad_logits)
        shared = grads.keys() & reference_grads.keys()
        variant.results["err_grad"] = max((grads[k] - reference_grads[k]).abs().max().item() for k in shared)
    for variant in variants:
        variant.owner.zero_grad(set_to_none=True)


def default_variant(variants: List[Variant]) -> Optional[Variant]:
    """Ours with the default gate implementation (None when --gates leaves it out)."""
    return next((v for v in variants if v.name.endswith(DEFAULT_SUFFIX)), None)


def inference_run(variant: Variant, inputs, device):
    """(3a): forward under no_grad and bf16 autocast."""
    def run():
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
            variant.call(*inputs)
    return run


def training_run(variant: Variant, inputs, device):
    """(3b): forward under bf16 autocast, backward of the summed logits."""
    def call():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return variant.call(*inputs)
    return forward_backward(variant.owner, call)


def time_section(variants: List[Variant], key: str, make_run, inputs, device, args) -> Optional[str]:
    """results[key] of every variant; returns the profile of the default variant with --profile."""
    torch._dynamo.reset()  # each section compiles its own graphs: static shapes, one R per section
    for variant in variants:
        variant.results[key] = measure(make_run(variant, inputs, device), device, WARMUP, args.repeats)
    default = default_variant(variants)
    if args.profile and default is not None:
        return profile_top_ops(make_run(default, inputs, device), device)
    return None


def relation_table(variants: List[Variant]) -> str:
    literal_infer = variants[0].results["infer"].median_ms
    literal_train = variants[0].results["train"].median_ms
    rows = []
    for v in variants:
        infer, train = v.results["infer"], v.results["train"]
        if v is variants[0]:
            errors = [f"ref, max |x| {v.results['max_out']:.1e}", f"ref, max |x| {v.results['max_grad']:.1e}"]
        else:
            errors = [f"{v.results['err_out']:.1e}", f"{v.results['err_grad']:.1e}"]
        rows.append([v.name, f"{infer.median_ms:.2f}", ratio(literal_infer, infer.median_ms), peak_gb(infer, v),
                     f"{train.median_ms:.2f}", ratio(literal_train, train.median_ms), peak_gb(train, v), *errors])
    return format_table(["variant", "3a fwd ms", "literal/ours", "3a peak GB", "3b fwd+bwd ms", "literal/ours",
                         "3b peak GB", "err logits (fp32)", "err grads (fp32)"], rows)


def relation_targets(variants: List[Variant]) -> str:
    default = default_variant(variants)
    if default is None:
        return f"targets (3): not checked (the default gate {DEFAULT_GATE!r} is not among --gates)"
    infer_ratio = variants[0].results["infer"].median_ms / default.results["infer"].median_ms
    train_ratio = variants[0].results["train"].median_ms / default.results["train"].median_ms
    infer_ms = default.results["infer"].median_ms
    infer_met = targets_met([
        (f"{infer_ms:.2f} ms > {TARGET_INFER_MS:g} ms", infer_ms <= TARGET_INFER_MS),
        (f"{infer_ratio:.1f}x < {TARGET_INFER_RATIO:g}x", infer_ratio >= TARGET_INFER_RATIO),
    ])
    train_met = targets_met([(f"{train_ratio:.1f}x < {TARGET_TRAIN_RATIO:g}x", train_ratio >= TARGET_TRAIN_RATIO)])
    return (f"targets (3), {default.name}: 3a forward <= {TARGET_INFER_MS:g} ms and literal/ours >= "
            f"{TARGET_INFER_RATIO:g}x: {infer_met}; 3b literal/ours >= {TARGET_TRAIN_RATIO:g}x: {train_met}")


def bench_relation_routing(s, device, args):
    r_infer, r_train = s["pairs_infer"], s["pairs_train"]
    variants = relation_variants(s, device, args)
    torch._dynamo.reset()
    record_errors(variants, relation_inputs(s, r_infer, device), relation_inputs(s, r_train, device))
    profiles = [
        (f"(3a) gate {DEFAULT_GATE}, forward R={r_infer}",
         time_section(variants, "infer", inference_run, relation_inputs(s, r_infer, device), device, args)),
        (f"(3b) gate {DEFAULT_GATE}, forward+backward R={r_train}",
         time_section(variants, "train", training_run, relation_inputs(s, r_train, device), device, args)),
    ]
    print(f"\n(3) relation routing, bf16 autocast, P={s['predicates']} D={s['hidden']} T=3: (3a) forward, no_grad, "
          f"R={r_infer}; (3b) forward+backward, R={r_train}")
    print(relation_table(variants))
    print(relation_targets(variants) + ("" if device.type == "cuda" else " (the targets are for the GPU sizes)"))
    for title, text in profiles:
        if text is not None:
            print(f"\n--- profile: {title} ---\n{text}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compile", action="store_true",
                        help="also time the object routing under torch.compile and, on CUDA, the relation routing under "
                             "torch.compile with its own CUDA graphs (mode reduce-overhead))")
    parser.add_argument("--gates",
                        help=f"gate implementations of ours to time (comma-separated subset of {','.join(GATE_IMPLS)}; "
                             f"default: all on CUDA, {','.join(CPU_GATES)} on CPU, where inductor's C++ builds take "
                             "minutes)")
    parser.add_argument("--profile", action="store_true",
                        help=f"print torch.profiler's top ops of ours with gate {DEFAULT_GATE!r} in (3a) and (3b)")
    parser.add_argument("--repeats", type=int, help="timed calls per variant (default 20 on CUDA, 5 on CPU)")
    parser.add_argument("--literal-repeats", type=int,
                        help="timed calls of the (slow) per-object loop of (2) (default: repeats / 4)")
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--cpu", action="store_true", help="same as --device cpu (small sizes)")
    parser.add_argument("--only", choices=["object", "relation"], default=None)
    args = parser.parse_args(argv)
    args.device = resolve_device("cpu" if args.cpu else args.device)
    cuda = args.device.type == "cuda"
    args.gates = [g.strip() for g in (args.gates or ",".join([g for g in GATE_IMPLS if g != "auto"] if cuda else CPU_GATES)).split(",")
                  if g.strip()]
    unknown = sorted(set(args.gates) - set(GATE_IMPLS))
    if unknown:
        parser.error(f"--gates: unknown {unknown}; choose from {', '.join(GATE_IMPLS)}")
    if args.repeats is None:
        args.repeats = 20 if cuda else 5
    if args.literal_repeats is None:
        args.literal_repeats = max(1, args.repeats // 4)
    return args


def main(argv=None):
    args = parse_args(argv)
    device = args.device
    s = GPU_SIZES if device.type == "cuda" else CPU_SIZES
    print(environment_header("KERN's routings vs their literal forms", device))
    print(f"sizes: {s}" + ("" if device.type == "cuda" else " (CPU: small sizes)")
          + f"; median of {args.repeats} calls after {WARMUP} warm-up calls")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 in the error figures
    torch._dynamo.config.recompile_limit = 64  # the gate functions see several shapes per call: no eager fallback
    if args.only in (None, "object"):
        bench_object_routing(s, device, args)
    if args.only in (None, "relation"):
        bench_relation_routing(s, device, args)


if __name__ == "__main__":
    main()
