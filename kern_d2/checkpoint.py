"""``SGGCheckpointer``: Detectron2's DetectionCheckpointer with crash-safe saves and code-free loads.

A checkpoint is written to a temporary file in the same folder, flushed to disk and renamed over the target,
so a run killed mid-save leaves the previous checkpoint and ``last_checkpoint`` intact. ``.pth`` files are read
with ``torch.load(weights_only=True)``, which never executes code from the file.
"""
import os
import tempfile

import torch

from detectron2.checkpoint import DetectionCheckpointer


def atomic_write(path: str, write_fn, mode: str = "wb") -> None:
    """Call ``write_fn(file)`` on a temporary file next to ``path``, then rename it to ``path``."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(dir=folder, prefix=".tmp_" + os.path.basename(path))
    try:
        with os.fdopen(fd, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


class SGGCheckpointer(DetectionCheckpointer):
    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
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

    def _torch_load(self, f):
        return torch.load(f, map_location=torch.device("cpu"), weights_only=True)
