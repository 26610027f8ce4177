"""The main job's closing check (tools/run_demo.py): KERN must lead its best baseline by more than the margin."""
from kern_d2.study import kern_leads, modes_not_ahead


def study(predcls: dict, sgcls: dict) -> dict:
    """study.json's layout with one mR@50 mean per model."""
    return {"modes": {mode: {model: {"metrics": {"mR@50": {"mean": value}}} for model, value in rows.items()}
                      for mode, rows in (("predcls", predcls), ("sgcls", sgcls))}}


def test_leads_compare_kern_with_its_best_baseline():
    result = study({"kern": 60.0, "vrfc": 40.0, "freq": 52.0}, {"kern": 50.0, "vrfc": 46.0, "freq": 30.0})
    assert kern_leads(result) == [("predcls", 60.0, "freq", 52.0), ("sgcls", 50.0, "vrfc", 46.0)]
    # 8 > 5 points in PredCls; 4 <= 5 in SGCls
    assert modes_not_ahead(result, margin=5.0) == ["sgcls"]
    assert modes_not_ahead(result, margin=3.0) == []
    assert modes_not_ahead(study({"kern": 40.0, "vrfc": 45.0, "freq": 1.0}, {"kern": 9.0, "vrfc": 1.0, "freq": 1.0}),
                           margin=5.0) == ["predcls"]
