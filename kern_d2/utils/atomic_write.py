"""Atomic file writes: a temporary file next to the target, flushed to disk and renamed over it.

A process killed mid-write leaves the previous file intact (and a ``TEMP_PREFIX`` file, which
:meth:`kern_d2.checkpoint.SGGCheckpointer.remove_stale_temporary_files` deletes in a checkpoint folder). The written
file gets the permissions of a normally created one (:func:`default_file_mode`), not mkstemp's private 0600. Used
for checkpoints and priors files.
"""
import os
import tempfile

__all__ = ["TEMP_PREFIX", "atomic_write", "default_file_mode"]

TEMP_PREFIX = ".tmp_"


def default_file_mode() -> int:
    """0666 minus the process umask: what ``open(path, "w")`` would give a new file (0644 under the usual 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str, write_fn, mode: str = "wb") -> None:
    """Call ``write_fn(file)`` on a temporary file next to ``path`` (opened with ``mode``), then rename it to
    ``path``. On any error the temporary file is removed and ``path`` is left as it was."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(dir=folder, prefix=TEMP_PREFIX + os.path.basename(path))
    try:
        with os.fdopen(fd, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp's 0600 would hide the file from the other users of a shared machine.
        os.chmod(tmp_path, default_file_mode())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
    _fsync_folder(folder)


def _fsync_folder(folder: str) -> None:
    """Make the rename itself durable (a power cut after it must not bring the old file back)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
