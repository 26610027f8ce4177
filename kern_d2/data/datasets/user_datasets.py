"""Register a user's own datasets in every tool, without editing the tool: ``--register`` and ``$KERN_REGISTER``.

A registration file is plain Python that registers datasets, e.g. ``my_datasets.py``::

    from kern_d2.data import register_sgg_json
    register_sgg_json("my_train", "/data/my/train.json", "/data/my/images")
    register_sgg_json("my_test", "/data/my/test.json", "/data/my/images")

``python tools/train_net.py --register my_datasets.py --config-file ...`` (likewise ``compute_priors.py``,
``visualize_data.py``, ``predict.py``, ``run_study.py``) runs it before reading the config. So does
``KERN_REGISTER=my_datasets.py`` (several: separated by ``:``), for any tool and for processes started by others.
A tool adds its ``--register`` files to ``$KERN_REGISTER`` (as absolute paths), so the processes it starts (the
launcher's workers, ``run_study.py``'s runs) register the same datasets. An entry that is not an existing file is
imported as a module name (``my_package.datasets``). Each file runs once per process.
"""
import importlib
import os
import runpy
from typing import Iterable, List

__all__ = ["REGISTER_ENV", "register_user_datasets"]

REGISTER_ENV = "KERN_REGISTER"
_done: List[str] = []


def _entries(value: str) -> List[str]:
    return [e.strip() for e in value.split(os.pathsep) if e.strip()]


def register_user_datasets(files: Iterable[str] = (), environ=os.environ) -> List[str]:
    """Run the registration ``files`` and those of ``$KERN_REGISTER`` (each once per process); the given files are
    added to ``$KERN_REGISTER`` for child processes. Returns the entries run now.

    Raises :class:`kern_d2.config_check.ConfigError` (one line) naming the entry when it is neither a file nor an
    importable module, or when running it fails (the traceback is the error's cause)."""
    from kern_d2.config_check import ConfigError, MissingFileError

    given = []
    for entry in files or ():
        if not os.path.isfile(entry) and (entry.endswith(".py") or os.sep in entry):
            raise MissingFileError(f"--register {entry}: no such file")
        given.append(os.path.abspath(entry) if os.path.isfile(entry) else entry)
    inherited = _entries(environ.get(REGISTER_ENV, ""))
    if given:
        environ[REGISTER_ENV] = os.pathsep.join(dict.fromkeys(inherited + given))
    ran = []
    for entry in dict.fromkeys(given + inherited):
        key = os.path.abspath(entry) if os.path.isfile(entry) else entry
        if key in _done:
            continue
        _done.append(key)
        try:
            if os.path.isfile(entry):
                runpy.run_path(entry, run_name="kern_d2_user_datasets")
            else:
                importlib.import_module(entry)
        except ModuleNotFoundError as e:
            if os.path.isfile(entry) or e.name != entry.split(".")[0]:
                raise ConfigError(f"{REGISTER_ENV} / --register {entry}: {type(e).__name__}: {e}") from e
            raise MissingFileError(f"{REGISTER_ENV} / --register {entry}: neither a file nor a module") from e
        except Exception as e:  # noqa: BLE001 -- the user's code: named, its traceback kept as the cause
            raise ConfigError(f"{REGISTER_ENV} / --register {entry} failed: {type(e).__name__}: {e}") from e
        ran.append(entry)
    return ran
