#!/usr/bin/env python
"""Several GPUs at VG scale (issue 23) on the VG stand-in: 1 GPU vs 2 at the same per-GPU batch, and faults.

    python benchmarks/multi_gpu.py --part 1 --out $OUT   # stand-in, detector and PredCls on 1 and 2 GPUs, faults
    python benchmarks/multi_gpu.py --part 2 --out $OUT   # SGDet on 1 and 2 GPUs, SGDet --eval-only on 1 and 2 GPUs
    python benchmarks/multi_gpu.py --part faults --out $OUT  # only the fault checks (should part 1 not fit a call:
                                                             # part 1 with MULTI_GPU_FAULTS=none, then this)
    python benchmarks/multi_gpu.py --part all --smoke --workdir /tmp/mg_smoke --out /tmp/mg_smoke/out  # the path
    python benchmarks/multi_gpu.py --table --out $OUT    # the table of <out>/multi_gpu.json again

Every step runs a project tool as a user does, from ``--workdir``, with benchmarks/vg_scale.py's machinery (the
stand-in, the configs, each tool's log in output/multi_gpu/logs/ of the workdir):

1. **Training**, each phase on 1 GPU and on ``--gpus`` (2) with ``--num-gpus``, ``SOLVER.IMS_PER_BATCH`` = the
   config's batch x GPUs (the same per-GPU batch), the same number of iterations, no evaluation: the VG-Detection
   R-101-FPN detector from random init (``SOLVER.BASE_LR`` ``--detector-base-lr`` 0.002: the config's 0.02 diverges
   from random init, BENCHMARKS.md "VG scale"), KERN PredCls and KERN SGDet from the 1-GPU detector. Figures:
   images/s (Detectron2's "Overall training speed"), the ratio N GPUs / 1 GPU, each GPU's peak memory
   (benchmarks/rank_probe.py, a ``--register`` file, prints it from every rank), the data-loader wait share
   (metrics.json; Detectron2 records the slowest rank's data_time).
2. **Evaluation**: SGDet ``--eval-only`` on the stand-in's test split (>= 2,000 images) on 1 and N GPUs:
   sgg_metrics.json compared (the largest difference over the metrics and per-predicate recalls) and the wall times.
3. **Faults**, KERN PredCls on N GPUs, checkpointing every ``--fault-checkpoint-period`` iterations (the functions
   :func:`kill_check` and :func:`stall_check`, which tests/tools/test_distributed_faults.py runs on CPU over gloo):
   kill: ``kill -9`` of rank 1 right after the first checkpoint; the job must end non-zero within
   ``--fault-exit-bound-s`` with train_net.py's one-line message naming the rank and the checkpoint, leave no
   process behind, and ``--resume`` (the same command) must start from that checkpoint with its iteration count,
   LR scheduler and optimizer state on every rank (rank_probe.py saves what each rank resumed from; compared with
   the file) and finish the schedule. stall: rank 1 stops answering (alive); with ``--dist-timeout-s``
   ``--stall-timeout-s`` the job must end within that plus ``--fault-exit-bound-s``, naming the timeout.

Parts (H200 pair, the default sizes; estimates from the one-GPU vg_scale runs, the 2-GPU start-up a guess): part 1
~7 min (stand-in 1 min, detector 2 x ~1 min, PredCls 2 x ~40 s, kill ~1.5 min, stall ~1.5 min), part 2 ~6 min (SGDet
2 x ~1.2 min, evaluations ~2.5 + ~1.5 min); add ~1.5 min of setup per device call. Part 2 on a fresh machine first
remakes what it needs of part 1 (the stand-in, a 1-GPU detector of ``--redo-detector-iters`` iterations, the priors).
Results: ``<out>/multi_gpu.json`` (written after every step: a call cut off keeps what it measured),
``<out>/multi_gpu.log``, ``<out>/multi_gpu_table.txt`` (the table, printed at the end), the evaluations'
sgg_metrics.json. A step that fails is recorded (``failed``) and the next steps still run; the exit status is then 1.

Untested here: launching on GPUs needs a two-GPU machine, which the development machine is not. The pure parts
(arguments, figures, ratios, the comparison of metrics, the table, the fault verdicts) are tested on CPU by
tests/benchmarks/test_multi_gpu_report.py, and the fault checks themselves run on CPU processes over gloo in
tests/tools/test_distributed_faults.py. ``--smoke`` runs everything at tiny sizes (CPU processes over gloo where
there is no GPU).
"""
import argparse
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from typing import Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vg_scale import (  # noqa: E402
    CONFIGS,
    PRIORS_FILE,
    ROOT,
    VGScaleRun,
    _config_value,
    _cuda_available,
    evaluation_figures,
    training_figures,
)

TRAIN_NET = os.path.join(ROOT, "tools", "train_net.py")
PROBE = os.path.join(ROOT, "benchmarks", "rank_probe.py")  # the --register file of every run here
PROBE_DIR_ENV, STALL_ENV = "MULTI_GPU_PROBE_DIR", "MULTI_GPU_STALL"  # read by rank_probe.py
PHASES = ("detector", "predcls", "sgdet")
PHASE_NAMES = {"detector": "VG-Detection R-101-FPN", "predcls": "KERN PredCls", "sgdet": "KERN SGDet"}
# Sizes: (full run, smoke run); env MULTI_GPU_<KEY>.
SIZES = {
    "rows": (108_073, 1_500),
    "train_images": (3_000, 24),
    "test_images": (2_200, 8),  # >= 2,000 test images with relations for the evaluation
    "num_val": (100, 4),
    "detector_iters": (100, 4),
    "kern_iters": (200, 4),
    "redo_detector_iters": (30, 2),  # part 2 on a fresh machine: the detector the KERN phases start from
    "fault_iters": (60, 12),
    "fault_checkpoint_period": (20, 4),
}
SMOKE_PER_GPU_BATCH = 2  # vg_scale's smoke batch


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["1", "2", "all", "faults"], default="all")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the path (CPU processes over gloo "
                                                              "where there is no GPU)")
    parser.add_argument("--table", action="store_true", help="only print the table of <out>/multi_gpu.json")
    parser.add_argument("--workdir", default=ROOT, help="where datasets/ and output/ go (default: the project root)")
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"), help="JSON, log, table and metrics")
    parser.add_argument("--gpus", type=int, default=int(os.environ.get("MULTI_GPU_GPUS", 2)),
                        help="GPUs of the multi-GPU side (default 2); env MULTI_GPU_GPUS")
    for key in SIZES:
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, help=f"default {SIZES[key][0]} ({SIZES[key][1]} "
                            "with --smoke); env MULTI_GPU_" + key.upper())
    parser.add_argument("--detector-base-lr", type=float, default=float(os.environ.get("MULTI_GPU_DETECTOR_BASE_LR",
                        0.002)), help="SOLVER.BASE_LR of the detector from random init (default 0.002)")
    parser.add_argument("--faults", default=os.environ.get("MULTI_GPU_FAULTS", "kill,stall"),
                        help="fault checks of part 1: kill, stall, both (default) or none; env MULTI_GPU_FAULTS")
    parser.add_argument("--stall-timeout-s", type=float, default=None,
                        help="--dist-timeout-s of the stall check (default 30, 10 with --smoke)")
    parser.add_argument("--fault-exit-bound-s", type=float, default=90.0,
                        help="the job must end this long after the kill (after the timeout for the stall); the "
                             "launcher's SIGTERM-then-SIGKILL of the other ranks takes up to 30 s (default 90)")
    args = parser.parse_args(argv)
    for key, (full, smoke) in SIZES.items():
        if getattr(args, key) is None:
            setattr(args, key, int(os.environ.get(f"MULTI_GPU_{key.upper()}", smoke if args.smoke else full)))
    if args.stall_timeout_s is None:
        args.stall_timeout_s = 10.0 if args.smoke else 30.0
    faults = [f for f in args.faults.split(",") if f and f != "none"]
    unknown = sorted(set(faults) - {"kill", "stall"})
    if unknown:
        parser.error(f"--faults: unknown {', '.join(unknown)} (kill, stall, none)")
    args.faults = faults
    if args.gpus < 2:
        parser.error("--gpus: at least 2 (the multi-GPU side; 1 GPU is always run too)")
    if args.fault_checkpoint_period >= args.fault_iters:
        parser.error("--fault-checkpoint-period must be below --fault-iters (the kill comes after a checkpoint)")
    args.workdir, args.out = os.path.abspath(args.workdir), os.path.abspath(args.out)
    args.budget_s = None  # vg_scale's run reads it: no iteration cutting here
    return args


BENCH_DIST_TIMEOUT_S = 300  # --dist-timeout-s of the measured runs: a hang ends within the device call


def launch_args(gpus: int) -> List[str]:
    """train_net.py options before the config: the processes and the probe."""
    processes = ["--num-gpus", str(gpus), "--dist-url", "auto", "--dist-timeout-s", str(BENCH_DIST_TIMEOUT_S)]
    return (processes if gpus > 1 else []) + ["--register", PROBE]


# ---------------------------------------------------------------------------------------------- figures
def rank_memory(output: str) -> dict:
    """Each rank's peak GPU memory from rank_probe.py's lines (the largest of a rank's lines), in rank order."""
    peaks: Dict[int, tuple] = {}
    for rank, allocated, reserved in re.findall(r"MULTI_GPU rank (\d+) peak_gpu_memory_gb ([\d.]+) reserved_gb "
                                                r"([\d.]+)", output):
        old = peaks.get(int(rank), (0.0, 0.0))
        peaks[int(rank)] = (max(old[0], float(allocated)), max(old[1], float(reserved)))
    if not peaks:
        return {}
    ranks = sorted(peaks)
    return {"peak_gpu_memory_gb_per_gpu": [peaks[r][0] for r in ranks],
            "peak_gpu_reserved_gb_per_gpu": [peaks[r][1] for r in ranks]}


def scaling_rows(steps: dict, gpus: int) -> List[dict]:
    """One row per training phase with both runs: images/s of each, the ratio (N GPUs / 1 GPU), peak memory per
    GPU, loader wait share."""
    rows = []
    for phase in PHASES:
        one, many = steps.get(f"{phase}_1gpu", {}), steps.get(f"{phase}_{gpus}gpu", {})
        if not one and not many:
            continue
        row = {"phase": phase, "name": PHASE_NAMES[phase], "config": CONFIGS[phase],
               "per_gpu_batch": one.get("per_gpu_batch") or many.get("per_gpu_batch"),
               "iters": one.get("iters") or many.get("iters")}
        for side, step in (("1", one), ("n", many)):
            row[f"images_per_s_{side}"] = step.get("images_per_s")
            row[f"memory_gb_{side}"] = step.get("peak_gpu_memory_gb_per_gpu")
            row[f"wait_share_{side}"] = step.get("data_wait_share")
            row[f"rc_{side}"] = step.get("rc")
        row["ratio"] = ratio(row["images_per_s_n"], row["images_per_s_1"])
        rows.append(row)
    return rows


def ratio(numerator: Optional[float], denominator: Optional[float], digits: int = 2) -> Optional[float]:
    return round(numerator / denominator, digits) if numerator and denominator else None


def compare_metrics(one: dict, many: dict) -> dict:
    """Two sgg_metrics.json contents: image counts, how many metrics, the largest absolute difference over the
    metrics and the per-predicate recalls, the names present in only one."""
    diffs, only = [], []
    for key in ("metrics", "per_predicate"):
        a, b = _flat(one.get(key, {})), _flat(many.get(key, {}))
        only += sorted(set(a) ^ set(b))
        diffs += [abs(a[k] - b[k]) for k in set(a) & set(b)]
    return {"num_images": [one.get("num_images"), many.get("num_images")], "metrics": len(one.get("metrics", {})),
            "max_abs_diff": max(diffs) if diffs else None, "only_in_one": only,
            "identical": not only and bool(diffs) and max(diffs) == 0.0 and one.get("num_images") == many.get(
                "num_images")}


def _flat(value, prefix="") -> Dict[str, float]:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}{k}/"))
        return out
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {prefix.rstrip("/"): float(value)}
    return {}


def _fmt(value, spec: str = "", none: str = "–") -> str:
    if value is None:
        return none
    if isinstance(value, list):
        return " / ".join(_fmt(v, spec) for v in value)
    return format(value, spec)


def format_table(state: dict) -> str:
    """The run's figures as text: the scaling table, one summary line per phase, the evaluation, the faults."""
    gpus = state.get("gpus", 2)
    lines = [f"Multi-GPU on the VG stand-in: {state.get('device', '?')} x {gpus}, {state.get('date', '?')}"
             f"{' (smoke sizes)' if state.get('smoke') else ''}", ""]
    rows = scaling_rows(state.get("steps", {}), gpus)
    if rows:
        lines += [f"| phase (config) | per-GPU batch | iterations | 1 GPU images/s | {gpus} GPUs images/s | ratio | "
                  f"peak memory per GPU, GB (1 GPU; {gpus} GPUs) | loader wait share (1 GPU; {gpus} GPUs) |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['name']} ({r['config']}) | {_fmt(r['per_gpu_batch'])} | {_fmt(r['iters'])} | "
                         f"{_fmt(r['images_per_s_1'], '.1f')} | {_fmt(r['images_per_s_n'], '.1f')} | "
                         f"{_fmt(r['ratio'], '.2f')}x | {_fmt(r['memory_gb_1'], '.1f')}; {_fmt(r['memory_gb_n'], '.1f')}"
                         f" | {_fmt(r['wait_share_1'], '.1%')}; {_fmt(r['wait_share_n'], '.1%')} |")
        lines.append("")
        for r in rows:
            if r["ratio"] is not None:
                lines.append(f"{gpus}-GPU scaling ({r['name']}, {r['config']}): {r['ratio']:.2f}x")
        lines.append("")
    evaluation = state.get("evaluation")
    steps = state.get("steps", {})
    one, many = steps.get("eval_sgdet_1gpu", {}), steps.get(f"eval_sgdet_{gpus}gpu", {})
    if one or many:
        lines.append(f"SGDet --eval-only, vg150_test ({_fmt(one.get('num_images') or many.get('num_images'))} images):"
                     f" wall {_fmt(one.get('wall_s'), '.0f')} s on 1 GPU, {_fmt(many.get('wall_s'), '.0f')} s on "
                     f"{gpus} ({_fmt(ratio(one.get('wall_s'), many.get('wall_s')), '.2f')}x); inference "
                     f"{_fmt(one.get('inference_total_s'), '.0f')} s vs {_fmt(many.get('inference_total_s'), '.0f')} s"
                     f" ({_fmt(ratio(one.get('inference_total_s'), many.get('inference_total_s')), '.2f')}x); peak "
                     f"memory per GPU {_fmt(one.get('peak_gpu_memory_gb_per_gpu'), '.1f')}; "
                     f"{_fmt(many.get('peak_gpu_memory_gb_per_gpu'), '.1f')} GB")
        if evaluation:
            same = "identical" if evaluation["identical"] else "DIFFERENT"
            lines.append(f"  sgg_metrics.json 1 GPU vs {gpus}: {same} ({evaluation['metrics']} metrics, images "
                         f"{_fmt(evaluation['num_images'])}, largest difference {_fmt(evaluation['max_abs_diff'], 'g')}"
                         f"{', only in one: ' + ', '.join(evaluation['only_in_one'][:5]) if evaluation['only_in_one'] else ''})")
        lines.append("")
    for name, check in state.get("faults", {}).items():
        verdict = "OK" if not check.get("problems") else "PROBLEMS: " + "; ".join(check["problems"])
        if name == "kill":
            lines.append(f"Fault kill -9 of rank {check.get('kill_rank')} ({gpus} GPUs): exit status {check.get('rc')} "
                         f"{_fmt(check.get('exit_s_after_kill'), '.1f')} s after the kill; resumed from "
                         f"{check.get('last_checkpoint', '–')} (iteration {_fmt(check.get('checkpoint_iteration'))}), "
                         f"finished at {_fmt(check.get('final_iteration'))}: {verdict}")
        else:
            lines.append(f"Fault stall of rank {check.get('stall_rank')} (--dist-timeout-s {_fmt(check.get('timeout_s'), 'g')})"
                         f": exit status {check.get('rc')} {_fmt(check.get('exit_s_after_stall'), '.1f')} s after "
                         f"the stall: {verdict}")
        if check.get("error_line"):
            lines.append(f"  {check['error_line']}")
    for step, error in state.get("failed", {}).items():
        lines.append(f"FAILED {step}: {error}")
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------------------------- fault checks
def with_options(command: List[str], *options: str) -> List[str]:
    """``command`` (train_net.py's path, then its arguments) with ``options`` right after the script (before the
    config overrides, which take the rest of the line)."""
    return [command[0], *options, *command[1:]]


def rank_pids(output_dir: str) -> Dict[int, int]:
    """{rank: pid} from the ``Rank R of N: pid P`` lines of OUTPUT_DIR/log.txt* (the latest run's win)."""
    pids = {}
    for path in sorted(glob.glob(os.path.join(output_dir, "log.txt*"))):
        with open(path, errors="replace") as f:
            for rank, pid in re.findall(r"Rank (\d+) of \d+: pid (\d+)", f.read()):
                pids[int(rank)] = int(pid)
    return pids


def session_processes(session_id: int) -> List[int]:
    """Live processes (not zombies) of a session (Linux /proc)."""
    pids = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == session_id and fields[0] != "Z":
            pids.append(int(stat.split("/")[2]))
    return sorted(pids)


def wait_for_session_end(session_id: int, wait_s: float) -> List[int]:
    """Wait up to ``wait_s`` for the session's processes to end; kill -9 those left (returned)."""
    deadline = time.perf_counter() + wait_s
    while session_processes(session_id) and time.perf_counter() < deadline:
        time.sleep(0.2)
    left = session_processes(session_id)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    return left


def newest_checkpoint(output_dir: str) -> Optional[str]:
    names = [n for n in os.listdir(output_dir) if re.fullmatch(r"model_\d{7}\.pth", n)] if os.path.isdir(
        output_dir) else []
    return max(names) if names else None


def error_line(text: str, tool: str = "train_net.py") -> str:
    lines = [line for line in text.splitlines() if line.startswith(f"{tool}: error:")]
    return lines[-1] if lines else ""


def state_differences(expected, actual, path: str = "") -> List[str]:
    """Where two nested states (dicts, lists, tensors, numbers) differ: a list of paths, empty when equal."""
    import torch

    if isinstance(expected, dict) and isinstance(actual, dict):
        out = [f"{path}/{k}: missing" for k in expected if k not in actual]
        out += [f"{path}/{k}: extra" for k in actual if k not in expected]
        for k in expected:
            if k in actual:
                out += state_differences(expected[k], actual[k], f"{path}/{k}")
        return out
    if isinstance(expected, (list, tuple)) and isinstance(actual, (list, tuple)):
        if len(expected) != len(actual):
            return [f"{path}: {len(expected)} items vs {len(actual)}"]
        return [d for i, (a, b) in enumerate(zip(expected, actual)) for d in state_differences(a, b, f"{path}[{i}]")]
    if isinstance(expected, torch.Tensor) and isinstance(actual, torch.Tensor):
        same = (expected.shape == actual.shape and expected.dtype == actual.dtype
                and torch.equal(expected.cpu(), actual.cpu()))
        return [] if same else [f"{path}: tensors differ"]
    return [] if expected == actual or (expected != expected and actual != actual) else [
        f"{path}: {expected!r} vs {actual!r}"]


def _load(path: str):
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def _read(path: str) -> str:
    with open(path, errors="replace") as f:
        return f.read()


def _start(command, cwd, env, log):
    return subprocess.Popen([sys.executable, *command], cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _wait_for(predicate, proc, timeout_s: float) -> bool:
    deadline = time.perf_counter() + timeout_s
    while not predicate():
        if proc.poll() is not None or time.perf_counter() > deadline:
            return False
        time.sleep(0.05)
    return True


def _stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def kill_check(command: List[str], *, cwd: str, env: dict, output_dir: str, max_iter: int, log_prefix: str,
               kill_rank: int = 1, exit_bound_s: float = 90.0, start_timeout_s: float = 600.0,
               resume_timeout_s: float = 600.0, leftover_wait_s: float = 20.0) -> dict:
    """Run ``command`` (train_net.py and its arguments: a training of several processes that checkpoints into
    ``output_dir`` and ends at ``max_iter``), kill -9 rank ``kill_rank`` as soon as the first checkpoint is there,
    wait (at most ``exit_bound_s``) for the job to end, then run the same command with ``--resume``. Returns what was
    seen (see :func:`kill_problems`); logs in ``<log_prefix>_killed.log`` / ``_resumed.log``."""
    env = {k: v for k, v in env.items() if k not in (PROBE_DIR_ENV, STALL_ENV)}
    obs = {"kill_rank": kill_rank, "max_iter": max_iter, "exit_bound_s": exit_bound_s}
    last_checkpoint = os.path.join(output_dir, "last_checkpoint")
    start = time.perf_counter()
    with open(f"{log_prefix}_killed.log", "w") as log:
        proc = _start(with_options(command, "--register", PROBE), cwd, env, log)
        try:
            if not _wait_for(lambda: os.path.exists(last_checkpoint), proc, start_timeout_s):
                obs["error"] = (f"no checkpoint within {start_timeout_s:g} s" if proc.poll() is None else
                                f"the run ended (status {proc.returncode}) before its first checkpoint")
                return obs
            obs["first_checkpoint_s"] = round(time.perf_counter() - start, 1)
            pids = rank_pids(output_dir)
            obs["world_size"] = len(pids)
            if kill_rank not in pids:
                obs["error"] = f"no pid of rank {kill_rank} in {output_dir}/log.txt* (found ranks {sorted(pids)})"
                return obs
            os.kill(pids[kill_rank], signal.SIGKILL)
            killed = time.perf_counter()
            try:
                obs["rc"] = proc.wait(timeout=exit_bound_s)
            except subprocess.TimeoutExpired:
                obs["hung"] = True
            obs["exit_s_after_kill"] = round(time.perf_counter() - killed, 1)
        finally:
            _stop(proc)
            obs["leftover_processes"] = wait_for_session_end(proc.pid, leftover_wait_s)
    obs["error_line"] = error_line(_read(f"{log_prefix}_killed.log"))
    obs["last_checkpoint"] = _read(last_checkpoint).strip()
    obs["newest_checkpoint"] = newest_checkpoint(output_dir)
    checkpoint = _load(os.path.join(output_dir, obs["last_checkpoint"]))
    iteration = obs["checkpoint_iteration"] = checkpoint["iteration"]
    optimizer_state = checkpoint["trainer"]["_trainer"]["optimizer"]["state"]
    obs["checkpoint_optimizer_tensors"] = sum(len(v) for v in optimizer_state.values())  # SGD: momentum buffers

    probe_dir = f"{log_prefix}_probe"
    shutil.rmtree(probe_dir, ignore_errors=True)
    with open(f"{log_prefix}_resumed.log", "w") as log:
        proc = _start(with_options(command, "--register", PROBE, "--resume"), cwd, dict(env, **{PROBE_DIR_ENV: probe_dir}),
                      log)
        try:
            obs["resume_rc"] = proc.wait(timeout=resume_timeout_s)
        except subprocess.TimeoutExpired:
            obs["resume_rc"] = "timeout"
        finally:
            _stop(proc)
            wait_for_session_end(proc.pid, leftover_wait_s)
    resumed_log = _read(f"{log_prefix}_resumed.log")
    obs["resume_loaded"] = f"Loading from {os.path.join(output_dir, obs['last_checkpoint'])}" in resumed_log
    obs["resume_started_at_next_iteration"] = bool(
        re.search(rf"Starting training from iteration {iteration + 1}\b", resumed_log))
    obs["resumed"] = {}
    for path in sorted(glob.glob(os.path.join(probe_dir, "resumed_rank*.pt"))):
        probe = _load(path)
        rank = int(re.search(r"rank(\d+)", os.path.basename(path)).group(1))
        obs["resumed"][rank] = {"start_iter": probe["start_iter"],
                                "differences": state_differences(checkpoint["trainer"], probe["trainer"])[:10]}
    final = os.path.join(output_dir, "model_final.pth")
    if os.path.isfile(final):
        final = _load(final)
        obs["final_iteration"] = final["iteration"]
        obs["final_scheduler_last_epoch"] = final["trainer"]["hooks"].get("LRScheduler", {}).get("last_epoch")
    return obs


def kill_problems(obs: dict) -> List[str]:
    """What :func:`kill_check` saw that is wrong; empty when the job ended in time with the message, left nothing
    behind and resumed exactly."""
    if "error" in obs:
        return [obs["error"]]
    rank, problems = obs["kill_rank"], []
    if obs.get("hung"):
        problems.append(f"the job did not end within {obs['exit_bound_s']:g} s of the kill")
    elif obs.get("rc") == 0:
        problems.append(f"the job exited 0 after rank {rank} was killed")
    line = obs.get("error_line", "")
    if not (f"rank {rank} of" in line and "SIGKILL" in line and "--resume" in line):
        problems.append(f"no one-line message naming rank {rank}, SIGKILL and --resume (got {line!r})")
    if obs.get("leftover_processes"):
        problems.append(f"processes left after the job: {obs['leftover_processes']}")
    if obs.get("last_checkpoint") != obs.get("newest_checkpoint"):
        problems.append(f"last_checkpoint names {obs.get('last_checkpoint')}, the newest is {obs.get('newest_checkpoint')}")
    if obs.get("resume_rc") != 0:
        problems.append(f"--resume exited with {obs.get('resume_rc')}")
    if not obs.get("resume_loaded") or not obs.get("resume_started_at_next_iteration"):
        problems.append("--resume did not log loading the checkpoint and starting at the iteration after it")
    if not obs.get("checkpoint_optimizer_tensors"):
        problems.append("the checkpoint holds no optimizer state to compare with")
    expected_start = obs.get("checkpoint_iteration", -2) + 1
    for r in range(obs.get("world_size", 0)):
        resumed = obs.get("resumed", {}).get(r)
        if resumed is None:
            problems.append(f"rank {r}: no state saved after --resume")
        elif resumed["start_iter"] != expected_start or resumed["differences"]:
            problems.append(f"rank {r}: resumed at {resumed['start_iter']} (expected {expected_start}), state "
                            f"differences {resumed['differences']}")
    if obs.get("final_iteration") != obs["max_iter"] - 1:
        problems.append(f"model_final.pth at iteration {obs.get('final_iteration')}, expected {obs['max_iter'] - 1}")
    if obs.get("final_scheduler_last_epoch") != obs["max_iter"]:
        problems.append(f"scheduler at step {obs.get('final_scheduler_last_epoch')} after the run, expected "
                        f"{obs['max_iter']}")
    return problems


def stall_check(command: List[str], *, cwd: str, env: dict, timeout_s: float, stall_at: int, log_prefix: str,
                stall_rank: int = 1, exit_bound_s: float = 90.0, start_timeout_s: float = 600.0,
                leftover_wait_s: float = 20.0) -> dict:
    """Run ``command`` (a training of several processes) with ``--dist-timeout-s timeout_s`` while rank
    ``stall_rank`` stops answering at iteration ``stall_at`` (rank_probe.py); wait for the job to end, at most
    ``timeout_s + exit_bound_s`` after the stall. Returns what was seen (see :func:`stall_problems`)."""
    probe_dir = f"{log_prefix}_probe"
    shutil.rmtree(probe_dir, ignore_errors=True)
    os.makedirs(probe_dir)
    env = dict(env, **{PROBE_DIR_ENV: probe_dir, STALL_ENV: f"{stall_rank}:{stall_at}"})
    stalled_file = os.path.join(probe_dir, f"stalled_rank{stall_rank}")
    obs = {"stall_rank": stall_rank, "stall_at": stall_at, "timeout_s": timeout_s, "exit_bound_s": exit_bound_s}
    with open(f"{log_prefix}_stalled.log", "w") as log:
        proc = _start(with_options(command, "--register", PROBE, "--dist-timeout-s", f"{timeout_s:g}"), cwd, env, log)
        try:
            if not _wait_for(lambda: os.path.exists(stalled_file), proc, start_timeout_s):
                obs["error"] = (f"rank {stall_rank} did not reach iteration {stall_at} within {start_timeout_s:g} s"
                                if proc.poll() is None else f"the run ended (status {proc.returncode}) before the stall")
                return obs
            try:
                obs["rc"] = proc.wait(timeout=timeout_s + exit_bound_s)
            except subprocess.TimeoutExpired:
                obs["hung"] = True
            stalled_at = _read(stalled_file).strip()
            if stalled_at:
                obs["exit_s_after_stall"] = round(time.time() - float(stalled_at), 1)
        finally:
            _stop(proc)
            obs["leftover_processes"] = wait_for_session_end(proc.pid, leftover_wait_s)
    obs["error_line"] = error_line(_read(f"{log_prefix}_stalled.log"))
    return obs


def stall_problems(obs: dict) -> List[str]:
    if "error" in obs:
        return [obs["error"]]
    problems = []
    if obs.get("hung"):
        problems.append(f"the job did not end within --dist-timeout-s {obs['timeout_s']:g} s + "
                        f"{obs['exit_bound_s']:g} s of the stall")
    elif obs.get("rc") == 0:
        problems.append("the job exited 0 with a stalled rank")
    if "--dist-timeout-s" not in obs.get("error_line", ""):
        problems.append(f"no one-line message naming --dist-timeout-s (got {obs.get('error_line', '')!r})")
    if obs.get("leftover_processes"):
        problems.append(f"processes left after the job: {obs['leftover_processes']}")
    return problems


# ---------------------------------------------------------------------------------------------- the run
class MultiGPURun(VGScaleRun):
    NAME = "multi_gpu"

    def __init__(self, args):
        super().__init__(args)
        self.state.update(gpus=args.gpus, date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
        self.state.setdefault("failed", {})

    def save(self):
        super().save()
        with open(os.path.join(self.args.out, "multi_gpu_table.txt"), "w") as f:
            f.write(format_table(self.state))

    def summary(self):
        print(format_table(self.state), end="", flush=True)

    def attempt(self, step: str, function, *args):
        """Run a step; a failure is recorded and the run goes on (False)."""
        try:
            function(*args)
            self.state["failed"].pop(step, None)
            return True
        except Exception as e:  # noqa: BLE001  (a benchmark: record, go on)
            self.say(f"{step}: FAILED: {e}")
            self.state["failed"][step] = str(e)
            self.save()
            return False

    def per_gpu_batch(self, phase: str) -> int:
        return SMOKE_PER_GPU_BATCH if self.args.smoke else int(_config_value(CONFIGS[phase], "SOLVER.IMS_PER_BATCH"))

    def step_dir(self, step: str) -> str:
        return os.path.join(self.scratch, step)

    def detector_weights(self) -> str:
        for step in ("detector_1gpu", "detector_redo"):
            path = os.path.join(self.step_dir(step), "model_final.pth")
            if os.path.isfile(path):
                return path
        raise RuntimeError("no detector trained in this workdir (part 1's detector_1gpu)")

    def phase_opts(self, phase: str) -> List[str]:
        if phase == "detector":
            return ["MODEL.WEIGHTS", "", "MODEL.UNTRAINED_DETECTOR", "calibrate",
                    "SOLVER.BASE_LR", str(self.args.detector_base_lr)]
        return ["MODEL.WEIGHTS", self.detector_weights()]

    def train_phase(self, phase: str, gpus: int, iters: int, step: str = None):
        step = step or f"{phase}_{gpus}gpu"
        output_dir = self.step_dir(step)
        shutil.rmtree(output_dir, ignore_errors=True)
        per_gpu = self.per_gpu_batch(phase)
        opts = [*self.smoke_opts, "SOLVER.IMS_PER_BATCH", str(per_gpu * gpus), "SOLVER.MAX_ITER", str(iters),
                "DATASETS.TEST", "()", "DATASETS.SGG.VAL", "()", "TEST.EVAL_PERIOD", "0", *self.phase_opts(phase),
                "OUTPUT_DIR", output_dir]
        output = self.tool(step, "train_net.py", *launch_args(gpus), "--config-file", os.path.join(ROOT, CONFIGS[phase]),
                           *opts)
        figures = training_figures(output, output_dir, per_gpu * gpus)
        for key in ("peak_gpu_memory_gb", "peak_gpu_reserved_gb"):  # vg_scale's: the launcher process's, not a rank's
            figures.pop(key, None)
        figures.update(rank_memory(output))
        self.state["steps"][step].update(phase=phase, gpus=gpus, iters=iters, per_gpu_batch=per_gpu,
                                         images_per_batch=per_gpu * gpus, **figures)
        self.save()

    def evaluate_sgdet(self, gpus: int):
        step = f"eval_sgdet_{gpus}gpu"
        output_dir = self.step_dir(step)
        shutil.rmtree(output_dir, ignore_errors=True)
        weights = os.path.join(self.step_dir("sgdet_1gpu"), "model_final.pth")
        output = self.tool(step, "train_net.py", *launch_args(gpus), "--config-file",
                           os.path.join(ROOT, CONFIGS["sgdet"]), "--eval-only", *self.smoke_opts,
                           "MODEL.WEIGHTS", weights, "OUTPUT_DIR", output_dir)
        metrics_file = os.path.join(output_dir, "inference", "vg150_test", "sgg_metrics.json")
        figures = evaluation_figures(output, metrics_file)
        # vg_scale's memory figures are the launcher process's, not a rank's; its image count is rank 0's batches
        for key in ("peak_gpu_memory_gb", "peak_gpu_reserved_gb", "images"):
            figures.pop(key, None)
        figures.update(rank_memory(output))
        if os.path.isfile(metrics_file):
            with open(metrics_file) as f:
                figures["num_images"] = json.load(f)["num_images"]
            shutil.copy(metrics_file, os.path.join(self.args.out, f"multi_gpu_sgdet_{gpus}gpu_sgg_metrics.json"))
        if figures.get("num_images") and figures.get("inference_total_s"):
            figures["images_per_s"] = round(figures["num_images"] / figures["inference_total_s"], 2)
        self.state["steps"][step].update(gpus=gpus, **figures)
        self.compare_evaluations()
        self.save()

    def compare_evaluations(self):
        paths = [os.path.join(self.args.out, f"multi_gpu_sgdet_{g}gpu_sgg_metrics.json") for g in (1, self.args.gpus)]
        if all(os.path.isfile(p) for p in paths):
            one, many = (json.loads(_read(p)) for p in paths)
            self.state["evaluation"] = compare_metrics(one, many)

    def fault_command(self, output_dir: str) -> List[str]:
        a, per_gpu = self.args, self.per_gpu_batch("predcls")
        return [TRAIN_NET, "--num-gpus", str(a.gpus), "--dist-url", "auto", "--config-file",
                os.path.join(ROOT, CONFIGS["predcls"]), *self.smoke_opts,
                "SOLVER.IMS_PER_BATCH", str(per_gpu * a.gpus), "SOLVER.MAX_ITER", str(a.fault_iters),
                "SOLVER.CHECKPOINT_PERIOD", str(a.fault_checkpoint_period), "DATASETS.TEST", "()",
                "DATASETS.SGG.VAL", "()", "TEST.EVAL_PERIOD", "0", *self.phase_opts("predcls"), "OUTPUT_DIR", output_dir]

    def fault(self, name: str):
        a = self.args
        output_dir = self.step_dir(f"fault_{name}")
        shutil.rmtree(output_dir, ignore_errors=True)
        log_prefix = os.path.join(self.scratch, "logs", f"fault_{name}")
        self.say(f"fault {name}: {' '.join(self.fault_command(output_dir))}")
        start = time.perf_counter()
        if name == "kill":
            obs = kill_check(self.fault_command(output_dir), cwd=a.workdir, env=self.env, output_dir=output_dir,
                             max_iter=a.fault_iters, log_prefix=log_prefix, exit_bound_s=a.fault_exit_bound_s)
            obs["problems"] = kill_problems(obs)
        else:
            obs = stall_check(self.fault_command(output_dir), cwd=a.workdir, env=self.env, timeout_s=a.stall_timeout_s,
                              stall_at=a.fault_checkpoint_period // 2, log_prefix=log_prefix,
                              exit_bound_s=a.fault_exit_bound_s)
            obs["problems"] = stall_problems(obs)
        obs["wall_s"] = round(time.perf_counter() - start, 1)
        obs["resumed"] = {str(k): v for k, v in obs.get("resumed", {}).items()}  # JSON keys
        self.state.setdefault("faults", {})[name] = obs
        self.say(f"fault {name}: {'OK' if not obs['problems'] else 'PROBLEMS: ' + '; '.join(obs['problems'])} "
                 f"({obs['wall_s']:.0f} s)")
        self.save()
        if obs["problems"]:
            raise RuntimeError("; ".join(obs["problems"]))

    def part1(self):
        a = self.args
        self.attempt("data", self.data, a.train_images)
        for phase in ("detector", "predcls"):
            if phase == "predcls":
                self.attempt("priors", self.priors)
            for gpus in (1, a.gpus):
                self.attempt(f"{phase}_{gpus}gpu", self.train_phase, phase, gpus,
                             a.detector_iters if phase == "detector" else a.kern_iters)
        for name in a.faults:
            self.attempt(f"fault_{name}", self.fault, name)

    def faults_part(self):
        self.inputs()
        for name in self.args.faults:
            self.attempt(f"fault_{name}", self.fault, name)

    def part2(self):
        self.inputs()
        for gpus in (1, self.args.gpus):
            self.attempt(f"sgdet_{gpus}gpu", self.train_phase, "sgdet", gpus, self.args.kern_iters)
        for gpus in (1, self.args.gpus):
            self.attempt(f"eval_sgdet_{gpus}gpu", self.evaluate_sgdet, gpus)

    def inputs(self):
        """What parts 2 and faults start from: part 1's stand-in, detector and priors, remade (small) if missing."""
        a = self.args
        marker = os.path.join(a.workdir, "datasets", "vg", "standin.json")
        if not os.path.isfile(marker):
            self.attempt("data", self.data, a.train_images)
        try:
            self.detector_weights()
        except RuntimeError:
            self.say("no detector from part 1 in this workdir (a fresh machine?): a short 1-GPU one first")
            self.state["redone"] = True
            self.attempt("detector_redo", self.train_phase, "detector", 1, a.redo_detector_iters, "detector_redo")
        if not os.path.isfile(os.path.join(a.workdir, PRIORS_FILE)):
            self.attempt("priors", self.priors)


def main(argv=None):
    args = parse_args(argv)
    if args.table:
        with open(os.path.join(args.out, "multi_gpu.json")) as f:
            print(format_table(json.load(f)), end="")
        return 0
    if not args.smoke and _cuda_available():
        import torch

        if torch.cuda.device_count() < args.gpus:
            print(f"multi_gpu.py: {torch.cuda.device_count()} GPU(s) here, --gpus {args.gpus} needs as many "
                  "(use the nvidia-h200-x2 machine)", file=sys.stderr)
            return 2
    run = MultiGPURun(args)
    run.say(f"part {args.part}{' (smoke)' if args.smoke else ''}: 1 vs {args.gpus} GPUs, workdir {args.workdir}, "
            f"out {args.out}")
    run.run_part({"1": [run.part1], "2": [run.part2], "all": [run.part1, run.part2], "faults": [run.faults_part]})
    return 1 if run.state["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
