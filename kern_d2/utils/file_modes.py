"""The permission bits of files that kern_d2 writes through a temporary file (``tempfile.mkstemp`` makes it 0600)."""
import os

__all__ = ["default_file_mode", "give_default_mode"]


def default_file_mode() -> int:
    """0666 minus the process umask: what ``open(path, "w")`` would give a new file (0644 under the usual 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def give_default_mode(path: str) -> None:
    """Give ``path`` (a private temporary file about to be renamed into place) the mode of a normally created
    file, so that the other users of a shared machine can read what the umask lets them."""
    os.chmod(path, default_file_mode())
