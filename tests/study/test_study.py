"""The study's plan, aggregation, claims and report (kern_d2.study.study) against hand-computed numbers."""
import json
import math
import os

import pytest
from detectron2.config import CfgNode as CN

from kern_d2.study.study import (
    aggregate,
    compare,
    frequency_groups,
    group_recalls,
    make_claims,
    markdown_report,
    merge_studies,
    plan_runs,
    scaled_schedule,
    summarize,
    uses_released_priors,
    variant_models,
    write_report,
    write_study_report,
)


def payload(metrics: dict, per_predicate: dict) -> dict:
    """A minimal sgg_metrics.json payload: headline metrics and per-predicate R@50 {name: (recall, gt count)}."""
    return {"dataset": "toy_test", "metrics": metrics,
            "per_predicate": [{"id": i + 1, "name": name, "gt_count": count, "R@50": recall}
                              for i, (name, (recall, count)) in enumerate(per_predicate.items())]}


def test_summarize_uses_the_sample_std():
    s = summarize([1.0, 2.0, 4.0])
    # mean 7/3; squared deviations 16/9 + 1/9 + 25/9 = 42/9, / (n - 1) = 7/3
    assert s["mean"] == pytest.approx(7 / 3)
    assert s["std"] == pytest.approx(math.sqrt(7 / 3))
    assert (s["n"], s["values"]) == (3, [1.0, 2.0, 4.0])
    assert summarize([5.0]) == {"mean": 5.0, "std": 0.0, "n": 1, "values": [5.0]}
    assert math.isnan(summarize([1.0, math.nan])["mean"])
    with pytest.raises(ValueError):
        summarize([])


def test_claim_shown_when_the_gap_beats_two_pooled_std_and_the_seed_spread():
    c = compare([10.0, 11.0, 12.0], [6.0, 7.0, 8.0])  # means 11 and 7, std 1 and 1
    assert c["gap"] == pytest.approx(4.0)
    assert c["pooled_std"] == pytest.approx(1.0)
    assert c["gap_over_pooled_std"] == pytest.approx(4.0)
    assert c["largest_seed_difference"] == pytest.approx(2.0)
    assert c["shown"] and c["verdict"] == "KERN ahead by > 2 pooled std"


def test_claim_not_made_when_two_seeds_differ_by_more_than_the_gap():
    # first: eight 20s and a 29: mean 21, squared deviations 8 * 1 + 64 = 72, / 8 = 9 -> std 3; second: std 0.
    c = compare([20.0] * 8 + [29.0], [15.0, 15.0, 15.0])
    assert c["gap"] == pytest.approx(6.0)
    assert c["pooled_std"] == pytest.approx(math.sqrt(4.5))  # sqrt((9 + 0) / 2)
    assert c["gap"] > 2 * c["pooled_std"]  # the gap alone would pass ...
    assert c["largest_seed_difference"] == pytest.approx(9.0)  # ... but seeds 20 and 29 differ by more than 6
    assert not c["shown"] and c["verdict"] == "not shown"
    assert "differ by 9.00" in c["reason"]


def test_claim_not_made_inside_two_pooled_std_or_with_one_seed():
    c = compare([10.0, 12.0], [9.0, 10.0])  # gap 1.5; pooled sqrt((2 + 0.5) / 2) = 1.118
    assert c["pooled_std"] == pytest.approx(math.sqrt(1.25))
    assert c["gap_over_pooled_std"] == pytest.approx(1.5 / math.sqrt(1.25))
    assert not c["shown"] and c["reason"] == "gap not above 2 pooled std"
    c = compare([30.0], [10.0])
    assert not c["shown"] and c["reason"] == "one seed: no spread measured"
    c = compare([7.0, 8.0], [10.0, 10.0])  # behind
    assert c["gap"] == pytest.approx(-2.5) and not c["shown"]
    c = compare([12.0, 12.0], [10.0, 10.0])  # no spread at all: ahead by an infinite number of stds
    assert c["gap_over_pooled_std"] == math.inf and c["shown"]


def small_results():
    return {
        "predcls": {
            "kern": {0: payload({"mR@50": 10.0, "R@50": 50.0}, {"on": (80.0, 30), "near": (20.0, 3)}),
                     1: payload({"mR@50": 12.0, "R@50": 52.0}, {"on": (84.0, 30), "near": (30.0, 3)}),
                     2: payload({"mR@50": 14.0, "R@50": 54.0}, {"on": (82.0, 30), "near": (40.0, 3)})},
            "vrfc": {0: payload({"mR@50": 5.0, "R@50": 51.0}, {"on": (85.0, 30), "near": (0.0, 3)}),
                     1: payload({"mR@50": 6.0, "R@50": 51.0}, {"on": (85.0, 30), "near": (0.0, 3)}),
                     2: payload({"mR@50": 7.0, "R@50": 51.0}, {"on": (85.0, 30), "near": (0.0, 3)})},
            "freq": {None: payload({"mR@50": 3.0, "R@50": 40.0}, {"on": (70.0, 30), "near": (0.0, 3)})},
        },
        "sgcls": {"kern": {0: payload({"mR@50": 4.0, "R@50": 20.0}, {"on": (30.0, 30)})}},
    }


def test_aggregate_means_stds_and_per_predicate():
    study = aggregate(small_results(), metrics=("R@50", "mR@50", "zR@50"))
    kern = study["predcls"]["kern"]
    assert kern["seeds"] == [0, 1, 2]
    assert kern["metrics"]["mR@50"] == {"mean": 12.0, "std": 2.0, "n": 3, "values": [10.0, 12.0, 14.0]}
    assert math.isnan(kern["metrics"]["zR@50"]["mean"])  # not in the payloads
    near = kern["per_predicate"]["near"]
    assert (near["mean"], near["std"], near["gt_count"]) == (30.0, 10.0, 3)
    assert study["predcls"]["freq"]["metrics"]["mR@50"]["std"] == 0.0
    assert study["predcls"]["freq"]["seeds"] == [None]

    claims = make_claims(study)
    # predcls: kern vs vrfc only (no kern_uniform); sgcls: no baseline -> no claim
    assert [(c["mode"], c["baseline"]) for c in claims] == [("predcls", "vrfc")]
    # gap 12 - 6 = 6; pooled sqrt((4 + 1) / 2); seeds of kern differ by 4 <= 6
    assert claims[0]["gap"] == pytest.approx(6.0)
    assert claims[0]["pooled_std"] == pytest.approx(math.sqrt(2.5))
    assert claims[0]["shown"]


def test_markdown_report_tables_and_claims():
    study = aggregate(small_results(), metrics=("R@50", "mR@50"))
    text = markdown_report(study, make_claims(study, "mR@50"), {"device": "CPU"}, failed=["sgcls vrfc seed 0"],
                           metrics=("R@50", "mR@50"))
    assert "- device: CPU" in text
    assert "## PredCls" in text and "## SGCls" in text
    assert "12.00 ± 2.00" in text and "52.00 ± 2.00" in text and "3.00 ± 0.00" in text
    claim_row = next(line for line in text.splitlines() if "kern vs vrfc" in line)
    assert "+6.00" in claim_row and "KERN ahead by > 2 pooled std" in claim_row
    assert "## Failed jobs" in text and "- sgcls vrfc seed 0" in text


def test_write_report_writes_json_markdown_and_plots(tmp_path):
    train_counts = {"on": 300, "near": 12}
    payload_out = write_report(str(tmp_path), small_results(), {"device": "CPU", "git commit": "abc"}, train_counts)
    for name in ("study.md", "mR50.png", "per_predicate_predcls.png", "per_predicate_sgcls.png",
                 "tradeoff_predcls.png"):
        path = tmp_path / name
        assert path.stat().st_size > 0, name
    for name in ("mR50.png", "per_predicate_predcls.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(tmp_path / "study.json") as f:
        written = json.load(f)
    assert written["git_commit"] == "abc" and written["train_predicate_counts"] == train_counts
    assert written["modes"]["predcls"]["kern"]["metrics"]["mR@50"]["values"] == [10.0, 12.0, 14.0]
    assert written["modes"]["predcls"]["kern"]["metrics"]["zR@50"]["mean"] is None  # NaN -> null
    assert written["claims"] == json.loads(json.dumps(payload_out["claims"]))


def test_plan_runs_overrides_per_mode_and_model():
    models = ["kern", "freq", "kern_uniform", "kern_no_obj_routing"]
    runs = plan_runs("base.yaml", "out", ["predcls", "sgcls"], models, [0, 1], common=["MODEL.DEVICE", "cpu"],
                     schedule=["SOLVER.MAX_ITER", "10"], extra=["SOLVER.IMS_PER_BATCH", "2"])
    assert [r.name for r in runs] == [
        "predcls kern seed 0", "predcls kern seed 1", "predcls freq",
        "predcls kern_uniform seed 0", "predcls kern_uniform seed 1",
        "sgcls kern seed 0", "sgcls kern seed 1", "sgcls freq",
        "sgcls kern_uniform seed 0", "sgcls kern_uniform seed 1",
        "sgcls kern_no_obj_routing seed 0", "sgcls kern_no_obj_routing seed 1",
    ]

    def opts(run):
        argv = run.argv[run.argv.index("OUTPUT_DIR"):]
        return dict(zip(argv[0::2], argv[1::2]))

    kern = opts(runs[1])
    assert kern["OUTPUT_DIR"] == os.path.join("out", "predcls", "kern_seed1")
    assert (kern["SEED"], kern["SOLVER.MAX_ITER"], kern["MODEL.DEVICE"]) == ("1", "10", "cpu")
    assert kern["MODEL.ROI_RELATION_HEAD.USE_GT_BOX"] == "True"
    assert kern["MODEL.ROI_RELATION_HEAD.USE_GT_OBJECT_LABEL"] == "True"
    assert runs[1].argv[-2:] == ["SOLVER.IMS_PER_BATCH", "2"]  # the user's overrides come last
    freq = opts(runs[7])
    assert "--eval-only" in runs[7].argv and "SEED" not in freq and "SOLVER.MAX_ITER" not in freq
    assert freq["MODEL.ROI_RELATION_HEAD.NAME"] == "FREQ"
    assert freq["MODEL.ROI_RELATION_HEAD.USE_GT_OBJECT_LABEL"] == "False"
    assert opts(runs[8])["MODEL.ROI_RELATION_HEAD.USE_PRIORS"] == "False"
    assert opts(runs[10])["MODEL.ROI_RELATION_HEAD.USE_OBJECT_ROUTING"] == "False"
    sgdet = opts(plan_runs("base.yaml", "out", ["sgdet"], ["kern"], [0])[0])
    assert (sgdet["MODEL.ROI_RELATION_HEAD.USE_GT_BOX"], sgdet["MODEL.ROI_RELATION_HEAD.USE_GT_OBJECT_LABEL"]) == (
        "False", "False")


def test_variants_are_kern_with_extra_keys():
    table = variant_models({"kern_t1": {"NUM_STEPS": "1", "SOLVER.BASE_LR": "0.01"}})
    run = plan_runs("base.yaml", "out", ["predcls"], ["kern_t1"], [3], model_table=table)[0]
    argv = run.argv
    assert argv[argv.index("MODEL.ROI_RELATION_HEAD.NAME") + 1] == "KERN"
    assert argv[argv.index("MODEL.ROI_RELATION_HEAD.NUM_STEPS") + 1] == "1"
    assert argv[argv.index("SOLVER.BASE_LR") + 1] == "0.01"
    with pytest.raises(ValueError, match="vrfc"):
        variant_models({"vrfc": {"NUM_STEPS": "1"}})


def test_scaled_schedule():
    solver = CN({"MAX_ITER": 1200, "STEPS": (1000,), "WARMUP_ITERS": 20})
    assert scaled_schedule(solver, 120) == ["SOLVER.MAX_ITER", "120", "SOLVER.STEPS", "(100,)",
                                            "SOLVER.WARMUP_ITERS", "2"]
    # steps stay inside the run and apart; one iteration has no step and no warmup
    assert scaled_schedule(CN({"MAX_ITER": 100, "STEPS": (60, 99), "WARMUP_ITERS": 50}), 3)[3:] == [
        "(2,)", "SOLVER.WARMUP_ITERS", "2"]
    assert scaled_schedule(solver, 1)[3] == "()"
    with pytest.raises(ValueError):
        scaled_schedule(solver, 0)


def test_frequency_groups_cut_the_train_order_in_thirds():
    counts = {"a": 70, "b": 60, "c": 50, "d": 40, "e": 30, "f": 20, "g": 10}
    assert frequency_groups(counts, list("gfedcba")) == {"head": ["a", "b", "c"], "body": ["d", "e"],
                                                         "tail": ["f", "g"]}
    assert frequency_groups({"x": 5}, ["y", "x", "z"]) == {"head": ["x"], "body": ["y"], "tail": ["z"]}


def test_group_recalls_average_predicates_per_seed_then_seeds():
    runs = {seed: payload({"R@50": 1.0}, {"p1": (r1, 5), "p2": (r2, 5), "p3": (r3, 5)})
            for seed, (r1, r2, r3) in enumerate([(90.0, 40.0, 10.0), (70.0, 60.0, 30.0)])}
    study = aggregate({"predcls": {"kern": runs}}, metrics=("R@50",))
    groups = group_recalls(study, {"p1": 30, "p2": 20, "p3": 10})["predcls"]["kern"]
    # one predicate per third: head p1 (90, 70), body p2 (40, 60), tail p3 (10, 30)
    assert groups["head"]["values"] == [90.0, 70.0] and groups["head"]["mean"] == 80.0
    assert groups["tail"]["mean"] == 20.0 and groups["tail"]["std"] == pytest.approx(math.sqrt(200))
    assert "## Head, body and tail" in markdown_report(study, [], {}, metrics=("R@50",),
                                                       groups={"predcls": {"kern": groups}})


def test_merged_reports_equal_one_report_of_the_union(tmp_path):
    train_counts = {"on": 300, "near": 12}
    results = small_results()
    whole = write_report(str(tmp_path), results, {"device": "CPU"}, train_counts)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    parts = []
    for name, modes in (("a", ["predcls"]), ("b", ["sgcls"])):
        write_report(str(tmp_path / name), {m: results[m] for m in modes}, {"device": "CPU"}, train_counts,
                     failed=[f"{name} failed run"])
        with open(tmp_path / name / "study.json") as f:
            parts.append(json.load(f))  # as read back from disk: NaN written as null
    merged = merge_studies(parts, ["a/study.json", "b/study.json"])
    assert list(merged["modes"]) == ["predcls", "sgcls"]
    assert merged["failed"] == ["a failed run", "b failed run"]
    assert merged["modes"]["predcls"]["freq"]["seeds"] == [None]  # seeds stay None, not NaN
    assert math.isnan(merged["modes"]["predcls"]["kern"]["metrics"]["zR@50"]["mean"])
    assert math.isnan(merged["modes"]["predcls"]["kern"]["metrics"]["zR@50"]["values"][0])
    (tmp_path / "merged").mkdir()
    payload = write_study_report(str(tmp_path / "merged"), merged["modes"], {"device": "CPU"},
                                 merged["train_predicate_counts"])
    assert json.loads(json.dumps(payload["claims"])) == json.loads(json.dumps(whole["claims"]))
    assert payload["head_body_tail"] == whole["head_body_tail"]
    assert (tmp_path / "merged" / "study.md").read_text() == (tmp_path / "study.md").read_text()


def test_merge_refuses_clashing_runs_and_different_data():
    study = json.loads(json.dumps({"modes": aggregate(small_results()), "train_predicate_counts": {"on": 3}}))
    with pytest.raises(ValueError, match="predcls kern is in both a.json and b.json"):
        merge_studies([study, study], ["a.json", "b.json"])
    other = dict(study, modes={"sgdet": study["modes"]["sgcls"]}, train_predicate_counts={"on": 4})
    with pytest.raises(ValueError, match="b.json and a.json were trained on different data"):
        merge_studies([study, other], ["a.json", "b.json"])
    with pytest.raises(ValueError, match="c.json: not a study.json"):
        merge_studies([study, {"claims": []}], ["a.json", "c.json"])


def _by_model(**values):
    return {"sgcls": {m: {"metrics": {"mR@50": summarize(v)}} for m, v in values.items()}}


def test_fidelity_models_are_compared_in_the_direction_of_their_gap():
    # The released form ahead: the claim names it first; kern_d2 ahead: kern first. Hand numbers: gaps 10 and 3.
    claims = make_claims(_by_model(kern=[50, 51, 52], kern_tied_message=[60, 61, 62], kern_released=[47, 48, 49]))
    by_name = {(c["model"], c["baseline"]): c for c in claims}
    ahead = by_name[("kern_tied_message", "kern")]
    assert ahead["gap"] == pytest.approx(10.0) and ahead["shown"]
    assert ahead["verdict"] == "kern_tied_message ahead by > 2 pooled std"
    behind = by_name[("kern", "kern_released")]
    assert behind["gap"] == pytest.approx(3.0) and behind["verdict"] == "KERN ahead by > 2 pooled std"


def test_released_priors_follow_the_resolved_construction():
    assert uses_released_priors({"VARIANT": "released"})
    assert uses_released_priors({"PRIOR_CONSTRUCTION": "released"})
    assert not uses_released_priors({"VARIANT": "released", "PRIOR_CONSTRUCTION": "kern_d2"})
    assert not uses_released_priors({"NAME": "KERN"})
