"""``SceneGraphPredictor``: a trained scene-graph model as a function from images to :class:`SceneGraph` s.

    from kern_d2.engine import SceneGraphPredictor
    predictor = SceneGraphPredictor(cfg)                  # builds the model and loads cfg.MODEL.WEIGHTS
    graph = predictor("photo.jpg")                        # or a BGR uint8 array, as Detectron2's DefaultPredictor
    graphs = predictor([bgr_a, "b.png"])                  # a list: batched on the device
    graph = predictor(bgr, boxes=[[10, 20, 200, 300], [50, 60, 90, 120]], labels=["person", "horse"])  # PredCls

The model runs under ``torch.inference_mode()`` and, with ``TEST.AMP.ENABLED``, under autocast
(``TEST.AMP.PRECISION``). Images are resized as Detectron2's ``DefaultPredictor`` does (``INPUT.MIN_SIZE_TEST``,
``INPUT.MAX_SIZE_TEST``, ``INPUT.FORMAT``); boxes and sizes in the result are those of the original image.
"""
import logging
import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np
import torch

from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

import kern_d2.modeling  # noqa: F401  (registers the model parts)
from kern_d2.checkpoint import CheckpointError, SGGCheckpointer
from kern_d2.config_check import cfg_for_weights, check_config
from kern_d2.modeling.roi_heads import sgg_mode
from kern_d2.utils.image_io import read_image

from .scene_graph import SceneGraph

__all__ = ["SceneGraphPredictor", "ImagePreparer", "PreparedImage", "resolve_class_names", "check_boxes"]

logger = logging.getLogger(__name__)

Image = Union[str, os.PathLike, np.ndarray]


def check_boxes(boxes, where: str) -> np.ndarray:
    """``boxes`` as float64 [G, 4] XYXY; ValueError naming ``where`` unless every row is finite with x1 <= x2 and
    y1 <= y2."""
    boxes = np.asarray(boxes, dtype=np.float64) if len(boxes) else np.zeros((0, 4))
    if boxes.ndim != 2 or boxes.shape[1] != 4 or not np.isfinite(boxes).all():
        raise ValueError(f"{where}: 'boxes' must be a list of [x1, y1, x2, y2] (finite), got shape {boxes.shape}")
    if ((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])).any():
        raise ValueError(f"{where}: a box has x2 < x1 or y2 < y1 (expected XYXY)")
    return boxes


def label_ids(labels: Sequence, thing_classes: Sequence[str], where: str) -> np.ndarray:
    """Class names or 0-based indices -> int64 indices into ``thing_classes``."""
    index = {name: i for i, name in enumerate(thing_classes)}
    ids = []
    for label in labels:
        if isinstance(label, str):
            if label not in index:
                raise ValueError(f"{where}: label {label!r} is not one of the model's {len(thing_classes)} classes")
            ids.append(index[label])
        elif isinstance(label, (int, np.integer)) and 0 <= label < len(thing_classes):
            ids.append(int(label))
        else:
            raise ValueError(f"{where}: label {label!r} must be a class name or an index in [0, {len(thing_classes)})")
    return np.asarray(ids, dtype=np.int64)


@dataclass
class PreparedImage:
    """An image made ready for the model: ``model_input`` (Detectron2's dict: ``image`` [3, H', W'] float32 in
    INPUT.FORMAT at the test size, ``height``/``width`` of the original image, ``instances`` with the given boxes
    in PredCls/SGCls), ``rgb`` (HxWx3 uint8 of the original image, possibly reduced: for drawing) and ``file``."""

    model_input: dict
    rgb: np.ndarray
    file: Optional[str] = None


class ImagePreparer:
    """Reads an image (a path, or a BGR uint8 array) and its given boxes into a :class:`PreparedImage`, as
    Detectron2's ``DefaultPredictor`` prepares its input. Small and picklable: it can run in DataLoader workers.

    A file and the same image as a BGR array give the same model input: the file is decoded at full size (as
    training and ``--eval-only`` read images), then resized to the test size. ``reduced_decode=True`` decodes a
    file larger than ``INPUT.MAX_SIZE_TEST`` at a reduced scale first (JPEG DCT scaling, then an area resize):
    faster and lighter for big photos, but the pixels, hence the scores, then differ slightly from the array's
    (e.g. a PredCls score of 0.365 instead of 0.366) and can change an SGCls label.

    Errors name the image: ``ImageReadError`` (kern_d2.utils.image_io) for a file that cannot be read, ValueError
    for a bad array or bad boxes / labels.
    """

    def __init__(self, cfg, thing_classes: Sequence[str], reduced_decode: bool = False):
        if cfg.INPUT.FORMAT not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT {cfg.INPUT.FORMAT!r}: the predictor supports RGB and BGR models")
        rel = cfg.MODEL.ROI_RELATION_HEAD
        self.mode = sgg_mode(rel.USE_GT_BOX, rel.USE_GT_OBJECT_LABEL)
        self.input_format = cfg.INPUT.FORMAT
        self.resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        # No larger than the test size needs (MIN_SIZE_TEST 0 means "no resize": in full): the decode of a file
        # with reduced_decode, else the copy kept for drawing.
        self.max_side = cfg.INPUT.MAX_SIZE_TEST if cfg.INPUT.MIN_SIZE_TEST > 0 else None
        self.reduced_decode = bool(reduced_decode)
        self.thing_classes = list(thing_classes)

    def __call__(self, image: Image, boxes=None, labels=None, name: Optional[str] = None) -> PreparedImage:
        """``boxes``: [G, 4] XYXY in pixels of the image as displayed (clipped to it), PredCls/SGCls only;
        ``labels``: G class names or indices (PredCls needs them, SGCls ignores them beyond checking).
        ``name``: how errors call an array (a path names itself)."""
        if isinstance(image, (str, os.PathLike)):
            file = os.fspath(image)
            name = file
            loaded = read_image(file, self.max_side if self.reduced_decode else None)
            rgb, height, width = loaded.rgb, loaded.height, loaded.width
        elif isinstance(image, np.ndarray):
            file, name = None, name or "image"
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or 0 in image.shape:
                raise ValueError(f"{name}: expected an HxWx3 uint8 BGR array, got {image.dtype} {image.shape}")
            rgb, (height, width) = image[:, :, ::-1], image.shape[:2]
        else:
            raise TypeError(f"{name or 'image'}: expected a file path or an HxWx3 uint8 BGR array, "
                            f"got {type(image).__name__}")
        given = self._given_boxes(name, boxes, labels, height, width)
        pixels = rgb if self.input_format == "RGB" else rgb[:, :, ::-1]
        transform = self.resize.get_transform(pixels)
        if isinstance(transform, T.ResizeTransform) and min(transform.new_h, transform.new_w) < 1:
            # A very thin image (1 x 3000) would round to 0 pixels on its short side: keep one.
            transform = T.ResizeTransform(transform.h, transform.w, max(1, transform.new_h), max(1, transform.new_w),
                                          transform.interp)
        resized = transform.apply_image(pixels)
        if resized.shape[0] == 0 or resized.shape[1] == 0:
            raise ValueError(f"{name}: {width}x{height} is too thin to resize to the test size")
        model_input = {
            "image": torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)).astype("float32")),
            "height": height,
            "width": width,
        }
        if file is not None:
            model_input["file_name"] = file
        if given is not None:
            given_boxes, classes = given
            new_h, new_w = resized.shape[:2]
            scale = np.array([new_w / width, new_h / height] * 2)
            instances = Instances((new_h, new_w))
            instances.gt_boxes = Boxes(torch.as_tensor(given_boxes * scale, dtype=torch.float32))
            instances.gt_classes = torch.as_tensor(classes, dtype=torch.int64)
            model_input["instances"] = instances
        if self.max_side is not None and max(rgb.shape[:2]) > self.max_side:  # the copy for drawing: reduced
            scale = self.max_side / max(rgb.shape[:2])
            size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
            rgb = cv2.resize(np.ascontiguousarray(rgb), size, interpolation=cv2.INTER_AREA)
        return PreparedImage(model_input, np.ascontiguousarray(rgb), file)

    def _given_boxes(self, name, boxes, labels, height, width) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """(boxes [G, 4] clipped to the image, classes [G]), or None in SGDet."""
        if self.mode == "sgdet":
            if boxes is not None or labels is not None:
                raise ValueError(f"{name}: boxes and labels are used in PredCls/SGCls only; the config is SGDet "
                                 "(MODEL.ROI_RELATION_HEAD.USE_GT_BOX False)")
            return None
        if boxes is None:
            raise ValueError(f"{name}: {self.mode} scores relations between given boxes, and none were given")
        boxes = check_boxes(boxes, name)
        if len(boxes) == 0:
            raise ValueError(f"{name}: no boxes given ({self.mode} scores relations between given boxes)")
        boxes = np.clip(boxes, 0, [width, height, width, height])
        if labels is None:
            if self.mode == "predcls":
                raise ValueError(
                    f"{name}: no labels given, which PredCls needs (MODEL.ROI_RELATION_HEAD.USE_GT_OBJECT_LABEL "
                    "True); give labels or run SGCls (USE_GT_OBJECT_LABEL False)"
                )
            return boxes, np.zeros(len(boxes), dtype=np.int64)
        if len(labels) != len(boxes):
            raise ValueError(f"{name}: {len(boxes)} boxes but {len(labels)} labels")
        return boxes, label_ids(labels, self.thing_classes, name)


def _as_names(values) -> Optional[List[str]]:
    return None if values is None or not len(values) else [str(v) for v in list(values)]


def resolve_class_names(cfg, model, checkpoint_extra: Optional[dict] = None,
                        dataset: Optional[str] = None) -> Tuple[List[str], List[str]]:
    """(thing_classes, predicate_classes) from the first source that has each: the metadata of ``dataset``, of
    ``DATASETS.TEST[0]``, the model (``roi_heads.thing_classes`` / ``predicate_classes``), the checkpoint, the
    priors file. ValueError when none has them."""
    sources = []
    for name in ([dataset] if dataset else []) + list(cfg.DATASETS.TEST[:1]):
        meta = MetadataCatalog.get(name)
        sources.append((f"metadata of {name}", meta.get("thing_classes", None), meta.get("predicate_classes", None)))
    heads = getattr(model, "roi_heads", None)
    sources.append(("the model", getattr(heads, "thing_classes", None), getattr(heads, "predicate_classes", None)))
    extra = checkpoint_extra or {}
    sources.append(("the checkpoint", extra.get("thing_classes"), extra.get("predicate_classes")))
    priors_file = cfg.MODEL.ROI_RELATION_HEAD.PRIORS_FILE
    if priors_file and os.path.isfile(priors_file):
        with np.load(priors_file, allow_pickle=False) as priors:
            sources.append((priors_file, priors.get("thing_classes"), priors.get("predicate_classes")))

    def first(position: int):
        for name, *lists in sources:
            if _as_names(lists[position]) is not None:
                return _as_names(lists[position]), name
        return None, None

    things, things_from = first(0)
    predicates, predicates_from = first(1)
    if things is None or predicates is None:
        found = (("thing_classes", things), ("predicate_classes", predicates))
        missing = " and ".join(name for name, names in found if names is None)
        raise ValueError(
            f"no {missing} found: register the dataset DATASETS.TEST[0] "
            f"({cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else 'unset'}), set "
            "MODEL.ROI_RELATION_HEAD.PRIORS_FILE to the model's priors .npz, or pass the names to the predictor"
        )
    logger.info(f"{len(things)} object classes from {things_from}, {len(predicates)} predicates from {predicates_from}")
    return things, predicates


def _amp_dtype(cfg) -> Optional[torch.dtype]:
    if not cfg.TEST.AMP.ENABLED:
        return None
    choices = {"float16": torch.float16, "bfloat16": torch.bfloat16}
    if cfg.TEST.AMP.PRECISION not in choices:
        raise ValueError(f"TEST.AMP.PRECISION must be one of {sorted(choices)}, got {cfg.TEST.AMP.PRECISION!r}")
    return choices[cfg.TEST.AMP.PRECISION]


class SceneGraphPredictor:
    """Scene graphs of images from a config and its weights (``cfg.MODEL.WEIGHTS``), like Detectron2's
    ``DefaultPredictor``.

    Args:
        cfg: a kern_d2 config (``add_kern_config``); its mode (``MODEL.ROI_RELATION_HEAD.USE_GT_BOX`` /
            ``USE_GT_OBJECT_LABEL``) decides whether calls need boxes (PredCls, SGCls) or detect them (SGDet).
        top_k: triplets kept per image (0: all scored pairs).
        batch_size: images per forward pass when called on a list.
        thing_classes, predicate_classes: class names (predicate 0 = no relation); by default from
            :func:`resolve_class_names` (``dataset`` is looked at first).
        model: an already built model to use instead of building one and loading ``MODEL.WEIGHTS`` (e.g. a
            trainer's); it is put in eval mode.
        reduced_decode: decode image files larger than the test size at a reduced scale (faster; the scores then
            differ slightly from those of the same image given as an array: :class:`ImagePreparer`).

    Raises:
        CheckpointError: weights that are missing, unreadable or do not fit the config (kern_d2.checkpoint).
        kern_d2.config_check.ConfigError: a file the config names is missing, e.g. the priors file when the weights
            carry no priors (a ValueError; weights of a trained kern_d2 relation model carry theirs, which win).
        ValueError: a config the predictor cannot serve, or no class names.
    """

    def __init__(self, cfg, *, top_k: int = 20, batch_size: int = 4, thing_classes: Optional[Sequence[str]] = None,
                 predicate_classes: Optional[Sequence[str]] = None, dataset: Optional[str] = None,
                 model: Optional[torch.nn.Module] = None, reduced_decode: bool = False):
        self.cfg = cfg.clone()
        rel = cfg.MODEL.ROI_RELATION_HEAD
        self.mode = sgg_mode(rel.USE_GT_BOX, rel.USE_GT_OBJECT_LABEL)
        self.top_k, self.batch_size = int(top_k), max(1, int(batch_size))
        self.amp_dtype = _amp_dtype(cfg)
        self.device_type = torch.device(cfg.MODEL.DEVICE).type
        extra = {}
        if model is None:
            model, extra = self._load_model(cfg)
        self.model = model.eval()
        if thing_classes is None or predicate_classes is None:
            things, predicates = resolve_class_names(cfg, self.model, extra, dataset)
            thing_classes = things if thing_classes is None else thing_classes
            predicate_classes = predicates if predicate_classes is None else predicate_classes
        self.thing_classes, self.predicate_classes = list(thing_classes), list(predicate_classes)
        if len(self.thing_classes) != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
            logger.warning(f"{len(self.thing_classes)} class names but MODEL.ROI_HEADS.NUM_CLASSES = "
                           f"{cfg.MODEL.ROI_HEADS.NUM_CLASSES}")
        if len(self.predicate_classes) != rel.NUM_PREDICATES:
            logger.warning(f"{len(self.predicate_classes)} predicate names (incl. no relation) but "
                           f"MODEL.ROI_RELATION_HEAD.NUM_PREDICATES = {rel.NUM_PREDICATES}")
        self.prepare = ImagePreparer(cfg, self.thing_classes, reduced_decode=reduced_decode)

    @staticmethod
    def _load_model(cfg) -> Tuple[torch.nn.Module, dict]:
        """build_model + MODEL.WEIGHTS through SGGCheckpointer; returns (model, the checkpoint's other entries).
        The config is checked first (:func:`kern_d2.config_check.check_config`); the weights' priors win, so the
        priors file need not exist when the weights carry priors."""
        weights = cfg.MODEL.WEIGHTS
        if weights and "://" not in weights and not os.path.isfile(weights):
            raise CheckpointError(f"MODEL.WEIGHTS {weights}: no such file")
        check_config(cfg, "predict")
        model = build_model(cfg_for_weights(cfg, weights))
        if not weights:
            logger.warning("MODEL.WEIGHTS is empty: the model is untrained and its scene graphs are meaningless")
            return model, {}
        return model, SGGCheckpointer(model, for_inference=True).load(weights) or {}

    def __call__(self, images: Union[Image, Sequence[Image]], boxes=None, labels=None):
        """Scene graph(s) of one image or a list of images.

        Args:
            images: a file path or an HxWx3 uint8 BGR array, or a list of them.
            boxes, labels: PredCls/SGCls: per image [G, 4] XYXY boxes in its pixels, and G class names or indices
                (PredCls); for a list, one entry per image.
        Returns:
            a :class:`SceneGraph`, or a list of them for a list.
        """
        if isinstance(images, (str, os.PathLike, np.ndarray)):
            return self.predict([self.prepare(images, boxes, labels)])[0]
        images = list(images)
        boxes = self._per_image(boxes, "boxes", len(images))
        labels = self._per_image(labels, "labels", len(images))
        prepared = [self.prepare(x, b, l, name=f"images[{i}]") for i, (x, b, l) in enumerate(zip(images, boxes, labels))]
        return [g for start in range(0, len(prepared), self.batch_size)
                for g in self.predict(prepared[start : start + self.batch_size])]

    @staticmethod
    def _per_image(values, what: str, count: int) -> list:
        if values is None:
            return [None] * count
        values = list(values)
        if len(values) != count:
            raise ValueError(f"{count} images but {len(values)} entries in {what} (one per image, None for none)")
        return values

    def forward(self, prepared: Sequence[PreparedImage]) -> List[Instances]:
        """The model's output ``Instances`` of the images, in one forward pass."""
        amp = torch.autocast(self.device_type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)
        with torch.inference_mode(), amp:
            outputs = self.model([p.model_input for p in prepared])
        return [output["instances"] for output in outputs]

    def to_scene_graph(self, instances: Instances, prepared: PreparedImage) -> SceneGraph:
        """The :class:`SceneGraph` of one output of :meth:`forward` (ValueError when it does not fit the names)."""
        return SceneGraph.from_instances(instances, self.thing_classes, self.predicate_classes, self.top_k,
                                         self.mode, prepared.file)

    def predict(self, prepared: Sequence[PreparedImage]) -> List[SceneGraph]:
        """Scene graphs of prepared images (:attr:`prepare`), in one forward pass."""
        return [self.to_scene_graph(x, p) for x, p in zip(self.forward(prepared), prepared)]
