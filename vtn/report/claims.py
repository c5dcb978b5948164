"""``vtn claims``: the paper's claims checked against our per-pair metrics.

``vtn claims --spec liver.json [--spec brain.json ...] --metrics-root results/metrics
--out results/claims.md`` (also writes ``claims.csv`` next to the Markdown file); instead of
``--metrics-root``, ``--metrics CSV [CSV ...]`` once per spec, in the same order, names the
metrics files of each study.

Each claim is tested with a paired, one-sided Wilcoxon signed-rank test in the claimed direction
(:func:`vtn.stats.wilcoxon`, pairs matched by ``(fixed, moving)``). Verdicts:

* **PASS**: p < 0.05 in the claimed direction (and, for "orders of magnitude faster", a ratio of
  mean times of at least 10);
* **FAIL**: the test ran and did not reach p < 0.05 (or the speed ratio is below the bound);
* **inconclusive**: a method the claim needs was not run, or fewer than
  :data:`vtn.stats.MIN_PAIRS` matched pairs / all differences zero.

Claims: (1) cascading improves accuracy; (2) the integrated affine subnetwork beats ANTs
pre-alignment on landmarks (brain ADD vs DD★); (3) the invertibility loss improves accuracy and
reduces folding; (4) learned methods are much faster than ANTs/Elastix (orders of magnitude with a
GPU, faster without); (5) more unlabeled data helps; (6) liver: VTN significantly surpasses
ANTs/Elastix on IoU and landmarks; (7) brain: VTN folds less than ANTs.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from vtn import stats
from vtn.io import InputError, atomic_write
from vtn.report import paper
from vtn.report.tables import DIGITS, fmt, load_metrics, load_spec

__all__ = ["ALPHA", "SPEED_RATIO", "verdict", "find_method", "study_claims", "write_claims",
           "cli"]

ALPHA = 0.05
#: "Orders of magnitude" is taken as a ratio of mean times of at least 10.
SPEED_RATIO = 10.0
DIRECTION = {"iou": "greater", "dice": "greater", "lm_dist_vox": "less", "lm_dist_mm": "less",
             "folding_pct": "less", "jac_std": "less", "seconds": "less"}
#: the per-pair columns the claims use, all paper-comparable (``vtn evaluate``); the measures
#: beyond the paper (``iou_structures``, ``dice_structures``, ``hd95_structures``,
#: ``lm_ref_vox``, ``sdlogj``, ``ndv_pct``, ...) are reported by ``vtn tables`` only
LEGEND = ("Columns: iou = the paper's Seg. IoU (liver: the liver mask; brain: the whole brain, "
          "every labelled voxel as one region -- not the mean over the LPBA40 structures, which "
          "is iou_structures); lm_dist_vox = the paper's Lm. Dist. (Section V-B): warped moving "
          "landmarks vs the fixed landmarks, voxels of the fixed prep image (★ methods: mapped "
          "back through the fixed subject's atlas alignment), not the reference code's "
          "lm_ref_vox; folding_pct = percent of voxels with a negative Jacobian determinant "
          "(det < 0); jac_std = std of the forward-difference Jacobian determinant. No claim "
          "uses the measures beyond the paper (iou_structures, dice_structures, "
          "hd95_structures, lm_ref_vox, sdlogj, ndv_pct; see the extra_measures tables).")
PAPER_METRIC = {"iou": "iou", "lm_dist_vox": "lm", "folding_pct": "folding", "jac_std": "jac_std"}


def verdict(res: dict | None, missing=(), ratio=None, min_ratio=None) -> tuple[str, str]:
    """Verdict of one test.

    Args:
        res: :func:`vtn.stats.wilcoxon` result in the claimed direction (``None`` if not run).
        missing: names of methods the claim needs that have no metrics.
        ratio, min_ratio: optional effect-size bound (speed-up), PASS needs ``ratio >= min_ratio``.

    Returns:
        ``(verdict, reason)`` with verdict ``"PASS"``, ``"FAIL"`` or ``"inconclusive"``.
    """
    if missing:
        return "inconclusive", "not run: " + ", ".join(missing)
    if res is None:
        return "inconclusive", "no test"
    if res["p"] is None or math.isnan(res["p"]):
        return "inconclusive", res.get("reason") or "no p-value"
    if res["p"] >= ALPHA:
        return "FAIL", f"p = {res['p']:.3g} >= {ALPHA}"
    if min_ratio is not None and (ratio is None or not ratio >= min_ratio):
        return "FAIL", f"significant, but speed-up {ratio:.3g}x < {min_ratio:g}x"
    return "PASS", ""


def find_method(spec, cascade=None, inv=False, star=False, kind="vtn", exclude=()):
    """The study method with the given attributes (the main model preferred; data-amount
    variants and supervised models are avoided)."""
    methods = spec["methods"]
    t = spec.get("tables", {})
    order = [spec.get("main")] + list(t.get("cascades", [])) + list(t.get("methods", [])) \
        + list(methods)
    subset = {e["method"] for e in t.get("data_amount", [])[:-1]}
    for name in dict.fromkeys(n for n in order if n):
        e = methods.get(name, {})
        if (name in exclude or name in subset or "supervised" in name.lower()
                or e.get("ablation")):
            continue
        if kind and e.get("kind", "vtn") != kind:
            continue
        if cascade is not None and e.get("cascade") != cascade:
            continue
        if bool(e.get("inv")) != inv or bool(e.get("star")) != star:
            continue
        return name
    return None


def _baseline(spec, tool):
    for name, e in spec["methods"].items():
        if e.get("kind") == "baseline" and paper.paper_key(name, e) == tool:
            return name
    return None


class _Study:
    def __init__(self, spec, metrics):
        self.spec = spec
        self.organ = spec["organ"]
        names = list(spec["methods"])
        self.metrics, self.extra, _ = load_metrics(metrics, names)

    def disp(self, name):
        return (self.spec["methods"].get(name, {}).get("display") or name) if name else "?"

    def paper_value(self, name, metric, table):
        key = paper.paper_key(name, self.spec["methods"].get(name, {})) if name else None
        row = paper.BY_ORGAN[self.organ][table].get(key) if key else None
        if row is None or PAPER_METRIC.get(metric) not in row:
            return None
        v = row[PAPER_METRIC[metric]]
        return v[0] if isinstance(v, tuple) else v


def _fmt(v, metric):
    """A metric value in the claims table (the number format of :func:`vtn.report.tables.fmt`)."""
    return fmt(v, digits=DIGITS.get(metric, 3), missing="-")


def _compare(st: _Study, claim, a, b, metric, table, need_names=None):
    """One claim row: A better than B on ``metric`` (one-sided in the claimed direction)."""
    alt = DIRECTION[metric]
    missing = [n or "(no such method in the spec)" for n in (need_names or (a, b))
               if n is None or n not in st.metrics]
    res = None
    if not missing:
        res = stats.wilcoxon(st.metrics[a], st.metrics[b], alternative=alt, metric=metric)
    v, reason = verdict(res, missing)
    pa, pb = st.paper_value(a, metric, table), st.paper_value(b, metric, table)
    return {
        "study": st.spec["study"], "claim": claim,
        "test": f"{st.disp(a)} vs {st.disp(b)}: {metric} "
                f"({'higher' if alt == 'greater' else 'lower'} is claimed)",
        "ours": (f"{_fmt(res['mean_a'], metric)} vs {_fmt(res['mean_b'], metric)}"
                 if res else "-"),
        "paper": f"{_fmt(pa, metric)} vs {_fmt(pb, metric)}" if pa is not None or pb is not None
        else "-",
        "n": res["n"] if res else 0, "p": res["p"] if res else float("nan"),
        "verdict": v, "note": reason,
    }


def _speed(st: _Study, a, b, device: str, min_ratio):
    claim = (f"learned methods are orders of magnitude faster than {st.disp(b)} (with GPU)"
             if device == "gpu" else f"learned methods are faster than {st.disp(b)} without GPU")
    row = {"study": st.spec["study"], "claim": claim,
           "test": f"{st.disp(a)} ({device}) vs {st.disp(b)} (cpu): seconds per pair (lower)",
           "ours": "-", "paper": "-", "n": 0, "p": float("nan")}
    key_a = paper.paper_key(a, st.spec["methods"].get(a, {})) if a else None
    key_b = paper.paper_key(b, st.spec["methods"].get(b, {})) if b else None
    ptab = paper.BY_ORGAN[st.organ]["methods"]
    if key_a in ptab and key_b in ptab and ptab[key_a].get(f"time_{device}"):
        ta, tb = ptab[key_a][f"time_{device}"], ptab[key_b]["time_cpu"]
        row["paper"] = f"{ta:g} s vs {tb:g} s ({tb / ta:.3g}x)"
    missing = [n or "(no such method in the spec)" for n in (a, b)
               if n is None or n not in st.metrics]
    if missing:
        row["verdict"], row["note"] = verdict(None, missing)
        return row
    import pandas as pd

    def per_device(name, dev):
        frames = [st.metrics[name]] + ([st.extra[name]] if name in st.extra else [])
        d = pd.concat(frames, ignore_index=True)
        if "seconds" not in d.columns:
            return d.iloc[0:0]
        devs = d.get("device", pd.Series([""] * len(d))).fillna("").astype(str).str.lower()
        keep = devs.str.startswith("cuda") | devs.str.startswith("gpu") if dev == "gpu" \
            else devs.str.startswith("cpu")
        return d[keep].drop_duplicates(["fixed", "moving"])

    da, db = per_device(a, device), per_device(b, "cpu")
    if len(da) == 0:
        row["verdict"], row["note"] = "inconclusive", (
            f"needs a GPU: {st.disp(a)} was not timed on a GPU in this run (run the study on a "
            f"GPU, e.g. config/gpu.yaml, to test it)" if device == "gpu"
            else f"{st.disp(a)} has no cpu timings")
        return row
    if len(db) == 0:
        row["verdict"], row["note"] = "inconclusive", f"{b} has no cpu timings"
        return row
    res = stats.wilcoxon(da, db, alternative="less", metric="seconds")
    ratio = res["mean_b"] / res["mean_a"] if res["n"] and res["mean_a"] > 0 else float("nan")
    row.update(ours=f"{res['mean_a']:.3g} s vs {res['mean_b']:.3g} s ({ratio:.3g}x)",
               n=res["n"], p=res["p"])
    row["verdict"], row["note"] = verdict(res, (), ratio, min_ratio)
    return row


def _study_metrics(spec, metrics):
    """The metrics of one study: ``metrics`` is a folder holding ``<study>/<method>.csv`` or
    the study's list of metrics files."""
    return Path(metrics) / spec["study"] if isinstance(metrics, (str, Path)) else metrics


def study_claims(spec, metrics_root) -> list:
    """Every applicable claim of the paper for one study; returns rows (dicts).

    ``metrics_root``: a folder holding ``<study>/<method>.csv``, or the study's metrics files.
    """
    st = _Study(spec, _study_metrics(spec, metrics_root))
    organ = st.organ
    rows = []
    main = spec.get("main") if spec.get("main") in spec["methods"] else None
    main_e = spec["methods"].get(main, {}) if main else {}
    casc_main = main_e.get("cascade") or ("ADDD" if organ == "liver" else "ADD")
    main = main or find_method(spec, casc_main)

    # (1) cascading improves accuracy: fewest vs most subnetworks in each group.
    casc = [n for n in spec.get("tables", {}).get("cascades", []) if n in spec["methods"]]
    for star in (False, True):
        group = [n for n in casc if bool(spec["methods"][n].get("star")) == star
                 and not spec["methods"][n].get("inv")]
        if len(group) < 2:
            continue
        group.sort(key=lambda n: len(spec["methods"][n].get("cascade") or n))
        lo, hi = group[0], group[-1]
        for metric in ("iou", "lm_dist_vox"):
            rows.append(_compare(st, "cascading improves accuracy", hi, lo, metric, "cascades"))

    # (2) integrated affine vs ANTs pre-alignment (brain ADD vs DD*).
    if organ == "brain":
        a = find_method(spec, casc_main) or main
        b = find_method(spec, casc_main.lstrip("A"), star=True)
        rows.append(_compare(st, "integrated affine subnetwork beats ANTs pre-alignment on "
                                 "landmarks", a, b, "lm_dist_vox", "cascades"))

    # (3) invertibility loss.
    inv = find_method(spec, casc_main, inv=True)
    for metric in ("iou", "lm_dist_vox", "folding_pct"):
        claim = ("invertibility loss reduces folding" if metric == "folding_pct"
                 else "invertibility loss improves accuracy")
        table = "smoothness" if metric == "folding_pct" else "methods"
        rows.append(_compare(st, claim, inv, main, metric, table))

    # (4) speed.
    for tool in ("ANTs", "Elastix"):
        b = _baseline(spec, tool)
        rows.append(_speed(st, main, b, "gpu", SPEED_RATIO))
        rows.append(_speed(st, main, b, "cpu", 1.0))

    # (5) more unlabeled data helps: smallest vs largest training set.
    da = spec.get("tables", {}).get("data_amount", [])
    if len(da) >= 2:
        small, large = da[0]["method"], da[-1]["method"]
        for metric in (("iou", "lm_dist_vox") if organ == "liver" else ("lm_dist_vox",)):
            r = _compare(st, "more unlabeled training data helps", large, small, metric,
                         "data_amount")
            tab = paper.BY_ORGAN[organ]["data_amount"]
            keys = list(tab)
            pm = PAPER_METRIC[metric]
            r["paper"] = f"{_fmt(tab[keys[-1]][pm], metric)} vs {_fmt(tab[keys[0]][pm], metric)}"
            rows.append(r)
    else:
        rows.append({"study": spec["study"], "claim": "more unlabeled training data helps",
                     "test": "-", "ours": "-", "paper": "-", "n": 0, "p": float("nan"),
                     "verdict": "inconclusive", "note": "no data-amount variants in the study"})

    # (6)/(7) comparison with the traditional methods.
    for tool in ("ANTs", "Elastix"):
        b = _baseline(spec, tool)
        if organ == "liver":
            for a in [main] + ([inv] if inv else []):
                for metric in ("iou", "lm_dist_vox"):
                    rows.append(_compare(st, "VTN significantly surpasses traditional methods",
                                         a, b, metric, "methods"))
        elif tool == "ANTs":
            rows.append(_compare(st, "VTN generates significantly less folding than ANTs",
                                 main, b, "folding_pct", "smoothness"))
    return rows


def write_claims(specs, metrics_root, out) -> list:
    """Evaluate the claims of every study and write ``out`` (Markdown) and ``out`` with
    suffix ``.csv``; returns all rows.

    ``metrics_root``: a folder holding ``<study>/<method>.csv``, or one list of metrics files
    per spec (same order).
    """
    import pandas as pd

    if not isinstance(metrics_root, (str, Path)) and len(metrics_root) != len(specs):
        raise InputError(f"{len(specs)} specs but {len(metrics_root)} lists of metrics files "
                         "(give --metrics once per --spec)")
    rows = []
    for k, spec in enumerate(specs):
        rows += study_claims(spec, metrics_root if isinstance(metrics_root, (str, Path))
                             else metrics_root[k])
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = ["# Claims of the VTN paper checked on this run", ""]
    for spec in specs:
        lines.append(f"- **Data ({spec['study']}, {spec['organ']})**: "
                     f"{spec.get('data_source') or 'data source not stated'}; images "
                     f"{spec.get('image_size', '?')}³ voxels. These are NOT the paper's "
                     f"datasets unless stated so here; the paper's numbers are given for "
                     f"reference.")
    lines += ["",
              f"Test: paired Wilcoxon signed-rank test, one-sided in the claimed direction, "
              f"pairs matched by (fixed, moving). PASS: p < {ALPHA} in the claimed direction "
              f"(speed-up with GPU also needs a ratio >= {SPEED_RATIO:g}x); FAIL: the test ran "
              f"and did not pass; inconclusive: a needed method was not run or too few pairs "
              f"(< {stats.MIN_PAIRS}).", "", LEGEND, "",
              "| Study | Claim | Test | Ours (A vs B) | Paper (A vs B) | n | p | Verdict | Note |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r["p"]
        ptxt = "-" if p is None or (isinstance(p, float) and math.isnan(p)) else f"{p:.3g}"
        cells = [r["study"], r["claim"], r["test"], r["ours"], r["paper"], str(r["n"]), ptxt,
                 f"**{r['verdict']}**", r.get("note", "")]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    counts = pd.Series([r["verdict"] for r in rows]).value_counts().to_dict() if rows else {}
    lines += ["", "Summary: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))]
    findings = [(spec["study"], spec["findings"].strip()) for spec in specs
                if (spec.get("findings") or "").strip()]
    if findings:
        lines += ["", "## What this data can show (why a claim fails here)", "",
                  "Written by whoever ran the study (`studies.<study>.findings` of the config), "
                  "from the measurements in docs/reproduction.md:", ""]
        lines += [f"- **{study}**: {text}" for study, text in findings]
    with atomic_write(out) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    pd.DataFrame(rows).to_csv(out.with_suffix(".csv"), index=False)
    return rows


def _parser():
    p = argparse.ArgumentParser(prog="vtn claims", description="the paper's claims table")
    p.add_argument("--spec", required=True, nargs="+", action="extend",
                   help="study.json (repeat or list several)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--metrics-root", help="folder holding <study>/<method>.csv")
    source.add_argument("--metrics", nargs="+", action="append",
                        help="the metrics files of one study (once per --spec, same order)")
    p.add_argument("--out", required=True, help="claims Markdown file")
    return p


def cli(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        specs = [load_spec(s) for s in args.spec]
        rows = write_claims(specs, args.metrics_root or args.metrics, args.out)
    except InputError as exc:
        print(f"vtn claims: {exc}", file=sys.stderr)
        return 1
    print(f"vtn claims: {len(rows)} claims -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
