"""``vtn tables``: the paper's Tables I-IX from per-pair metrics (``vtn evaluate`` output).

``vtn tables --spec study.json --metrics results/metrics/<study>/<method>.csv ... --out
results/tables/<study>`` (``--metrics`` also takes the folder of those files)

Liver studies give Tables I (loss weights), II (methods), III (smoothness), IV (data amount),
V (cascades); brain studies VI, VII, VIII, IX (and ``I-brain`` when the spec has loss weights).
The paper tables show the paper-comparable columns (Seg. IoU: the liver mask / the whole brain;
Lm. Dist.: warped moving vs fixed landmarks, Section V-B; folding: ``det < 0``) beside the
paper's values; ``extra_measures`` holds every measure beyond the paper (Learn2Reg's Dice,
HD95, SDlogJ, the non-diffeomorphic volume, per-structure means, the reference code's landmark
measure), and each table's note defines its columns (:func:`metric_notes`).
Every table is written as ``<stem>.csv`` (numeric: mean, std, n per column; the first line is a
``# caption`` comment, read with ``pd.read_csv(path, comment=None, skiprows=1)``),
``<stem>.md`` and ``<stem>.tex``; each carries a caption stating the data source and image size.
Cells are ``mean (std)`` across test pairs (population std, ``ddof=0``, like the reference
evaluation); times are mean seconds per pair from the ``seconds``/``device`` columns, "N/A" where
a device was not measured. Wilcoxon signed-rank p-values (two-sided) for the spec's comparisons
and for every cascade against the cascade with one dense subnetwork fewer go to
``pvalues.{csv,md,tex}`` and to the cascades table. The paper's values are shown next to ours
for reference only. Methods without a metrics file are skipped with a note (``notes.txt``).

A method's timings may be completed by extra files ``<method>@<tag>.csv`` among the metrics files
(e.g. ``ADDD@gpu.csv``, rows with ``device=cuda``): they only feed the time columns.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import numpy as np

from vtn import stats
from vtn.io import InputError, expand_files
from vtn.report import paper

__all__ = [
    "load_spec", "load_metrics", "summarise", "time_summary", "loss_weights_table",
    "methods_table", "smoothness_table", "extra_measures_table", "metric_notes",
    "data_amount_table", "cascades_table",
    "pvalue_table", "write_table", "make_tables", "cli",
]

ROMAN = {"liver": {"methods": "II", "smoothness": "III", "data_amount": "IV", "cascades": "V"},
         "brain": {"methods": "VI", "smoothness": "VII", "data_amount": "VIII", "cascades": "IX"}}
NUMBER = {"I": 1, "II": 2, "III": 3, "IV": 4, "V": 5, "VI": 6, "VII": 7, "VIII": 8, "IX": 9}
TERM_NAMES = {"sim": "Similarity", "det": "Determinant", "ortho": "Orthogonality",
              "tv": "Total variation", "inv": "Invertibility", "epe": "End-point error",
              "grad": "Gradient L2", "ncc": "Local NCC"}
#: display name of every per-pair column (``vtn evaluate``) a table shows
METRIC_NAMES = {"iou": "Seg. IoU", "dice": "Dice", "lm_dist_vox": "Lm. Dist.",
                "lm_dist_mm": "Lm. Dist. (mm)", "jac_std": "Std. Jacobian",
                "folding_pct": "Folding (%)", "epe": "EPE", "seconds": "Time",
                "iou_structures": "IoU (structures)", "dice_structures": "Dice (structures)",
                "hd95_structures": "HD95 (vox)", "hd95_structures_mm": "HD95 (mm)",
                "lm_ref_vox": "Lm. Dist. ref. (vox)", "lm_ref_mm": "Lm. Dist. ref. (mm)",
                "sdlogj": "SDlogJ", "ndv_pct": "NDV (%)"}
DIGITS = {"iou": 4, "dice": 4, "lm_dist_vox": 2, "lm_dist_mm": 2, "jac_std": 3,
          "folding_pct": 3, "epe": 2, "iou_structures": 4, "dice_structures": 4,
          "hd95_structures": 2, "hd95_structures_mm": 2, "lm_ref_vox": 2, "lm_ref_mm": 2,
          "sdlogj": 3, "ndv_pct": 3}
#: the measures beyond the paper (table ``extra_measures``), in column order
EXTRA_METRICS = ["dice", "iou_structures", "dice_structures", "hd95_structures",
                 "hd95_structures_mm", "lm_ref_vox", "lm_ref_mm", "sdlogj", "ndv_pct"]


# ------------------------------------------------------------------------------------ loading

def load_spec(path) -> dict:
    """Read ``study.json``; checks the keys the report needs."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: study spec not found")
    try:
        spec = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: invalid JSON ({exc})") from exc
    for key in ("study", "organ", "methods"):
        if key not in spec:
            raise InputError(f"{path}: study spec lacks '{key}'")
    if spec["organ"] not in ROMAN:
        raise InputError(f"{path}: organ must be liver or brain, got {spec['organ']!r}")
    spec.setdefault("tables", {})
    spec.setdefault("comparisons", [])
    return spec


def load_metrics(metrics, names) -> tuple[dict, dict, list]:
    """Per-pair metric tables of the named methods.

    Args:
        metrics: the metrics files ``<name>.csv`` (and ``<name>@<tag>.csv``), or their folder.
        names: the methods.

    Returns:
        ``(metrics {name: DataFrame}, extra timing rows {name: DataFrame}, notes)``; methods
        without ``<name>.csv`` are left out and named in ``notes``.
    """
    import pandas as pd

    files, folder = expand_files(metrics, "*.csv")
    folder = folder or (files[0].parent if files else Path("."))
    by_stem = {p.name[:-len(".csv")]: p for p in files}
    out, extra, notes = {}, {}, []
    for name in dict.fromkeys(names):
        path = by_stem.get(name, folder / f"{name}.csv")
        if not path.exists():
            notes.append(f"{name}: no metrics file {path} (method not run) - skipped")
            continue
        df = pd.read_csv(path, dtype={"fixed": str, "moving": str, "device": str})
        if not {"fixed", "moving"} <= set(df.columns):
            raise InputError(f"{path}: metrics table needs columns fixed, moving")
        out[name] = df
        parts = [pd.read_csv(p, dtype={"fixed": str, "moving": str, "device": str})
                 for stem, p in sorted(by_stem.items()) if stem.startswith(name + "@")]
        if parts:
            extra[name] = pd.concat(parts, ignore_index=True)
    return out, extra, notes


# ------------------------------------------------------------------------------------ summaries

def summarise(values) -> tuple[float, float, int]:
    """``(mean, population std, n)`` of the finite values (NaN, NaN, 0 when none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std()), int(v.size)


def time_summary(df, extra=None) -> dict:
    """Mean seconds per pair with a GPU (``device`` starting with ``cuda``) and on the CPU.

    Returns:
        ``{"gpu": float|nan, "cpu": float|nan}``.
    """
    import pandas as pd

    frames = [df] + ([extra] if extra is not None else [])
    d = pd.concat([f for f in frames if "seconds" in f.columns], ignore_index=True) \
        if any("seconds" in f.columns for f in frames) else None
    res = {"gpu": float("nan"), "cpu": float("nan")}
    if d is None or len(d) == 0:
        return res
    dev = d.get("device", pd.Series([""] * len(d))).fillna("").astype(str).str.lower()
    secs = pd.to_numeric(d["seconds"], errors="coerce")
    gpu = secs[dev.str.startswith("cuda") | dev.str.startswith("gpu")]
    cpu = secs[dev.str.startswith("cpu")]
    res["gpu"] = summarise(gpu)[0]
    res["cpu"] = summarise(cpu)[0]
    return res


def fmt(mean, std=None, digits=4, missing="N/A") -> str:
    """The number format of every table, claim and figure label: ``mean`` with ``digits``
    decimals, then `` (std)`` when ``std`` is given and finite; ``missing`` for None/NaN/Inf."""
    if mean is None or not np.isfinite(mean):
        return missing
    s = f"{mean:.{digits}f}"
    if std is not None and np.isfinite(std):
        s += f" ({std:.{digits}f})"
    return s


def _fmt_time(sec) -> str:
    if sec is None or (isinstance(sec, float) and math.isnan(sec)):
        return "N/A"
    return f"{sec:.3g} s"


def _fmt_p(p) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "n/a"
    return f"{p:.2e}" if p < 1e-3 else f"{p:.4f}"


def _display(spec, name) -> str:
    entry = spec["methods"].get(name, {})
    disp = entry.get("display") or name
    if entry.get("star") and "★" not in disp:
        disp += "★"
    return disp


def _paper_row(spec, table, name):
    key = paper.paper_key(name, spec["methods"].get(name, {}))
    return paper.BY_ORGAN[spec["organ"]][table].get(key) if key else None


def _metric_cols(row: dict, df, metric: str, digits: int | None = None) -> tuple:
    m, s, n = summarise(df[metric]) if metric in df.columns else (float("nan"),) * 2 + (0,)
    row[f"{metric}_mean"], row[f"{metric}_std"], row[f"{metric}_n"] = m, s, n
    return fmt(m, s, DIGITS.get(metric, 4) if digits is None else digits)


# ------------------------------------------------------------------------------------ tables

def _cascade_kinds(spec, model) -> str:
    entry = spec["methods"].get(model, {})
    casc = entry.get("cascade")
    if not casc:
        mt = re.match(r"^(A?D+)", model)
        casc = mt.group(1) if mt else ""
    return casc


def loss_weights_table(spec, notes=None):
    """Table I: the loss weights actually used (from ``spec["loss_weights"]``).

    A model whose weights are ``null`` in the spec falls back to
    ``vtn.losses.default_weights(cascade)`` (the defaults training used).

    Returns:
        ``(numeric DataFrame, display DataFrame)`` with columns model, subnetwork, loss, ratio.
    """
    import pandas as pd

    rows = []
    for model, weights in (spec.get("loss_weights") or {}).items():
        casc = _cascade_kinds(spec, model)
        if weights is None:
            try:
                from vtn.losses import default_weights

                weights = default_weights(casc)
            except Exception as exc:  # module missing or spec not understood
                if notes is not None:
                    notes.append(f"loss weights of {model}: not in the spec and defaults "
                                 f"unavailable ({type(exc).__name__}: {exc})")
                continue
        dense = 0
        for k, w in enumerate(weights):
            kind = casc[k] if k < len(casc) else "D"
            if kind == "A":
                sub = "Affine"
            else:
                dense += 1
                sub = f"Dense {dense}"
            for term, val in (w or {}).items():
                rows.append({"model": model, "subnetwork": sub,
                             "loss": TERM_NAMES.get(term, term), "ratio": float(val)})
    num = pd.DataFrame(rows, columns=["model", "subnetwork", "loss", "ratio"])
    disp = num.copy()
    disp["ratio"] = [f"{v:g}" for v in num["ratio"]]
    disp.columns = ["Model", "Subnetwork", "Loss", "Relative ratio"]
    ref = {(s, l): r for s, l, r in paper.TABLE_I}
    disp["Paper (liver ADDD)"] = [f"{ref[(s, l)]:g}" if (s, l) in ref else "-"
                                  for s, l in zip(num["subnetwork"], num["loss"])]
    return num, disp


def _method_rows(spec, metrics, names, fill):
    """One numeric and one display row per method of ``names`` that has metrics;
    ``fill(name, df, row, display_row)`` adds the columns."""
    import pandas as pd

    num, disp = [], []
    for name in names:
        if name not in metrics:
            continue
        row = {"method": name, "display": _display(spec, name)}
        d = {"Method": row["display"]}
        fill(name, metrics[name], row, d)
        num.append(row)
        disp.append(d)
    return pd.DataFrame(num), pd.DataFrame(disp)


def methods_table(spec, metrics, extra=None, names=None, table="methods"):
    """Tables II / VI (and V / IX without p-values): IoU, Lm. Dist., times per method, each
    paper-comparable column beside the paper's value.

    Returns:
        ``(numeric DataFrame, display DataFrame)``.
    """
    extra = extra or {}
    names = names if names is not None else spec["tables"].get("methods", [])

    def fill(name, df, row, d):
        ref = _paper_row(spec, table, name)
        row["paper_iou"] = ref["iou"] if ref else float("nan")
        row["paper_lm"] = ref["lm"] if ref else float("nan")
        d["Seg. IoU"] = _metric_cols(row, df, "iou")
        d["Paper IoU"] = fmt(row["paper_iou"], None, 4) if ref else "-"
        d["Lm. Dist. (vox)"] = _metric_cols(row, df, "lm_dist_vox")
        d["Paper Lm."] = fmt(row["paper_lm"], None, 2) if ref else "-"
        d["Lm. Dist. (mm)"] = _metric_cols(row, df, "lm_dist_mm")
        t = time_summary(df, extra.get(name))
        row["time_gpu_s"], row["time_cpu_s"] = t["gpu"], t["cpu"]
        d["Time"], d["Time (w/o GPU)"] = _fmt_time(t["gpu"]), _fmt_time(t["cpu"])

    return _method_rows(spec, metrics, names, fill)


def smoothness_table(spec, metrics, names=None):
    """Tables III / VII: std of the Jacobian determinant and folding % per method."""
    names = names if names is not None else spec["tables"].get("smoothness", [])

    def fill(name, df, row, d):
        ref = _paper_row(spec, "smoothness", name)
        d["Std. Jacobian"] = _metric_cols(row, df, "jac_std")
        d["Paper Std. Jacobian"] = fmt(*ref["jac_std"], 3) if ref else "-"
        d["Folding (%)"] = _metric_cols(row, df, "folding_pct")
        d["Paper Folding (%)"] = fmt(*ref["folding"], 3) if ref else "-"

    return _method_rows(spec, metrics, names, fill)


def extra_measures_table(spec, metrics, names=None):
    """The measures beyond the paper (:data:`EXTRA_METRICS`: Learn2Reg's Dice, HD95, SDlogJ, the
    non-diffeomorphic volume, the per-structure means and the reference code's landmark
    measure), one row per method of the paper tables (methods, smoothness, cascades)."""
    if names is None:
        t = spec["tables"]
        names = list(dict.fromkeys(list(t.get("methods", [])) + list(t.get("smoothness", []))
                                   + list(t.get("cascades", []))))

    def fill(name, df, row, d):
        for metric in EXTRA_METRICS:
            d[METRIC_NAMES[metric]] = _metric_cols(row, df, metric)

    return _method_rows(spec, metrics, names, fill)


def metric_notes(organ: str) -> dict:
    """Definition of every column, per table kind (``methods``, ``smoothness``, ``extra``)."""
    region = ("the whole brain, every labelled voxel (label >= 1) as one region"
              if organ == "brain" else "the liver mask")
    structures = ("the unweighted mean over the LPBA40 structures present in the fixed "
                  "segmentation" if organ == "brain" else "the liver (one structure)")
    lm = ("Lm. Dist.: mean distance between the warped moving landmarks (y with y + u(y) = "
          "moving landmark) and the fixed landmarks (paper Section V-B), in voxels of the fixed "
          "prep image (★: the difference mapped through the linear part of the fixed subject's "
          "atlas_to_prep, i.e. the inverse of its atlas alignment, to its original prep "
          "voxels); mm through that image's affine.")
    return {
        "methods": (f"Seg. IoU: IoU of {region} (the paper's quantity, Section V). {lm} "
                    "Measures beyond the paper are in extra_measures."),
        "smoothness": ("Std. Jacobian: population std of det(I + grad u), forward differences "
                       "(reference code). Folding: percent of voxels with det < 0 (the paper: "
                       "negative Jacobian determinant). SDlogJ and the non-diffeomorphic "
                       "volume are in extra_measures."),
        "extra": (f"Beyond the paper. Dice: Dice of {region} (the region of Seg. IoU). "
                  f"IoU (structures), Dice (structures): {structures}. HD95 (vox/mm): mean "
                  "over the same structures of the 95th-percentile Hausdorff distance between "
                  "the boundary voxels (Learn2Reg; voxels of the evaluation grid, mm through "
                  "its voxel size). Lm. Dist. ref.: the reference code's measure, the fixed "
                  "landmarks carried into the moving image (p + u(p)) vs the moving landmarks, "
                  "voxels of the moving prep image (★: through the moving subject's "
                  "atlas_to_prep). SDlogJ: std of log det(I + grad u), central differences, "
                  "2-voxel border crop, J clipped to [1e-9, 1e9] (Learn2Reg, without its "
                  "undocumented +3). NDV (%): non-diffeomorphic volume (Liu et al., IJCV 2024) "
                  "in percent of the grid."),
    }


def data_amount_table(spec, metrics, entries=None):
    """Tables IV / VIII: the main model trained on different amounts of unlabeled data."""
    import pandas as pd

    entries = entries if entries is not None else spec["tables"].get("data_amount", [])
    num, disp = [], []
    for ent in entries:
        name = ent["method"]
        if name not in metrics:
            continue
        df = metrics[name]
        row = {"training_data": ent.get("label", name), "method": name}
        d = {"Training data": row["training_data"], "Method": _display(spec, name),
             "Seg. IoU": _metric_cols(row, df, "iou"),
             "Lm. Dist. (vox)": _metric_cols(row, df, "lm_dist_vox")}
        num.append(row)
        disp.append(d)
    return pd.DataFrame(num), pd.DataFrame(disp)


def _previous_cascade(spec, names, name):
    """The listed method whose cascade has one dense subnetwork fewer (same pre-alignment)."""
    entry = spec["methods"].get(name, {})
    casc = _cascade_kinds(spec, name)
    if not casc.endswith("DD"):
        return None
    for other in names:
        e = spec["methods"].get(other, {})
        if (_cascade_kinds(spec, other) == casc[:-1] and bool(e.get("star")) == bool(entry.get("star"))
                and bool(e.get("inv")) == bool(entry.get("inv"))):
            return other
    return None


def cascades_table(spec, metrics, extra=None, names=None):
    """Tables V / IX: cascades with times, plus two-sided Wilcoxon p-values against the cascade
    with one dense subnetwork fewer.

    Returns:
        ``(numeric DataFrame, display DataFrame, list of p-value rows)``.
    """
    names = names if names is not None else spec["tables"].get("cascades", [])
    num, disp = methods_table(spec, metrics, extra, names, table="cascades")
    prows = []
    if len(num) == 0:
        return num, disp, prows
    p_iou, p_lm = [], []
    for name in num["method"]:
        prev = _previous_cascade(spec, names, name)
        res = {}
        for metric in ("iou", "lm_dist_vox"):
            if prev is None or prev not in metrics:
                res[metric] = None
                continue
            r = stats.wilcoxon(metrics[name], metrics[prev], metric=metric)
            res[metric] = r
            prows.append(_prow(name, prev, metric, r, "cascade vs previous"))
        p_iou.append(res["iou"]["p"] if res["iou"] else float("nan"))
        p_lm.append(res["lm_dist_vox"]["p"] if res["lm_dist_vox"] else float("nan"))
    num["p_iou_vs_prev"] = p_iou
    num["p_lm_vs_prev"] = p_lm
    disp["p IoU vs prev."] = [_fmt_p(p) for p in p_iou]
    disp["p Lm. vs prev."] = [_fmt_p(p) for p in p_lm]
    return num, disp, prows


def _prow(a, b, metric, r, source) -> dict:
    return {"a": a, "b": b, "metric": metric, "n": r["n"], "mean_a": r["mean_a"],
            "mean_b": r["mean_b"], "median_diff": r["median_diff"], "statistic": r["statistic"],
            "p": r["p"], "alternative": r["alternative"], "note": r["reason"], "source": source}


def pvalue_table(spec, metrics, extra_rows=()):
    """Two-sided Wilcoxon signed-rank tests of the spec's comparisons (pairs matched by
    ``(fixed, moving)``), plus ``extra_rows``; comparisons with a missing method are noted."""
    import pandas as pd

    rows = []
    for comp in spec.get("comparisons", []):
        a, b = comp["a"], comp["b"]
        for metric in comp.get("metrics", ["iou", "lm_dist_vox"]):
            if a not in metrics or b not in metrics:
                miss = ", ".join(x for x in (a, b) if x not in metrics)
                rows.append({"a": a, "b": b, "metric": metric, "n": 0, "p": float("nan"),
                             "alternative": "two-sided", "note": f"not run: {miss}",
                             "source": "spec"})
                continue
            r = stats.wilcoxon(metrics[a], metrics[b], alternative=comp.get("alternative",
                                                                               "two-sided"),
                               metric=metric)
            rows.append(_prow(a, b, metric, r, "spec"))
    rows += list(extra_rows)
    cols = ["a", "b", "metric", "n", "mean_a", "mean_b", "median_diff", "statistic", "p",
            "alternative", "note", "source"]
    num = pd.DataFrame(rows, columns=cols)
    disp = pd.DataFrame({
        "A": [_display(spec, a) for a in num["a"]], "B": [_display(spec, b) for b in num["b"]],
        "Metric": [METRIC_NAMES.get(m, m) for m in num["metric"]], "n": num["n"],
        "Median diff. (A-B)": [fmt(v, None, 4) for v in num["median_diff"]],
        "p (Wilcoxon)": [_fmt_p(p) for p in num["p"]],
        "Note": num["note"].fillna("")})
    return num, disp


# ------------------------------------------------------------------------------------ writing

def _md_escape(s) -> str:
    return str(s).replace("|", "\\|")


def _tex_escape(s) -> str:
    table = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
             "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\~{}", "^": r"\^{}",
             "★": r"$^\star$", "³": r"$^3$"}
    return "".join(table.get(ch, ch) for ch in str(s))


def to_markdown(disp, caption: str, note: str = "") -> str:
    lines = [f"**{caption}**", ""]
    cols = list(disp.columns)
    lines.append("| " + " | ".join(_md_escape(c) for c in cols) + " |")
    lines.append("|" + "|".join("---" for _ in cols) + "|")
    for rec in disp.itertuples(index=False):
        lines.append("| " + " | ".join(_md_escape(v) for v in rec) + " |")
    if note:
        lines += ["", note]
    return "\n".join(lines) + "\n"


def to_latex(disp, caption: str, label: str) -> str:
    cols = list(disp.columns)
    out = [r"\begin{table}[t]", r"\centering", f"\\caption{{{_tex_escape(caption)}}}",
           f"\\label{{tab:{label}}}", r"\begin{tabular}{l" + "c" * (len(cols) - 1) + "}",
           r"\hline", " & ".join(_tex_escape(c) for c in cols) + r" \\", r"\hline"]
    for rec in disp.itertuples(index=False):
        out.append(" & ".join(_tex_escape(v) for v in rec) + r" \\")
    out += [r"\hline", r"\end{tabular}", r"\end{table}"]
    return "\n".join(out) + "\n"


def write_table(out_dir, stem: str, num, disp, caption: str, note: str = "") -> list:
    """Write ``<stem>.csv`` (caption as the first ``#`` line, then numeric columns),
    ``<stem>.md`` and ``<stem>.tex``; returns the written paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{stem}.{ext}" for ext in ("csv", "md", "tex")]
    paths[0].write_text("# " + caption.replace("\n", " ") + "\n" + num.to_csv(index=False))
    paths[1].write_text(to_markdown(disp, caption, note))
    paths[2].write_text(to_latex(disp, caption, stem))
    return paths


def _who(spec) -> str:
    return spec["organ"] if spec["study"] == spec["organ"] else f"{spec['study']}, {spec['organ']}"


def _caption(spec, roman: str, title: str, n_pairs: int | None = None) -> str:
    size = spec.get("image_size")
    size_txt = f"{size}³ voxels" if size else "size not stated"
    src = spec.get("data_source") or "data source not stated"
    pairs = f"; mean (std) over {n_pairs} test pairs" if n_pairs else ""
    return (f"Table {roman} ({_who(spec)}): {title}. "
            f"Data: {src}. Images {size_txt}{pairs}; Lm. Dist. in voxels of the fixed prep "
            f"image. Paper columns are the published values on the paper's own datasets, "
            f"shown for reference only.")


def prealign_seconds(subjects_csv):
    """Mean ANTs pre-alignment time per volume from the ``<sid>_prep.json`` files next to a
    pre-aligned ``subjects.csv``: ``(mean seconds, n)`` or ``None``."""
    import pandas as pd

    if not subjects_csv or not Path(subjects_csv).exists():
        return None
    folder = Path(subjects_csv).parent
    secs = []
    for sid in pd.read_csv(subjects_csv, dtype=str)["subject"]:
        info = folder / f"{sid}_prep.json"
        if info.exists():
            val = json.loads(info.read_text()).get("prealign_seconds")
            if val is not None:
                secs.append(float(val))
    return (float(np.mean(secs)), len(secs)) if secs else None


def _n_pairs(metrics, names) -> int | None:
    ns = [len(metrics[n]) for n in names if n in metrics]
    return max(ns) if ns else None


def ablation_note(spec, metrics) -> str:
    """One sentence per ablation model of the spec (``tables.ablation``: a variant reported in
    the notes, e.g. "+ inv" whose reverse run adds all its terms) against the model it varies."""
    out = []
    for e in spec["tables"].get("ablation", []):
        a, b = e["method"], e["versus"]
        if a not in metrics:
            continue
        cells = []
        for metric in ("iou", "lm_dist_vox", "folding_pct"):
            m, sd, _ = summarise(metrics[a][metric]) if metric in metrics[a] else (None,) * 3
            cell = f"{METRIC_NAMES[metric]} {fmt(m, sd, DIGITS[metric])}"
            if b in metrics and metric in metrics[b]:
                mb, sb, _ = summarise(metrics[b][metric])
                cell += f" vs {fmt(mb, sb, DIGITS[metric])}"
            cells.append(cell)
        out.append(f"Ablation (not a paper row): {_display(spec, a)} vs {_display(spec, b)}: "
                   + ", ".join(cells) + ".")
    return " ".join(out)


def make_tables(spec, metrics_dir, out_dir, train_logs=None) -> dict:
    """Build and write every table of a study; returns ``{stem: [paths]}`` plus ``notes``.

    Args:
        train_logs: ``train_log.csv`` of each trained model (the model is the log's folder
            name): the plateau check of :mod:`vtn.report.convergence` goes into every table's
            notes and into ``convergence.{csv,md,tex}``.
    """
    from vtn.report import convergence

    organ = spec["organ"]
    t = spec["tables"]
    names = set(t.get("methods", [])) | set(t.get("smoothness", [])) | set(t.get("cascades", []))
    names |= {e["method"] for e in t.get("data_amount", [])}
    names |= {e["method"] for e in t.get("ablation", [])}
    for comp in spec.get("comparisons", []):
        names |= {comp["a"], comp["b"]}
    ordered = [n for n in spec["methods"] if n in names] + sorted(names - set(spec["methods"]))
    metrics, extra, notes = load_metrics(metrics_dir, ordered)
    roman = ROMAN[organ]
    star_note = ""
    if any(spec["methods"].get(n, {}).get("star") for n in metrics):
        star_note = ("★: ANTs atlas pre-alignment; its time is not included (as in the paper); "
                     "landmark difference vectors mapped back through the fixed image's "
                     "alignment (Section V-B).")
        secs = prealign_seconds(spec.get("prealign_subjects"))
        if secs is not None:
            star_note += (f" Pre-alignment took {secs[0]:.1f} s per volume on average "
                          f"({secs[1]} volumes; the paper: 73.94 s).")
    method_notes = " ".join(spec.get("method_notes", []))
    if method_notes:
        star_note = (star_note + " " + method_notes).strip()
    written = {}
    if train_logs:
        curves = convergence.check_logs({Path(p).parent.name: p for p in train_logs})
        star_note = (star_note + " " + convergence.summary_line(curves)).strip()
        def fmt(digits):
            return lambda v: "-" if v != v else f"{v:.{digits}f}"

        disp = curves.assign(**{c: curves[c].map(fmt(4)) for c in
                                ("probe_prev", "probe_end", "loss_prev", "loss_end")},
                             **{c: curves[c].map(fmt(2)) for c in
                                ("probe_drop_pct", "drop_pct", "drop_se_pct")})
        disp = disp[["model", "steps", "probe_prev", "probe_end", "probe_drop_pct", "loss_prev",
                     "loss_end", "drop_pct", "drop_se_pct", "basis", "flat"]]
        disp.columns = ["Model", "Steps", "Probe loss at 90 %", "Probe loss at 100 %",
                        "Probe drop (%)", "Smoothed loss at 90 %", "Smoothed loss at 100 %",
                        "Smoothed drop (%)", "SE of the smoothed drop (%)", "Verdict from",
                        "Flat (< 2 %)"]
        cap = (f"Training curves ({_who(spec)}): a model is at its plateau when its loss drops "
               f"by less than 2 % over the last 10 % of its steps. Probe: the training loss of "
               f"fixed training pairs, each with a fixed augmentation, with the weights at 90 % "
               f"and at 100 % of the steps (a paired comparison: only the weights differ; "
               f"vtn.train.probe); it decides where the log has it. Smoothed: the logged "
               f"training loss averaged over windows of 10 % of the steps; its standard error "
               f"comes from the spread of the per-step losses, but it cannot see that models "
               f"with one seed draw the same pairs and augmentations in each window (shown for "
               f"comparison, and the verdict for logs without a probe). Data: "
               f"{spec.get('data_source') or 'data source not stated'}.")
        written["convergence"] = write_table(out_dir, "convergence", curves, disp, cap,
                                             convergence.summary_line(curves))

    lw = spec.get("loss_weights") or {}
    if organ == "liver" and lw or any(v is not None for v in lw.values()):
        num, disp = loss_weights_table(spec, notes)
        if len(num):
            r = "I" if organ == "liver" else "I-brain"
            stem = "table1_loss_weights" if organ == "liver" else "table1-brain_loss_weights"
            cap = _caption(spec, r, "relative ratio of the loss terms used in training")
            written[stem] = write_table(out_dir, stem, num, disp, cap)

    specs = [("methods", "comparison among methods"),
             ("smoothness", "standard deviation of the Jacobian determinant and folding "
                            "(det < 0, percent of voxels)"),
             ("data_amount", "amount of unlabeled training data"),
             ("cascades", "number of cascaded subnetworks")]
    prows = []
    defs = metric_notes(organ)
    defs["cascades"] = defs["methods"]
    defs["data_amount"] = defs["methods"]
    for key, title in specs:
        r = roman[key]
        stem = f"table{NUMBER[r]}_{key}"
        if key == "methods":
            num, disp = methods_table(spec, metrics, extra)
            n = _n_pairs(metrics, t.get("methods", []))
        elif key == "smoothness":
            num, disp = smoothness_table(spec, metrics)
            n = _n_pairs(metrics, t.get("smoothness", []))
        elif key == "data_amount":
            num, disp = data_amount_table(spec, metrics)
            n = _n_pairs(metrics, [e["method"] for e in t.get("data_amount", [])])
        else:
            num, disp, prows = cascades_table(spec, metrics, extra)
            n = _n_pairs(metrics, t.get("cascades", []))
        if len(num) == 0:
            notes.append(f"Table {r} ({key}): no method with metrics - not written")
            continue
        extra_note = ablation_note(spec, metrics) if key == "methods" else ""
        note = " ".join(x for x in (defs.get(key, ""), extra_note, star_note) if x)
        written[stem] = write_table(out_dir, stem, num, disp, _caption(spec, r, title, n), note)
    num, disp = extra_measures_table(spec, metrics)
    if len(num):
        names_extra = list(num["method"])
        cap = (f"Measures beyond the paper ({_who(spec)}): Learn2Reg's "
               f"Dice, HD95 and SDlogJ, the non-diffeomorphic volume, per-structure means and "
               f"the reference code's landmark measure. Data: "
               f"{spec.get('data_source') or 'data source not stated'}. Images "
               f"{spec.get('image_size', '?')}³ voxels; mean (std) over "
               f"{_n_pairs(metrics, names_extra)} test pairs. No paper values exist.")
        note = " ".join(x for x in (defs["extra"], star_note) if x)
        written["extra_measures"] = write_table(out_dir, "extra_measures", num, disp, cap, note)
    num, disp = pvalue_table(spec, metrics, prows)
    if len(num):
        cap = (f"Wilcoxon signed-rank tests, two-sided, pairs matched by (fixed, moving) "
               f"({spec['study']}, {spec['organ']}). Data: "
               f"{spec.get('data_source') or 'data source not stated'}. "
               f"Images {spec.get('image_size', '?')}³ voxels.")
        written["pvalues"] = write_table(out_dir, "pvalues", num, disp, cap)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "notes.txt").write_text("\n".join(notes) + ("\n" if notes else ""))
    written["notes"] = notes
    return written


def _parser():
    p = argparse.ArgumentParser(prog="vtn tables", description="the paper's tables")
    p.add_argument("--spec", required=True, help="study.json")
    p.add_argument("--metrics", required=True, nargs="+",
                   help="<method>.csv files from vtn evaluate (or their folder)")
    p.add_argument("--train-logs", nargs="*", default=[],
                   help="train_log.csv of each trained model (<model>/train_log.csv): the "
                        "plateau check of the training curves")
    p.add_argument("--out", required=True, help="output folder")
    return p


def cli(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        spec = load_spec(args.spec)
        written = make_tables(spec, args.metrics, args.out, args.train_logs)
    except InputError as exc:
        print(f"vtn tables: {exc}", file=sys.stderr)
        return 1
    for note in written.pop("notes"):
        print(f"vtn tables: note: {note}", file=sys.stderr)
    for stem, paths in written.items():
        print(f"vtn tables: {stem}: " + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    sys.exit(cli())
