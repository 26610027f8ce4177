"""benchmarks/multi_gpu.py's pure parts on CPU: arguments, per-rank memory, scaling ratios, the comparison of two
evaluations, the table and the fault verdicts (the launching itself needs two GPUs; its fault checks run on CPU in
tests/tools/test_distributed_faults.py)."""
import os

import pytest

from tests.helpers.benchmark_modules import load_benchmark


@pytest.fixture(scope="module")
def multi_gpu():
    return load_benchmark("multi_gpu")


@pytest.fixture
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("MULTI_GPU_"):
            monkeypatch.delenv(key)
    return monkeypatch


def test_arguments(multi_gpu, clean_env, tmp_path):
    args = multi_gpu.parse_args(["--part", "1"])
    assert (args.gpus, args.kern_iters, args.test_images, args.faults) == (2, 200, 2200, ["kill", "stall"])
    assert args.stall_timeout_s == 30.0 and args.budget_s is None
    smoke = multi_gpu.parse_args(["--smoke", "--faults", "kill", "--workdir", str(tmp_path)])
    assert (smoke.kern_iters, smoke.fault_iters, smoke.stall_timeout_s, smoke.faults) == (4, 12, 10.0, ["kill"])
    assert smoke.workdir == str(tmp_path)
    assert multi_gpu.parse_args(["--faults", "none"]).faults == []
    assert multi_gpu.parse_args(["--part", "faults"]).part == "faults"
    clean_env.setenv("MULTI_GPU_KERN_ITERS", "77")
    assert multi_gpu.parse_args([]).kern_iters == 77 and multi_gpu.parse_args(["--kern-iters", "5"]).kern_iters == 5
    for bad in (["--faults", "kill,oom"], ["--gpus", "1"], ["--fault-iters", "4", "--fault-checkpoint-period", "4"]):
        with pytest.raises(SystemExit):
            multi_gpu.parse_args(bad)


def test_launch_options_go_before_the_config_overrides(multi_gpu):
    assert multi_gpu.launch_args(1) == ["--register", multi_gpu.PROBE]
    assert multi_gpu.launch_args(2)[:4] == ["--num-gpus", "2", "--dist-url", "auto"]
    assert multi_gpu.with_options(["train_net.py", "--config-file", "c.yaml", "A", "1"], "--resume") == [
        "train_net.py", "--resume", "--config-file", "c.yaml", "A", "1"]


def test_rank_memory_takes_each_ranks_largest_line(multi_gpu):
    output = ("MULTI_GPU rank 1 peak_gpu_memory_gb 5.10 reserved_gb 6.00\nVG_SCALE peak_gpu_memory_gb 0.00 reserved_gb 0.00\n"
              "MULTI_GPU rank 0 peak_gpu_memory_gb 5.30 reserved_gb 6.50\nMULTI_GPU rank 0 peak_gpu_memory_gb 4.00 "
              "reserved_gb 7.00\n")
    assert multi_gpu.rank_memory(output) == {"peak_gpu_memory_gb_per_gpu": [5.3, 5.1],
                                             "peak_gpu_reserved_gb_per_gpu": [7.0, 6.0]}
    assert multi_gpu.rank_memory("nothing") == {}


def test_scaling_rows_and_ratio(multi_gpu):
    steps = {
        "predcls_1gpu": {"images_per_s": 100.0, "per_gpu_batch": 8, "iters": 200, "data_wait_share": 0.2,
                         "peak_gpu_memory_gb_per_gpu": [5.3], "rc": 0},
        "predcls_2gpu": {"images_per_s": 185.0, "per_gpu_batch": 8, "iters": 200, "data_wait_share": 0.25,
                         "peak_gpu_memory_gb_per_gpu": [5.4, 5.2], "rc": 0},
        "sgdet_1gpu": {"images_per_s": 37.0, "per_gpu_batch": 8, "iters": 200, "rc": 0},
        "sgdet_2gpu": {"rc": 1},  # failed: no ratio
    }
    rows = multi_gpu.scaling_rows(steps, 2)
    assert [r["phase"] for r in rows] == ["predcls", "sgdet"]
    assert rows[0]["ratio"] == 1.85 and rows[0]["memory_gb_n"] == [5.4, 5.2] and rows[0]["wait_share_1"] == 0.2
    assert rows[1]["ratio"] is None and rows[1]["rc_n"] == 1
    assert multi_gpu.ratio(None, 3.0) is None and multi_gpu.ratio(3.0, 0) is None and multi_gpu.ratio(1, 3, 3) == 0.333


def test_compare_metrics(multi_gpu):
    one = {"num_images": 2024, "metrics": {"R@50": 10.0, "mR@50": 2.0}, "per_predicate": {"R@50": {"on": 1.0}}}
    same = {"num_images": 2024, "metrics": {"R@50": 10.0, "mR@50": 2.0}, "per_predicate": {"R@50": {"on": 1.0}}}
    assert multi_gpu.compare_metrics(one, same) == {"num_images": [2024, 2024], "metrics": 2, "max_abs_diff": 0.0,
                                                    "only_in_one": [], "identical": True}
    other = {"num_images": 2024, "metrics": {"R@50": 10.5}, "per_predicate": {"R@50": {"on": 1.25}}}
    result = multi_gpu.compare_metrics(one, other)
    assert result["max_abs_diff"] == 0.5 and result["only_in_one"] == ["mR@50"] and not result["identical"]
    assert not multi_gpu.compare_metrics(one, dict(same, num_images=2000))["identical"]


def test_table(multi_gpu):
    state = {
        "device": "NVIDIA H200", "date": "2026-12-05 10:00 UTC", "gpus": 2,
        "steps": {
            "predcls_1gpu": {"images_per_s": 100.0, "per_gpu_batch": 8, "iters": 200, "data_wait_share": 0.2,
                             "peak_gpu_memory_gb_per_gpu": [5.3]},
            "predcls_2gpu": {"images_per_s": 185.0, "per_gpu_batch": 8, "iters": 200, "data_wait_share": 0.25,
                             "peak_gpu_memory_gb_per_gpu": [5.4, 5.2]},
            "eval_sgdet_1gpu": {"num_images": 2024, "wall_s": 120.0, "inference_total_s": 90.0},
            "eval_sgdet_2gpu": {"num_images": 2024, "wall_s": 70.0, "inference_total_s": 47.0},
        },
        "evaluation": {"num_images": [2024, 2024], "metrics": 18, "max_abs_diff": 0.0, "only_in_one": [],
                       "identical": True},
        "faults": {"kill": {"kill_rank": 1, "rc": 1, "exit_s_after_kill": 2.5, "last_checkpoint": "model_0000019.pth",
                            "checkpoint_iteration": 19, "final_iteration": 59, "problems": [],
                            "error_line": "train_net.py: error: rank 1 of 2 ..."},
                   "stall": {"stall_rank": 1, "timeout_s": 30.0, "rc": 1, "exit_s_after_stall": 41.0,
                             "problems": ["no one-line message naming --dist-timeout-s (got '')"]}},
        "failed": {"sgdet_2gpu": "sgdet_2gpu failed (rc 1)"},
    }
    table = multi_gpu.format_table(state)
    assert "| KERN PredCls (configs/VG-KERN/kern_predcls.yaml) | 8 | 200 | 100.0 | 185.0 | 1.85x | 5.3; 5.4 / 5.2 | " \
           "20.0%; 25.0% |" in table
    assert "2-GPU scaling (KERN PredCls, configs/VG-KERN/kern_predcls.yaml): 1.85x" in table
    assert "wall 120 s on 1 GPU, 70 s on 2 (1.71x); inference 90 s vs 47 s (1.91x)" in table
    assert "sgg_metrics.json 1 GPU vs 2: identical (18 metrics, images 2024 / 2024, largest difference 0)" in table
    assert "Fault kill -9 of rank 1 (2 GPUs): exit status 1 2.5 s after the kill; resumed from model_0000019.pth " \
           "(iteration 19), finished at 59: OK" in table
    assert "exit status 1 41.0 s after the stall: PROBLEMS: no one-line message naming --dist-timeout-s" in table
    assert "FAILED sgdet_2gpu: sgdet_2gpu failed (rc 1)" in table
    assert multi_gpu.format_table({"steps": {}}).startswith("Multi-GPU on the VG stand-in: ? x 2, ?")


def good_kill():
    return {"kill_rank": 1, "max_iter": 60, "exit_bound_s": 90, "world_size": 2, "rc": 1, "exit_s_after_kill": 2.0,
            "error_line": "train_net.py: error: rank 1 of 2 (...) was ended by SIGKILL (...). Continue with the same "
                          "command and --resume: it loads out/model_0000019.pth.",
            "leftover_processes": [], "last_checkpoint": "model_0000019.pth", "newest_checkpoint": "model_0000019.pth",
            "checkpoint_iteration": 19, "checkpoint_optimizer_tensors": 20, "resume_rc": 0, "resume_loaded": True,
            "resume_started_at_next_iteration": True, "final_iteration": 59, "final_scheduler_last_epoch": 60,
            "resumed": {0: {"start_iter": 20, "differences": []}, 1: {"start_iter": 20, "differences": []}}}


def test_kill_verdicts(multi_gpu):
    assert multi_gpu.kill_problems(good_kill()) == []
    assert multi_gpu.kill_problems({"kill_rank": 1, "error": "the run ended (status 1) before its first checkpoint"}) \
        == ["the run ended (status 1) before its first checkpoint"]
    bad = dict(good_kill(), hung=True, error_line="", leftover_processes=[123], newest_checkpoint="model_0000023.pth",
               resume_rc=1, final_iteration=None,
               resumed={0: {"start_iter": 0, "differences": ["/iteration: 19 vs -1"]}})
    problems = multi_gpu.kill_problems(bad)
    assert problems[0] == "the job did not end within 90 s of the kill"
    assert any("no one-line message naming rank 1" in p for p in problems)
    assert "processes left after the job: [123]" in problems
    assert any(p.startswith("last_checkpoint names model_0000019.pth, the newest is model_0000023.pth") for p in problems)
    assert "--resume exited with 1" in problems and "rank 1: no state saved after --resume" in problems
    assert any(p.startswith("rank 0: resumed at 0 (expected 20)") for p in problems)
    assert "model_final.pth at iteration None, expected 59" in problems
    assert multi_gpu.kill_problems(dict(good_kill(), rc=0))[0] == "the job exited 0 after rank 1 was killed"


def test_stall_verdicts(multi_gpu):
    good = {"stall_rank": 1, "timeout_s": 30.0, "exit_bound_s": 90.0, "rc": 1, "exit_s_after_stall": 35.0,
            "leftover_processes": [], "error_line": "train_net.py: error: ... --dist-timeout-s 30 s ..."}
    assert multi_gpu.stall_problems(good) == []
    assert multi_gpu.stall_problems(dict(good, hung=True, error_line="")) == [
        "the job did not end within --dist-timeout-s 30 s + 90 s of the stall",
        "no one-line message naming --dist-timeout-s (got '')"]


def test_rank_pids_and_error_line(multi_gpu, tmp_path):
    (tmp_path / "log.txt").write_text("[12/04 19:50:01] kern_d2 INFO: Rank 0 of 2: pid 100\n")
    (tmp_path / "log.txt.rank1").write_text("x\n[12/04 19:50:01] kern_d2 INFO: Rank 1 of 2: pid 101\n")
    assert multi_gpu.rank_pids(str(tmp_path)) == {0: 100, 1: 101}
    assert multi_gpu.error_line("a\ntrain_net.py: error: one\nb\ntrain_net.py: error: two\n") == \
        "train_net.py: error: two"
    assert multi_gpu.error_line("Traceback\n") == ""
    (tmp_path / "model_0000003.pth").write_text("")
    (tmp_path / "model_0000011.pth").write_text("")
    (tmp_path / "model_final.pth").write_text("")
    assert multi_gpu.newest_checkpoint(str(tmp_path)) == "model_0000011.pth"
