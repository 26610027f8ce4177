"""The command line of the study (``tools/run_study.py``): its options, the datasets it knows and ``--variant``."""
import argparse
import os
from typing import Dict, Optional, Sequence, Tuple

from kern_d2.utils.cli import add_tool_arguments

from .study import FIDELITY_MODELS, MODELS, MODES, variant_models

__all__ = ["QUICK_DETECTOR_ITER_FRACTION", "QUICK_ITER_FRACTION", "STUDY_DATASETS", "parse_study_args",
           "parse_variant"]

# Per dataset prefix: its generator (run with --output <root>/<prefix>), detector config and KERN base config, from
# the repository root.
STUDY_DATASETS = {
    "toy": {"generator": "tools/make_toy_dataset.py", "detector_config": "configs/toy/toy_detector.yaml",
            "kern_config": "configs/toy/Base-Toy-KERN.yaml"},
    "synth": {"generator": "tools/make_synth_dataset.py", "detector_config": "configs/synth/synth_detector.yaml",
              "kern_config": "configs/synth/Base-Synth-KERN.yaml"},
}
QUICK_ITER_FRACTION = 0.1  # --quick: KERN runs take this fraction of the config's iterations
QUICK_DETECTOR_ITER_FRACTION = 0.25


def _get_parser(doc: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0] if doc else None,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc)
    parser.add_argument("--dataset", default="synth", help=f"dataset prefix (<prefix>_train/_test); known: "
                        f"{', '.join(STUDY_DATASETS)}")
    parser.add_argument("--output", default="output/study")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS) + list(FIDELITY_MODELS),
                        help="study models; the fidelity study's: " + ", ".join(FIDELITY_MODELS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--quick", action="store_true", help=f"one seed, {QUICK_ITER_FRACTION:g} of the KERN "
                        f"config's iterations and {QUICK_DETECTOR_ITER_FRACTION:g} of the detector's "
                        "(unless --iters / --detector-iters)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at once (they share the device and the CPUs)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    parser.add_argument("--iters", type=int, help="iterations of every KERN run (steps and warmup scaled)")
    parser.add_argument("--detector-iters", type=int, help="iterations of the detector")
    parser.add_argument("--detector-config", help="default: by dataset (see STUDY_DATASETS in kern_d2/study/cli.py)")
    parser.add_argument("--detector-weights", help="a trained detector (of --detector-config) instead of training one")
    parser.add_argument("--kern-config", help="KERN base config; default: by dataset")
    parser.add_argument("--variant", nargs="+", action="append", default=[], metavar="NAME[@MODE,...]=KEY VALUE",
                        help="an extra model (KERN unless its keys set NAME) in the modes after @ (default: every "
                        "mode): NAME[@MODE,...]=KEY VALUE [KEY VALUE ...]; short keys are MODEL.ROI_RELATION_HEAD "
                        "keys, dotted keys full config keys")
    parser.add_argument("--opts", nargs="+", default=[], metavar="KEY VALUE",
                        help="config overrides of every run, detector included (last on the command line)")
    parser.add_argument("--fresh", action="store_true", help="redo every step")
    add_tool_arguments(parser)  # --register: your datasets (<prefix>_train, <prefix>_test), in every run too
    return parser


def parse_study_args(argv: Optional[Sequence[str]] = None, *, root: str, doc: str = "") -> argparse.Namespace:
    """The study's arguments, checked (argparse's error and exit status 2 otherwise). ``root``: the repository root,
    where the default configs are and the runs work; ``doc``: the tool's docstring (description and epilog).
    Adds ``variants`` ({name: {KEY: VALUE}}) and ``variant_modes`` ({name: modes}, for names given modes)."""
    parser = _get_parser(doc)
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    if len(args.opts) % 2:
        parser.error("--opts takes KEY VALUE pairs")
    known = STUDY_DATASETS.get(args.dataset, {})
    if not (args.detector_config or known) or not (args.kern_config or known):
        parser.error(f"dataset {args.dataset!r} has no default configs: give --detector-config and --kern-config")
    # The runs work in the repository root: the user's paths from here, the defaults from the root.
    args.detector_config = os.path.abspath(args.detector_config or os.path.join(root, known["detector_config"]))
    args.kern_config = os.path.abspath(args.kern_config or os.path.join(root, known["kern_config"]))
    try:
        parsed = [parse_variant(tokens) for tokens in args.variant]
        args.variants = {name: keys for name, keys, _ in parsed}
        args.variant_modes = {name: modes for name, _, modes in parsed if modes}
        variant_models(args.variants, args.variant_modes)
    except ValueError as e:
        parser.error(str(e))
    if not args.models and not args.variants:
        parser.error("nothing to study: give --models (or leave it out for all) or at least one --variant")
    if args.detector_weights and not os.path.isfile(args.detector_weights):
        parser.error(f"--detector-weights: no file {args.detector_weights}")
    if args.quick:
        args.seeds = args.seeds[:1]
    return args


def parse_variant(tokens: Sequence[str]) -> Tuple[str, Dict[str, str], Tuple[str, ...]]:
    """["name[@mode,...]=KEY", "VALUE", "KEY", "VALUE", ...] -> (name, {KEY: VALUE}, (mode, ...) or ())."""
    head, sep, first_key = tokens[0].partition("=")
    name, _, modes = head.partition("@")
    rest = [first_key] + list(tokens[1:])
    if not sep or not name or not first_key or len(rest) % 2:
        raise ValueError(f"--variant {' '.join(tokens)}: expected NAME[@MODE,...]=KEY VALUE [KEY VALUE ...]")
    return name, dict(zip(rest[0::2], rest[1::2])), tuple(m for m in modes.split(",") if m)
