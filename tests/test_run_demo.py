"""The main job's closing check (tools/run_demo.py): KERN must lead its best baseline by more than the margin."""
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_demo():
    spec = importlib.util.spec_from_file_location("run_demo", os.path.join(ROOT, "tools", "run_demo.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def study(predcls: dict, sgcls: dict) -> dict:
    """study.json's layout with one mR@50 mean per model."""
    return {"modes": {mode: {model: {"metrics": {"mR@50": {"mean": value}}} for model, value in rows.items()}
                      for mode, rows in (("predcls", predcls), ("sgcls", sgcls))}}


def test_leads_compare_kern_with_its_best_baseline():
    demo = load_demo()
    result = study({"kern": 60.0, "vrfc": 40.0, "freq": 52.0}, {"kern": 50.0, "vrfc": 46.0, "freq": 30.0})
    assert demo.leads(result) == [("predcls", 60.0, "freq", 52.0), ("sgcls", 50.0, "vrfc", 46.0)]
    # 8 > 5 points in PredCls; 4 <= 5 in SGCls
    assert demo.not_ahead(result, margin=5.0) == ["sgcls"]
    assert demo.not_ahead(result, margin=3.0) == []
    assert demo.not_ahead(study({"kern": 40.0, "vrfc": 45.0, "freq": 1.0}, {"kern": 9.0, "vrfc": 1.0, "freq": 1.0}),
                          margin=5.0) == ["predcls"]
