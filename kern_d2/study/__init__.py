"""The study application (``tools/run_study.py``, ``tools/merge_study_reports.py``, ``tools/run_demo.py``), built on
the library: data, modeling and evaluation never import it.

- :mod:`.study`: which runs to make (modes, models, seeds), the statistics over seeds, the claims, the markdown
  report and its plots, the merging of studies.
- :mod:`.jobs`: the tools run as subprocesses, several at once, finished runs reused, with an ETA.
- :mod:`.cli`: the command line of ``tools/run_study.py`` (its options, the datasets it knows, ``--variant``).
"""
from .cli import *  # noqa: F401,F403  (its __all__)
from .cli import __all__ as _cli_names
from .jobs import Job, JobRunner, format_duration, log_tail
from .study import *  # noqa: F401,F403  (its __all__)
from .study import __all__ as _study_names

__all__ = sorted(["Job", "JobRunner", "format_duration", "log_tail"] + _cli_names + _study_names)
