"""A study of KERN against its baselines over modes and seeds: which runs to make, and the report of their results.

``tools/run_study.py`` trains every (mode, model, seed) with :func:`model_overrides` and :func:`mode_overrides`,
then :func:`aggregate` turns their ``sgg_metrics.json`` into mean, std and per-seed values, :func:`make_claims`
tests "KERN is ahead" on mR@50 against the spread between seeds, and :func:`markdown_report`,
:func:`plot_metric_by_model` and :func:`plot_per_predicate_comparison` write the report.
"""
import math
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
from tabulate import tabulate

from kern_d2.config import VARIANT_POINTS, VARIANTS
from kern_d2.evaluation.sgg_report import new_figure, save_figure, write_json

__all__ = [
    "FIDELITY_MODELS", "MODELS", "MODES", "MODE_TITLES", "STUDY_METRICS", "StudyRun", "aggregate", "compare", "make_claims",
    "kern_leads", "markdown_report", "mode_overrides", "model_overrides", "models_of_mode", "modes_not_ahead",
    "plan_runs", "plot_metric_by_model",
    "plot_per_predicate_comparison", "summarize", "scaled_schedule", "uses_released_priors", "variant_models", "write_report",
    "write_study_report", "merge_studies",
]

MODES = ("predcls", "sgcls", "sgdet")
MODE_TITLES = {"predcls": "PredCls", "sgcls": "SGCls", "sgdet": "SGDet"}
# (USE_GT_BOX, USE_GT_OBJECT_LABEL)
_MODE_SWITCHES = {"predcls": (True, True), "sgcls": (True, False), "sgdet": (False, False)}
STUDY_METRICS = tuple(f"{family}@{k}" for family in ("R", "mR", "ng-mR", "zR", "ng-R") for k in (20, 50, 100))
PER_PREDICATE_METRIC = "R@50"
CLAIM_METRIC = "mR@50"

# Study models: MODEL.ROI_RELATION_HEAD keys, and the modes they exist in. VRFC keeps the config's object routing,
# so KERN vs VRFC isolates the relation routing over the predicate prior; FREQ is not trained (no object routing:
# in SGCls/SGDet its labels are the detector's).
MODELS = {
    "kern": {"keys": {"NAME": "KERN"}},
    "vrfc": {"keys": {"NAME": "VRFC"}},
    "freq": {"keys": {"NAME": "FREQ", "USE_OBJECT_ROUTING": False}, "eval_only": True},
    "kern_uniform": {"keys": {"NAME": "KERN", "USE_PRIORS": False}},
    "kern_no_obj_routing": {"keys": {"NAME": "KERN", "USE_OBJECT_ROUTING": False}, "modes": ("sgcls", "sgdet")},
}


# The fidelity study (STUDY.md "Fidelity"): KERN as released against kern_d2's default ("kern"), and each deviation
# of kern_d2 from the released code switched to the released form alone. Keys as MODELS'.
FIDELITY_MODELS = {
    "kern_released": {"keys": {"NAME": "KERN", "VARIANT": "released"}},
    "kern_released_prior": {"keys": {"NAME": "KERN", "PRIOR_CONSTRUCTION": "released"}},
    "kern_tied_message": {"keys": {"NAME": "KERN", "RELATION_MESSAGE": "tied"}},
    "kern_finetuned_fc": {"keys": {"NAME": "KERN", "OBJECT_FEATURES": "finetuned", "SOLVER.FC_LR_FACTOR": 0.1}},
    "kern_released_union": {"keys": {"NAME": "KERN", "UNION_FEATURE": "released"}},
    "kern_released_sgdet": {"keys": {"NAME": "KERN", "SGDET_PIPELINE": "released", "OBJECT_ROUTING_BACKGROUND": "on"},
                            "modes": ("sgdet",)},
}


def uses_released_priors(keys: Dict[str, object]) -> bool:
    """Whether a model's keys ask for priors of the released construction (``tools/compute_priors.py --released``)."""
    variant = str(keys.get("VARIANT", "") or "kern_d2")
    by_variant = VARIANT_POINTS["PRIOR_CONSTRUCTION"][VARIANTS.index(variant)]
    return (str(keys.get("PRIOR_CONSTRUCTION", "") or "") or by_variant) == "released"


def mode_overrides(mode: str) -> List[str]:
    """Config overrides (KEY VALUE ...) that select ``mode``."""
    if mode not in _MODE_SWITCHES:
        raise ValueError(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")
    gt_box, gt_label = _MODE_SWITCHES[mode]
    return ["MODEL.ROI_RELATION_HEAD.USE_GT_BOX", str(gt_box), "MODEL.ROI_RELATION_HEAD.USE_GT_OBJECT_LABEL",
            str(gt_label)]


def model_overrides(keys: Dict[str, object]) -> List[str]:
    """Config overrides for ``keys``: short names are MODEL.ROI_RELATION_HEAD keys, dotted names are full keys."""
    opts = []
    for key, value in keys.items():
        opts += [key if "." in key else f"MODEL.ROI_RELATION_HEAD.{key}", str(value)]
    return opts


def models_of_mode(models: Sequence[str], mode: str, model_table: Dict[str, dict] = MODELS) -> List[str]:
    """The models of ``models`` that exist in ``mode``."""
    return [m for m in models if mode in model_table[m].get("modes", MODES)]


def variant_models(variants: Dict[str, Dict[str, object]],
                   variant_modes: Optional[Dict[str, Sequence[str]]] = None) -> Dict[str, dict]:
    """Entries of a model table for extra variants: {name: {key: value}} (keys as :func:`model_overrides`; KERN
    unless the keys set NAME), each in the modes ``variant_modes[name]`` (default: every mode)."""
    clash = sorted(set(variants) & (set(MODELS) | set(FIDELITY_MODELS)))
    if clash:
        raise ValueError(f"variant names {clash} are study models already")
    variant_modes = variant_modes or {}
    for name, modes in variant_modes.items():
        unknown = sorted(set(modes) - set(MODES))
        if unknown:
            raise ValueError(f"variant {name}: unknown modes {unknown}; modes: {', '.join(MODES)}")
    table = {}
    for name, keys in variants.items():
        table[name] = {"keys": dict({"NAME": "KERN"}, **keys)}
        if name in variant_modes:
            table[name]["modes"] = tuple(variant_modes[name])
    return table


@dataclass
class StudyRun:
    """One training (or, for an eval-only model, one evaluation) of the study."""

    mode: str
    model: str
    seed: Optional[int]  # None: eval-only, seed-independent
    output_dir: str
    argv: List[str]  # tools/train_net.py and its arguments

    @property
    def name(self) -> str:
        return f"{self.mode} {self.model}" + ("" if self.seed is None else f" seed {self.seed}")


def plan_runs(config_file: str, output_dir: str, modes: Sequence[str], models: Sequence[str], seeds: Sequence[int],
              common: Sequence[str] = (), schedule: Sequence[str] = (), extra: Sequence[str] = (),
              model_table: Dict[str, dict] = MODELS) -> List[StudyRun]:
    """The runs of a study: every mode, model that exists in it, and seed (eval-only models once per mode).

    Args:
        config_file: the KERN base config.
        common: overrides of every run (detector weights, priors, device, test dataset).
        schedule: overrides of the trained runs (iterations, see :func:`scaled_schedule`).
        extra: overrides of every run, last (the user's).
    Each run's overrides: OUTPUT_DIR, ``common``, the mode's switches, the model's keys, SEED and ``schedule``
    (trained runs), ``extra``."""
    runs = []
    for mode in modes:
        for model in models_of_mode(models, mode, model_table):
            spec = model_table[model]
            eval_only = spec.get("eval_only", False)
            for seed in [None] if eval_only else seeds:
                run_dir = os.path.join(output_dir, mode, model if seed is None else f"{model}_seed{seed}")
                argv = ["tools/train_net.py", "--config-file", config_file] + (["--eval-only"] if eval_only else [])
                argv += ["OUTPUT_DIR", run_dir] + list(common) + mode_overrides(mode) + model_overrides(spec["keys"])
                argv += [] if eval_only else ["SEED", str(seed)] + list(schedule)
                runs.append(StudyRun(mode, model, seed, run_dir, argv + list(extra)))
    return runs


def scaled_schedule(solver, iters: int) -> List[str]:
    """Overrides that run a solver config ``solver`` (a CfgNode's SOLVER) for ``iters`` iterations: MAX_ITER, and
    STEPS and WARMUP_ITERS scaled by the same factor (at least 1 iteration apart, inside the run)."""
    if iters < 1:
        raise ValueError(f"iterations must be >= 1, got {iters}")
    scale = iters / solver.MAX_ITER
    steps = sorted({min(iters - 1, max(1, round(s * scale))) for s in solver.STEPS}) if iters > 1 else []
    warmup = min(max(0, iters - 1), round(solver.WARMUP_ITERS * scale))
    return ["SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", f"({''.join(f'{s},' for s in steps)})",
            "SOLVER.WARMUP_ITERS", str(warmup)]


def summarize(values: Sequence[float]) -> dict:
    """mean, sample std (ddof = 1; 0 for one value), n and the values; NaN (a figure with nothing to average)
    makes the mean and std NaN."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("no values to summarize")
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if len(values) > 1 else 0.0
    return {"mean": float(array.mean()), "std": std, "n": len(values), "values": values}


def aggregate(results: Dict[str, Dict[str, List[dict]]], metrics: Sequence[str] = STUDY_METRICS) -> dict:
    """Mean, std and per-seed values of every metric.

    Args:
        results: {mode: {model: {seed: sgg_metrics.json payload}}} (see ``SceneGraphEvaluator``); seed None for a
            seed-independent (eval-only) model.
    Returns:
        {mode: {model: {"seeds": [...], "metrics": {metric: summary}, "per_predicate": {predicate name: summary of
        its R@50 with its test "gt_count"}}}}, summaries as :func:`summarize` (values in the order of "seeds").
    """
    study = {}
    for mode, by_model in results.items():
        study[mode] = {}
        for model, by_seed in by_model.items():
            if not by_seed:
                continue
            runs = list(by_seed.values())
            summary = {"seeds": list(by_seed),
                       "metrics": {m: summarize([run["metrics"].get(m, math.nan) for run in runs]) for m in metrics}}
            per_predicate = {}
            for row in runs[0]["per_predicate"]:
                values = [_predicate_row(run, row["name"])[PER_PREDICATE_METRIC] for run in runs]
                per_predicate[row["name"]] = dict(summarize(values), gt_count=row["gt_count"])
            summary["per_predicate"] = per_predicate
            study[mode][model] = summary
    return study


def _predicate_row(run: dict, name: str) -> dict:
    for row in run["per_predicate"]:
        if row["name"] == name:
            return row
    raise KeyError(f"predicate {name!r} missing from the per-predicate recalls of {run.get('dataset')}")


def compare(first: Sequence[float], second: Sequence[float], first_name: str = "KERN") -> dict:
    """Is ``first`` ahead of ``second`` (per-seed values of one metric) by more than the spread?

    gap = mean(first) - mean(second); pooled std = sqrt((s1^2 + s2^2) / 2); the claim is shown when the gap is more
    than 2 pooled std, both have at least two seeds (else there is no spread to compare with), and no two seeds
    of the same model differ by more than the gap."""
    a, b = summarize(first), summarize(second)
    gap = a["mean"] - b["mean"]
    pooled = math.sqrt((a["std"] ** 2 + b["std"] ** 2) / 2)
    seed_spread = max(max(s["values"]) - min(s["values"]) for s in (a, b))
    if pooled > 0:
        ratio = gap / pooled
    else:
        ratio = math.inf if gap > 0 else (-math.inf if gap < 0 else 0.0)
    if min(a["n"], b["n"]) < 2:
        reason = "one seed: no spread measured"
    elif not gap > 2 * pooled:
        reason = "gap not above 2 pooled std"
    elif seed_spread > gap:
        reason = f"two seeds of one model differ by {seed_spread:.2f} > the gap"
    else:
        reason = ""
    return {"first": a["mean"], "second": b["mean"], "gap": gap, "pooled_std": pooled, "gap_over_pooled_std": ratio,
            "largest_seed_difference": seed_spread, "shown": not reason, "reason": reason,
            "verdict": f"{first_name} ahead by > 2 pooled std" if not reason else "not shown"}


def make_claims(study: dict, metric: str = CLAIM_METRIC, baselines: Sequence[str] = ("vrfc", "kern_uniform")) -> list:
    """KERN against each of ``baselines`` on ``metric``, in every mode where both were run. A fidelity model
    (:data:`FIDELITY_MODELS`) that is run is compared too, in the direction of its gap: either form may be ahead."""
    claims = []
    for mode, by_model in study.items():
        for baseline in list(baselines) + [m for m in FIDELITY_MODELS if m not in baselines]:
            if "kern" not in by_model or baseline not in by_model:
                continue
            first, second = "kern", baseline
            kern_values, other_values = (by_model[m]["metrics"][metric]["values"] for m in (first, second))
            if baseline in FIDELITY_MODELS and summarize(other_values)["mean"] > summarize(kern_values)["mean"]:
                first, second = baseline, "kern"
            claim = compare(by_model[first]["metrics"][metric]["values"], by_model[second]["metrics"][metric]["values"],
                            first_name="KERN" if first == "kern" else first)
            claims.append(dict({"mode": mode, "model": first, "baseline": second, "metric": metric}, **claim))
    return claims


def kern_leads(study: dict, metric: str = CLAIM_METRIC) -> list:
    """[(mode, KERN's mean, best baseline, its mean)] on ``metric`` of each mode of a study report (study.json)."""
    leads = []
    for mode, rows in study["modes"].items():
        mean = {model: row["metrics"][metric]["mean"] for model, row in rows.items()}
        baseline = max((m for m in mean if m != "kern"), key=mean.get)
        leads.append((mode, mean["kern"], baseline, mean[baseline]))
    return leads


def modes_not_ahead(study: dict, margin: float, metric: str = CLAIM_METRIC) -> list:
    """The modes of a study report where KERN does not lead its best baseline on ``metric`` by more than ``margin``
    points (:func:`kern_leads`)."""
    return [mode for mode, kern, _, value in kern_leads(study, metric) if not kern - value > margin]


def frequency_groups(train_counts: Dict[str, int], names: Sequence[str]) -> Dict[str, List[str]]:
    """{"head", "body", "tail"}: ``names`` sorted by train frequency (most first, ties by name) and cut into
    thirds (the head and body take the remainder: 7 names -> 3, 2, 2)."""
    ordered = sorted(names, key=lambda name: (-train_counts.get(name, 0), name))
    n = len(ordered)
    head, body = -(-n // 3), -(-(n - -(-n // 3)) // 2)
    return {"head": ordered[:head], "body": ordered[head:head + body], "tail": ordered[head + body:]}


def group_recalls(study: dict, train_counts: Dict[str, int]) -> dict:
    """{mode: {model: {group: summary}}}: per seed, the mean per-predicate R@50 over the head, body and tail
    predicates (:func:`frequency_groups` of the predicates in the test gt), summarized over seeds."""
    out = {}
    for mode, by_model in study.items():
        out[mode] = {}
        for model, summary in by_model.items():
            rows = summary["per_predicate"]
            groups = frequency_groups(train_counts, list(rows))
            out[mode][model] = {
                group: summarize(np.nanmean([rows[name]["values"] for name in names], axis=0))
                for group, names in groups.items() if names
            }
    return out


def _mean_std(summary: dict, digits: int = 2) -> str:
    if math.isnan(summary["mean"]):
        return "n/a"
    return f"{summary['mean']:.{digits}f} ± {summary['std']:.{digits}f}"


def _number(value: float) -> str:
    return f"{value:.2f}" if math.isfinite(value) else ("∞" if value > 0 else ("-∞" if value < 0 else "n/a"))


def markdown_report(study: dict, claims: list, header: Dict[str, str], failed: Sequence[str] = (),
                    metrics: Sequence[str] = STUDY_METRICS, groups: Optional[dict] = None) -> str:
    """study.md: the header lines, a table of mean ± std per mode (sample std over seeds), the claims, and the
    failed jobs."""
    lines = ["# KERN study", ""] + [f"- {key}: {value}" for key, value in header.items()] + [""]
    lines += ["Recall in %, mean ± sample std over seeds (n = seeds; FREQ is not trained: one run, std 0).", ""]
    for mode, by_model in study.items():
        lines += [f"## {MODE_TITLES.get(mode, mode)}", ""]
        rows = [[model, next(iter(s["metrics"].values()))["n"]] + [_mean_std(s["metrics"][m]) for m in metrics]
                for model, s in by_model.items()]
        lines += [tabulate(rows, headers=["model", "n"] + list(metrics), tablefmt="pipe", stralign="right"), ""]
    if groups:
        lines += ["## Head, body and tail", "",
                  f"Mean per-predicate {PER_PREDICATE_METRIC} over the predicates in each third of the train "
                  "frequency order, mean ± sample std over seeds.", ""]
        for mode, by_model in groups.items():
            rows = [[MODE_TITLES.get(mode, mode), model] + [_mean_std(g[k]) if k in g else "n/a"
                                                           for k in ("head", "body", "tail")]
                    for model, g in by_model.items()]
            lines += [tabulate(rows, headers=["mode", "model", "head", "body", "tail"], tablefmt="pipe",
                               stralign="right"), ""]
    lines += ["## Claims", "",
              "KERN against a baseline on mR@50. pooled std = sqrt((s1² + s2²) / 2). A claim is made only when "
              "the gap is more than 2 pooled std and no two seeds of either model differ by more than the gap.", ""]
    rows = [[MODE_TITLES.get(c["mode"], c["mode"]), f"{c.get('model', 'kern')} vs {c['baseline']}", f"{c['first']:.2f}",
             f"{c['second']:.2f}", f"{c['gap']:+.2f}", f"{c['pooled_std']:.2f}", _number(c["gap_over_pooled_std"]),
             f"{c['largest_seed_difference']:.2f}", c["verdict"] + (f" ({c['reason']})" if c["reason"] else "")]
            for c in claims]
    lines += [tabulate(rows, headers=["mode", "comparison", "first", "second", "gap", "pooled std",
                                      "gap / pooled std", "largest seed difference", "verdict"],
                       tablefmt="pipe", stralign="left", disable_numparse=True) if rows else "(no claim: KERN and "
              "its baselines were not all run)", ""]
    if failed:
        lines += ["## Failed jobs", ""] + [f"- {name}" for name in failed] + [""]
    return "\n".join(lines)


def plot_metric_by_model(path: str, study: dict, metric: str = CLAIM_METRIC):
    """Bars of ``metric`` per model, grouped by mode, with sample-std error bars."""
    models = list(dict.fromkeys(model for by_model in study.values() for model in by_model))
    modes = list(study)
    figure = new_figure(max(5.0, 1.2 + 0.35 * len(models) * len(modes)), 4.0)
    axes = figure.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(models))
    for i, model in enumerate(models):
        xs = [m + (i - (len(models) - 1) / 2) * width for m, mode in enumerate(modes) if model in study[mode]]
        stats = [study[mode][model]["metrics"][metric] for mode in modes if model in study[mode]]
        axes.bar(xs, [s["mean"] for s in stats], width=width, yerr=[s["std"] for s in stats], capsize=3, label=model)
    axes.set_xticks(range(len(modes)))
    axes.set_xticklabels([MODE_TITLES.get(mode, mode) for mode in modes])
    axes.set_ylim(bottom=0)
    axes.set_ylabel(f"{metric} (%)")
    axes.set_title(f"{metric} per model, mean ± std over seeds", fontsize=9)
    axes.legend(fontsize=7)
    save_figure(figure, path)


def plot_per_predicate_comparison(path: str, by_model: dict, train_counts: Optional[Dict[str, int]], title: str,
                                  models: Sequence[str] = ("kern", "vrfc")):
    """Per-predicate R@50 (mean, std error bars) of ``models``, predicates sorted by train frequency
    (``train_counts``: {predicate name: train triplets}; None: by test gt count)."""
    models = [m for m in models if m in by_model]
    if not models:
        raise ValueError(f"none of {list(models)} in the study")
    rows = by_model[models[0]]["per_predicate"]
    counts = train_counts if train_counts is not None else {name: row["gt_count"] for name, row in rows.items()}
    names = sorted(rows, key=lambda name: (-counts.get(name, 0), name))
    figure = new_figure(max(6.0, 0.3 * len(names) * len(models) / 2 + 1.5), 4.5)
    axes = figure.add_subplot(1, 1, 1)
    width = 0.8 / len(models)
    for i, model in enumerate(models):
        stats = [by_model[model]["per_predicate"][name] for name in names]
        axes.bar([x + (i - (len(models) - 1) / 2) * width for x in range(len(names))], [s["mean"] for s in stats],
                 width=width, yerr=[s["std"] for s in stats], capsize=2, label=model)
    axes.set_xticks(range(len(names)))
    axes.set_xticklabels([f"{name} ({counts.get(name, 0)})" for name in names], rotation=90, fontsize=7)
    axes.set_xlim(-0.6, len(names) - 0.4)
    axes.set_ylim(0, 100)
    axes.set_ylabel(f"{PER_PREDICATE_METRIC} (%)")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=8)
    save_figure(figure, path)


def plot_tradeoff(path: str, by_model: dict, title: str, x: str = "R@50", y: str = "mR@50"):
    """One point per model: ``x`` against ``y`` (means, sample-std error bars in both directions)."""
    figure = new_figure(5.5, 4.5)
    axes = figure.add_subplot(1, 1, 1)
    for model, summary in by_model.items():
        sx, sy = summary["metrics"][x], summary["metrics"][y]
        axes.errorbar(sx["mean"], sy["mean"], xerr=sx["std"], yerr=sy["std"], fmt="o", capsize=3, label=model)
    axes.set_xlabel(f"{x} (%)")
    axes.set_ylabel(f"{y} (%)")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=7)
    save_figure(figure, path)


def write_report(output_dir: str, results: Dict[str, Dict[str, List[dict]]], header: Dict[str, str],
                 train_counts: Optional[Dict[str, int]] = None, failed: Sequence[str] = (),
                 extra: Optional[dict] = None) -> dict:
    """Aggregate ``results`` (as :func:`aggregate`) and write the report (:func:`write_study_report`).
    Returns the study.json payload."""
    return write_study_report(output_dir, aggregate(results), header, train_counts, failed, extra)


def write_study_report(output_dir: str, study: dict, header: Dict[str, str],
                       train_counts: Optional[Dict[str, int]] = None, failed: Sequence[str] = (),
                       extra: Optional[dict] = None) -> dict:
    """Write study.json, study.md, mR50.png, per_predicate_<mode>.png and tradeoff_<mode>.png (R@50 against
    mR@50) of an aggregated ``study`` into ``output_dir``; with ``train_counts`` also the head/body/tail split
    (:func:`group_recalls`). Returns the study.json payload."""
    claims = make_claims(study)
    groups = group_recalls(study, train_counts) if train_counts else None
    payload = dict({key.replace(" ", "_"): value for key, value in header.items()}, **(extra or {}))
    payload.update(modes=study, claims=claims, train_predicate_counts=train_counts, failed=list(failed),
                   head_body_tail=groups)
    write_json(os.path.join(output_dir, "study.json"), payload)
    with open(os.path.join(output_dir, "study.md"), "w") as f:
        f.write(markdown_report(study, claims, header, failed, groups=groups))
    if study:
        plot_metric_by_model(os.path.join(output_dir, "mR50.png"), study)
    for mode, by_model in study.items():
        if "kern" in by_model or "vrfc" in by_model:
            plot_per_predicate_comparison(
                os.path.join(output_dir, f"per_predicate_{mode}.png"), by_model, train_counts,
                f"{MODE_TITLES.get(mode, mode)}: per-predicate {PER_PREDICATE_METRIC}, by train frequency "
                "(mean ± std over seeds)")
        plot_tradeoff(os.path.join(output_dir, f"tradeoff_{mode}.png"), by_model,
                      f"{MODE_TITLES.get(mode, mode)}: R@50 against mR@50 (mean ± std over seeds)")
    return payload


def merge_studies(payloads: Sequence[dict], sources: Sequence[str]) -> dict:
    """One study from the study.json payloads of studies run apart (e.g. one device call per mode).

    Every (mode, model) must come from one payload alone, and all must have the same train predicate counts (the
    same dataset). JSON nulls (NaN when written) become NaN again. Returns {"modes", "train_predicate_counts",
    "failed"}; raises ValueError naming the source files where they clash.
    """
    modes, owner, failed = {}, {}, []
    counts, counts_source = None, None
    for payload, source in zip(payloads, sources):
        if "modes" not in payload:
            raise ValueError(f"{source}: not a study.json (no 'modes' key)")
        their_counts = payload.get("train_predicate_counts")
        if counts is None:
            counts, counts_source = their_counts, source
        elif their_counts != counts:
            raise ValueError(f"{source} and {counts_source} were trained on different data: their train predicate "
                             "counts differ")
        for mode, by_model in payload["modes"].items():
            for model, summary in by_model.items():
                if (mode, model) in owner:
                    raise ValueError(f"{mode} {model} is in both {owner[mode, model]} and {source}: keep one")
                owner[mode, model] = source
                modes.setdefault(mode, {})[model] = _nan_from_null(summary)
        failed += payload.get("failed", [])
    ordered = {mode: modes[mode] for mode in MODES if mode in modes}
    ordered.update({mode: by_model for mode, by_model in modes.items() if mode not in ordered})
    return {"modes": ordered, "train_predicate_counts": counts, "failed": failed}


def _nan_from_null(value):
    """Summaries read back from JSON: null means and stds, and null per-seed values, are NaN (seeds stay None)."""
    if isinstance(value, list):
        return [_nan_from_null(v) for v in value]
    if not isinstance(value, dict):
        return value
    restored = {}
    for key, item in value.items():
        if key in ("mean", "std") and item is None:
            restored[key] = math.nan
        elif key == "values":
            restored[key] = [math.nan if v is None else v for v in item]
        else:
            restored[key] = _nan_from_null(item)
    return restored
