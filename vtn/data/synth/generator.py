"""Subjects of an embedded dataset (``vtn make-embedded``): the base anatomy pulled through a
random known transform, with a random intensity model; writes ``raw/`` (see
:mod:`vtn.data.synth`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from vtn.data.synth.anatomy import LIVER_LABEL, Base, voxel_world, load_base
from vtn.data.synth.transforms import SubjectTransform, apply_affine, nearest, random_transform
from vtn.io import InputError, atomic_write_json, save_volume

__all__ = ["ORGANS", "make_subject", "make_embedded", "cli"]

#: Random-transform and intensity parameters per organ (angles in degrees, lengths in mm).
ORGANS = {
    "liver": {
        "rotation_deg": 18.0, "scale": (0.8, 1.2), "shift_mm": 20.0,
        "cp_spacing_mm": 50.0, "cp_sigma_mm": 4.0, "cp_max_mm": 10.0, "max_grad": 0.5,
        "bias": 0.05, "gamma": (0.97, 1.03), "contrast": (0.95, 1.05), "noise": (0.004, 0.008),
        "window": (-1024.0, 1024.0), "centre": "liver",
    },
    "brain": {
        "rotation_deg": 5.0, "scale": (0.95, 1.05), "shift_mm": 5.0,
        "cp_spacing_mm": 40.0, "cp_sigma_mm": 2.0, "cp_max_mm": 5.0, "max_grad": 0.5,
        "bias": 0.15, "gamma": (0.8, 1.25), "contrast": (0.9, 1.1), "noise": (0.01, 0.02),
        "window": None, "centre": "fov",
    },
}


def _grid_world(affine, shape):
    grid = np.stack(np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij"),
                    axis=-1).reshape(-1, 3)
    return apply_affine(affine, grid)


def _intensity(image, rng, params, base_max):
    """Bias field, gamma, contrast and noise in normalised intensity (module docstring)."""
    lo, hi = params["window"] if params["window"] is not None else (0.0, float(base_max))
    shape = image.shape
    coords = [np.linspace(-1.0, 1.0, n).reshape([-1 if a == k else 1 for a in range(3)])
              for k, n in enumerate(shape)]
    field_ = np.zeros(shape)
    for i in range(3):
        for j in range(3 - i):
            for k in range(3 - i - j):
                if i + j + k:
                    field_ = field_ + rng.normal() * coords[0] ** i * coords[1] ** j * coords[2] ** k
    peak = np.abs(field_).max()
    amp = np.log1p(params["bias"]) * rng.uniform(0.5, 1.0)
    bias = np.exp(field_ * (amp / peak if peak > 0 else 0.0))
    gamma = rng.uniform(*params["gamma"])
    contrast = rng.uniform(*params["contrast"])
    sigma = rng.uniform(*params["noise"])
    v = np.clip((image.astype(np.float64) - lo) / (hi - lo), 0.0, None) ** gamma
    v = v * bias
    m = v.mean()
    v = m + contrast * (v - m)
    v = v + rng.normal(0.0, sigma, shape)
    v = np.clip(v, 0.0, None)
    out = (lo + v * (hi - lo)).astype(np.float32)
    return out, {"gamma": gamma, "contrast": contrast, "noise_sigma": sigma,
                 "bias_max_abs_log": float(amp), "window": [lo, hi]}


def _centre(base: Base, params) -> np.ndarray:
    if params["centre"] == "liver":
        return voxel_world(base.affine, base.labels == LIVER_LABEL).mean(0)
    shape = np.asarray(base.image.shape, dtype=np.float64)
    return apply_affine(base.affine, ((shape - 1) / 2.0)[None])[0]


def make_subject(base: Base, seed: int, index: int, params=None, max_draws: int = 20):
    """Generate one subject from ``base``.

    Args:
        base: base anatomy.
        seed: dataset seed; subject ``index`` draws from ``SeedSequence([seed, index])`` so a
            subject does not depend on how many others are generated.
        index: subject index.
        params: transform/intensity parameters (default ``ORGANS[base.organ]``).
        max_draws: redraws allowed when a landmark leaves the subject grid.

    Returns:
        dict with ``image`` (float32), ``labels`` (uint8), ``affine``, ``landmarks`` ((N, 3) mm),
        ``transform`` (:class:`SubjectTransform`), ``info``.
    """
    params = ORGANS[base.organ] if params is None else params
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))
    centre = _centre(base, params)
    shape = base.image.shape
    inv_aff = np.linalg.inv(base.affine)
    for draw in range(max_draws):
        tf = random_transform(rng, params, base.affine, shape, centre)
        lm, res = tf.inverse(base.landmarks, tol=1e-9)
        check = float(np.linalg.norm(tf.forward(lm) - base.landmarks, axis=1).max())
        vox = apply_affine(inv_aff, lm)
        if ((vox >= 0) & (vox <= np.asarray(shape) - 1)).all():
            break
    else:
        raise RuntimeError(f"subject {index}: landmarks left the field of view in {max_draws} draws")
    if check > 1e-6:
        raise RuntimeError(f"subject {index}: landmark inverse residual {check} mm")
    from scipy.ndimage import map_coordinates

    src = apply_affine(inv_aff, tf.forward(_grid_world(tf.subject_affine, shape)))
    image = map_coordinates(base.image, src.T, order=1, mode="constant", cval=base.fill)
    labels = nearest(base.labels, src, 0).reshape(shape)
    image, inten = _intensity(image.reshape(shape), rng, params, float(base.image.max()))
    info = dict(tf.info)
    info.update({"draws": draw + 1, "landmark_residual_mm": check, "intensity": inten})
    tf.info = info
    return {"image": image, "labels": labels, "affine": tf.subject_affine, "landmarks": lm,
            "transform": tf, "info": info}


def _save_landmarks_mm(path, names, pts) -> None:
    import pandas as pd

    pts = np.asarray(pts, dtype=np.float64).reshape(-1, 3)
    df = pd.DataFrame({"name": list(names), "x": pts[:, 0], "y": pts[:, 1], "z": pts[:, 2]})
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False, float_format="%.6f")


def make_embedded(organ: str, resources, n: int, seed: int, out, prefix: str | None = None,
                  figure=None, brain_factor: int = 3, params=None) -> list:
    """Generate an embedded dataset (see the module docstring for the files written).

    Args:
        organ: ``"liver"`` or ``"brain"``.
        resources: folder written by ``vtn fetch``.
        n: number of subjects.
        seed: random seed (same seed -> identical subjects).
        out: output folder (``raw/``).
        prefix: subject-id prefix (default ``organ``); ids are ``f"{prefix}{index:03d}"``.
        figure: optional PNG path for :func:`vtn.report.figures.figure_subjects`.
        brain_factor: downsampling factor of the 0.5 mm brain template.
        params: override of ``ORGANS[organ]``.

    Returns:
        list of per-subject dicts (``subject``, ``seconds``, transform checks).
    """
    if n < 1:
        raise InputError(f"--n must be >= 1, got {n}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = load_base(organ, resources, brain_factor=brain_factor)
    params = dict(ORGANS[organ] if params is None else params)
    prefix = organ if prefix is None else prefix
    rows, records = [], []
    for index in range(n):
        sid = f"{prefix}{index:03d}"
        t0 = time.perf_counter()
        subj = make_subject(base, seed, index, params)
        save_volume(out / f"{sid}_image.nii.gz", subj["image"], subj["affine"])
        save_volume(out / f"{sid}_seg.nii.gz", subj["labels"], subj["affine"])
        _save_landmarks_mm(out / f"{sid}_landmarks.csv", base.landmark_names, subj["landmarks"])
        subj["transform"].save(out / f"{sid}_transform.npz")
        seconds = time.perf_counter() - t0
        rows.append({"subject": sid, "image": f"{sid}_image.nii.gz", "seg": f"{sid}_seg.nii.gz",
                     "landmarks": f"{sid}_landmarks.csv"})
        records.append({"subject": sid, "seconds": seconds, **subj["info"]})
    import pandas as pd

    pd.DataFrame(rows).to_csv(out / "subjects.csv", index=False)
    pd.DataFrame({"label": list(base.label_names), "name": list(base.label_names.values())}).to_csv(
        out / "labels.csv", index=False)
    atomic_write_json(out / "dataset.json", {
        "organ": organ, "seed": int(seed), "n": int(n), "prefix": prefix,
        "note": "embedded dataset made from one real anatomy by known transforms; "
                "not the paper's data",
        "base": {"sources": base.sources, "shape": list(base.image.shape),
                 "affine": base.affine.tolist(), "fill": base.fill,
                 "landmarks": dict(zip(base.landmark_names, base.landmarks.tolist())),
                 "evaluation_label": LIVER_LABEL if organ == "liver" else "all LPBA40 ids"},
        "params": params, "subjects": records,
    })
    if figure is not None:
        from vtn.report.figures import figure_subjects

        figure_subjects(out, figure)
    return records


def cli(argv=None) -> int:
    """``vtn make-embedded --organ liver|brain --resources R --n N --seed S --out raw/``."""
    p = argparse.ArgumentParser(prog="vtn make-embedded",
                                description="generate an embedded (real-anatomy) dataset")
    p.add_argument("--organ", required=True, choices=sorted(ORGANS))
    p.add_argument("--resources", required=True, help="folder written by `vtn fetch`")
    p.add_argument("--n", type=int, required=True, help="number of subjects")
    p.add_argument("--seed", type=int, required=True)
    p.add_argument("--out", required=True, help="output raw/ folder")
    p.add_argument("--prefix", default=None, help="subject id prefix (default: the organ)")
    p.add_argument("--figure", default=None, help="optional PNG of a few generated subjects")
    p.add_argument("--brain-factor", type=int, default=3,
                   help="block-averaging factor of the 0.5 mm brain template (default 3 = 1.5 mm)")
    a = p.parse_args(argv)
    try:
        recs = make_embedded(a.organ, a.resources, a.n, a.seed, a.out, prefix=a.prefix,
                             figure=a.figure, brain_factor=a.brain_factor)
    except (InputError, RuntimeError) as exc:
        print(f"vtn make-embedded: error: {exc}", file=sys.stderr)
        return 1
    secs = [r["seconds"] for r in recs]
    print(f"{len(recs)} {a.organ} subjects -> {a.out} ({np.mean(secs):.2f} s per subject)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli())
