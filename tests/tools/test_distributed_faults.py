"""Faults in a two-process training (``tools/train_net.py --num-gpus 2``: two CPU processes over gloo), on the toy
dataset, with the fault checks that benchmarks/multi_gpu.py runs on two GPUs (its ``kill_check``, ``stall_check``):

- ``kill -9`` of rank 1 after the first checkpoint: the job ends non-zero within a bounded time with one line naming
  the rank, the signal and the checkpoint to resume from, and leaves no process behind; ``--resume`` (the same
  command) starts from that checkpoint on both ranks with its iteration count, LR scheduler and optimizer state
  (compared with the checkpoint file) and finishes the schedule;
- a rank that stops answering (alive, sleeping): with ``--dist-timeout-s 6`` the other rank's collective fails after
  6 s and the job ends with a message naming the timeout.
"""
import os
import re

import pytest

from tests.helpers.benchmark_modules import load_benchmark

from tests.helpers import REPO_ROOT
from tests.helpers.toy_tools import MODE_CONFIGS


MAX_ITER, CHECKPOINT_PERIOD, LR_STEP = 40, 4, 30


@pytest.fixture(scope="module")
def multi_gpu():
    return load_benchmark("multi_gpu")


def two_process_command(toy_tools, output_dir):
    """KERN PredCls in 2 CPU processes: checkpoints every 4 iterations, lr x0.1 from iteration 30, no evaluation."""
    return [os.path.join(REPO_ROOT, "tools", "train_net.py"), "--num-gpus", "2", "--dist-url", "auto",
            "--config-file", MODE_CONFIGS["predcls"], "OUTPUT_DIR", output_dir, *toy_tools.kern_opts(),
            "SOLVER.MAX_ITER", str(MAX_ITER), "SOLVER.CHECKPOINT_PERIOD", str(CHECKPOINT_PERIOD),
            "SOLVER.STEPS", f"({LR_STEP},)", "SOLVER.WARMUP_ITERS", "0", "DATASETS.TEST", "()",
            "MODEL.ROI_RELATION_HEAD.BATCH_SIZE_PER_IMAGE", "16"]


def env(toy_tools):
    python_path = os.pathsep.join(p for p in (REPO_ROOT, os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, KERN_DATASETS=toy_tools.datasets, PYTHONPATH=python_path)


@pytest.mark.slow
def test_kill_9_of_a_rank_ends_the_job_with_its_name_and_resume_restores_the_state(multi_gpu, toy_tools, tmp_path):
    output_dir = str(tmp_path / "run")
    obs = multi_gpu.kill_check(two_process_command(toy_tools, output_dir), cwd=toy_tools.work, env=env(toy_tools),
                               output_dir=output_dir, max_iter=MAX_ITER, log_prefix=str(tmp_path / "kill"),
                               exit_bound_s=45, start_timeout_s=180, resume_timeout_s=180)
    logs = "".join(open(p).read()[-3000:] for p in tmp_path.glob("kill_*.log"))
    assert multi_gpu.kill_problems(obs) == [], logs
    # On one machine the launcher sees the death at once and stops the other rank (SIGTERM).
    assert obs["rc"] == 1 and obs["exit_s_after_kill"] < 30 and obs["world_size"] == 2
    iteration = obs["checkpoint_iteration"]
    checkpoint = os.path.join(output_dir, f"model_{iteration:07d}.pth")
    assert re.fullmatch(
        r"train_net.py: error: rank 1 of 2 \(process 1 on machine 0, pid \d+\) was ended by SIGKILL \(kill -9, or the "
        r"kernel's out-of-memory killer \(see dmesg\)\); the launcher stopped the other processes of this machine\. "
        rf"Continue with the same command and --resume: it loads {re.escape(checkpoint)}\.", obs["error_line"])
    assert (iteration + 1) % CHECKPOINT_PERIOD == 0 and iteration < MAX_ITER - 1
    # Both ranks continued from exactly what the checkpoint holds: iteration, scheduler, optimizer (momentum).
    assert obs["checkpoint_optimizer_tensors"] > 0 and sorted(obs["resumed"]) == [0, 1]
    assert all(r == {"start_iter": iteration + 1, "differences": []} for r in obs["resumed"].values())
    assert obs["final_iteration"] == MAX_ITER - 1 and obs["final_scheduler_last_epoch"] == MAX_ITER


def test_state_differences_sees_a_changed_momentum(multi_gpu):
    import torch

    state = {"iteration": 3, "hooks": {"LRScheduler": {"last_epoch": 4, "base_lrs": [0.02]}},
             "_trainer": {"optimizer": {"state": {0: {"momentum_buffer": torch.ones(3)}}, "param_groups": [{"lr": 0.02}]}}}
    same = {"iteration": 3, "hooks": {"LRScheduler": {"last_epoch": 4, "base_lrs": [0.02]}},
            "_trainer": {"optimizer": {"state": {0: {"momentum_buffer": torch.ones(3)}}, "param_groups": [{"lr": 0.02}]}}}
    assert multi_gpu.state_differences(state, same) == []
    same["_trainer"]["optimizer"]["state"][0]["momentum_buffer"][1] = 0.5
    same["hooks"]["LRScheduler"]["last_epoch"] = 0
    del same["_trainer"]["optimizer"]["param_groups"][0]["lr"]
    assert multi_gpu.state_differences(state, same) == [
        "/hooks/LRScheduler/last_epoch: 4 vs 0", "/_trainer/optimizer/state/0/momentum_buffer: tensors differ",
        "/_trainer/optimizer/param_groups[0]/lr: missing"]


@pytest.mark.slow
def test_a_stalled_rank_ends_the_job_after_the_dist_timeout(multi_gpu, toy_tools, tmp_path):
    output_dir = str(tmp_path / "run")
    obs = multi_gpu.stall_check(two_process_command(toy_tools, output_dir), cwd=toy_tools.work, env=env(toy_tools),
                                timeout_s=6, stall_at=2, log_prefix=str(tmp_path / "stall"), exit_bound_s=30,
                                start_timeout_s=180)
    assert multi_gpu.stall_problems(obs) == [], open(tmp_path / "stall_stalled.log").read()[-3000:]
    # gloo's collective on rank 0 gives up after the timeout; the launcher then stops the sleeping rank.
    assert obs["rc"] == 1 and 6 <= obs["exit_s_after_stall"] < 6 + 30
    assert obs["error_line"].startswith("train_net.py: error: rank 0 of 2 (process 0 on machine 0, pid ")
    assert ("failed with the error above: a collective waited longer than --dist-timeout-s 6 s, so the other rank "
            "(rank 1) stopped answering") in obs["error_line"]


def test_rank_failure_messages(tmp_path):
    from torch.multiprocessing import ProcessExitedException, ProcessRaisedException

    from kern_d2.engine.distributed import add_distributed_arguments, rank_failure_message

    (tmp_path / "last_checkpoint").write_text("model_0000099.pth")
    abort = ProcessExitedException("process 1 terminated with signal SIGABRT", error_index=1, error_pid=42,
                                   exit_code=-6, signal_name="SIGABRT")
    message = rank_failure_message(abort, num_gpus=4, num_machines=2, machine_rank=1, timeout_s=600,
                                   output_dir=str(tmp_path))
    assert message == (
        "rank 5 of 8 (process 1 on machine 1, pid 42) was ended by SIGABRT (NCCL's watchdog aborts a rank whose "
        "collective waited longer than --dist-timeout-s 600 s: look for a rank that died or stalled before it (each "
        "rank's log ends where it stopped)); the launcher stopped the other processes of this machine; those of the "
        "other machines stop when their next collective fails (at the latest after --dist-timeout-s 600 s). Continue "
        f"with the same command and --resume: it loads {tmp_path}/model_0000099.pth.")
    status = ProcessExitedException("process 0 terminated with exit code 3", error_index=0, error_pid=7, exit_code=3)
    assert rank_failure_message(status, num_gpus=2, eval_only=True) == (
        "rank 0 of 2 (process 0 on machine 0, pid 7) exited with status 3; the launcher stopped the other processes "
        "of this machine. Run the evaluation again.")
    raised = ProcessRaisedException("Traceback ...\nValueError: bad", 1, 8)
    assert rank_failure_message(raised, num_gpus=4, output_dir=str(tmp_path / "none")).startswith(
        "rank 1 of 4 (process 1 on machine 0, pid 8) failed with the error above; the launcher stopped the other "
        f"processes of this machine. No checkpoint was written in {tmp_path}/none yet")
    timed_out = ProcessRaisedException("RuntimeError: [gloo] Timed out waiting 6000ms for recv", 0, 9)
    assert "so another rank stopped answering (stalled, or died on another machine)" in rank_failure_message(
        timed_out, num_gpus=4, timeout_s=6)

    import argparse

    parser = add_distributed_arguments(argparse.ArgumentParser())
    assert parser.parse_args([]).dist_timeout_s == 1800 and parser.parse_args(["--dist-timeout-s", "90"]).dist_timeout_s == 90
    with pytest.raises(SystemExit):
        parser.parse_args(["--dist-timeout-s", "0"])


def test_launched_processes_give_detectron2s_gloo_group_the_timeout():
    from datetime import timedelta

    from torch.distributed import distributed_c10d

    from kern_d2.engine.distributed import run_with_timeout

    before = distributed_c10d._get_default_timeout("gloo")
    seen = run_with_timeout(lambda args: (args, distributed_c10d._get_default_timeout("gloo")), 45, "a")
    assert seen == ("a", timedelta(seconds=45)) and distributed_c10d._get_default_timeout("gloo") == before
