"""What every tool of ``tools/`` shares: quiet logs, ``--register`` / ``--debug``, and one-line errors.

- :func:`quiet_dependency_warnings` filters the warnings that come from kern_d2's dependencies, not from the user's
  setup (Detectron2 and fvcore script functions with ``torch.jit.script`` at import, Detectron2's anchor generator
  calls ``torch.meshgrid`` without ``indexing``, its RoI pooler calls torch's deprecated ``is_fx_tracing``). Call it
  before importing Detectron2's modules; the tools do so at their top, so that the launcher's worker processes,
  which import the tool again, are quiet too. ``KERN_DEBUG=1`` keeps every warning.
- :func:`add_tool_arguments` adds ``--register FILE`` (:mod:`kern_d2.data.datasets.user_datasets`) and ``--debug``.
- :func:`one_line_errors` turns a :class:`kern_d2.config_check.ConfigError` (and the other errors given) into one
  line on stderr and exit status 2; the traceback is printed with ``--debug`` or ``KERN_DEBUG=1``.
"""
import argparse
import contextlib
import logging
import os
import sys
import traceback
import warnings
from typing import Optional, Sequence, Tuple, Type

__all__ = ["DEBUG_ENV", "add_tool_arguments", "debug_enabled", "one_line_errors", "quiet_dependency_warnings"]

DEBUG_ENV = "KERN_DEBUG"

# (message regex, category) of dependency warnings that say nothing about the user's run.
DEPENDENCY_WARNINGS: Tuple[Tuple[str, Type[Warning]], ...] = (
    (r"`torch\.jit\.script` is deprecated", FutureWarning),
    (r"torch\.meshgrid: in an upcoming release, it will be required to pass the indexing argument", UserWarning),
)
_FX_TRACING_MESSAGE = "is_fx_tracing will return true"


def debug_enabled(args: Optional[argparse.Namespace] = None) -> bool:
    """``--debug`` given, or ``$KERN_DEBUG`` set to something other than "", "0", "false", "no"."""
    if args is not None and getattr(args, "debug", False):
        return True
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


class _DropFxTracingWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(_FX_TRACING_MESSAGE)


def quiet_dependency_warnings() -> None:
    """Filter the dependency warnings listed above (nothing when ``$KERN_DEBUG`` is set)."""
    if debug_enabled():
        return
    for message, category in DEPENDENCY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    fx_logger = logging.getLogger("torch.fx._symbolic_trace")
    if not any(isinstance(f, _DropFxTracingWarning) for f in fx_logger.filters):
        fx_logger.addFilter(_DropFxTracingWarning())


def add_tool_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--register FILE`` (repeatable: one file each, so that config overrides after it stay overrides) and
    ``--debug``."""
    parser.add_argument(
        "--register", action="append", default=[], metavar="FILE",
        help="a Python file (or module name) that registers your datasets, e.g. by calling "
        "kern_d2.data.register_sgg_json; run before anything else, here and in every process this tool starts; "
        "repeat for several (also taken from $KERN_REGISTER, paths separated by ':')",
    )
    parser.add_argument("--debug", action="store_true",
                        help=f"print the traceback of configuration errors and keep all warnings (also ${DEBUG_ENV}=1)")
    return parser


@contextlib.contextmanager
def one_line_errors(tool: str, debug: bool = False, errors: Sequence[Type[BaseException]] = ()):
    """Inside the block, a ConfigError (or one of ``errors``) prints ``<tool>: error: <message>`` on stderr and
    exits with status 2; with ``debug`` (or ``$KERN_DEBUG``) the traceback comes first."""
    from kern_d2.config_check import ConfigError

    try:
        yield
    except (ConfigError, *errors) as e:
        if debug or debug_enabled():
            traceback.print_exc()
        message = " ".join(str(e).split("\n")) if str(e) else type(e).__name__
        if isinstance(e, KeyError) and e.args:
            message = str(e.args[0])
        print(f"{tool}: error: {message}", file=sys.stderr)
        sys.exit(2)
