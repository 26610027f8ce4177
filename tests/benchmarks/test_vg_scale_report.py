"""benchmarks/vg_scale.py's figures from Detectron2's logs and metrics.json, on hand-made records."""
import json

import pytest

from tests.helpers.benchmark_modules import load_benchmark


@pytest.fixture(scope="module")
def vg_scale():
    return load_benchmark("vg_scale")


def test_training_figures(vg_scale, tmp_path):
    rows = [  # Detectron2's JSONWriter rows (20-iteration windows); the first one is left out of the wait share
        {"iteration": 19, "time": 9.0, "data_time": 9.0, "total_loss": 9.5, "loss_relation": 3.9},
        {"iteration": 39, "time": 0.5, "data_time": 0.05, "total_loss": 4.0, "loss_relation": 3.0,
         "sgg/period_images": 160, "sgg/period_images_without_fg": 12, "sgg/period_fg_pairs": 900},
        {"iteration": 59, "time": 0.3, "data_time": 0.01, "total_loss": 3.0, "loss_relation": 2.5,
         "sgg/period_images": 160, "sgg/period_images_without_fg": 3, "sgg/period_fg_pairs": 990},
    ]
    (tmp_path / "metrics.json").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    log = ("iter: 39  total_loss: 4.0  max_mem: 20480M\niter: 59  max_mem: 30720M\n"
           "Overall training speed: 57 iterations in 0:00:22 (0.4000 s / it)\n"
           "VG_SCALE peak_gpu_memory_gb 33.10 reserved_gb 40.00\n")
    figures = vg_scale.training_figures(log, str(tmp_path), images_per_batch=8)
    assert figures["s_per_iter"] == 0.4 and figures["images_per_s"] == 20.0
    assert figures["peak_gpu_memory_gb"] == 33.1 and figures["peak_gpu_reserved_gb"] == 40.0
    assert figures["peak_gpu_memory_gb_training_log"] == round(30720 * 2**20 / 1e9, 2)
    assert figures["data_wait_share"] == round(0.06 / 0.8, 4) and figures["median_iter_time_s"] == 0.4
    assert figures["losses_first"]["total_loss"] == 9.5 and figures["losses_last"]["loss_relation"] == 2.5
    assert figures["images_without_fg_pair"] == 15 and figures["images_seen"] == 320


def test_evaluation_figures(vg_scale, tmp_path):
    metrics = tmp_path / "sgg_metrics.json"
    metrics.write_text(json.dumps({"num_images_with_relations": 2010, "metrics": {
        "R@20": 1.0, "R@50": 2.0, "R@100": 3.0, "mR@50": 0.5, "ng-mR@100": 4.0, "zR@50": 0.1}}))
    log = ("Start inference on 2010 batches\n"
           "Total inference time: 0:01:40.500000 (0.050000 s / iter per device, on 1 devices)\n"
           "Total inference pure compute time: 0:01:30 (0.045000 s / iter per device, on 1 devices)\n")
    figures = vg_scale.evaluation_figures(log, str(metrics))
    assert figures["images"] == 2010 and figures["inference_s_per_1000_images"] == 50.0
    assert figures["inference_total_s"] == 100.5 and figures["pure_compute_s_per_image"] == 0.045
    assert figures["sgg"] == {"R@50": 2.0, "R@100": 3.0, "mR@50": 0.5, "ng-mR@100": 4.0}


def test_detector_evaluation_figures(vg_scale, tmp_path):
    log = ("[12/03 18:00:01 d2.evaluation.testing]: copypaste: Task: bbox\n"
           "[12/03 18:00:01 d2.evaluation.testing]: copypaste: AP,AP50,AP75,APs,APm,APl\n"
           "[12/03 18:00:01 d2.evaluation.testing]: copypaste: 7.0125,14.9020,5.8,1.2,4.5,9.9\n"
           "Total inference time: 0:01:00 (0.030000 s / iter per device, on 1 devices)\n")
    figures = vg_scale.evaluation_figures(log, str(tmp_path / "none.json"))
    assert figures["box_AP"] == 7.0125 and figures["box_AP50"] == 14.902
    assert figures["inference_s_per_image"] == 0.03 and "sgg" not in figures


def test_throughput_ratios(vg_scale):
    steps = {"eval_all_pairs": {"inference_s_per_image": 0.06}, "eval_overlap": {"inference_s_per_image": 0.04}}
    assert vg_scale.throughput_ratios(steps) == {}  # no detector timing: no ratio
    steps["eval_detector"] = {"inference_s_per_image": 0.03}
    assert vg_scale.throughput_ratios(steps) == {"all_pairs": 0.5, "overlap": 0.75}
    del steps["eval_overlap"]  # cut off before it: the ratio it has
    assert vg_scale.throughput_ratios(steps) == {"all_pairs": 0.5}


def test_iterations_cut_to_fit_the_budget(vg_scale, tmp_path, monkeypatch):
    monkeypatch.delenv("VG_SCALE_BUDGET_S", raising=False)
    args = vg_scale.parse_args(["--part", "2", "--budget-s", "100", "--workdir", str(tmp_path), "--out",
                                str(tmp_path / "out")])
    run = vg_scale.VGScaleRun(args)
    run.start -= 20  # 20 s spent
    run.state["steps"]["predcls"] = {"s_per_iter": 0.2}
    # left = 100 - 20 - start-up; SGCls's s/iter is the measured PredCls one scaled by the ratio of their estimates
    guess = vg_scale.GUESS_S_PER_ITER
    expected = int((100 - 20 - vg_scale.STARTUP_S) / (0.2 * guess["sgcls"] / guess["predcls"]))
    assert 50 < expected < 300  # the budget cuts, above the floor
    assert run.fit_iters("sgcls", 300, reserve_s=0) == expected
    assert run.state["iterations_cut_for_budget"]["sgcls"] == {"wanted": 300, "ran": expected}
    assert run.fit_iters("sgdet", 300, reserve_s=1000) == 50  # never below MIN_ITERS
    assert run.fit_iters("sgdet", 20, reserve_s=1000) == 20
    assert vg_scale.parse_args(["--smoke"]).budget_s is None and vg_scale.parse_args([]).budget_s == 480.0
