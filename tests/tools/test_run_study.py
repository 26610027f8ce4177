"""tools/run_study.py end to end on the toy dataset: one seed, PredCls and SGCls, KERN (trained two iterations)
and FREQ (evaluated once per mode), two runs at once; then a second call that reuses every finished run."""
import json
import os

import pytest
import yaml

from tests.helpers.toy_tools import SMALL_RUN, read_sgg_metrics

pytestmark = pytest.mark.slow  # every test runs the tools in subprocesses (the session fixture toy_tools)

MODES, MODELS = ["predcls", "sgcls"], ["kern", "freq"]


def test_study_trains_reports_and_reuses_its_runs(toy_tools):
    out = os.path.join(toy_tools.scratch("study"), "study")
    args = ["--dataset", "toy", "--output", out, "--modes", *MODES, "--models", *MODELS, "--seeds", "0",
            "--iters", "2", "--jobs", "2", "--device", "cpu", "--detector-weights", toy_tools.detector,
            "--opts", *SMALL_RUN]
    proc = toy_tools.run("run_study.py", *args, timeout=600)
    assert "4/4 jobs" in proc.stdout and "ETA" in proc.stdout

    with open(os.path.join(out, "study.json")) as f:
        study = json.load(f)
    assert list(study["modes"]) == MODES
    for mode in MODES:
        assert list(study["modes"][mode]) == MODELS
        for model in MODELS:
            run_dir = os.path.join(out, mode, model if model == "freq" else f"{model}_seed0")
            with open(os.path.join(run_dir, "config.yaml")) as f:
                cfg = yaml.safe_load(f)
            rel = cfg["MODEL"]["ROI_RELATION_HEAD"]
            assert (rel["NAME"], rel["USE_GT_OBJECT_LABEL"]) == (model.upper(), mode == "predcls")
            assert cfg["MODEL"]["WEIGHTS"] == toy_tools.detector and cfg["DATASETS"]["TEST"] == ["toy_test"]
            if model != "freq":
                assert (cfg["SEED"], cfg["SOLVER"]["MAX_ITER"]) == (0, 2)
            summary = study["modes"][mode][model]["metrics"]["mR@50"]
            assert summary["values"] == [read_sgg_metrics(run_dir)["metrics"]["mR@50"]]
            assert (summary["n"], summary["std"]) == (1, 0.0)
    assert study["claims"] == []  # no VRFC nor uniform-prior KERN to compare with
    assert study["device"].startswith("CPU") and study["failed"] == []
    assert sum(study["train_predicate_counts"].values()) > 0
    for name in ("study.md", "mR50.png", "per_predicate_predcls.png", "per_predicate_sgcls.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    with open(os.path.join(out, "study.md")) as f:
        assert "## SGCls" in f.read()

    again = toy_tools.run("run_study.py", *args, timeout=600)
    assert again.stdout.count("already done") == 6  # the dataset, the priors and the four runs
    assert "started" not in again.stdout

    # The report split by mode and merged back (tools/merge_study_reports.py) has the same tables and claims.
    parts = []
    for mode in MODES:
        part = dict(study, modes={mode: study["modes"][mode]})
        parts.append(os.path.join(out, f"part_{mode}.json"))
        with open(parts[-1], "w") as f:
            json.dump(part, f)
    merged_dir = os.path.join(out, "merged")
    toy_tools.run("merge_study_reports.py", *parts, "--output", merged_dir)
    with open(os.path.join(merged_dir, "study.json")) as f:
        merged = json.load(f)
    assert merged["modes"] == study["modes"] and merged["claims"] == study["claims"]
    with open(os.path.join(out, "study.md")) as f, open(os.path.join(merged_dir, "study.md")) as g:
        assert f.read().split("Recall in %")[1] == g.read().split("Recall in %")[1]
    clash = toy_tools.run("merge_study_reports.py", parts[0], parts[0], "--output", merged_dir, check=False)
    assert clash.returncode != 0 and "predcls kern is in both" in clash.stdout
