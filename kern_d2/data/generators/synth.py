"""``synth``: a generated scene-graph benchmark (VG150 file format) on which knowledge can matter and recall does not
saturate. Design and statistics: datasets/README.md ("The synth benchmark").

What a model can and cannot know from the pixels, by construction:

- **Look-alike classes.** Five pairs of classes are drawn exactly alike (``LOOK_ALIKES``: person/statue, dog/bag,
  bird/leaf, car/box, ball/apple). Pixels cannot tell them apart; the scene can: every image is one of four
  scenes (``SCENES``), and the two members of a pair never share a scene. So an object's class follows from what it
  co-occurs with (object routing's co-occurrence prior; SGCls, SGDet), and from nothing else.
- **One geometry, several names.** A contact layout (``stack``: subject rests on the object; ``under``: the object
  rests on the subject; ``side``: side contact; ``in``: subject inside a container) is named by the class pair
  (``CONTACT_RULES``): a person stacked on a bench is "sitting on", a statue "on"; a dog on a sofa is "lying on", a
  bag "on". Where the two classes of a pair are look-alikes, only the class pair decides the predicate: the
  predicate prior p(predicate | subject, object) (given the gt labels in PredCls) is the only way to know it.
  These class-decided predicates are the tail of the histogram.
- **Several plausible predicates.** Some class pairs name one layout in two ways ("riding" or "on"), and a stack
  is sometimes also annotated "above": graph-constrained recall cannot reach 100 and ng-R@K exceeds R@K, as on VG.
- **Sparse, incomplete annotation.** Besides the contact groups, objects stand close to one another; a pair with
  a geometric relation ("left of", "above"/"under", "near", visible in pixels) is annotated only with
  probability ``GEOMETRIC_ANNOTATION_PROB``, as VG annotators name only some relations. No model can know which
  pairs were annotated, so recall keeps growing from K = 20 to 100.
- **Zero-shot triplets.** ``HELD_OUT_TRIPLETS`` never occur in the train split (a group that would produce one is
  redrawn); they occur in test, so zR@K measures generalisation to new combinations.

Deterministic: everything is drawn from one ``numpy.random.Generator`` seeded by ``seed``.
"""
import itertools
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from kern_d2.utils.processes import process_pool

from ..datasets.vg_format import write_generated_dataset, write_generated_image
from .shapes import draw_shape, jitter_colour, noisy_background

# name -> (shape, BGR colour, (min w, max w), (min h, max h) or None for square-ish)
_APPEARANCES = {
    "person": ("rectangle", (200, 60, 20), (20, 28), (46, 62)),
    "dog": ("ellipse", (40, 90, 140), (34, 46), (22, 28)),
    "bird": ("chevron", (245, 245, 245), (20, 28), (16, 22)),
    "car": ("rectangle", (30, 30, 200), (60, 80), (26, 34)),
    "ball": ("circle", (40, 190, 40), (16, 24), None),
    "hat": ("triangle", (30, 30, 230), (20, 28), (14, 20)),
    "cup": ("square", (20, 210, 230), (16, 22), None),
    "book": ("square", (170, 40, 40), (18, 24), (14, 18)),
    "lamp": ("diamond", (230, 230, 60), (18, 26), (22, 30)),
    "laptop": ("rectangle", (200, 200, 200), (30, 40), (18, 24)),
    "table": ("rectangle", (40, 80, 140), (70, 100), (16, 22)),
    "bench": ("rectangle", (90, 160, 160), (70, 100), (12, 18)),
    "sofa": ("rectangle", (120, 40, 120), (80, 110), (28, 38)),
    "bed": ("rectangle", (200, 200, 120), (90, 120), (34, 44)),
    "tree": ("triangle", (30, 100, 20), (40, 56), (60, 80)),
    "pole": ("rectangle", (150, 150, 150), (8, 12), (60, 90)),
    "sign": ("diamond", (0, 200, 255), (24, 32), None),
    "fence": ("frame", (80, 120, 160), (60, 90), (30, 40)),
    "bowl": ("frame", (0, 140, 255), (40, 52), (36, 46)),
    "basket": ("frame", (150, 90, 200), (44, 56), (40, 50)),
    "flower": ("chevron", (180, 80, 255), (14, 20), (14, 18)),
    "kite": ("diamond", (60, 220, 160), (24, 34), (28, 36)),
    "road": ("rectangle", (110, 110, 110), (140, 200), (18, 26)),
    "horse": ("ellipse", (60, 120, 200), (60, 80), (36, 46)),
    "bike": ("frame", (40, 40, 40), (40, 56), (28, 36)),
}
# Look-alike pairs: the second is drawn exactly as the first.
LOOK_ALIKES = (("person", "statue"), ("dog", "bag"), ("bird", "leaf"), ("car", "box"), ("ball", "apple"))
for _seen, _twin in LOOK_ALIKES:
    _APPEARANCES[_twin] = _APPEARANCES[_seen]
THING_CLASSES: List[str] = sorted(_APPEARANCES)

# Scenes: which classes an image may contain (and how often). The members of a look-alike pair never share one.
SCENES: Dict[str, Dict[str, float]] = {
    "park": {"person": 3, "dog": 2, "ball": 2, "bench": 2, "tree": 2, "bird": 2, "kite": 1, "horse": 1, "bike": 1,
             "hat": 1, "flower": 1, "basket": 1},
    "street": {"person": 3, "car": 3, "road": 2, "pole": 2, "sign": 2, "bike": 2, "bag": 2, "bench": 1, "bird": 1,
               "hat": 1, "fence": 1, "tree": 1},
    "home": {"person": 2, "sofa": 2, "table": 2, "bed": 1, "lamp": 2, "cup": 2, "dog": 2, "box": 2, "apple": 2,
             "bowl": 2, "book": 2, "laptop": 1, "hat": 1},
    "garden": {"statue": 3, "leaf": 3, "tree": 2, "flower": 2, "bench": 2, "fence": 2, "apple": 2, "basket": 2,
               "hat": 1, "pole": 1, "bowl": 1},
}
SCENE_WEIGHTS = {"park": 0.3, "street": 0.25, "home": 0.3, "garden": 0.15}

# Contact groups: (layout, subjects, objects, {predicate: probability}, weight). The first rule whose class lists
# hold a sampled pair names it; weights set how often each rule is drawn (the predicate histogram's long tail).
_SMALL_THINGS = ["cup", "apple", "ball", "book", "lamp", "laptop", "box", "bag", "hat", "bowl", "basket", "flower"]
# The look-alike pairs meet the same partner in different scenes, where the class pair alone names the layout:
# person/statue on a bench or under a hat, dog/bag on a bench, bird/leaf on a tree, fence or bench, person with a
# ball or an apple.
CONTACT_RULES: List[Tuple[str, List[str], List[str], Dict[str, float], float]] = [
    ("stack", ["person"], ["bench", "sofa", "bed"], {"sitting on": 0.8, "on": 0.2}, 1.0),
    ("stack", ["person"], ["horse", "bike"], {"riding": 0.7, "on": 0.3}, 0.5),
    ("stack", ["person"], ["road"], {"walking on": 0.6, "on": 0.4}, 0.4),
    ("stack", ["statue"], ["bench", "table"], {"on": 1.0}, 0.5),
    ("stack", ["dog"], ["bench", "sofa", "bed"], {"lying on": 0.85, "on": 0.15}, 0.4),
    ("stack", ["car", "bike"], ["road"], {"parked on": 0.7, "on": 0.3}, 0.5),
    ("stack", ["bird"], ["tree", "pole", "fence", "bench"], {"perched on": 0.9, "on": 0.1}, 0.3),
    ("stack", ["leaf"], ["tree", "fence", "bench"], {"growing on": 0.8, "on": 0.2}, 0.15),
    ("stack", ["sign", "lamp"], ["pole"], {"attached to": 0.7, "on": 0.3}, 0.12),
    ("stack", _SMALL_THINGS, ["table", "bench", "sofa", "bed"], {"on": 1.0}, 3.5),
    ("under", ["person"], ["hat"], {"wearing": 0.8, "has": 0.2}, 0.8),
    ("under", ["statue"], ["hat", "bird", "leaf"], {"has": 1.0}, 0.3),
    ("side", ["person"], ["ball"], {"playing with": 0.7, "holding": 0.3}, 0.2),
    ("side", ["person"], ["apple"], {"eating": 0.6, "holding": 0.4}, 0.15),
    ("side", ["person"], ["cup", "bag", "kite", "book"], {"holding": 0.85, "with": 0.15}, 0.6),
    ("side", ["person"], ["dog"], {"walking": 0.8, "with": 0.2}, 0.15),
    ("side", ["bike"], ["pole", "fence", "tree"], {"leaning on": 1.0}, 0.06),
    ("in", ["apple", "ball", "cup", "book"], ["bowl", "basket"], {"in": 1.0}, 0.6),
    ("in", ["flower"], ["bowl", "basket"], {"in": 0.5, "growing in": 0.5}, 0.08),
]
# Geometric predicates: computed from the boxes of any two objects that are not a contact group.
GEOMETRIC_PREDICATES = ["near", "left of", "above", "under"]
PREDICATES: List[str] = GEOMETRIC_PREDICATES + sorted(
    {p for rule in CONTACT_RULES for p in rule[3]} - set(GEOMETRIC_PREDICATES), key=lambda p: (p != "on", p)
)
GEOMETRIC_ANNOTATION_PROB = 0.25
DUPLICATE_ABOVE_PROB = 0.15  # a stacked pair is also annotated "above"
# Never in the train split; drawn in the test split like any other group.
HELD_OUT_TRIPLETS = {
    ("dog", "lying on", "bed"), ("person", "sitting on", "bed"), ("bird", "perched on", "bench"),
    ("cup", "on", "bed"), ("apple", "in", "basket"), ("person", "holding", "kite"), ("bike", "parked on", "road"),
}
SPLIT_STREAMS = {"train": 0, "test": 1}


@dataclass
class SynthImage:
    width: int
    height: int
    scene: str
    boxes: np.ndarray  # float [n, 4] XYXY
    classes: np.ndarray  # int [n] 0-based
    relations: np.ndarray  # int [r, 3] (subject, object, predicate 1..P-1)
    pixels: Optional[np.ndarray]  # uint8 [height, width, 3] BGR; None once written


def _object_size(rng, name) -> Tuple[int, int]:
    _, _, w_range, h_range = _APPEARANCES[name]
    w = int(rng.integers(w_range[0], w_range[1] + 1))
    h = w if h_range is None else int(rng.integers(h_range[0], h_range[1] + 1))
    return w, h


def _layout_boxes(rng, layout: str, size_s, size_o) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """Subject and object boxes (XYXY) of a contact layout in a frame starting at (0, 0); None when the subject
    does not fit inside the container ("in")."""
    (ws, hs), (wo, ho) = size_s, size_o
    if layout == "stack":  # subject rests on the object's top, horizontally within it when it fits
        xs = int(rng.integers(0, wo - ws + 1)) if wo >= ws else -int(rng.integers(0, ws - wo + 1))
        s, o = np.array([xs, 0, xs + ws, hs]), np.array([0, hs, wo, hs + ho])
    elif layout == "under":  # object rests on the subject's top
        xo = int(rng.integers(0, ws - wo + 1)) if ws >= wo else -int(rng.integers(0, wo - ws + 1))
        s, o = np.array([0, ho, ws, ho + hs]), np.array([xo, 0, xo + wo, ho])
    elif layout == "side":  # object touches the subject's side at mid height
        yo = hs // 2 - ho // 2
        if rng.random() < 0.5:
            s, o = np.array([0, 0, ws, hs]), np.array([ws, yo, ws + wo, yo + ho])
        else:
            s, o = np.array([wo, 0, wo + ws, hs]), np.array([0, yo, wo, yo + ho])
    elif layout == "in":  # subject inside the container, clear of its frame
        if wo - ws < 12 or ho - hs < 12:
            return None
        xs, ys = int(rng.integers(6, wo - ws - 5)), int(rng.integers(6, ho - hs - 5))
        s, o = np.array([xs, ys, xs + ws, ys + hs]), np.array([0, 0, wo, ho])
    else:
        raise ValueError(f"unknown layout {layout!r}")
    boxes = np.stack([s, o]).astype(np.float64)
    return boxes - np.tile(boxes[:, :2].min(axis=0), 2)


def _scene_rules(scene: str):
    """The contact rules with at least one (subject, object) pair in the scene: [(rule, pairs)]."""
    present = SCENES[scene]
    out = []
    for rule in CONTACT_RULES:
        pairs = [(s, o) for s, o in itertools.product(rule[1], rule[2]) if s in present and o in present and s != o]
        if pairs:
            out.append((rule, pairs))
    return out


def _sample_group(rng, scene: str, train: bool):
    """One contact group: (names [2], boxes [2, 4] from (0, 0), relations [r, 3] local), or None."""
    rules = _scene_rules(scene)
    weights = np.array([rule[4] for rule, _ in rules])
    rule, pairs = rules[rng.choice(len(rules), p=weights / weights.sum())]
    layout, _, _, predicate_probs, _ = rule
    subj, obj = pairs[rng.integers(len(pairs))]
    names, probs = list(predicate_probs), np.array(list(predicate_probs.values()))
    predicate = names[rng.choice(len(names), p=probs / probs.sum())]
    if train and (subj, predicate, obj) in HELD_OUT_TRIPLETS:
        return None
    boxes = _layout_boxes(rng, layout, _object_size(rng, subj), _object_size(rng, obj))
    if boxes is None:
        return None
    rels = [[0, 1, PREDICATES.index(predicate) + 1]]
    if layout == "stack" and rng.random() < DUPLICATE_ABOVE_PROB:
        rels.append([0, 1, PREDICATES.index("above") + 1])
    return [subj, obj], boxes, np.array(rels, dtype=np.int64)


def _fits(box: np.ndarray, occupied: List[np.ndarray], margin: int) -> bool:
    return all(
        box[0] >= o[2] + margin or o[0] >= box[2] + margin or box[1] >= o[3] + margin or o[1] >= box[3] + margin
        for o in occupied
    )


def _place(rng, size, occupied: List[np.ndarray], width: int, height: int, tries: int = 30):
    """Top-left corner for a group of ``size`` (w, h) clear of the occupied boxes by 3-10 px, or None."""
    gw, gh = int(np.ceil(size[0])), int(np.ceil(size[1]))
    if gw + 4 > width or gh + 4 > height:
        return None
    for _ in range(tries):
        x, y = int(rng.integers(2, width - gw - 1)), int(rng.integers(2, height - gh - 1))
        if _fits(np.array([x, y, x + gw, y + gh]), occupied, margin=int(rng.integers(3, 11))):
            return x, y
    return None


def geometric_relation(s: np.ndarray, o: np.ndarray) -> Optional[str]:
    """The geometric predicate that holds for boxes ``s``, ``o`` (XYXY) as subject, object, or None.

    "left of": s ends left of o (gap 1-64 px) and they overlap vertically by half the smaller height;
    "above"/"under": the same vertically; "near": diagonal neighbours, both gaps 1-32 px.
    """
    gap_x = max(o[0] - s[2], s[0] - o[2])
    gap_y = max(o[1] - s[3], s[1] - o[3])
    overlap_x = min(s[2], o[2]) - max(s[0], o[0])
    overlap_y = min(s[3], o[3]) - max(s[1], o[1])
    if 0 < gap_x <= 64 and overlap_y >= 0.5 * min(s[3] - s[1], o[3] - o[1]):
        return "left of" if s[2] <= o[0] else None
    if 0 < gap_y <= 64 and overlap_x >= 0.5 * min(s[2] - s[0], o[2] - o[0]):
        return "above" if s[3] <= o[1] else "under"
    if 0 < gap_x <= 32 and 0 < gap_y <= 32:
        return "near"
    return None


def _geometric_annotations(rng, boxes: np.ndarray, group_of: np.ndarray) -> List[List[int]]:
    """Sparse geometric relations between objects of different groups (each holding pair with probability
    ``GEOMETRIC_ANNOTATION_PROB``; "above"/"under" and "near" name one of the two directions)."""
    rels = []
    for i, j in itertools.combinations(range(len(boxes)), 2):
        if group_of[i] == group_of[j] or rng.random() >= GEOMETRIC_ANNOTATION_PROB:
            continue
        forward, backward = geometric_relation(boxes[i], boxes[j]), geometric_relation(boxes[j], boxes[i])
        options = [(i, j, p) for p in [forward] if p] + [(j, i, p) for p in [backward] if p]
        if forward == "near":
            options = options[:1] if rng.random() < 0.5 else options[1:]
        elif forward in ("above", "under"):  # annotators name the upper one "above" more often than the lower "under"
            options = [options[0] if (forward == "above") == (rng.random() < 0.65) else options[1]]
        if options:
            s, o, p = options[0]
            rels.append([s, o, PREDICATES.index(p) + 1])
    return rels


def generate_synth_image(rng: np.random.Generator, train: bool = True) -> Optional[SynthImage]:
    """One image of 6-20 objects of one scene: 1-5 contact groups, loners, sparse geometric relations. None when
    fewer than 6 objects fit (the caller draws again)."""
    width, height = (int(v) for v in rng.integers(256, 513, size=2))
    scenes = list(SCENE_WEIGHTS)
    scene = scenes[rng.choice(len(scenes), p=np.array(list(SCENE_WEIGHTS.values())))]
    classes, class_weights = list(SCENES[scene]), np.array(list(SCENES[scene].values()), dtype=np.float64)
    target = int(rng.integers(6, 21))
    num_groups = int(rng.integers(1, min(5, target // 2) + 1))
    occupied, names, boxes, relations, group_of = [], [], [], [], []
    for g in range(target):
        if len(names) >= target:
            break
        if g < num_groups:
            group = _sample_group(rng, scene, train)
            if group is None:
                continue
            group_names, group_boxes, group_rels = group
        else:
            name = classes[rng.choice(len(classes), p=class_weights / class_weights.sum())]
            w, h = _object_size(rng, name)
            group_names, group_boxes, group_rels = [name], np.array([[0, 0, w, h]], float), np.zeros((0, 3), int)
        size = group_boxes[:, 2:].max(axis=0)
        corner = _place(rng, size, occupied, width, height)
        if corner is None:
            continue
        occupied.append(np.array([corner[0], corner[1], corner[0] + size[0], corner[1] + size[1]]))
        relations.append(group_rels + [len(names), len(names), 0])
        group_of += [g] * len(group_names)
        names += group_names
        boxes.append(group_boxes + np.array([corner[0], corner[1]] * 2, dtype=np.float64))
    if len(names) < 6:
        return None
    boxes = np.concatenate(boxes)
    geometric = _geometric_annotations(rng, boxes, np.array(group_of))
    relations = np.concatenate(relations + [np.array(geometric, dtype=np.int64).reshape(-1, 3)]).astype(np.int64)
    if not len(relations):
        return None
    pixels = noisy_background(rng, width, height, float32_noise=True)
    # containers first, so that what is inside them is drawn on top
    for i in sorted(range(len(names)), key=lambda i: _APPEARANCES[names[i]][0] != "frame"):
        draw_shape(pixels, _APPEARANCES[names[i]][0], jitter_colour(rng, _APPEARANCES[names[i]][1]), boxes[i])
    classes_out = np.array([THING_CLASSES.index(n) for n in names], dtype=np.int64)
    return SynthImage(width, height, scene, boxes, classes_out, relations, pixels)


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The generator of one image: a function of (seed, split, index) alone, so that any number of worker
    processes write the same dataset."""
    return np.random.default_rng([seed, SPLIT_STREAMS[split], index])


def _generate_and_write(task) -> SynthImage:
    """Worker: draw image ``index`` of ``split`` (again until one fits), write its JPEG, return it without pixels."""
    output_dir, seed, split, index, image_id = task
    rng = _image_rng(seed, split, index)
    image = None
    while image is None:
        image = generate_synth_image(rng, train=split == "train")
    if output_dir is not None:
        write_generated_image(output_dir, image_id, image.pixels)
        image.pixels = None
    return image


def generate_synth_images(
    seed: int, num_train: int, num_test: int, output_dir: Optional[str] = None, workers: int = 1
) -> List[SynthImage]:
    """The train-split then the test images; with ``output_dir`` their JPEGs are written there (ids 1..N) and
    ``pixels`` is None. Same result for any number of ``workers`` (processes)."""
    tasks = [(output_dir, seed, "train", i, i + 1) for i in range(num_train)]
    tasks += [(output_dir, seed, "test", i, num_train + i + 1) for i in range(num_test)]
    if workers <= 1:
        return [_generate_and_write(t) for t in tasks]
    with process_pool(workers) as pool:
        return pool.map(_generate_and_write, tasks, chunksize=32)


def generate_synth_dataset(
    output_dir: str, num_train: int = 2000, num_test: int = 500, num_val: int = 200, seed: int = 0,
    workers: Optional[int] = None,
) -> dict:
    """Write the benchmark (VG-SGG.h5, VG-SGG-dicts.json, image_data.json, VG_100K/<id>.jpg) to ``output_dir``.

    ``num_train`` train-split images, of which the first ``num_val`` form val (h5 attribute ``num_val_images``),
    then ``num_test`` test images; ``workers`` processes (default: the CPU count). Returns
    :func:`synth_statistics` of what was written.
    """
    if not 0 <= num_val <= num_train:
        raise ValueError(f"num_val ({num_val}) must be in [0, num_train ({num_train})]")
    workers = workers or os.cpu_count() or 1
    images = generate_synth_images(seed, num_train, num_test, output_dir, workers)
    write_generated_dataset(output_dir, images, num_train, num_val, THING_CLASSES, PREDICATES, write_images=False)
    return synth_statistics(images[:num_train], images[num_train:])


def _histogram(values: np.ndarray, names: Sequence[str], offset: int = 0) -> Dict[str, int]:
    return dict(zip(names, np.bincount(values - offset, minlength=len(names)).tolist()))


def _triplets(images: Sequence[SynthImage]) -> set:
    return {
        (THING_CLASSES[im.classes[s]], PREDICATES[p - 1], THING_CLASSES[im.classes[o]])
        for im in images for s, o, p in im.relations.tolist()
    }


def synth_statistics(train: Sequence[SynthImage], test: Sequence[SynthImage]) -> dict:
    """Counts of a generated split pair: images, objects and relations per image, class and predicate histograms
    (train), predicate shares, the test triplets never seen in train."""
    relations = np.concatenate([im.relations for im in train])
    predicate_counts = _histogram(relations[:, 2], PREDICATES, offset=1)
    total = max(len(relations), 1)
    test_triplets = [
        (THING_CLASSES[im.classes[s]], PREDICATES[p - 1], THING_CLASSES[im.classes[o]])
        for im in test for s, o, p in im.relations.tolist()
    ]
    seen = _triplets(train)
    objects = np.array([len(im.boxes) for im in list(train) + list(test)])
    rels = np.array([len(im.relations) for im in list(train) + list(test)])
    return {
        "images": {"train_split": len(train), "test": len(test)},
        "objects_per_image": {"min": int(objects.min()), "mean": float(objects.mean()), "max": int(objects.max())},
        "relations_per_image": {"min": int(rels.min()), "mean": float(rels.mean()), "max": int(rels.max())},
        "pairs_with_relation": float(rels.sum() / (objects * (objects - 1)).sum()),
        "object_histogram": _histogram(np.concatenate([im.classes for im in train]), THING_CLASSES),
        "predicate_histogram": predicate_counts,
        "predicate_share": {k: v / total for k, v in predicate_counts.items()},
        "scene_histogram": {s: sum(im.scene == s for im in train) for s in SCENES},
        "zero_shot_test_triplets": sum(t not in seen for t in test_triplets),
        "test_triplets": len(test_triplets),
    }


def format_synth_statistics(stats: dict) -> str:
    o, r = stats["objects_per_image"], stats["relations_per_image"]
    lines = [
        "images: " + ", ".join(f"{k} {v}" for k, v in stats["images"].items()),
        f"objects per image: {o['min']}-{o['max']}, mean {o['mean']:.1f}; relations per image: {r['min']}-{r['max']},"
        f" mean {r['mean']:.1f}; pairs with a relation: {100 * stats['pairs_with_relation']:.1f}%",
        f"zero-shot test triplets: {stats['zero_shot_test_triplets']} of {stats['test_triplets']}",
        "scenes (train split): " + ", ".join(f"{k} {v}" for k, v in stats["scene_histogram"].items()),
        "relations per predicate (train split):",
    ]
    lines += [f"  {k:<14s}{v:6d}  {100 * stats['predicate_share'][k]:5.1f}%"
              for k, v in sorted(stats["predicate_histogram"].items(), key=lambda kv: -kv[1])]
    return "\n".join(lines)
