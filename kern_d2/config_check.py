"""Checks of a kern_d2 config before anything is built (the model, the data loaders, the launcher's processes).

:func:`load_config` reads ``--config-file`` and the ``KEY VALUE`` overrides; :func:`check_config` checks what a run
will use. ``tools/train_net.py`` (training and ``--eval-only``), ``tools/predict.py`` and
:class:`kern_d2.engine.SceneGraphPredictor` run them. Each failure is a :class:`ConfigError` whose message is one
line naming the key (or file) and the fix; the tools print it without a traceback and exit with status 2 (the
traceback with ``--debug`` or ``KERN_DEBUG=1``; :mod:`kern_d2.utils.cli`).

Checked:

- **Keys.** An unknown key, in the file, its ``_BASE_`` chain or the overrides, gets "did you mean ..." from the
  known keys; a value of the wrong type and an odd override list are named too.
- **Datasets** (training: ``DATASETS.TRAIN`` and ``DATASETS.TEST``; evaluation: ``DATASETS.TEST``). Each name is
  registered (the error lists the registered scene-graph datasets and says how to register one's own: ``--register``
  or ``$KERN_REGISTER``), and the annotation files of kern_d2's registrars exist: a typo in ``DATASETS.TEST`` is found
  before training, not after it.
- **Files.** ``MODEL.WEIGHTS`` (a local path; URLs such as ``detectron2://`` are left to the checkpointer), and the
  priors file when the model reads it (:func:`priors_file_setting`, the rule below).
- **Training settings** (:func:`kern_d2.engine.trainer.check_training_config`).

Which priors a model uses (one rule for training, ``--eval-only`` and the predictor): **the weights' priors win.**
When the checkpoint that is loaded (``MODEL.WEIGHTS``, or the last checkpoint with ``--resume``) carries knowledge
priors, as every checkpoint of a kern_d2 relation model does, the model uses them: they are the priors it was
trained with. ``PRIORS_FILE`` (else the dataset metadata's ``priors_file``) gives the priors to a model whose weights
carry none (the first relation phase, trained from a detector); then the file must exist. When the weights carry
priors the file need not exist, and when it exists but holds other priors, a warning says that the weights' are
used. Predicate counts (the long-tail switches) follow the rule, except that weights saved before kern_d2 stored
them take the file's. ``USE_PRIORS False`` (uniform priors) likewise applies to weights without priors.
"""
import difflib
import logging
import os
from typing import List, Sequence, Tuple

__all__ = [
    "ConfigError",
    "MissingFileError",
    "check_classes_match_config",
    "check_config",
    "check_priors_file",
    "cfg_for_weights",
    "default_kern_cfg",
    "load_config",
    "unregistered_dataset_error",
    "priors_file_setting",
    "weights_carry_priors",
    "weights_to_load",
]

logger = logging.getLogger(__name__)

PURPOSES = ("train", "eval", "predict")
REGISTER_HINT = (
    "register your own with --register my_datasets.py (a Python file that calls kern_d2.data.register_sgg_json, "
    "register_vg_sgg, register_oi_sgg or register_gqa_sgg) or the environment variable KERN_REGISTER=my_datasets.py"
)


class ConfigError(ValueError):
    """A config that cannot run as given; the message is one line naming the key or file and the fix."""


class MissingFileError(ConfigError, FileNotFoundError):
    """A file named by the config (weights, priors, a dataset's annotations) does not exist."""


# ---------------------------------------------------------------------------------------------------- keys
def default_kern_cfg():
    """Detectron2's default config with kern_d2's keys (not frozen)."""
    from detectron2.config import get_cfg

    from kern_d2.config import add_kern_config

    cfg = get_cfg()
    add_kern_config(cfg)
    return cfg


def _all_keys(node, prefix: str = "") -> List[str]:
    keys = []
    for key, value in node.items():
        full = f"{prefix}{key}"
        keys.extend(_all_keys(value, full + ".") if isinstance(value, dict) else [full])
    return keys


def did_you_mean(key: str, known: Sequence[str]) -> List[str]:
    """Up to three known keys close to ``key``: the closest whole dotted keys, then keys whose last part is close
    to or starts with ``key``'s (a key put under the wrong section, or cut short)."""
    known = list(known)
    scored = sorted(((difflib.SequenceMatcher(None, key, k).ratio(), k) for k in known), reverse=True)
    best = scored[0][0] if scored else 0.0
    close = [k for ratio, k in scored if ratio >= max(0.75, best - 0.05)][:3]
    leaf = key.rsplit(".", 1)[-1]
    for k in known:
        other = k.rsplit(".", 1)[-1]
        similar = difflib.SequenceMatcher(None, leaf, other).ratio() >= 0.85
        if (similar or (len(leaf) >= 3 and other.startswith(leaf))) and k not in close:
            close.append(k)
    return close[:3]


def _unknown_key_error(key: str, where: str, cfg) -> ConfigError:
    suggestions = did_you_mean(key, _all_keys(cfg))
    hint = f"; did you mean {' or '.join(suggestions)}?" if suggestions else \
        " (README.md, 'Config keys', lists kern_d2's keys; the others are Detectron2's)"
    return ConfigError(f"{where}: unknown config key {key}{hint}")


def load_config(config_file: str, opts: Sequence[str] = (), cfg=None, freeze: bool = True):
    """``cfg`` (default: :func:`default_kern_cfg`) merged with ``config_file`` and the overrides ``opts``.

    Raises :class:`ConfigError` (one line) for a missing or unreadable file, an unknown key (with "did you mean"),
    a value of the wrong type or an odd override list."""
    cfg = default_kern_cfg() if cfg is None else cfg
    opts = list(opts or [])
    if config_file:
        if not os.path.isfile(config_file):
            raise MissingFileError(f"--config-file {config_file}: no such file")
        _merge(cfg, lambda: cfg.merge_from_file(config_file), config_file)
    if len(opts) % 2:
        raise ConfigError(f"config overrides must be KEY VALUE pairs; got {len(opts)} words: {' '.join(opts)}")
    _merge(cfg, lambda: cfg.merge_from_list(opts), "command line")
    if freeze:
        cfg.freeze()
    return cfg


def _merge(cfg, merge, where: str) -> None:
    import yaml

    try:
        merge()
    except KeyError as e:  # yacs: "Non-existent config key: A.B" (files)
        message = str(e.args[0]) if e.args else str(e)
        if "Non-existent config key: " in message:
            raise _unknown_key_error(message.split("Non-existent config key: ", 1)[1].strip(), where, cfg) from e
        raise ConfigError(f"{where}: {message}") from e
    except AssertionError as e:  # yacs: "Non-existent key: A.B" (overrides), Detectron2's file checks
        message = str(e)
        if "Non-existent key: " in message:
            raise _unknown_key_error(message.split("Non-existent key: ", 1)[1].strip(), where, cfg) from e
        raise ConfigError(f"{where}: {message}".replace("\n", " ")) from e
    except ValueError as e:  # yacs: "Type mismatch (...) for config key: A.B"
        raise ConfigError(f"{where}: {e}".replace("\n", " ")) from e
    except (OSError, yaml.YAMLError) as e:  # a _BASE_ file missing, bad YAML
        raise ConfigError(f"{where}: cannot read the config: {type(e).__name__}: {e}".replace("\n", " ")) from e


# ------------------------------------------------------------------------------------------------ datasets
def unregistered_dataset_error(name: str, where: str = "") -> "ConfigError":
    """The error for a dataset name that is not registered: the closest registered name, the registered
    scene-graph datasets (not Detectron2's coco, lvis, ...), and how to register one's own."""
    from detectron2.data import DatasetCatalog

    from kern_d2.data.datasets.registration import sgg_dataset_names

    sgg = sgg_dataset_names()
    close = difflib.get_close_matches(name, sgg, n=1, cutoff=0.6) or \
        difflib.get_close_matches(name, sorted(DatasetCatalog.list()), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]}?)" if close else ""
    prefix = f"{where}: " if where else ""
    return ConfigError(f"{prefix}dataset {name!r} is not registered{hint}. Registered scene-graph datasets: "
                       f"{', '.join(sgg) or 'none'}; {REGISTER_HINT}")


def _check_datasets(cfg, key: str, names: Sequence[str]) -> None:
    from detectron2.data import DatasetCatalog

    from kern_d2.data.datasets.registration import missing_dataset_files

    registered = set(DatasetCatalog.list())
    for name in names:
        if name not in registered:
            raise unregistered_dataset_error(name, key)
        missing = missing_dataset_files(name)
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise MissingFileError(
                f"{key}: dataset {name} cannot be loaded: {missing[0]} does not exist{more}. Put the dataset's files "
                "there (datasets/README.md; the builtin names read $KERN_DATASETS, default ./datasets) or register "
                "it with the right paths"
            )


def check_classes_match_config(dataset_names: Sequence[str], num_classes: int, num_predicates: int) -> None:
    """Raise ValueError when a registered dataset's class lists do not have the config's sizes (C object classes,
    P predicates with "no relation"), before any training step. Datasets whose classes are not known yet (their
    class file is absent) are not checked here: their loader checks every label against its own lists. Used when
    the model (:mod:`kern_d2.modeling.roi_heads`) and the mapper are built."""
    from detectron2.data import MetadataCatalog

    for name in dataset_names:
        meta = MetadataCatalog.get(name)
        things, predicates = meta.get("thing_classes", None), meta.get("predicate_classes", None)
        if things is not None and len(things) != num_classes:
            raise ValueError(
                f"dataset {name} has {len(things)} object classes but MODEL.ROI_HEADS.NUM_CLASSES is {num_classes}"
            )
        if predicates is not None and len(predicates) != num_predicates:
            raise ValueError(
                f"dataset {name} has {len(predicates)} predicates ('no relation' included) but "
                f"MODEL.ROI_RELATION_HEAD.NUM_PREDICATES is {num_predicates}"
            )


# ------------------------------------------------------------------------------------------------- weights
def _is_local(path: str) -> bool:
    """A non-empty path that is not a URL (``detectron2://``, ``https://``: left to iopath)."""
    return bool(path) and "://" not in path


def weights_to_load(cfg, resume: bool = False) -> str:
    """The checkpoint a run loads: with ``resume``, the one ``OUTPUT_DIR/last_checkpoint`` names (when that file
    exists), else ``MODEL.WEIGHTS``."""
    last = os.path.join(cfg.OUTPUT_DIR, "last_checkpoint")
    if resume and os.path.isfile(last):
        with open(last) as f:
            return os.path.join(cfg.OUTPUT_DIR, f.read().strip())
    return cfg.MODEL.WEIGHTS


def weights_carry_priors(path: str) -> bool:
    """Whether the checkpoint ``path`` holds knowledge priors (``roi_heads.priors.*``: a kern_d2 relation model's
    checkpoint). False for other files and for files that cannot be read (their loading names the problem)."""
    if not _is_local(path) or not os.path.isfile(path) or path.endswith(".pkl"):
        return False
    import torch

    try:
        try:
            data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # not a zip-format file: mmap is not possible
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 -- the checkpointer reports unreadable files, naming them
        return False
    state = data.get("model", data) if isinstance(data, dict) else {}
    return isinstance(state, dict) and all(f"roi_heads.priors.{k}" in state for k in ("obj_cooccurrence", "rel_prior"))


# -------------------------------------------------------------------------------------------------- priors
def is_sgg_cfg(cfg) -> bool:
    return cfg.MODEL.META_ARCHITECTURE == "SceneGraphRCNN"


def priors_file_setting(cfg) -> Tuple[str, str]:
    """(path, the setting that names it) of the priors file a model built from ``cfg`` reads, as
    ``kern_d2.modeling.priors.build_priors`` picks it: ``PRIORS_FILE``, else the ``priors_file`` of the metadata
    of the first training (else test) dataset that has class names; ("", "") when none (or ``USE_PRIORS`` False)."""
    from detectron2.data import MetadataCatalog

    rel = cfg.MODEL.ROI_RELATION_HEAD
    if not rel.USE_PRIORS:
        return "", ""
    if rel.PRIORS_FILE:
        return rel.PRIORS_FILE, "MODEL.ROI_RELATION_HEAD.PRIORS_FILE"
    for name in list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST):
        meta = MetadataCatalog.get(name)
        try:
            has_classes = meta.get("thing_classes", None) is not None and meta.get("predicate_classes") is not None
        except Exception:  # noqa: BLE001 -- a broken class file: named when the dataset is loaded
            has_classes = False
        if has_classes:
            path = meta.get("priors_file", None)
            return (path, f"the priors_file of dataset {name} (its registration)") if path else ("", "")
    return "", ""


def missing_priors_message(cfg, path: str, where: str) -> str:
    dataset = cfg.DATASETS.TRAIN[0] if len(cfg.DATASETS.TRAIN) else "<your train dataset>"
    released = ""
    try:
        from kern_d2.config import resolve_variant

        released = " --released" if resolve_variant(cfg)["PRIOR_CONSTRUCTION"] == "released" else ""
    except (ImportError, KeyError, ValueError):  # a config without the variant keys, or a bad value (named later)
        pass
    return (
        f"{where} {path}: no such file. Make it with `python tools/compute_priors.py --dataset {dataset}{released} "
        f"--output {path}`, point MODEL.ROI_RELATION_HEAD.PRIORS_FILE at an existing priors .npz, or set "
        "MODEL.ROI_RELATION_HEAD.USE_PRIORS False (uniform priors). Weights of a trained kern_d2 relation model "
        "carry their priors and need no file"
    )


def check_priors_file(cfg) -> None:
    """:class:`MissingFileError` (one line, the key and the fix) when the model built from ``cfg`` would read a
    priors file that does not exist. ``build_priors`` calls it before reading the file."""
    path, where = priors_file_setting(cfg)
    if _is_local(path) and not os.path.isfile(path):
        raise MissingFileError(missing_priors_message(cfg, path, where))


def cfg_for_weights(cfg, weights: str):
    """``cfg``, or a copy that builds the model without reading its priors file when that file is absent and
    ``weights`` carry priors (they win anyway: module docstring)."""
    if not is_sgg_cfg(cfg):
        return cfg
    path, where = priors_file_setting(cfg)
    if not _is_local(path) or os.path.isfile(path) or not weights_carry_priors(weights):
        return cfg
    logger.info(f"{where} {path} does not exist; the model uses the priors that {weights} carries")
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.ROI_RELATION_HEAD.PRIORS_FILE = ""
    if priors_file_setting(cfg)[0]:  # a dataset's metadata names an absent file too: uniform, then the weights'
        cfg.MODEL.ROI_RELATION_HEAD.USE_PRIORS = False
    cfg.freeze()
    return cfg


# ------------------------------------------------------------------------------------------------ the check
def check_config(cfg, purpose: str, *, resume: bool = False) -> None:
    """Everything a run of ``purpose`` ("train", "eval": ``--eval-only``, "predict": the predictor) needs from
    ``cfg`` that can be checked before building anything; :class:`ConfigError` (one line) at the first failure.
    The predictor does not need its datasets (class names can come from the weights): they are not checked."""
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {PURPOSES}, got {purpose!r}")
    if purpose == "train":
        from kern_d2.engine.trainer import check_training_config

        if not len(cfg.DATASETS.TRAIN):
            raise ConfigError("DATASETS.TRAIN is empty: name the dataset(s) to train on, e.g. DATASETS.TRAIN "
                              "'(\"my_train\",)'")
        _check_datasets(cfg, "DATASETS.TRAIN", cfg.DATASETS.TRAIN)
        _check_datasets(cfg, "DATASETS.SGG.VAL", cfg.DATASETS.SGG.VAL)
        try:
            check_training_config(cfg)
        except ValueError as e:
            raise ConfigError(str(e)) from e
    if purpose in ("train", "eval"):
        if purpose == "eval" and not len(cfg.DATASETS.TEST):
            raise ConfigError("DATASETS.TEST is empty: --eval-only has nothing to evaluate; name the dataset(s), "
                              "e.g. DATASETS.TEST '(\"my_test\",)'")
        _check_datasets(cfg, "DATASETS.TEST", cfg.DATASETS.TEST)
    weights = weights_to_load(cfg, resume)
    if weights == cfg.MODEL.WEIGHTS and _is_local(weights) and not os.path.isfile(weights):
        raise MissingFileError(
            f"MODEL.WEIGHTS {weights}: no such file. Point it at a trained model (.pth) or a Detectron2 model-zoo "
            "file; the relation configs' MODEL.WEIGHTS is the previous phase's model_final.pth"
        )
    if is_sgg_cfg(cfg):
        path, where = priors_file_setting(cfg)
        if _is_local(path) and not os.path.isfile(path) and not weights_carry_priors(weights):
            raise MissingFileError(missing_priors_message(cfg, path, where))
