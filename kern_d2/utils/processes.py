"""Worker processes for the dataset generators (:mod:`kern_d2.data.generators`)."""

__all__ = ["process_pool"]


def process_pool(processes: int):
    """A ``multiprocessing`` pool of freshly started ("spawn") processes. Forked children would inherit the parent's
    OpenCV and OpenMP thread pools in whatever state they are, and hang at their first use (seen in the tests)."""
    import multiprocessing

    return multiprocessing.get_context("spawn").Pool(processes)
