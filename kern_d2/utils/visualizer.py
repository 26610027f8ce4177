"""Draw a scene graph over its image, for people to read.

The picture has two parts: the image (rescaled so that its longer side is between ``MIN_LONG_SIDE`` and
``MAX_LONG_SIDE`` pixels) with one colour per box, a label tag per box and an arrow from subject to object per
triplet, tagged with the triplet's rank and predicate; and a panel on the right that lists the ranked triplets
("1. person#0 -wears-> hat#2  0.83") with the boxes' colours. ``#i`` is the box's index in the caller's arrays.

Geometry is drawn with OpenCV (anti-aliased), text with Pillow (DejaVu Sans, shipped with matplotlib). No GUI,
and the output depends only on the inputs.
"""
import functools
import os
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .image_io import read_image

__all__ = ["draw_scene_graph", "draw_predicted_scene_graph", "save_image", "box_color", "MIN_LONG_SIDE",
           "MAX_LONG_SIDE"]

# (subject index, object index, predicate name, score or None)
Triplet = Tuple[int, int, str, Optional[float]]

MIN_LONG_SIDE = 800  # small images (VG thumbnails, toy images) are enlarged to this
MAX_LONG_SIDE = 1400  # big photos are reduced to this

# Saturated colours that stay apart from each other and from typical photo backgrounds; neighbours in the list
# differ strongly because boxes are coloured by index.
_PALETTE = (
    (230, 25, 75),  # red
    (0, 130, 200),  # blue
    (60, 180, 75),  # green
    (245, 130, 48),  # orange
    (145, 30, 180),  # purple
    (70, 220, 230),  # cyan
    (240, 50, 230),  # magenta
    (190, 230, 40),  # lime
    (0, 128, 128),  # teal
    (170, 110, 40),  # brown
    (255, 215, 0),  # yellow
    (0, 0, 150),  # navy
    (128, 128, 0),  # olive
    (128, 0, 0),  # maroon
    (255, 140, 180),  # pink
    (110, 110, 110),  # grey
)
_DARK = (25, 25, 25)
_PANEL_BG = (248, 248, 246)
_MUTED = (105, 105, 105)
_MAX_NAME_CHARS = 28


def box_color(index: int) -> Tuple[int, int, int]:
    """RGB colour of box ``index`` (the palette repeats after 16 boxes)."""
    return _PALETTE[index % len(_PALETTE)]


def _text_color_on(rgb: Sequence[int]) -> Tuple[int, int, int]:
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return _DARK if luminance > 150 else (255, 255, 255)


@functools.lru_cache(maxsize=None)
def _font(size: int, bold: bool = False) -> ImageFont.ImageFont:
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    try:
        import matplotlib

        return ImageFont.truetype(os.path.join(matplotlib.get_data_path(), "fonts", "ttf", name), size)
    except (ImportError, OSError):
        return ImageFont.load_default(size=size)


def _shorten(text: str, max_chars: int = _MAX_NAME_CHARS) -> str:
    return text if len(text) <= max_chars else text[: max_chars - 1] + "\u2026"


def _display_scale(height: int, width: int) -> float:
    long_side = max(height, width)
    if long_side < MIN_LONG_SIDE:
        return MIN_LONG_SIDE / long_side
    if long_side > MAX_LONG_SIDE:
        return MAX_LONG_SIDE / long_side
    return 1.0


class _Style:
    """Sizes in pixels, all derived from the displayed image size so that big and small pictures look alike."""

    def __init__(self, long_side: int):
        unit = max(long_side, MIN_LONG_SIDE) / 1000.0
        self.font_size = max(14, round(17 * unit))
        self.font = _font(self.font_size)
        self.bold = _font(self.font_size, bold=True)
        self.title_font = _font(round(self.font_size * 1.15), bold=True)
        self.pad = max(3, round(self.font_size * 0.25))
        self.line = max(2, round(2.6 * unit))
        self.head = round(self.font_size * 0.9)  # arrow head length
        ascent, descent = self.font.getmetrics()
        self.text_height = ascent + descent
        self.tag_height = self.text_height + 2 * self.pad


def _text_width(font: ImageFont.ImageFont, text: str) -> int:
    return int(np.ceil(font.getlength(text)))


class _TagLayout:
    """Places tags (rectangles) one after another, each at the first candidate position that overlaps no tag
    placed before it, or else at the candidate with the least overlap."""

    def __init__(self, width: int, height: int):
        self.width, self.height = width, height
        self.rects = np.zeros((0, 4))

    def place(self, candidates: Sequence[Tuple[float, float]], w: int, h: int) -> Tuple[int, int]:
        xy = np.round(np.asarray(candidates, dtype=np.float64).reshape(-1, 2))
        xy[:, 0] = np.clip(xy[:, 0], 0, max(self.width - w, 0))
        xy[:, 1] = np.clip(xy[:, 1], 0, max(self.height - h, 0))
        rects = np.concatenate([xy, xy + [w, h]], axis=1)
        low = np.maximum(rects[:, None, :2], self.rects[None, :, :2])  # [K, R, 2] intersections with placed tags
        high = np.minimum(rects[:, None, 2:], self.rects[None, :, 2:])
        overlap = np.clip(high - low, 0, None).prod(axis=2).sum(axis=1)
        best = int(np.argmin(overlap))  # the first candidate without overlap, if any
        self.rects = np.concatenate([self.rects, rects[best : best + 1]])
        return int(xy[best, 0]), int(xy[best, 1])


def _draw_tag(draw: ImageDraw.ImageDraw, xy, text: str, font, fill, style: _Style, outline=None):
    x, y = xy
    w = _text_width(font, text) + 2 * style.pad
    draw.rectangle([x, y, x + w - 1, y + style.tag_height - 1], fill=fill, outline=outline, width=style.line)
    draw.text((x + style.pad, y + style.pad), text, font=font, fill=_text_color_on(fill), anchor="la")
    return w


def _draw_box(canvas: np.ndarray, box: np.ndarray, color, style: _Style):
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    # A dark rim keeps the coloured outline visible on bright and on colourful backgrounds alike.
    cv2.rectangle(canvas, (x1, y1), (x2, y2), _DARK, style.line + 2, cv2.LINE_AA)
    cv2.rectangle(canvas, (x1, y1), (x2, y2), color, style.line, cv2.LINE_AA)


def _draw_arrow(canvas: np.ndarray, start: np.ndarray, end: np.ndarray, color, style: _Style):
    direction = end - start
    length = float(np.hypot(*direction))
    dot = style.line + 2
    cv2.circle(canvas, tuple(int(round(v)) for v in start), dot + 1, _DARK, -1, cv2.LINE_AA)
    cv2.circle(canvas, tuple(int(round(v)) for v in start), dot, color, -1, cv2.LINE_AA)
    if length < 1:
        return
    unit = direction / length
    normal = np.array([-unit[1], unit[0]])
    # Stop short of the object centre so that arrows into the same object keep distinct heads.
    tip = end - unit * min(dot, length / 4)
    head = min(style.head, length * 0.5)
    base = tip - unit * head
    shaft_end = tuple(int(round(v)) for v in base)
    start_px = tuple(int(round(v)) for v in start)
    cv2.line(canvas, start_px, shaft_end, _DARK, style.line + 2, cv2.LINE_AA)
    cv2.line(canvas, start_px, shaft_end, color, style.line, cv2.LINE_AA)
    triangle = np.stack([tip, base + normal * head * 0.45, base - normal * head * 0.45])
    triangle = np.round(triangle * 16).astype(np.int32)  # 4 bits of sub-pixel precision
    cv2.fillPoly(canvas, [triangle], color, cv2.LINE_AA, shift=4)
    cv2.polylines(canvas, [triangle], True, _DARK, 1, cv2.LINE_AA, shift=4)


def _box_tag_candidates(box: np.ndarray, w: int, h: int):
    x1, y1, x2, y2 = box
    return [(x1, y1 - h), (x1, y1), (x1, y2), (x1, y2 - h), (x2 - w, y1 - h), (x2 - w, y1), (x2 - w, y2 - h)]


def _predicate_tag_candidates(start: np.ndarray, end: np.ndarray, w: int, h: int):
    """Top-left corners for a predicate tag, best first: on the arrow near its middle, then beside it. The cost
    of a position is its distance from the arrow plus a smaller charge for sliding away from the middle."""
    length = float(np.hypot(*(end - start)))
    candidates = []
    for t in (0.5, 0.4, 0.6, 0.3, 0.7, 0.2, 0.8):
        centre = start + t * (end - start)
        for dx in (0.0, -0.5 * w, 0.5 * w, -w - 4, w + 4):
            for dy in (0.0, -1.1 * h, 1.1 * h, -2.2 * h, 2.2 * h, -3.3 * h, 3.3 * h):
                cost = np.hypot(dx, dy) + 0.35 * abs(t - 0.5) * length
                candidates.append((cost, len(candidates), centre[0] - w / 2 + dx, centre[1] - h / 2 + dy))
    candidates.sort()
    return [(x, y) for _, _, x, y in candidates]


def _arrow_ends(shown: Sequence[Triplet], centres: np.ndarray, spacing: float) -> List[Tuple[np.ndarray, np.ndarray]]:
    """(start, end) per triplet. Arrows between the same two boxes (either direction, several predicates) are
    spread out in parallel, ``spacing`` pixels apart, so that each stays visible."""
    groups = {}
    for k, (s, o, _, _) in enumerate(shown):
        groups.setdefault((min(s, o), max(s, o)), []).append(k)
    ends = [None] * len(shown)
    for (a, b), members in groups.items():
        direction = centres[b] - centres[a]
        norm = float(np.hypot(*direction))
        normal = np.array([-direction[1], direction[0]]) / norm if norm > 0 else np.zeros(2)
        for j, k in enumerate(members):
            shift = normal * spacing * (j - (len(members) - 1) / 2)
            s, o = shown[k][0], shown[k][1]
            ends[k] = (centres[s] + shift, centres[o] + shift)
    return ends


def _format_score(score: Optional[float]) -> str:
    if score is None:
        return ""
    # Fixed width for the panel's score column; tiny triplet scores (products of three probabilities) stay legible.
    return f"{float(score):.3f}" if float(score) >= 0.001 or float(score) == 0 else "<0.001"


def _wrap(text: str, font, max_width: int, max_lines: int = 3) -> List[str]:
    """Greedy word wrap to ``max_width`` pixels; words longer than a line (file names) are broken, and text
    beyond ``max_lines`` lines is cut with an ellipsis."""
    pieces = []
    for word in text.split():
        while _text_width(font, word) > max_width and len(word) > 1:
            cut = max(1, max(n for n in range(1, len(word) + 1) if _text_width(font, word[:n]) <= max_width))
            pieces.append(word[:cut])
            word = word[cut:]
        pieces.append(word)
    lines, current = [], ""
    for piece in pieces:
        candidate = f"{current} {piece}" if current else piece
        if current and _text_width(font, candidate) > max_width:
            lines.append(current)
            current = piece
        else:
            current = candidate
    if current:
        lines.append(current)
    if len(lines) > max_lines:
        last = lines[max_lines - 1]
        while last and _text_width(font, last + "\u2026") > max_width:
            last = last[:-1]
        lines = lines[: max_lines - 1] + [last + "\u2026"]
    return lines


def _draw_panel(
    names: List[str],
    triplets: List[Triplet],
    num_total: int,
    num_boxes: int,
    title: Optional[str],
    style: _Style,
    min_height: int,
) -> Image.Image:
    """The ranked triplet list: one row per triplet, subject and object as tags in their box colours."""
    pad, gap = 2 * style.pad, style.pad
    arrow = " \u2014{}\u2192 "  # " —wears→ "
    rank_width = _text_width(style.font, f"{max(len(triplets), 1)}.") + gap
    rows = []
    for s, o, predicate, _ in triplets:
        pieces = [
            _text_width(style.bold, _shorten(names[s])) + 2 * style.pad,
            _text_width(style.font, arrow.format(_shorten(predicate))),
            _text_width(style.bold, _shorten(names[o])) + 2 * style.pad,
        ]
        rows.append(sum(pieces))
    score_width = _text_width(style.font, "0.00") + 4 * gap
    width = max([rank_width + r + score_width for r in rows] + [round(style.font_size * 20)]) + 2 * pad

    header = _wrap(title, style.title_font, width - 2 * pad) if title else []
    if num_boxes == 0:
        summary = "No objects"
    elif num_total == 0:
        summary = f"{num_boxes} objects, no relations"
    elif len(triplets) < num_total:
        summary = f"{num_boxes} objects, top {len(triplets)} of {num_total} relations"
    else:
        summary = f"{num_boxes} objects, {num_total} relations"
    title_line = round(style.title_font.size * 1.35)
    row_height = style.tag_height + style.pad
    header_height = pad + len(header) * title_line + style.text_height + pad
    height = max(min_height, header_height + len(triplets) * row_height + pad)

    panel = Image.new("RGB", (width, height), _PANEL_BG)
    draw = ImageDraw.Draw(panel)
    draw.line([(0, 0), (0, height)], fill=(200, 200, 200), width=2)
    y = pad
    for line in header:
        draw.text((pad, y), line, font=style.title_font, fill=_DARK, anchor="la")
        y += title_line
    draw.text((pad, y), summary, font=style.font, fill=_MUTED, anchor="la")
    y = header_height
    for rank, (s, o, predicate, score) in enumerate(triplets, start=1):
        text_y = y + style.pad
        draw.text((pad + rank_width - gap, text_y), f"{rank}.", font=style.font, fill=_MUTED, anchor="ra")
        x = pad + rank_width
        x += _draw_tag(draw, (x, y), _shorten(names[s]), style.bold, box_color(s), style)
        middle = arrow.format(_shorten(predicate))
        draw.text((x, text_y), middle, font=style.font, fill=_DARK, anchor="la")
        x += _text_width(style.font, middle)
        _draw_tag(draw, (x, y), _shorten(names[o]), style.bold, box_color(o), style)
        draw.text((width - pad, text_y), _format_score(score), font=style.font, fill=_MUTED, anchor="ra")
        y += row_height
    return panel


def draw_scene_graph(
    image: np.ndarray,
    boxes,
    labels: Sequence[str],
    triplets: Sequence[Triplet],
    box_scores=None,
    max_triplets: int = 20,
    title: Optional[str] = None,
    show_unrelated_boxes: bool = True,
) -> np.ndarray:
    """Draw boxes, relation arrows and a ranked triplet panel.

    Args:
        image: HxWx3 RGB uint8 (HxW grayscale is accepted too).
        boxes: [N, 4] XYXY in ``image``'s pixel coordinates (array, list or tensor).
        labels: N class names.
        triplets: (subject index, object index, predicate name, score or None), best first; the first
            ``max_triplets`` are drawn.
        box_scores: N scores shown in the box tags, or None.
        title: shown on top of the panel.
        show_unrelated_boxes: False draws only the boxes that take part in a drawn triplet (useful for
            detections, where most boxes are in no relation).
    Returns:
        RGB uint8 [H', W', 3]: the rescaled image on the left, the panel on the right.
    """
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"draw_scene_graph: expected an HxWx3 image, got shape {image.shape}")
    image = np.ascontiguousarray(image, dtype=np.uint8)
    boxes = np.asarray(boxes.tolist() if hasattr(boxes, "tolist") else boxes, dtype=np.float64).reshape(-1, 4)
    num_boxes = boxes.shape[0]
    if len(labels) != num_boxes:
        raise ValueError(f"draw_scene_graph: {num_boxes} boxes but {len(labels)} labels")
    if box_scores is not None:
        box_scores = [float(s) for s in (box_scores.tolist() if hasattr(box_scores, "tolist") else box_scores)]
        if len(box_scores) != num_boxes:
            raise ValueError(f"draw_scene_graph: {num_boxes} boxes but {len(box_scores)} box scores")
    shown = [(int(s), int(o), str(p), None if sc is None else float(sc)) for s, o, p, sc in triplets[:max_triplets]]
    for s, o, p, _ in shown:
        if not (0 <= s < num_boxes and 0 <= o < num_boxes):
            raise ValueError(f"draw_scene_graph: triplet ({s}, {o}, {p!r}) refers to a box outside [0, {num_boxes})")

    scale = _display_scale(*image.shape[:2])
    out_h, out_w = max(1, round(image.shape[0] * scale)), max(1, round(image.shape[1] * scale))
    interpolation = cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA
    canvas = cv2.resize(image, (out_w, out_h), interpolation=interpolation) if scale != 1 else image.copy()
    style = _Style(max(out_h, out_w))
    boxes = boxes * scale
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)
    names = [f"{label}#{i}" for i, label in enumerate(labels)]

    related = {i for s, o, _, _ in shown for i in (s, o)}
    drawn = [i for i in range(num_boxes) if show_unrelated_boxes or i in related]
    # Big boxes first, so that the outlines of small boxes inside them stay on top.
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    for i in sorted(drawn, key=lambda i: (-areas[i], i)):
        _draw_box(canvas, boxes[i], box_color(i), style)
    ends = _arrow_ends(shown, centres, spacing=3 * style.line)
    for k in reversed(range(len(shown))):  # the best triplet's arrow ends on top
        s, o = shown[k][0], shown[k][1]
        if s != o:
            _draw_arrow(canvas, *ends[k], box_color(s), style)

    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    layout = _TagLayout(out_w, out_h)
    for i in drawn:
        text = _shorten(names[i]) if box_scores is None else f"{_shorten(names[i])} {box_scores[i]:.2f}"
        w = _text_width(style.bold, text) + 2 * style.pad
        xy = layout.place(_box_tag_candidates(boxes[i], w, style.tag_height), w, style.tag_height)
        _draw_tag(draw, xy, text, style.bold, box_color(i), style)
    for rank, (s, o, predicate, _) in enumerate(shown, start=1):
        text = f"{rank}. {_shorten(predicate)}"
        w = _text_width(style.font, text) + 2 * style.pad
        xy = layout.place(_predicate_tag_candidates(*ends[rank - 1], w, style.tag_height), w, style.tag_height)
        _draw_tag(draw, xy, text, style.font, (255, 255, 255), style, outline=box_color(s))

    panel = _draw_panel(names, shown, len(triplets), num_boxes, title, style, min_height=out_h)
    result = Image.new("RGB", (out_w + panel.width, panel.height), _PANEL_BG)
    result.paste(picture, (0, 0))
    result.paste(panel, (out_w, 0))
    return np.asarray(result)


def draw_predicted_scene_graph(
    graph,
    image=None,
    max_triplets: int = 20,
    show_unrelated_boxes: Optional[bool] = None,
    title: Optional[str] = None,
) -> np.ndarray:
    """:func:`draw_scene_graph` of a predictor's result (:class:`kern_d2.engine.SceneGraph`).

    Args:
        image: the graph's image as HxWx3 RGB uint8 at any scale (e.g. reduced: the boxes are scaled to it), or
            None to read ``graph.file``.
        show_unrelated_boxes: None: every box in PredCls / SGCls (the given boxes), only related ones in SGDet.
        title: None: the file name, the image size and the mode.
    """
    if image is None:
        if graph.file is None:
            raise ValueError("draw_predicted_scene_graph: the graph comes from an array: pass its image")
        image = read_image(graph.file, max_side=MAX_LONG_SIDE).rgb
    image = np.asarray(image)
    if image.ndim < 2 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"draw_predicted_scene_graph: expected an HxWx3 image, got shape {image.shape}")
    scale = np.array([image.shape[1] / graph.width, image.shape[0] / graph.height] * 2)
    boxes = np.asarray(graph.boxes, dtype=np.float64).reshape(-1, 4) * scale
    triplets = [(t.subject, t.object, t.predicate, t.score) for t in graph.triplets]
    if show_unrelated_boxes is None:
        show_unrelated_boxes = graph.mode != "sgdet"
    if title is None:
        name = os.path.basename(graph.file) if graph.file else "image"
        title = f"{name}  ({graph.width}x{graph.height}, {graph.mode})"
    return draw_scene_graph(
        image,
        boxes,
        graph.labels,
        triplets,
        box_scores=None if graph.mode == "predcls" else graph.scores,  # PredCls scores are all 1
        max_triplets=max_triplets,
        title=title or None,
        show_unrelated_boxes=show_unrelated_boxes,
    )


def save_image(path: str, rgb: np.ndarray) -> None:
    """Write an RGB uint8 image; the format follows the extension (.png, .jpg, ...). Creates the folder."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"save_image({path}): expected HxWx3 uint8 RGB, got {rgb.dtype} {rgb.shape}")
    if not cv2.imwrite(path, np.ascontiguousarray(rgb[:, :, ::-1])):
        raise OSError(f"save_image: could not write {path} (unknown extension or unwritable folder?)")
