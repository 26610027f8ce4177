"""Human-readable output of the scene graph metrics: tables for the log, a JSON of every figure, and a bar plot of
per-predicate recall (predicates sorted by gt frequency, as in the KERN paper's per-predicate figure)."""
import json
import math
import os
from typing import Dict, List, Optional, Sequence

from tabulate import tabulate

__all__ = [
    "headline_table", "new_figure", "per_predicate_rows", "per_predicate_table", "plot_per_predicate",
    "read_sgg_metrics", "save_figure", "write_json",
]

_FAMILIES = ("R", "ng-R", "mR", "ng-mR", "zR", "ng-zR")


def _name(names: Optional[Sequence[str]], predicate: int) -> str:
    return names[predicate] if names is not None and predicate < len(names) else str(predicate)


def headline_table(metrics: Dict[str, float], ks: Sequence[int]) -> str:
    """One row per metric family (R, ng-R, mR, ng-mR, zR, ng-zR), one column per K."""
    rows = [[family] + [metrics[f"{family}@{k}"] for k in ks]
            for family in _FAMILIES if f"{family}@{ks[0]}" in metrics]
    return tabulate(rows, headers=["metric"] + [f"@{k}" for k in ks], tablefmt="pipe", floatfmt=".2f",
                    numalign="right", stralign="left")


def per_predicate_rows(per_predicate: Dict[str, Dict[int, float]], counts: Dict[int, int],
                       names: Optional[Sequence[str]]) -> List[dict]:
    """One dict per predicate that occurs in the gt: id, name, gt_count and every per-predicate recall; most
    frequent first."""
    order = sorted(counts, key=lambda p: (-counts[p], p))
    return [dict({"id": p, "name": _name(names, p), "gt_count": counts[p]},
                 **{metric: values[p] for metric, values in per_predicate.items()}) for p in order]


def per_predicate_table(rows: List[dict]) -> str:
    if not rows:
        return "(no gt relations)"
    headers = list(rows[0].keys())
    return tabulate([[row[h] for h in headers] for row in rows], headers=headers, tablefmt="pipe", floatfmt=".2f",
                    numalign="right", stralign="left")


def _json_safe(value):
    """NaN (a metric with no image to average over) becomes null: strict JSON has no NaN."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: str, payload: dict):
    from detectron2.utils.file_io import PathManager

    with PathManager.open(path, "w") as f:
        json.dump(_json_safe(payload), f, indent=2)


def read_sgg_metrics(output_dir: str, dataset_name: str) -> dict:
    """The ``sgg_metrics.json`` that an evaluation of ``dataset_name`` wrote under ``output_dir`` (Detectron2's
    ``OUTPUT_DIR/inference/<dataset>/`` layout); null figures come back as NaN."""
    path = os.path.join(output_dir, "inference", dataset_name, "sgg_metrics.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no scene graph metrics at {path}")
    with open(path) as f:
        return json.load(f, object_hook=lambda d: {k: math.nan if v is None else v for k, v in d.items()})


def new_figure(width: float, height: float):
    """A matplotlib Figure on an Agg canvas: no pyplot, so the global backend is left alone."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure, path: str):
    """``figure`` as a PNG at ``path`` (laid out tight)."""
    from detectron2.utils.file_io import PathManager

    figure.tight_layout()
    with PathManager.open(path, "wb") as f:
        figure.savefig(f, format="png")


def plot_per_predicate(path: str, rows: List[dict], k: int, title: str, columns: Sequence[str] = None,
                       ylabel: str = "recall (%)"):
    """Bar plot PNG of two per-predicate figures (default R@k and ng-R@k, percent), predicates in the order of
    ``rows``."""
    first, second = columns or (f"R@{k}", f"ng-R@{k}")
    figure = new_figure(max(6.0, 0.28 * len(rows) + 1.5), 4.5)
    axes = figure.add_subplot(1, 1, 1)
    positions = range(len(rows))
    axes.bar([x - 0.2 for x in positions], [r[first] for r in rows], width=0.4, label=first)
    axes.bar([x + 0.2 for x in positions], [r[second] for r in rows], width=0.4, label=second)
    axes.set_xticks(list(positions))
    axes.set_xticklabels([f"{r['name']} ({r['gt_count']})" for r in rows], rotation=90, fontsize=7)
    axes.set_xlim(-0.6, len(rows) - 0.4)
    axes.set_ylim(0, 100)
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=8)
    save_figure(figure, path)
