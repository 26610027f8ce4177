"""Check that the image files of a dataset exist, by listing each image folder once (fast for 100k files)."""
import logging
import os
from typing import List

import numpy as np

MISSING_IMAGE_POLICIES = ("error", "skip", "ignore")


def existing_file_mask(file_names: List[str]) -> np.ndarray:
    """[N] True where the file exists. One ``os.listdir`` per distinct folder instead of one ``stat`` per file."""
    listings = {}
    exists = np.zeros(len(file_names), dtype=bool)
    for i, path in enumerate(file_names):
        folder, base = os.path.split(path)
        if folder not in listings:
            try:
                listings[folder] = set(os.listdir(folder or "."))
            except (FileNotFoundError, NotADirectoryError):
                listings[folder] = set()
        exists[i] = base in listings[folder]
    return exists


def check_image_files(file_names: List[str], policy: str, source: str, logger: logging.Logger) -> np.ndarray:
    """Apply the missing-image ``policy`` and return the [N] mask of images to keep.

    "error": raise FileNotFoundError naming the missing files; "skip": drop them, counted and logged;
    "ignore": do not look at the disk (the mapper fails on a missing file when it reads it).
    """
    if policy not in MISSING_IMAGE_POLICIES:
        raise ValueError(f"missing_images must be one of {MISSING_IMAGE_POLICIES}, got {policy!r}")
    if policy == "ignore":
        return np.ones(len(file_names), dtype=bool)
    exists = existing_file_mask(file_names)
    missing = [file_names[i] for i in np.flatnonzero(~exists)]
    if missing and policy == "error":
        shown = ", ".join(missing[:5]) + (", ..." if len(missing) > 5 else "")
        raise FileNotFoundError(
            f"{source}: {len(missing)} of {len(file_names)} image files are missing: {shown} "
            f"(pass missing_images='skip' to drop those images, or 'ignore' to not check; for the builtin vg150_*, "
            f"oiv6_*, oiv4_* and gqa200_* names set KERN_MISSING_IMAGES=skip or ignore)"
        )
    if missing:
        logger.warning(f"{source}: skipped {len(missing)} images whose files are missing, e.g. {missing[0]}")
    return exists
