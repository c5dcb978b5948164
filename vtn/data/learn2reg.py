"""The Learn2Reg task layout as an import source (``vtn import --layout learn2reg``).

A Learn2Reg task folder (2021-2024 releases: AbdomenCTCT, OASIS, NLST, ThoraxCBCT, ...) holds
``<TASK>_dataset.json`` and ``imagesTr/``, ``labelsTr/``, ``masksTr/``, ``keypointsTr/`` (``Ts``
for test), files named ``<TASK>_<case:04d>_<modality:04d>.nii.gz``. Read from the JSON (paths are
relative to the task folder, ``./imagesTr/...``):

* ``name``; ``labels`` (``{"6": "liver", ...}``; a liver label is reported);
* ``training``: ``[{"image", "label"?, "mask"?, "keypoints"?}, ...]`` and ``test`` (the same, or
  plain image paths) -- every training image must exist, test images are taken when present;
* pair lists ``registration_val``, ``registration_test``, ``training_paired_images``:
  ``[{"fixed": image path, "moving": image path}, ...]``.

Masks are not used (the workflow crops from the label map). Keypoints: the entry's
``keypoints`` (or ``landmarks``, as in the 2021 lung task) file; a listed ``.nii.gz`` name whose
file is the ``.csv`` (ThoraxCBCT's JSON) resolves to the ``.csv``; without an entry,
``keypointsTr/<image stem>.csv`` (``keypointsTs`` for test) when it exists. A keypoint CSV has
no header, one row ``x,y,z`` per point in **voxel coordinates** along the image's array axes
(the Learn2Reg evaluation samples the displacement there); it is converted to our raw landmark
format ``name,x,y,z`` in RAS mm through the image's affine, names ``kp0001``, ``kp0002``, ... by
row, so that corresponding keypoints of a pair share a name.

Subject ids are the image file stems (``AbdomenCTCT_0001_0000``). :func:`import_learn2reg`
returns the rows of the raw ``subjects.csv`` and the pairs ``(fixed, moving, split)`` (split =
the JSON list it came from), written by ``vtn import --pairs-out``. ``subset`` selects the
images (:data:`SUBSETS`): ``all``; ``val`` -- the images of the ``registration_val`` pairs;
``test`` -- the ``test`` list and the images of ``registration_test``; ``train`` -- the
``training`` images in neither (so that a study trains on ``train`` and tests on the
``registration_val`` pairs of ``val`` without overlap). Only pairs with both images in the
subset are returned.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from vtn.io import InputError, save_raw_landmarks, scan_stem

__all__ = ["PAIR_LISTS", "SUBSETS", "find_dataset_json", "read_keypoints", "import_learn2reg",
           "task_counts",
           "task_liver_label", "pair_stem"]

#: the JSON's pair lists, in the order their pairs are written
PAIR_LISTS = ("registration_val", "registration_test", "training_paired_images")

#: image subsets of a task (module docstring)
SUBSETS = ("all", "train", "val", "test")

_CASE_RE = re.compile(r"^(?P<task>.+)_(?P<case>\d{4})_(?P<mod>\d{4})$")


def find_dataset_json(path) -> Path:
    """The task's ``*_dataset.json`` (``path``: the task folder or the JSON itself)."""
    path = Path(path)
    if path.is_file():
        return path
    found = sorted(path.glob("*_dataset.json")) or sorted(path.glob("dataset.json"))
    if not found:
        raise InputError(f"layout learn2reg: {path} holds no <TASK>_dataset.json")
    if len(found) > 1:
        raise InputError(f"layout learn2reg: {path} holds several dataset JSONs: "
                         f"{', '.join(p.name for p in found)}")
    return found[0]


def _resolve(root: Path, rel, what, json_path):
    if not isinstance(rel, str) or not rel:
        raise InputError(f"{json_path}: {what} path {rel!r} is not a file name")
    return (root / rel).resolve() if not Path(rel).is_absolute() else Path(rel)


def _keypoint_file(root, entry, image, json_path):
    rel = entry.get("keypoints", entry.get("landmarks"))
    if rel is not None:
        p = _resolve(root, rel, "keypoint", json_path)
        if p.exists():
            return p
        csv = p.with_name(scan_stem(p) + ".csv")
        if csv.exists():
            return csv
        raise InputError(f"{json_path}: keypoint file {rel} of {image.name} not found")
    split = image.parent.name[len("images"):] if image.parent.name.startswith("images") else "Tr"
    cand = root / f"keypoints{split}" / f"{scan_stem(image)}.csv"
    return cand if cand.exists() else None


def read_keypoints(path, affine):
    """A Learn2Reg keypoint CSV (voxel ``x,y,z`` per row, no header) -> ``(names, (N, 3) RAS mm)``.

    Raises:
        InputError: unreadable, not 3 numeric columns, NaN/Inf.
    """
    import pandas as pd

    path = Path(path)
    try:
        df = pd.read_csv(path, header=None)
    except Exception as exc:
        raise InputError(f"{path}: cannot read keypoint CSV ({exc})") from exc
    try:
        vox = df.to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        try:  # one header line
            vox = df.iloc[1:].to_numpy(dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{path}: non-numeric keypoint coordinates ({exc})") from exc
    if vox.ndim != 2 or vox.shape[1] != 3:
        raise InputError(f"{path}: keypoints need 3 columns (voxel x,y,z), got shape {vox.shape}")
    if not np.isfinite(vox).all():
        raise InputError(f"{path}: keypoint coordinates contain NaN/Inf")
    aff = np.asarray(affine, dtype=np.float64)
    mm = vox @ aff[:3, :3].T + aff[:3, 3]
    return [f"kp{i + 1:04d}" for i in range(len(vox))], mm


def import_learn2reg(path, outdir, subset="all", log=None):
    """List a Learn2Reg task folder as raw subjects and pairs (module docstring).

    Args:
        path: the task folder (or its dataset JSON).
        outdir: folder of the converted keypoint files (``<sid>_landmarks.csv``); ``None``:
            list only, nothing converted (``landmarks`` stay ``None``; :func:`task_counts`).
        subset: one of :data:`SUBSETS`.
        log: optional ``callable(str)`` for notes (skipped test images, the liver label).

    Returns:
        ``(rows, pairs)``: rows ``{subject, image, seg, landmarks}`` (paths), pairs
        ``[(fixed, moving, split)]`` of subject ids.
    """
    if subset not in SUBSETS:
        raise InputError(f"learn2reg subset must be one of {', '.join(SUBSETS)}, got {subset!r}")
    json_path = find_dataset_json(path)
    root = json_path.parent
    try:
        spec = json.loads(json_path.read_text())
    except ValueError as exc:
        raise InputError(f"{json_path}: not valid JSON ({exc})") from exc
    if not isinstance(spec.get("training"), list):
        raise InputError(f"{json_path}: no 'training' list (not a Learn2Reg dataset JSON)")
    outdir = Path(outdir) if outdir is not None else None
    rows, by_image, kind = [], {}, {}
    for split, entries in (("training", spec["training"]), ("test", spec.get("test") or [])):
        for entry in entries:
            entry = {"image": entry} if isinstance(entry, str) else dict(entry)
            image = _resolve(root, entry.get("image"), "image", json_path)
            if not image.exists():
                if split == "test":
                    if log:
                        log(f"{json_path}: test image {entry['image']} not present, skipped")
                    continue
                raise InputError(f"{json_path}: training image {entry['image']} not found")
            sid = scan_stem(image)
            if sid in {r["subject"] for r in rows}:
                raise InputError(f"{json_path}: image {entry['image']} listed twice")
            kind[sid] = split
            seg = None
            if entry.get("label"):
                seg = _resolve(root, entry["label"], "label", json_path)
                if not seg.exists():
                    raise InputError(f"{json_path}: label map {entry['label']} of {sid} not found")
            lm = None
            kp = _keypoint_file(root, entry, image, json_path)
            rows.append({"subject": sid, "image": image, "seg": seg, "landmarks": lm,
                         "keypoints": kp})
            by_image[image] = sid
    pairs = []
    for split in PAIR_LISTS:
        for pair in spec.get(split) or []:
            ids = []
            for role in ("fixed", "moving"):
                p = _resolve(root, pair.get(role) if isinstance(pair, dict) else None,
                             f"{split} {role}", json_path)
                if p not in by_image:
                    if split == "registration_test" and not p.exists():
                        break
                    raise InputError(f"{json_path}: {split} names {pair.get(role)}, which is "
                                     f"not an image of the task's training/test lists")
                ids.append(by_image[p])
            if len(ids) == 2:
                pairs.append((ids[0], ids[1], split))
            elif log:
                log(f"{json_path}: {split} pair {pair} skipped (test images not present)")
    val = {s for f, m, sp in pairs if sp == "registration_val" for s in (f, m)}
    test = {s for f, m, sp in pairs if sp == "registration_test" for s in (f, m)}
    test |= {s for s, k in kind.items() if k == "test"}
    keep = {"all": set(kind), "val": val, "test": test,
            "train": {s for s, k in kind.items() if k == "training"} - val - test}[subset]
    rows = [r for r in rows if r["subject"] in keep]
    pairs = [p for p in pairs if p[0] in keep and p[1] in keep]
    for r in rows:  # keypoints are converted for the kept subjects only
        kp = r.pop("keypoints")
        if kp is not None and outdir is not None:
            import nibabel as nib

            names, mm = read_keypoints(kp, nib.load(str(r["image"])).affine)
            r["landmarks"] = outdir / f"{r['subject']}_landmarks.csv"
            save_raw_landmarks(r["landmarks"], names, mm)
    if log:
        liver = _liver_label(spec)
        if liver is not None:
            log(f"{spec.get('name', json_path.stem)}: liver label {liver} "
                f"(label: {liver} in the dataset's config)")
    return rows, pairs


def task_counts(path, subset="all") -> tuple:
    """``(images, pairs)`` that :func:`import_learn2reg` lists for ``subset``, found without
    converting anything: the workflow counts them when it builds the DAG (:mod:`vtn.jobs`)."""
    rows, pairs = import_learn2reg(path, None, subset=subset)
    return len(rows), len(pairs)


def _liver_label(spec):
    labels = spec.get("labels") or {}
    liver = [k for k, v in labels.items() if "liver" in str(v).lower()]
    return liver[0] if liver else None


def task_liver_label(path):
    """The label value the task's JSON gives the liver (``labels``, e.g. ``"6"`` in
    AbdomenCTCT), or ``None``.

    Args:
        path: the task folder or its dataset JSON.
    """
    json_path = find_dataset_json(path)
    try:
        return _liver_label(json.loads(json_path.read_text()))
    except ValueError as exc:
        raise InputError(f"{json_path}: not valid JSON ({exc})") from exc


def pair_stem(fixed, moving) -> str:
    """File-name stem of a registered pair.

    Learn2Reg naming when both scans are named ``<TASK>_<case>_<modality>`` of one task:
    ``<fixed case>_<moving case>`` when the modalities are equal or ``0000``/``0001`` (the
    evaluation's short form), else ``<case>_<modality>_<case>_<modality>``; otherwise
    ``<fixed name>_<moving name>``.
    """
    fs, ms = scan_stem(fixed), scan_stem(moving)
    f, m = _CASE_RE.match(fs), _CASE_RE.match(ms)
    if f and m and f["task"] == m["task"]:
        if f["mod"] == m["mod"] or (f["mod"], m["mod"]) == ("0000", "0001"):
            return f"{f['case']}_{m['case']}"
        return f"{f['case']}_{f['mod']}_{m['case']}_{m['mod']}"
    return f"{fs}_{ms}"
