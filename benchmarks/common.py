"""Shared parts of the benchmarks (bench_union_op, bench_routing, bench_train_step, bench_sgdet_inference,
bench_data_loading).

- environment: device choice, synchronisation, autocast, a header with device / torch / detectron2 / date, the
  command-line options every model-level benchmark has;
- timing: median of timed repeats after warm-up, each synchronised; the CUDA allocator's peak over the timed
  repeats (absolute, and above the memory in use when they start); torch.profiler's top ops of a few calls;
- tables: a plain fixed-width table and the "target met?" cell;
- VG-sized models and inputs: a KERN ``SceneGraphRCNN`` (R50-FPN from configs/Base-KERN.yaml, 150 classes,
  51 predicates, random weights, random priors) and the matching Detectron2 Faster R-CNN, and batches of
  synthetic images with random gt boxes and relations (mapper-style inputs, already on the device).

Scripts import it as ``common`` (their own folder is on ``sys.path`` when they are run as files).
"""
import argparse
import contextlib
import datetime
import gc
import math
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence, Tuple

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import detectron2  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402

import kern_d2.modeling  # noqa: E402,F401  (registers SceneGraphRCNN, KERNROIHeads)
from kern_d2.config import add_kern_config  # noqa: E402
from kern_d2.modeling import KnowledgePriors  # noqa: E402
from kern_d2.modeling.untrained_detector import calibrate_frozen_bn  # noqa: E402
from kern_d2.structures import Relations  # noqa: E402

GB = 1e9
# Detectron2's anchor generator calls torch.meshgrid without ``indexing``; the warning says nothing about us.
warnings.filterwarnings("ignore", message="torch.meshgrid: in an upcoming release")
MODES = {"predcls": (True, True), "sgcls": (True, False), "sgdet": (False, False)}  # USE_GT_BOX, USE_GT_OBJECT_LABEL


# ---------------------------------------------------------------------------------------------- environment
def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is available (use --device cpu --tiny)")
    return torch.device(name)


def set_cpu_threads(device: torch.device, tiny: bool, threads) -> None:
    """Intra-op CPU threads: ``threads`` if given, else 1 for a ``tiny`` CPU run (it checks code paths, not speed,
    and one thread keeps it quick on a busy machine, where several threads per process thrash), else torch's."""
    if threads is None and tiny and device.type == "cpu":
        threads = 1
    if threads is not None:
        torch.set_num_threads(threads)


def add_run_arguments(parser: argparse.ArgumentParser, unit: str, tiny_help: str) -> None:
    """The options of every model-level benchmark: --device, --tiny, --images, --amp, --warmup, --repeats (counted in
    ``unit``, e.g. "steps"), --seed, --threads; resolve the defaults with :func:`resolve_run_arguments`."""
    parser.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    parser.add_argument("--tiny", action="store_true", help=tiny_help)
    parser.add_argument("--images", type=int, help="batch size (default 8; 2 with --tiny)")
    parser.add_argument("--amp", choices=["bf16", "fp16", "none"], default="bf16", help="autocast dtype")
    parser.add_argument("--warmup", type=int,
                        help=f"untimed {unit} first, the checked first one included (default 3; 1 with --tiny)")
    parser.add_argument("--repeats", type=int, help=f"timed {unit} (default 10; 2 with --tiny)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int,
                        help="CPU intra-op threads (default: 1 with --tiny on CPU, else torch's)")


def parse_cpu_or_cuda_arguments(doc: str, repeats: int, argv=None) -> Tuple[argparse.Namespace, torch.device]:
    """Arguments of a kernel-level benchmark: ``--cpu`` (small sizes on the CPU; else CUDA when available) and
    ``--repeats``. Returns the arguments and the device."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="small sizes on the CPU")
    parser.add_argument("--repeats", type=int, default=repeats)
    args = parser.parse_args(argv)
    return args, resolve_device("cpu" if args.cpu else "auto")


def resolve_run_arguments(args: argparse.Namespace) -> torch.device:
    """Fill in --warmup / --repeats defaults, set the CPU threads; returns the device of --device."""
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    args.repeats = args.repeats if args.repeats is not None else (2 if args.tiny else 10)
    device = resolve_device(args.device)
    set_cpu_threads(device, args.tiny, args.threads)
    return device


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def environment_header(title: str, device: torch.device) -> str:
    """Title line plus device, torch / CUDA / detectron2 versions and the date."""
    cuda = f", CUDA {torch.version.cuda}" if device.type == "cuda" else ""
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return (
        f"{title}\n"
        f"device: {device_name(device)}; torch {torch.__version__}{cuda}; detectron2 {detectron2.__version__}; "
        f"date: {now}"
    )


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "none": None}


def autocast(device: torch.device, amp: str):
    """``torch.autocast`` with the dtype named by ``amp`` (bf16 | fp16 | none)."""
    dtype = AMP_DTYPES[amp]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


# ---------------------------------------------------------------------------------------------- timing
@dataclass
class Measurement:
    """Times of the timed repeats (ms), the allocator's peak over them and the memory allocated when they started
    (bytes; None off CUDA)."""

    times_ms: List[float] = field(default_factory=list)
    peak_bytes: Optional[int] = None
    base_bytes: Optional[int] = None

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    @property
    def peak_gb(self) -> Optional[float]:
        return None if self.peak_bytes is None else self.peak_bytes / GB

    @property
    def extra_bytes(self) -> Optional[int]:
        """The calls' own peak: the peak above what was allocated before them (weights, inputs, ...)."""
        return None if self.peak_bytes is None else self.peak_bytes - self.base_bytes

    @property
    def extra_gb(self) -> Optional[float]:
        return None if self.peak_bytes is None else self.extra_bytes / GB


def measure(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> Measurement:
    """Run ``fn`` ``warmup`` times, then ``repeats`` timed times, synchronising around each timed call.

    The peak is ``torch.cuda.max_memory_allocated`` over the timed calls, reset after the warm-up: it counts
    everything allocated at that moment (weights, optimizer state, inputs, activations); ``extra_bytes`` is the
    calls' own part (above what was allocated when the timed calls started).
    """
    if repeats < 1:
        raise ValueError(f"measure: repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result = Measurement()
    if device.type == "cuda":
        result.base_bytes = torch.cuda.memory_allocated(device)
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        result.times_ms.append((time.perf_counter() - start) * 1e3)
    if device.type == "cuda":
        result.peak_bytes = torch.cuda.max_memory_allocated(device)
    return result


def profile_top_ops(fn: Callable[[], object], device: torch.device, steps: int = 3, row_limit: int = 15) -> str:
    """torch.profiler table of the ``row_limit`` ops with the most self CUDA time (self CPU time off CUDA) over
    ``steps`` calls of ``fn`` (run after the caller's warm-up)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    synchronize(device)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
        synchronize(device)
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return f"top {row_limit} ops by {sort_by} over {steps} calls:\n" + prof.key_averages().table(
        sort_by=sort_by, row_limit=row_limit
    )


def release(device: torch.device) -> None:
    """Free a case's objects (the caller dropped its references) and return cached blocks to the device."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------- tables
def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Fixed-width table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(cells):
        parts = [str(cells[0]).ljust(widths[0])] + [str(c).rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join(parts)

    rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
    return "\n".join([line(header), rule] + [line(r) for r in rows])


def format_gb(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def targets_met(checks: Sequence[tuple]) -> str:
    """"yes", or "NO (names of failed checks)"; checks are (name, ok) with ok None when not measurable."""
    failed = [name for name, ok in checks if ok is False]
    if failed:
        return "NO (" + ", ".join(failed) + ")"
    return "yes" if any(ok is not None for _, ok in checks) else "n/a"


# ---------------------------------------------------------------------------------------------- models
@dataclass
class Sizes:
    """Workload of a benchmark run: VG-sized on a GPU, or ``tiny`` for a quick CPU check of the code paths."""

    images: int
    height: int
    min_width: int
    max_width: int
    gt_boxes: tuple  # (min, max) per image
    relations: tuple  # (min, max) per image
    tiny: bool

    @classmethod
    def create(cls, tiny: bool, images: Optional[int] = None) -> "Sizes":
        if tiny:
            return cls(images or 2, 128, 160, 224, (4, 8), (2, 4), True)
        return cls(images or 8, 600, 800, 1000, (10, 20), (4, 8), False)


def _tiny_overrides(cfg) -> None:
    """Small RPN/ROI budgets and routing widths, so a CPU run takes seconds; classes and predicates stay VG's."""
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 300
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 150
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = 300
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 150
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 64
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 256
    cfg.MODEL.FPN.OUT_CHANNELS = 64
    rel = cfg.MODEL.ROI_RELATION_HEAD
    rel.HIDDEN_DIM = 64
    rel.OUTPUT_DIM = 64
    rel.BATCH_SIZE_PER_IMAGE = 64
    rel.MAX_DETECTIONS = 16
    cfg.TEST.DETECTIONS_PER_IMAGE = 16


def kern_config(mode: str, device: torch.device, tiny: bool, opts: Sequence[str] = ()):
    """configs/Base-KERN.yaml with an R50-FPN, random weights, ``mode`` (predcls | sgcls | sgdet) and no priors
    file (the caller installs random priors: :func:`build_kern_model`). ``opts``: extra KEY VALUE overrides."""
    cfg = get_cfg()
    add_kern_config(cfg)
    cfg.merge_from_file(os.path.join(ROOT, "configs", "Base-KERN.yaml"))
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = device.type
    cfg.MODEL.RESNETS.DEPTH = 50
    rel = cfg.MODEL.ROI_RELATION_HEAD
    rel.USE_GT_BOX, rel.USE_GT_OBJECT_LABEL = MODES[mode]
    rel.PRIORS_FILE = ""
    # Random weights give near-uniform class scores: a zero threshold keeps the full MAX_DETECTIONS per image,
    # the worst case of the pair count.
    rel.DETECTION_SCORE_THRESH = 0.0
    if tiny:
        _tiny_overrides(cfg)
    cfg.merge_from_list(list(opts))
    return cfg


def detector_config(kern_cfg):
    """The plain Detectron2 Faster R-CNN of a KERN config: GeneralizedRCNN + StandardROIHeads, with test-time
    post-processing set like KERN's SGDet detection step (score > 0, per-class NMS, MAX_DETECTIONS per image)."""
    cfg = kern_cfg.clone()
    cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    rel = cfg.MODEL.ROI_RELATION_HEAD
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = rel.DETECTION_SCORE_THRESH
    cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST = rel.DETECTION_NMS_THRESH
    cfg.TEST.DETECTIONS_PER_IMAGE = rel.MAX_DETECTIONS
    return cfg


def random_priors(num_classes: int, num_predicates: int, seed: int = 0) -> KnowledgePriors:
    """Random priors of the right form: co-occurrence in [0, 1] with ~70% zeros (as sparse as VG's), and a predicate
    prior whose rows sum to 1 and favour "no relation" (column 0) as real ones do."""
    g = torch.Generator().manual_seed(seed)
    cooccurrence = torch.rand(num_classes, num_classes, generator=g)
    cooccurrence = cooccurrence * (torch.rand(num_classes, num_classes, generator=g) > 0.7)
    logits = 2.0 * torch.randn(num_classes, num_classes, num_predicates, generator=g)
    logits[..., 0] += 3.0
    return KnowledgePriors(cooccurrence, torch.softmax(logits, dim=-1))


def build_kern_model(cfg, batch, seed: int = 0) -> torch.nn.Module:
    """A SceneGraphRCNN with random weights (seeded, backbone calibrated on ``batch``) and random priors, on
    ``cfg.MODEL.DEVICE``."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    heads = model.roi_heads
    heads.priors = random_priors(heads.priors.num_classes, heads.priors.num_predicates, seed).to(model.device)
    calibrate_frozen_bn(model, batch)
    return model


def build_detector(cfg, batch, seed: int = 0) -> torch.nn.Module:
    """A Detectron2 GeneralizedRCNN with random weights (seeded, backbone calibrated on ``batch``); for a KERN
    config of the same seed its backbone, RPN and box head get the same weights (both build them first, in the
    same order)."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    calibrate_frozen_bn(model, batch)
    return model


def trainable_parameters(model: torch.nn.Module) -> List[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def count_parameters(params) -> str:
    return f"{sum(p.numel() for p in params) / 1e6:.1f}M"


# ---------------------------------------------------------------------------------------------- synthetic inputs
def _random_boxes(g: torch.Generator, count: int, height: int, width: int) -> torch.Tensor:
    """[count, 4] XYXY boxes: sides log-uniform in [16, the image's shorter side], aspect in [1/2, 2], clipped."""
    low, high = math.log(16.0), math.log(float(min(height, width)))
    side = torch.exp(torch.empty(count).uniform_(low, high, generator=g))
    aspect = torch.exp(torch.empty(count).uniform_(-math.log(2.0), math.log(2.0), generator=g))
    w, h = side * aspect.sqrt(), side / aspect.sqrt()
    cx, cy = torch.rand(count, generator=g) * width, torch.rand(count, generator=g) * height
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1)
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    return boxes


def _random_relations(g: torch.Generator, num_boxes: int, count: int, num_predicates: int) -> torch.Tensor:
    """int64 [count, 3]: distinct ordered pairs (i != j) with a predicate in 1..num_predicates-1."""
    pairs = torch.randperm(num_boxes * (num_boxes - 1), generator=g)[:count]
    subject = pairs // (num_boxes - 1)
    offset = pairs % (num_boxes - 1)
    obj = offset + (offset >= subject).long()  # skip the subject itself
    predicate = torch.randint(1, num_predicates, (pairs.shape[0],), generator=g)
    return torch.stack([subject, obj, predicate], dim=1)


def synthetic_batch(sizes: Sizes, num_classes: int, num_predicates: int, device: torch.device, seed: int = 0):
    """Mapper-style inputs of ``sizes.images`` random images (uint8 [3, H, W] on ``device``): ``height``,
    ``width``, ``image_id`` and ``instances`` (``gt_boxes``, ``gt_classes``, ``gt_relations``) at the image size.
    Heights are ``sizes.height``, widths uniform in [min_width, max_width] (VG images resized to 600/1000)."""
    g = torch.Generator().manual_seed(seed)
    batch = []
    for index in range(sizes.images):
        h = sizes.height
        w = int(torch.randint(sizes.min_width, sizes.max_width + 1, (1,), generator=g))
        n = int(torch.randint(sizes.gt_boxes[0], sizes.gt_boxes[1] + 1, (1,), generator=g))
        r = int(torch.randint(sizes.relations[0], sizes.relations[1] + 1, (1,), generator=g))
        instances = Instances((h, w))
        instances.gt_boxes = Boxes(_random_boxes(g, n, h, w))
        instances.gt_classes = torch.randint(0, num_classes, (n,), generator=g)
        instances.gt_relations = Relations(_random_relations(g, n, r, num_predicates), n)
        image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)
        batch.append({"image": image.to(device), "height": h, "width": w, "image_id": index,
                      "instances": instances.to(device)})
    return batch


def detector_inputs(batch):
    """The same images and gt boxes/classes without ``gt_relations``: StandardROIHeads copies every ``gt_*`` field
    to its sampled proposals, which repeat gt boxes, and ``Relations`` refuses such indexing."""
    inputs = []
    for x in batch:
        instances = Instances(x["instances"].image_size)
        instances.gt_boxes = x["instances"].gt_boxes
        instances.gt_classes = x["instances"].gt_classes
        inputs.append({**x, "instances": instances})
    return inputs


def without_annotations(batch):
    """Inference inputs (SGDet and the detector need only the images)."""
    return [{k: v for k, v in x.items() if k != "instances"} for x in batch]


def describe_batch(batch) -> str:
    sizes = [tuple(x["image"].shape[1:]) for x in batch]
    boxes = [len(x["instances"]) for x in batch if "instances" in x]
    rels = [x["instances"].gt_relations.num_relations for x in batch if "instances" in x]
    text = f"{len(batch)} images, H x W from {min(sizes)} to {max(sizes)}"
    if boxes:
        text += f"; gt boxes/image {min(boxes)}-{max(boxes)} (mean {sum(boxes) / len(boxes):.1f})"
        text += f"; gt relations/image {min(rels)}-{max(rels)} (mean {sum(rels) / len(rels):.1f})"
    return text
