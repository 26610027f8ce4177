"""Several processes (Detectron2's ``launch``): a bounded wait for a rank that stops answering, and one clear message
when a rank dies.

- ``--dist-timeout-s`` (:func:`add_distributed_arguments`; default 1800 s, Detectron2's): the process groups'
  timeout. A collective (DDP's gradient all-reduce, the evaluator's gather, a barrier) that waits longer than this
  for another rank fails: with gloo (CPU) the waiting rank raises (tests/tools/test_distributed_faults.py), with NCCL
  torch's watchdog aborts it (SIGABRT, torch's default ``TORCH_NCCL_ASYNC_ERROR_HANDLING``; not yet seen on GPUs:
  benchmarks/multi_gpu.py's stall check). It also bounds how long the processes wait for each other at start-up
  (every machine must join within it), and applies to Detectron2's gloo group next to NCCL (its gathers: the
  training metrics every iteration, the evaluator's records), which would otherwise keep torch's 30 min
  (:func:`run_with_timeout`). Keep it above the longest step one rank does while the others wait: rank 0 writes
  the checkpoints and summarises the evaluation (~20 s for 26,000 SGDet images, BENCHMARKS.md "6a").
- On one machine the launcher sees a rank die at once (``kill -9``, the out-of-memory killer, a crash in native
  code): it stops the other processes (SIGTERM, SIGKILL 30 s later) and :func:`launch_job` names the rank, how it
  ended and where to resume from, on one line, with exit status 1. On other machines the processes stop when their
  next collective fails: at once when the connection drops, at the latest after ``--dist-timeout-s``.

Each process logs its rank and pid (``Rank 1 of 2: pid 12345``, in ``OUTPUT_DIR/log.txt.rank1`` for ranks > 0).
"""
import argparse
import os
import sys
from datetime import timedelta

__all__ = ["DEFAULT_DIST_TIMEOUT_S", "add_distributed_arguments", "launch_job", "rank_failure_message",
           "run_with_timeout"]

DEFAULT_DIST_TIMEOUT_S = 1800  # Detectron2's DEFAULT_TIMEOUT (30 min)

_SIGNAL_CAUSES = {
    "SIGKILL": "kill -9, or the kernel's out-of-memory killer (see dmesg)",
    "SIGABRT": "NCCL's watchdog aborts a rank whose collective waited longer than --dist-timeout-s {timeout:g} s: "
               "look for a rank that died or stalled before it (each rank's log ends where it stopped)",
    "SIGSEGV": "a crash in native code",
    "SIGBUS": "a crash in native code (or /dev/shm full: data-loader workers share samples through it)",
    "SIGTERM": "stopped from outside (a job scheduler's time limit, or kill)",
}
_TIMEOUT_MARKS = ("Timed out", "timed out", "Watchdog caught collective operation timeout", "DistBackendError")


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text!r}")
    return value


def add_distributed_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--dist-timeout-s`` (next to Detectron2's --num-gpus / --num-machines / --machine-rank / --dist-url)."""
    parser.add_argument(
        "--dist-timeout-s", type=_positive_seconds, default=DEFAULT_DIST_TIMEOUT_S, metavar="S",
        help="seconds a process waits in a collective (gradient all-reduce, gather, barrier) or at start-up for "
             "the other processes before it fails (gloo) or is aborted (NCCL); bounds the hang when a rank stalls "
             "or dies on another machine. Keep it above the longest step rank 0 does alone (checkpoint writing, the "
             f"evaluation's summary). Default {DEFAULT_DIST_TIMEOUT_S} (Detectron2's)",
    )
    return parser


def _last_checkpoint(output_dir: str) -> str:
    try:
        with open(os.path.join(output_dir, "last_checkpoint")) as f:
            return os.path.join(output_dir, f.read().strip())
    except OSError:
        return ""


def rank_failure_message(error, *, num_gpus: int, num_machines: int = 1, machine_rank: int = 0,
                         timeout_s: float = DEFAULT_DIST_TIMEOUT_S, output_dir: str = "", eval_only: bool = False
                         ) -> str:
    """One line for a ``torch.multiprocessing`` ``ProcessException`` (a launched process ended with a signal, a
    non-zero status, or an exception): which rank, how, and what to run next."""
    local = error.error_index
    rank = machine_rank * num_gpus + local
    world = num_gpus * num_machines
    where = f"rank {rank} of {world} (process {local} on machine {machine_rank}, pid {error.error_pid})"
    other = f"the other rank (rank {1 - rank})" if world == 2 else "another rank"
    signal_name = getattr(error, "signal_name", None)
    exit_code = getattr(error, "exit_code", None)
    if signal_name:
        cause = _SIGNAL_CAUSES.get(signal_name)
        what = f"{where} was ended by {signal_name}" + (f" ({cause.format(timeout=timeout_s)})" if cause else "")
    elif exit_code is not None:
        what = f"{where} exited with status {exit_code}"
    else:
        what = f"{where} failed with the error above"
        if any(mark in error.msg for mark in _TIMEOUT_MARKS):
            what += (f": a collective waited longer than --dist-timeout-s {timeout_s:g} s, so {other} stopped "
                     "answering (stalled, or died on another machine)")
    stopped = "the launcher stopped the other processes of this machine"
    if num_machines > 1:
        stopped += ("; those of the other machines stop when their next collective fails (at the latest after "
                    f"--dist-timeout-s {timeout_s:g} s)")
    if eval_only:
        after = "Run the evaluation again."
    else:
        last = _last_checkpoint(output_dir)
        after = (f"Continue with the same command and --resume: it loads {last}." if last else
                 f"No checkpoint was written in {output_dir or 'OUTPUT_DIR'} yet: start the training again.")
    return f"{what}; {stopped}. {after}"


def run_with_timeout(main_func, timeout_s: float, args):
    """``main_func(args)`` in a launched process, with ``timeout_s`` as the default timeout of the process groups
    made from now on: Detectron2 makes its gloo group (``comm._get_global_gloo_group``, for the gathers of NCCL runs)
    without a timeout, which would otherwise get torch's default (30 min). Restored afterwards."""
    from torch.distributed import distributed_c10d

    default = getattr(distributed_c10d, "default_pg_timeout", None)
    distributed_c10d.default_pg_timeout = timedelta(seconds=timeout_s)
    try:
        return main_func(args)
    finally:
        if default is not None:
            distributed_c10d.default_pg_timeout = default


def launch_job(main_func, args, *, output_dir: str = "", eval_only: bool = False, tool: str = "train_net.py"):
    """Detectron2's ``launch(main_func, ...)`` from the parsed arguments (Detectron2's default_argument_parser plus
    :func:`add_distributed_arguments`), with ``--dist-timeout-s`` as the process group's timeout. When a launched
    process fails: its traceback if it raised, then ``<tool>: error: <rank_failure_message>`` on stderr and exit
    status 1."""
    from detectron2.engine import launch
    from torch.multiprocessing import ProcessExitedException, ProcessRaisedException

    timeout_s = getattr(args, "dist_timeout_s", DEFAULT_DIST_TIMEOUT_S)
    try:
        return launch(run_with_timeout, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
                      dist_url=args.dist_url, args=(main_func, timeout_s, args), timeout=timedelta(seconds=timeout_s))
    except (ProcessExitedException, ProcessRaisedException) as e:
        if isinstance(e, ProcessRaisedException):
            print(e.msg, file=sys.stderr)
        message = rank_failure_message(e, num_gpus=args.num_gpus, num_machines=args.num_machines,
                                       machine_rank=args.machine_rank, timeout_s=timeout_s, output_dir=output_dir,
                                       eval_only=eval_only)
        print(f"{tool}: error: {message}", file=sys.stderr, flush=True)
        sys.exit(1)
