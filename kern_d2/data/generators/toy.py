"""A small synthetic scene graph dataset in the exact VG150 file format, for CPU runs of the whole pipeline.

Images (160-256 px, non-square) show 2-6 coloured shapes on a noisy textured background. Each object class is a
distinct shape/colour combination, except one look-alike pair ("dog" is drawn as "ball"): there the class, not the
picture, decides between "standing on" and "on". Objects come in related pairs (one or two annotated predicates) and a few
loners; pairs of different groups are left unannotated, as in VG.

The predicates are built so that visual cues and class priors are both needed:

- geometric predicates, visible in pixels: "left of", "above" (separated by a gap) and "near" (diagonal, a few
  pixels apart) for any class pair, "in" (inside a box) for the small classes;
- contact predicates, where one geometry gets a class-dependent name (``CONTACT_RULES``): a subject resting on
  top of the object is "on" for (cup, table) but "standing on" for (person, table); an object resting on top
  of the subject is "wears" for (person, hat) but "hanging from" for (lamp, tree); "holding" is a side contact
  for (person, cup) and the like. Pixels show the contact; the classes decide its name;
- every class pair that has a contact predicate also gets geometric ones, so the class pair alone does not
  decide the predicate; the predicate histogram is long-tailed (``PREDICATE_WEIGHTS``).

Everything is drawn with numpy/OpenCV from one ``numpy.random.Generator`` seeded by ``seed``: the same seed gives
the same files.
"""
from dataclasses import dataclass
from typing import Dict, List, Tuple

import numpy as np

from ..datasets.vg_format import write_generated_dataset
from .shapes import draw_shape, jitter_colour, noisy_background

# name -> (shape, BGR colour, (min w, max w), (min h, max h)); distinct, except the look-alike noted below
CLASSES: Dict[str, Tuple[str, Tuple[int, int, int], Tuple[int, int], Tuple[int, int]]] = {
    "person": ("rectangle", (200, 60, 20), (18, 26), (38, 54)),
    "hat": ("triangle", (30, 30, 220), (20, 28), (16, 20)),
    "cup": ("square", (20, 210, 230), (16, 20), (16, 20)),
    "table": ("rectangle", (40, 80, 140), (56, 84), (16, 22)),
    "ball": ("circle", (40, 190, 40), (16, 24), None),
    "box": ("frame", (0, 140, 255), (42, 54), (42, 54)),
    "lamp": ("diamond", (230, 230, 60), (18, 26), (22, 30)),
    # A look-alike: "dog" is drawn exactly as "ball", so no pixel tells "dog standing on table" from "ball on
    # table"; only the class label (given in PredCls, and used by the priors) does, as with many VG classes.
    "dog": ("circle", (40, 190, 40), (16, 24), None),
    "tree": ("triangle", (30, 100, 20), (28, 40), (40, 56)),
    "bird": ("chevron", (250, 250, 250), (20, 28), (16, 22)),
}
THING_CLASSES = list(CLASSES)
PREDICATES = ["on", "left of", "near", "above", "wears", "holding", "in", "standing on", "hanging from"]

# Global predicate frequencies (long-tailed): each annotated pair first draws its predicate from these.
PREDICATE_WEIGHTS = {
    "on": 0.28, "left of": 0.17, "near": 0.13, "above": 0.11, "wears": 0.09,
    "holding": 0.07, "in": 0.06, "standing on": 0.05, "hanging from": 0.04,
}
# Contact predicates: the class pairs that carry them (subject, object) and their layout. "stack": subject
# rests on the object's top; "under": object rests on the subject's top; "side": object touches the subject's
# side at mid height. "on"/"standing on" share a layout, as do "wears"/"hanging from".
CONTACT_RULES = {
    "on": ("stack", [("cup", "table"), ("ball", "table"), ("hat", "table"), ("bird", "table"), ("cup", "box"),
                     ("ball", "box"), ("lamp", "table"), ("bird", "box")]),
    "standing on": ("stack", [("person", "table"), ("person", "box"), ("dog", "table"), ("dog", "box")]),
    "wears": ("under", [("person", "hat"), ("dog", "hat")]),
    "hanging from": ("under", [("lamp", "tree"), ("bird", "tree")]),
    "holding": ("side", [("person", "cup"), ("person", "ball"), ("person", "lamp")]),
}
INSIDE_PAIRS = [("cup", "box"), ("ball", "box"), ("bird", "box"), ("hat", "box")]
CONTACT_PAIRS = sorted({p for _, pairs in CONTACT_RULES.values() for p in pairs})
# A stacked pair also gets "above" annotated this often (a duplicated pair, as VG has).
DUPLICATE_ABOVE_PROB = 0.1
# Geometric predicates draw half of their class pairs from the contact pairs, so those pairs carry several
# predicates.
GEOMETRIC_ON_CONTACT_PAIR_PROB = 0.5


@dataclass
class ToyImage:
    width: int
    height: int
    boxes: np.ndarray  # float [n, 4] XYXY
    classes: np.ndarray  # int [n] 0-based
    relations: np.ndarray  # int [r, 3] (subject, object, predicate 1..P-1)
    pixels: np.ndarray  # uint8 [height, width, 3] BGR


def _object_size(rng, name) -> Tuple[int, int]:
    _, _, w_range, h_range = CLASSES[name]
    w = int(rng.integers(w_range[0], w_range[1] + 1))
    h = w if h_range is None else int(rng.integers(h_range[0], h_range[1] + 1))
    return w, h


def pair_layout(rng, predicate, size_s, size_o) -> Tuple[np.ndarray, np.ndarray]:
    """Subject and object boxes (XYXY) for the predicate's geometry, in a frame the caller shifts to (0, 0)."""
    (ws, hs), (wo, ho) = size_s, size_o
    layout = CONTACT_RULES[predicate][0] if predicate in CONTACT_RULES else predicate
    if layout == "stack":  # subject rests on the object
        xs = rng.integers(0, max(wo - ws, 0) + 1) if wo >= ws else -rng.integers(0, ws - wo + 1)
        return np.array([xs, 0, xs + ws, hs]), np.array([0, hs, wo, hs + ho])
    if layout == "under":  # object rests on the subject
        xo = rng.integers(0, max(ws - wo, 0) + 1) if ws >= wo else -rng.integers(0, wo - ws + 1)
        return np.array([0, ho, ws, ho + hs]), np.array([xo, 0, xo + wo, ho])
    if layout == "side":  # object touches the subject's side at mid height
        yo = hs // 2 - ho // 2
        if rng.random() < 0.5:
            return np.array([0, 0, ws, hs]), np.array([ws, yo, ws + wo, yo + ho])
        return np.array([wo, 0, wo + ws, hs]), np.array([0, yo, wo, yo + ho])
    if layout == "in":  # subject inside the (larger) object, with a margin
        xs = rng.integers(6, wo - ws - 5)
        ys = rng.integers(6, ho - hs - 5)
        return np.array([xs, ys, xs + ws, ys + hs]), np.array([0, 0, wo, ho])
    if layout == "left of":  # horizontal gap, centres at about the same height
        gap, dy = rng.integers(12, 36), (hs - ho) // 2 + rng.integers(-4, 5)
        return np.array([0, 0, ws, hs]), np.array([ws + gap, dy, ws + gap + wo, dy + ho])
    if layout == "above":  # vertical gap, centres at about the same x
        gap, dx = rng.integers(12, 36), (ws - wo) // 2 + rng.integers(-4, 5)
        return np.array([0, 0, ws, hs]), np.array([dx, hs + gap, dx + wo, hs + gap + ho])
    if layout == "near":  # diagonal, a few pixels apart
        gx, gy = rng.integers(2, 8, size=2)
        s = np.array([0, 0, ws, hs])
        o = np.array([ws + gx, hs + gy, ws + gx + wo, hs + gy + ho])
        if rng.random() < 0.5:  # mirror: object lower-left of the subject
            s, o = s + [wo + gx, 0] * 2, o - [ws + gx, 0] * 2
        return s, o
    raise ValueError(f"unknown toy predicate {predicate!r}")


def _sample_pair(rng, predicate) -> Tuple[str, str]:
    if predicate in CONTACT_RULES:
        pairs = CONTACT_RULES[predicate][1]
    elif predicate == "in":
        pairs = INSIDE_PAIRS
    elif rng.random() < GEOMETRIC_ON_CONTACT_PAIR_PROB:
        pairs = CONTACT_PAIRS
    else:
        return tuple(rng.choice(THING_CLASSES, size=2))
    return pairs[rng.integers(len(pairs))]


def _sample_group(rng):
    """One related pair: (names [2], boxes [2,4] in the group frame, relations [r,3] local)."""
    names, weights = list(PREDICATE_WEIGHTS), np.array(list(PREDICATE_WEIGHTS.values()))
    predicate = names[rng.choice(len(names), p=weights / weights.sum())]
    subj, obj = _sample_pair(rng, predicate)
    box_s, box_o = pair_layout(rng, predicate, _object_size(rng, subj), _object_size(rng, obj))
    boxes = np.stack([box_s, box_o]).astype(np.float64)
    boxes -= np.tile(boxes[:, :2].min(axis=0), 2)  # layouts may use negative offsets
    rels = [[0, 1, PREDICATES.index(predicate) + 1]]
    if predicate in ("on", "standing on") and rng.random() < DUPLICATE_ABOVE_PROB:
        rels.append([0, 1, PREDICATES.index("above") + 1])
    return [subj, obj], boxes, np.array(rels, dtype=np.int64)


def place_group(rng, size_wh, occupied: List[np.ndarray], width, height, margin=6, tries=40):
    """Top-left corner for a group of size ``size_wh`` that keeps ``margin`` px from the occupied boxes."""
    gw, gh = size_wh
    if gw + 4 > width or gh + 4 > height:
        return None
    for _ in range(tries):
        x, y = rng.integers(2, width - gw - 1), rng.integers(2, height - gh - 1)
        box = np.array([x, y, x + gw, y + gh])
        if all(
            box[0] >= o[2] + margin or o[0] >= box[2] + margin or box[1] >= o[3] + margin or o[1] >= box[3] + margin
            for o in occupied
        ):
            return x, y
    return None


def _draw(pixels, name, box, rng):
    shape, colour, _, _ = CLASSES[name]
    draw_shape(pixels, shape, jitter_colour(rng, colour), box)


def generate_toy_image(rng: np.random.Generator) -> ToyImage:
    """One image: 1-3 related pairs (at least one) and 0-2 loners, 2-6 objects, none overlapping across groups."""
    width, height = (int(v) for v in rng.integers(160, 257, size=2))
    occupied, names, boxes, relations = [], [], [], []
    num_groups = int(rng.integers(1, 4))
    num_loners = int(rng.integers(0, min(2, 6 - 2 * num_groups) + 1))
    for g in range(num_groups + num_loners):
        if g < num_groups:
            group_names, group_boxes, group_rels = _sample_group(rng)
        else:
            name = THING_CLASSES[rng.integers(len(THING_CLASSES))]
            w, h = _object_size(rng, name)
            group_names, group_boxes, group_rels = [name], np.array([[0, 0, w, h]], float), np.zeros((0, 3), int)
        size = group_boxes[:, 2:].max(axis=0)
        corner = place_group(rng, size, occupied, width, height)
        if corner is None:
            continue
        offset = np.array([corner[0], corner[1]] * 2, dtype=np.float64)
        occupied.append(np.concatenate([corner, np.array(corner) + size]))
        relations.append(group_rels + [len(names), len(names), 0])
        names += group_names
        boxes.append(group_boxes + offset)
    boxes = np.concatenate(boxes)
    classes = np.array([THING_CLASSES.index(n) for n in names], dtype=np.int64)
    pixels = noisy_background(rng, width, height)
    # containers first, so what is inside them is drawn on top
    for i in sorted(range(len(names)), key=lambda i: CLASSES[names[i]][0] != "frame"):
        _draw(pixels, names[i], boxes[i], rng)
    return ToyImage(width, height, boxes, classes, np.concatenate(relations).astype(np.int64), pixels)


def generate_toy_dataset(
    output_dir: str, num_train: int = 400, num_test: int = 100, num_val: int = 50, seed: int = 0
) -> dict:
    """Write VG-SGG.h5, VG-SGG-dicts.json, image_data.json and VG_100K/<id>.jpg under ``output_dir``.

    The first ``num_val`` train images form val (stored as the h5 attribute ``num_val_images``). Returns a
    summary (see :func:`toy_summary`).
    """
    if num_val > num_train:
        raise ValueError(f"num_val ({num_val}) must not exceed num_train ({num_train})")
    rng = np.random.default_rng(seed)
    images = []
    while len(images) < num_train + num_test:
        image = generate_toy_image(rng)
        if len(image.relations):  # the first group can fail to fit only in a tiny image; redraw then
            images.append(image)
    write_generated_dataset(output_dir, images, num_train, num_val, THING_CLASSES, PREDICATES)
    return toy_summary(images, num_train, num_val, num_test)


def toy_summary(images: List[ToyImage], num_train: int, num_val: int, num_test: int) -> dict:
    relations = np.concatenate([im.relations for im in images])
    classes = np.concatenate([im.classes for im in images])
    return {
        "images": {"train": num_train - num_val, "val": num_val, "test": num_test},
        "objects": int(sum(len(im.boxes) for im in images)),
        "relations": int(len(relations)),
        "object_histogram": dict(zip(THING_CLASSES, np.bincount(classes, minlength=len(CLASSES)).tolist())),
        "predicate_histogram": dict(
            zip(PREDICATES, np.bincount(relations[:, 2], minlength=len(PREDICATES) + 1)[1:].tolist())
        ),
    }


def format_toy_summary(summary: dict) -> str:
    lines = [
        "images: " + ", ".join(f"{k} {v}" for k, v in summary["images"].items()),
        f"objects: {summary['objects']}, relations: {summary['relations']}",
        "objects per class: " + ", ".join(f"{k} {v}" for k, v in summary["object_histogram"].items()),
        "relations per predicate:",
    ]
    lines += [f"  {k:<14s}{v:6d}" for k, v in summary["predicate_histogram"].items()]
    return "\n".join(lines)
