"""``vtn fetch``: download the pinned registry packages that carry the embedded datasets' anatomy.

The paper's datasets are not in any package registry (see ``shared/embedded-data-sources.md``).
What *is* shipped inside pinned PyPI packages, and used here, is:

* ``totalsegmentator==2.18.0`` (**sdist**, Apache-2.0; test fixtures, probably from the
  TotalSegmentator dataset, CC BY 4.0): an abdominal CT at 3 mm (``example_ct.nii.gz``) and its
  61-class TotalSegmentator *model-predicted* segmentation (``example_seg_fast_force_split.nii.gz``,
  liver = 5), plus ``map_to_binary.py`` (the label-id -> organ-name table). Group ``liver``.
* ``deepmriprep==0.3.0`` (wheel, MIT; CAT12 templates/atlases keep their upstream terms, LPBA40
  from LONI): the 0.5 mm skull-stripped CAT12 T1 template (``Template_05mm_bet.nii.gz``) and the
  LPBA40 56-structure maximum-probability atlas (``lpba40.nii.gz`` + ``lpba40.csv``). Group
  ``brain``.
* ``autoafids==0.1.4`` (wheel; MNI/McGill permissive notice): the MNI152NLin2009cAsym 1 mm T1 and
  the 32 AFIDs anatomical fiducials (``..._desc-groundtruth_afids.fcsv``, RAS mm). Group ``brain``.
* ``nilearn==0.14.1`` (wheel, BSD-3; optional): the MNI152 2009a symmetric T1. Group ``mni``.

Each package is downloaded with pip (``python -m pip download --no-deps [--no-binary :all:]``)
into a temporary folder, its archive's full sha256 is checked against the digest pinned below,
only the listed members are extracted into ``<out>/<package>/``, each member's sha256 is checked,
and ``<out>/<package>/MANIFEST.json`` records what was extracted. Nothing is downloaded when all
members of a package are already present with the pinned digests. The archives are deleted.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from vtn.io import InputError, atomic_write, atomic_write_json

__all__ = ["PACKAGES", "GROUPS", "fetch", "package_dir", "sha256_file", "cli"]

# name -> how to get it and what to keep.  members: archive member -> (output file, full sha256)
PACKAGES: dict = {
    "totalsegmentator": {
        "version": "2.18.0",
        "kind": "sdist",
        "archive": "totalsegmentator-2.18.0.tar.gz",
        "sha256": "5d4223ef93973bc36d710869d11e7742ead2c154c72f7f9edcaaadd5b6c4bd03",
        "license": "Apache-2.0 (package); images/segmentations: TotalSegmentator test fixtures, "
                   "probably TotalSegmentator dataset (CC BY 4.0); segmentations are model outputs",
        "members": {
            "totalsegmentator-2.18.0/tests/reference_files/example_ct.nii.gz": (
                "example_ct.nii.gz",
                "dbd3ae6d614d1d7ef3a46925c30c70038ed52da6b37fdd6afdc7b9b71387e3e1"),
            "totalsegmentator-2.18.0/tests/reference_files/example_seg_fast_force_split.nii.gz": (
                "example_seg_fast_force_split.nii.gz",
                "e8097758e56e73099075b6caaebce23ef11bc6fad66a4ec3753b9406846558c7"),
            "totalsegmentator-2.18.0/totalsegmentator/map_to_binary.py": (
                "map_to_binary.py",
                "ee19259dacd4d52d424849b8bac44a5a5d41c895426bf7c048c69203a1a3777d"),
        },
    },
    "deepmriprep": {
        "version": "0.3.0",
        "kind": "wheel",
        "archive": "deepmriprep-0.3.0-py3-none-any.whl",
        "sha256": "00cfaab3e4e1744e7d3844cdad1b096af2c06edbae73d683facc9435b835b8bd",
        "license": "MIT (package); CAT12 template (IXI-555, MNI space); LPBA40 atlas: LONI terms",
        "members": {
            "deepmriprep/data/templates/Template_05mm_bet.nii.gz": (
                "Template_05mm_bet.nii.gz",
                "7d96889867d29803021a276ba54c0225534266730c5f5348a1ea78ee2d6e62c1"),
            "deepmriprep/data/templates/lpba40.nii.gz": (
                "lpba40.nii.gz",
                "59c8dfd72a9fc021241d41b7b7fd415385911e0d3d6ef05371badd7d1ed5a05c"),
            "deepmriprep/data/templates/lpba40.csv": (
                "lpba40.csv",
                "8eaa45e8c17e8528cae4de7ce7cf2d022ea4ac257b062b5427acb31edc626d02"),
        },
    },
    "autoafids": {
        "version": "0.1.4",
        "kind": "wheel",
        "archive": "autoafids-0.1.4-py3-none-any.whl",
        "sha256": "f949e0e1b01a01de122cd23fc8457444d455e50a7482cf4b2440f505778fcdbc",
        "license": "no licence in metadata; template under the MNI/McGill permissive notice; "
                   "the same AFIDs coordinates ship in afids-utils (MIT)",
        "members": {
            "autoafids/resources/tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz": (
                "tpl-MNI152NLin2009cAsym_res-01_T1w.nii.gz",
                "1f27aabea9f7183dc0c69dafa71e1787b921ca778d655d9c1bf302b273d5627a"),
            "autoafids/resources/tpl-MNI152NLin2009cAsym_res-01_desc-groundtruth_afids.fcsv": (
                "tpl-MNI152NLin2009cAsym_res-01_desc-groundtruth_afids.fcsv",
                "8290b044e4198acf732700473db113985784cc6f0205534d88a38422fb94d4c0"),
        },
    },
    "nilearn": {
        "version": "0.14.1",
        "kind": "wheel",
        "archive": "nilearn-0.14.1-py3-none-any.whl",
        "sha256": "725206484e9fb3f6691f9c2d20204a068759d5072f12055324702ee0cb2bbe8a",
        "license": "BSD-3 (package); MNI152 2009a template under the MNI/McGill notice",
        "members": {
            "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz": (
                "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
                "421a10e872fd6cadae7f61d358dffbcc1795a497d61ee76c5dda2503e1a1e9e6"),
        },
    },
}

GROUPS = {
    "liver": ["totalsegmentator"],
    "brain": ["deepmriprep", "autoafids"],
    "mni": ["nilearn"],
    "all": ["totalsegmentator", "deepmriprep", "autoafids"],
}


def sha256_file(path, chunk: int = 1 << 20) -> str:
    """Full hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def package_dir(out, name: str) -> Path:
    """Folder holding the extracted members of package ``name`` under ``out``."""
    return Path(out) / name


def _resolve(only, packages) -> list[str]:
    """Turn ``--only`` entries (group or package names) into package names, in a stable order."""
    names = ["all"] if not only else list(only)
    chosen: list[str] = []
    for entry in names:
        if entry in GROUPS:
            items = GROUPS[entry]
        elif entry in packages:
            items = [entry]
        else:
            valid = sorted(set(GROUPS) | set(packages))
            raise InputError(f"fetch: unknown resource {entry!r} (choose from {', '.join(valid)})")
        for item in items:
            if item not in chosen:
                chosen.append(item)
    return chosen


def _members_ok(dest: Path, spec: dict) -> bool:
    """True if every member of ``spec`` exists in ``dest`` with its pinned sha256."""
    for outname, digest in spec["members"].values():
        path = dest / outname
        if not path.is_file() or sha256_file(path) != digest:
            return False
    return True


def pip_download(name: str, version: str, kind: str, dest) -> None:
    """Download one pinned distribution with pip into ``dest`` (no dependencies).

    Args:
        name: package name on PyPI.
        version: exact version.
        kind: ``"wheel"`` or ``"sdist"`` (the latter adds ``--no-binary :all:``).
        dest: folder receiving the archive.

    Raises:
        RuntimeError: pip failed (registry unreachable, version missing, ...).
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "-q", "-d", str(dest)]
    if kind == "sdist":
        cmd += ["--no-binary", ":all:"]
    else:
        cmd += ["--only-binary", ":all:"]
    cmd.append(f"{name}=={version}")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise RuntimeError(
            f"fetch {name}=={version}: pip download failed (exit {proc.returncode}); is the "
            f"package registry reachable?\n  " + "\n  ".join(tail))


def _extract(archive: Path, spec: dict, dest: Path, name: str) -> dict:
    """Extract the pinned members of ``archive`` into ``dest``; return {outname: sha256}."""
    dest.mkdir(parents=True, exist_ok=True)
    found = {}
    wanted = spec["members"]

    def _write(member: str, fh) -> None:
        outname, digest = wanted[member]
        with atomic_write(dest / outname) as tmp:
            with open(tmp, "wb") as out:
                shutil.copyfileobj(fh, out)
            got = sha256_file(tmp)
            if got != digest:
                raise RuntimeError(f"fetch {name}: member {member} has sha256 {got}, "
                                   f"expected {digest} (archive content changed?)")
        found[outname] = got

    if spec["kind"] == "wheel" or zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            names = set(zf.namelist())
            for member in wanted:
                if member in names:
                    with zf.open(member) as fh:
                        _write(member, fh)
    else:
        with tarfile.open(archive, "r:*") as tf:
            for info in tf:
                if info.name in wanted and info.isfile():
                    _write(info.name, tf.extractfile(info))
    missing = [m for m in wanted if wanted[m][0] not in found]
    if missing:
        raise RuntimeError(f"fetch {name}: archive {archive.name} lacks member(s) {missing}")
    return found


def _fetch_one(out: Path, name: str, spec: dict, downloader) -> dict:
    dest = package_dir(out, name)
    manifest = {
        "package": name,
        "version": spec["version"],
        "kind": spec["kind"],
        "archive": spec["archive"],
        "archive_sha256": spec["sha256"],
        "license": spec.get("license", ""),
        "members": {outname: {"member": member, "sha256": digest}
                    for member, (outname, digest) in spec["members"].items()},
    }
    if _members_ok(dest, spec):
        if not (dest / "MANIFEST.json").is_file():
            atomic_write_json(dest / "MANIFEST.json", manifest)
        return {"package": name, "downloaded": False, "dir": str(dest)}
    with tempfile.TemporaryDirectory(prefix=f"vtn-fetch-{name}-") as tmp:
        tmp = Path(tmp)
        downloader(name, spec["version"], spec["kind"], tmp)
        archive = tmp / spec["archive"]
        if not archive.is_file():
            got = sorted(p.name for p in tmp.iterdir())
            raise RuntimeError(f"fetch {name}: download produced {got}, expected {spec['archive']}")
        digest = sha256_file(archive)
        if digest != spec["sha256"]:
            raise RuntimeError(f"fetch {name}: sha256 mismatch for {spec['archive']}: got {digest}, "
                               f"pinned {spec['sha256']}")
        _extract(archive, spec, dest, name)
    atomic_write_json(dest / "MANIFEST.json", manifest)
    return {"package": name, "downloaded": True, "dir": str(dest)}


def fetch(out, only=None, *, packages=None, downloader=None) -> list[dict]:
    """Download, verify and unpack the pinned packages.

    Args:
        out: resources folder; package ``P``'s members go to ``out/P/``.
        only: group names (``liver``, ``brain``, ``mni``, ``all``) or package names; default all
            (= liver + brain).
        packages: package table (default :data:`PACKAGES`; tests pass fakes).
        downloader: ``f(name, version, kind, dest_dir)`` that puts the archive into ``dest_dir``
            (default :func:`pip_download`).

    Returns:
        one dict per package: ``package``, ``downloaded`` (False when the verified members were
        already present), ``dir``.

    Raises:
        RuntimeError: download failure, archive or member hash mismatch, missing member.
        InputError: unknown group/package name.
    """
    packages = PACKAGES if packages is None else packages
    downloader = pip_download if downloader is None else downloader
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    return [_fetch_one(out, name, packages[name], downloader) for name in _resolve(only, packages)]


def cli(argv=None) -> int:
    """``vtn fetch --out resources/ [--only NAME ...]``."""
    parser = argparse.ArgumentParser(prog="vtn fetch", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="resources folder")
    parser.add_argument("--only", nargs="+", default=None,
                        help="groups (liver, brain, mni, all) or package names; default all")
    args = parser.parse_args(argv)
    try:
        results = fetch(args.out, args.only)
    except (RuntimeError, InputError) as exc:
        print(f"vtn fetch: error: {exc}", file=sys.stderr)
        return 1
    for res in results:
        state = "downloaded and verified" if res["downloaded"] else "present and verified"
        print(f"{res['package']}: {state} -> {res['dir']}")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
