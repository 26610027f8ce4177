"""``SGGCheckpointer``: Detectron2's DetectionCheckpointer made safe for long scene-graph runs.

Saving
  - A checkpoint (and ``last_checkpoint``) is written to a temporary file in the same folder, flushed to disk and
    renamed over the target: a run killed mid-save leaves the previous checkpoint and ``last_checkpoint`` intact.
    Temporary files left by a killed run are removed when the next training run starts.
  - Weights holding NaN or inf are never saved (``FloatingPointError``): the last good checkpoint stays the last one.

Loading, without running code from the file
  - ``.pth``: ``torch.load(weights_only=True)``. ``.pkl`` (Detectron2 / Caffe2 model zoo): an unpickler that only
    rebuilds numpy arrays and plain containers. A file holding anything else is refused with a
    :class:`CheckpointError`, unless the environment sets ``KERN_D2_UNSAFE_PICKLE=1`` (for files you trust: then
    they are read with plain pickle, which can run code).
  - A missing, truncated or corrupt file is a :class:`CheckpointError` naming the file.

Rules for ``SceneGraphRCNN`` models (other models, e.g. the detectors, keep Detectron2's behaviour)
  - Every tensor of the file must have the shape of the model's tensor of the same name. Detectron2 only warns and
    skips such tensors; here weights of another number of classes or predicates are an error before training or
    evaluation starts.
  - The knowledge priors must be set after loading: from ``PRIORS_FILE``, ``USE_PRIORS False`` or the file.
  - Inference (``for_inference``): the file must hold every tensor of the parts that the configured mode runs
    (:func:`parts_run_at_inference`); e.g. SGCls with object routing from PredCls weights is an error. Training
    may start them fresh (Detectron2 logs which tensors were missing).
"""
import logging
import os
import pickle
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from detectron2.checkpoint import DetectionCheckpointer

from kern_d2.modeling.meta_arch import SceneGraphRCNN
from kern_d2.utils.atomic_write import TEMP_PREFIX, atomic_write

__all__ = ["CheckpointError", "SGGCheckpointer", "atomic_write", "parts_run_at_inference", "UNSAFE_PICKLE_ENV"]

logger = logging.getLogger(__name__)

UNSAFE_PICKLE_ENV = "KERN_D2_UNSAFE_PICKLE"

# Globals a model-zoo .pkl needs: numpy arrays (numpy 1 and 2 module names), dtypes and ordered dicts.
_SAFE_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # how Python 3 pickles bytes at protocol 2
}


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: unreadable, unsafe, or not matching the model; the message says why."""


def unsafe_pickle_allowed() -> bool:
    return os.environ.get(UNSAFE_PICKLE_ENV, "") == "1"


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and plain containers; refuses every other global (which could run code)."""

    def __init__(self, file, source: str):
        super().__init__(file, encoding="latin1")
        self.source = source

    def find_class(self, module, name):
        if (module, name) in _SAFE_PICKLE_GLOBALS:
            return super().find_class(module, name)
        raise CheckpointError(
            f"{self.source}: refused to load: it holds the Python object {module}.{name}, and unpickling it could "
            f"run code. Model-zoo .pkl files hold only numpy arrays. If you trust this file, set "
            f"{UNSAFE_PICKLE_ENV}=1."
        )


def _non_finite_tensors(state_dict: Dict[str, torch.Tensor]) -> List[str]:
    """Names of the floating-point tensors holding NaN or inf."""
    return [
        k for k, v in state_dict.items()
        if torch.is_tensor(v) and v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]


def parts_run_at_inference(model: SceneGraphRCNN) -> Dict[str, str]:
    """{state-dict prefix: description} of the parts whose weights ``model`` uses at inference in its mode.

    The detector runs whenever its output is used: always but in PredCls with a parameter-free head (FREQ). The
    union feature comes with the relation head when that head has parameters (KERN, VRFC). Object routing when
    the model has it (SGCls/SGDet with USE_OBJECT_ROUTING). The RPN in SGDet.
    """
    heads = model.roi_heads
    head_name = type(heads.relation_head).__name__
    head_has_weights = any(True for _ in heads.relation_head.parameters())
    parts = {}
    if model.sgg_mode != "predcls" or head_has_weights:
        parts.update({"backbone.": "the detector's backbone", "roi_heads.box_head.": "the detector's box head",
                      "roi_heads.box_predictor.": "the detector's box predictor"})
    if model.sgg_mode == "sgdet":
        parts["proposal_generator."] = "the detector's RPN"
    if head_has_weights:
        parts["roi_heads.relation_head."] = f"the {head_name} relation head"
        parts["roi_heads.union_feature."] = "the union (pair) feature"
    if heads.object_routing is not None:
        parts["roi_heads.object_routing."] = "object routing"
    return parts


def _counts_of(state_dict) -> Tuple[Optional[int], Optional[int]]:
    """(object classes, predicates) that a SceneGraphRCNN state dict was built for, where it tells."""
    classes = predicates = None
    cls_score = state_dict.get("roi_heads.box_predictor.cls_score.weight")
    if cls_score is not None:
        classes = int(np.shape(cls_score)[0]) - 1
    sizes = state_dict.get("roi_heads.priors.sizes")
    if sizes is not None and tuple(np.shape(sizes)) == (2,):
        classes, predicates = (int(x) for x in np.asarray(sizes).tolist())
    return classes, predicates


class SGGCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer with the saving and loading rules of the module docstring.

    Args:
        for_inference: the loaded weights are evaluated or served, not trained further. None (default): True when
            no checkpointables (trainer, optimizer, ...) are given, as in ``train_net.py --eval-only``.
    """

    def __init__(self, model, save_dir: str = "", *, for_inference: Optional[bool] = None, save_to_disk=None,
                 **checkpointables):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.for_inference = not checkpointables if for_inference is None else for_inference
        self._loading = None  # path of the file being loaded, for messages
        self._missing_keys: Optional[List[str]] = None

    @property
    def missing_keys(self) -> Optional[List[str]]:
        """Model keys that the last load left unset; None when it read no file (MODEL.WEIGHTS empty)."""
        return self._missing_keys

    @property
    def _is_sgg_model(self) -> bool:
        return isinstance(self.model, SceneGraphRCNN)

    # ------------------------------------------------------------------------------------------------ saving
    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        bad = _non_finite_tensors(data["model"])
        if bad:
            last = self.get_checkpoint_file() if self.has_checkpoint() else "none"
            raise FloatingPointError(
                f"not saving checkpoint {name}: the model weights hold NaN or inf ({len(bad)} tensors, e.g. "
                f"{', '.join(bad[:3])}); training diverged. The last good checkpoint stays {last}"
            )
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write(os.path.join(self.save_dir, "last_checkpoint"),
                     lambda f: f.write(last_filename_basename), mode="w")

    def remove_stale_temporary_files(self) -> List[str]:
        """Delete the temporary files that a run killed while saving left in ``save_dir``; returns their paths."""
        if not self.save_dir or not self.save_to_disk or not os.path.isdir(self.save_dir):
            return []
        removed = []
        for name in sorted(os.listdir(self.save_dir)):
            if name.startswith(TEMP_PREFIX):
                path = os.path.join(self.save_dir, name)
                os.remove(path)
                removed.append(path)
                self.logger.warning(f"Removed {path}, a partial checkpoint left by an interrupted run")
        return removed

    # ------------------------------------------------------------------------------------------------ loading
    def resume_or_load(self, path: str, *, resume: bool = True):
        if not self.for_inference:
            # Only a training run writes here; an evaluation may run next to a training run on the same folder.
            self.remove_stale_temporary_files()
        if resume and self.has_checkpoint():
            last = self.get_checkpoint_file()
            if not os.path.isfile(last):
                raise CheckpointError(
                    f"{os.path.join(self.save_dir, 'last_checkpoint')} names {last}, which does not exist: write the "
                    "name of an existing checkpoint of that folder into it, or delete it to start from MODEL.WEIGHTS"
                )
        return super().resume_or_load(path, resume=resume)

    def load(self, path: str, checkpointables=None):
        if path and "://" not in path and not os.path.isfile(path):
            raise CheckpointError(f"checkpoint {path} not found (MODEL.WEIGHTS, or the file last_checkpoint names)")
        self._loading, self._missing_keys = path, None
        try:
            file_priors = self._priors_from_file() if self._is_sgg_model else None
            extra = super().load(path, checkpointables=checkpointables)
            if self._is_sgg_model:
                self._warn_if_file_priors_replaced(file_priors, path)
                self._check_sgg_model_is_ready(path)
        finally:
            self._loading = None
            self._parsed_url_during_load = None  # Detectron2 resets it only when its load succeeds
        return extra

    def _load_file(self, filename: str):
        if filename.endswith(".pkl") and not unsafe_pickle_allowed():
            data = self._read_file(filename, self._unpickle_arrays_only)
            if not isinstance(data, dict):
                raise CheckpointError(f"{filename}: expected a dict of arrays, got {type(data).__name__}")
            return self._from_model_zoo_pickle(data)
        return super()._load_file(filename)

    @staticmethod
    def _unpickle_arrays_only(filename: str):
        with open(filename, "rb") as f:
            return _ArraysOnlyUnpickler(f, filename).load()

    @staticmethod
    def _from_model_zoo_pickle(data: dict) -> dict:
        """A model-zoo pickle as Detectron2 reads it (its ``_load_file``, with the unpickling made safe)."""
        if "model" in data and "__author__" in data:
            return data
        if "blobs" in data:  # Caffe2 detection models
            data = data["blobs"]
        data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
        return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}

    def _torch_load(self, f):
        weights_only = not unsafe_pickle_allowed()
        return self._read_file(f, lambda name: torch.load(name, map_location="cpu", weights_only=weights_only))

    @staticmethod
    def _read_file(filename: str, read):
        """``read(filename)``, with every failure turned into a CheckpointError that names the file."""
        try:
            return read(filename)
        except CheckpointError:
            raise
        except pickle.UnpicklingError as e:
            # torch's weights-only unpickler names the Python object it refused in a line with "GLOBAL"; its other
            # errors (unknown opcodes, ...) come from damaged bytes.
            refused = [line.strip() for line in str(e).splitlines() if "GLOBAL" in line]
            if refused:
                raise CheckpointError(
                    f"{filename}: refused to load: it holds Python objects other than tensors and plain containers, "
                    f"and unpickling them could run code ({refused[0]}). If you trust this file, set "
                    f"{UNSAFE_PICKLE_ENV}=1."
                ) from None
            boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
            reason = [line.strip() for line in str(e).splitlines() if line.strip() and not line.startswith(boilerplate)]
            raise CheckpointError(
                f"{filename}: cannot read the checkpoint, it is truncated or corrupt ({(reason or [str(e)])[-1]})"
            ) from e
        except Exception as e:  # noqa: BLE001 -- torch/pickle raise OSError, KeyError, RuntimeError, EOFError ...
            raise CheckpointError(
                f"{filename}: cannot read the checkpoint, it is truncated or corrupt ({type(e).__name__}: {e})"
            ) from e

    def _load_model(self, checkpoint):
        if self._is_sgg_model:
            self._check_shapes(checkpoint["model"], [])
        incompatible = super()._load_model(checkpoint)
        if self._is_sgg_model:
            # Tensors renamed by Detectron2's matching heuristics (model-zoo files) are compared only now.
            self._check_shapes({}, incompatible.incorrect_shapes)
        self._missing_keys = list(incompatible.missing_keys)
        return incompatible

    # ------------------------------------------------------------------------------------------------ SGG rules
    def _check_shapes(self, checkpoint_state, incorrect_shapes) -> None:
        model_state = self.model.state_dict()
        wrong = list(incorrect_shapes) + [
            (k, tuple(np.shape(v)), tuple(model_state[k].shape))
            for k, v in checkpoint_state.items()
            if k in model_state and tuple(np.shape(v)) != tuple(model_state[k].shape)
        ]
        if not wrong:
            return
        lines = "\n".join(f"  {k}: {a} in the file, {b} in the model" for k, a, b in wrong[:8])
        more = f"\n  ... and {len(wrong) - 8} more" if len(wrong) > 8 else ""
        counts = ""
        file_classes, file_predicates = _counts_of(checkpoint_state) if checkpoint_state else (None, None)
        model_classes, model_predicates = _counts_of(model_state)
        if file_classes is not None and file_classes != model_classes:
            counts += f" The file was made for {file_classes} object classes, the config asks for {model_classes} " \
                      "(MODEL.ROI_HEADS.NUM_CLASSES)."
        if file_predicates is not None and file_predicates != model_predicates:
            counts += f" The file was made for {file_predicates} predicates, the config asks for {model_predicates} " \
                      "(MODEL.ROI_RELATION_HEAD.NUM_PREDICATES, 'no relation' included)."
        raise CheckpointError(
            f"{self._loading}: {len(wrong)} tensors do not fit the model built from the config:\n{lines}{more}\n"
            f"These weights were made for another dataset or model size.{counts} Use weights trained on this "
            "dataset's classes and predicates, or fix the config (MODEL.ROI_HEADS.NUM_CLASSES, "
            "MODEL.ROI_RELATION_HEAD.NUM_PREDICATES, the head sizes)."
        )

    def _priors_from_file(self) -> Optional[Tuple[str, torch.Tensor, torch.Tensor]]:
        """(source, co-occurrence, predicate prior) of the model's priors before loading, when a priors file gave
        them (PRIORS_FILE or a dataset's priors_file)."""
        priors = self.model.roi_heads.priors
        source = str(getattr(priors, "_source", ""))
        if not source.startswith("priors file"):
            return None
        return source, priors.obj_cooccurrence.detach().clone(), priors.rel_prior.detach().clone()

    def _warn_if_file_priors_replaced(self, file_priors, path: str) -> None:
        """The weights' priors win (kern_d2.config_check): say so when they replaced a file's other priors."""
        if file_priors is None or not path:
            return
        source, cooccurrence, rel_prior = file_priors
        priors = self.model.roi_heads.priors
        if torch.equal(priors.obj_cooccurrence.cpu(), cooccurrence.cpu()) and \
                torch.equal(priors.rel_prior.cpu(), rel_prior.cpu()):
            return
        logger.warning(
            f"{path} carries knowledge priors that differ from those of {source}: the model uses the weights' priors "
            "(the priors it was trained with; README, 'Which priors a model uses'). To use the file's, train from "
            "weights without priors (the detector)."
        )

    def _check_sgg_model_is_ready(self, path: str) -> None:
        self.model.roi_heads.priors.check_loaded()
        if not self.for_inference:
            return
        parts = parts_run_at_inference(self.model)
        if not parts:
            return
        if not path:
            raise CheckpointError(
                f"no weights to evaluate ({self.model.sgg_mode} runs {', '.join(parts.values())}): set MODEL.WEIGHTS"
            )
        missing = self._missing_keys or []
        lacking = {prefix: [k for k in missing if k.startswith(prefix)] for prefix in parts}
        lacking = {prefix: keys for prefix, keys in lacking.items() if keys}
        if not lacking:
            return
        mode = self.model.sgg_mode
        described = "; ".join(f"{parts[p]} ({len(keys)} tensors, e.g. {keys[0]})" for p, keys in lacking.items())
        hints = []
        if "roi_heads.object_routing." in lacking:
            hints.append("train SGCls from these weights first, or evaluate with "
                         "MODEL.ROI_RELATION_HEAD.USE_OBJECT_ROUTING False (object labels from the detector)")
        if "roi_heads.relation_head." in lacking:
            hints.append("train the relation head first (tools/train_net.py without --eval-only), or set "
                         "MODEL.ROI_RELATION_HEAD.NAME to the head these weights were trained with")
        raise CheckpointError(
            f"{path}: these weights cannot serve {mode} as configured: they lack {described}. Evaluating would use "
            f"untrained weights." + (" To fix: " + "; or ".join(hints) + "." if hints else "")
        )
