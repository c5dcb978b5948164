"""``vtn gather``: the per-chunk outputs of a method (or of an atlas pre-alignment) as one folder.

The workflow registers the pairs of a baseline (and of the supervision targets) in chunks of
``baseline_chunk`` pairs and pre-aligns subjects in chunks of ``prealign_chunk``, one job each
(``vtn baseline --rows``, ``vtn prealign --rows``), so that a failed pair loses only its own
chunk. This command puts the chunks together:

* registrations (``--pairs pairs.csv``): every file of every chunk is hard-linked into ``--out``
  (no second copy; a copy only where the file system refuses links), ``times.csv`` is the chunks'
  rows in the order of ``pairs.csv``, ``method.json`` the first chunk's with ``chunks`` and
  ``pairs`` added -- the output contract of ``docs/design.md``. Every pair of ``pairs.csv``
  must be in exactly one chunk.
* pre-aligned subjects (``--subjects subjects.csv``, the preprocessed table): the files are
  linked likewise and ``subjects.csv`` lists the chunks' rows in the input's order; every input
  subject must be in exactly one chunk.

``subjects.csv`` / ``times.csv`` / ``method.json`` are written last, each all at once.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import shutil
import sys
from pathlib import Path

from vtn.io import InputError, atomic_write, atomic_write_json, read_pairs, read_subjects

__all__ = ["link_into", "gather_registrations", "gather_subjects", "cli"]

_TABLES = {"times.csv", "method.json", "subjects.csv"}


def link_into(src: Path, dst: Path) -> bool:
    """Hard-link ``src`` as ``dst`` (replacing it); copy where links are refused.

    Returns:
        True if linked, False if copied.
    """
    if dst.exists() and os.path.samefile(src, dst):
        return True  # linked by an earlier run (rename() would leave the temporary link behind)
    with atomic_write(dst) as tmp:
        tmp.unlink(missing_ok=True)  # left by a killed earlier run
        try:
            os.link(src, tmp)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
                raise
            shutil.copy2(src, tmp)
            return False


def _link_files(parts, out: Path) -> tuple:
    """Link every file of every part into ``out`` except the tables and hidden files (e.g.
    Snakemake's ``.snakemake_timestamp`` of a directory output); ``(linked, copied)``."""
    out.mkdir(parents=True, exist_ok=True)
    owner, linked, copied = {}, 0, 0
    for part in parts:
        for src in sorted(p for p in part.iterdir() if p.is_file() and p.name not in _TABLES
                          and not p.name.startswith(".")):
            if src.name in owner:
                raise InputError(f"{src}: also in chunk {owner[src.name]} (chunks overlap)")
            owner[src.name] = part
            if link_into(src, out / src.name):
                linked += 1
            else:
                copied += 1
    return linked, copied


def _parts(parts) -> list:
    parts = [Path(p) for p in parts]
    for p in parts:
        if not p.is_dir():
            raise InputError(f"{p}: chunk folder not found")
    return parts


def gather_registrations(parts, pairs_csv, out, log=print) -> Path:
    """One method folder from its chunks (see the module docstring); returns ``out``.

    Raises:
        InputError: a chunk without ``times.csv``, a pair in two chunks or in none, a pair not
            in ``pairs.csv``, no chunk with ``method.json``.
    """
    import pandas as pd

    from vtn.contract import TIMES_COLUMNS, write_times

    parts, out = _parts(parts), Path(out)
    pairs = read_pairs(pairs_csv)
    rows, where, meta = {}, {}, None
    for part in parts:
        tpath = part / "times.csv"
        if not tpath.exists():
            raise InputError(f"{tpath}: not found (an unfinished chunk?)")
        for r in pd.read_csv(tpath, dtype={"fixed": str, "moving": str}).to_dict("records"):
            key = (r["fixed"], r["moving"])
            if key in where:
                raise InputError(f"{tpath}: pair {key[0]},{key[1]} also in {where[key]}")
            where[key], rows[key] = part, r
        if meta is None and (part / "method.json").exists():
            meta = json.loads((part / "method.json").read_text())
    missing = [p for p in pairs if p not in rows]
    extra = sorted(set(rows) - set(pairs))
    if missing or extra:
        raise InputError(
            f"{pairs_csv}: the chunks hold {len(rows)} of its {len(pairs)} pairs"
            + (f"; missing: {', '.join(f'{f},{m}' for f, m in missing[:5])}" if missing else "")
            + (f"; not in the table: {', '.join(f'{f},{m}' for f, m in extra[:5])}"
               if extra else "") + " (chunks of another pairs table?)")
    if meta is None:
        raise InputError(f"no chunk has a method.json (no pair registered?): {parts[0]} ...")
    linked, copied = _link_files(parts, out)
    write_times(out, [{k: rows[p][k] for k in TIMES_COLUMNS} for p in pairs])
    meta.update(chunks=len(parts), pairs=len(pairs))
    atomic_write_json(out / "method.json", meta)
    log(f"vtn gather: {len(pairs)} pairs from {len(parts)} chunks -> {out} "
        f"({linked} files linked, {copied} copied)")
    return out


def gather_subjects(parts, subjects_csv, out, log=print) -> Path:
    """One pre-aligned dataset folder from its chunks; returns ``out / "subjects.csv"``.

    Raises:
        InputError: a chunk without ``subjects.csv``, a subject in two chunks or in none.
    """
    import pandas as pd

    parts, out = _parts(parts), Path(out)
    order = [r["subject"] for r in read_subjects(subjects_csv)]
    rows, where = {}, {}
    for part in parts:
        spath = part / "subjects.csv"
        if not spath.exists():
            raise InputError(f"{spath}: not found (an unfinished chunk?)")
        table = pd.read_csv(spath, dtype=str, keep_default_na=False)
        for r in table.to_dict("records"):
            if r["subject"] in where:
                raise InputError(f"{spath}: subject {r['subject']} also in {where[r['subject']]}")
            where[r["subject"]], rows[r["subject"]] = part, r
    missing = [s for s in order if s not in rows]
    extra = sorted(set(rows) - set(order))
    if missing or extra:
        raise InputError(f"{subjects_csv}: the chunks hold {len(rows)} of its {len(order)} "
                         f"subjects" + (f"; missing: {', '.join(missing[:5])}" if missing else "")
                         + (f"; not in the table: {', '.join(extra[:5])}" if extra else ""))
    linked, copied = _link_files(parts, out)
    with atomic_write(out / "subjects.csv") as tmp:
        pd.DataFrame([rows[s] for s in order],
                     columns=["subject", "image", "seg", "landmarks"]).to_csv(tmp, index=False)
    log(f"vtn gather: {len(order)} subjects from {len(parts)} chunks -> {out} "
        f"({linked} files linked, {copied} copied)")
    return out / "subjects.csv"


def cli(argv=None) -> int:
    """``vtn gather --parts DIR [DIR ...] --out DIR (--pairs CSV | --subjects CSV)``."""
    ap = argparse.ArgumentParser(prog="vtn gather", description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", nargs="+", required=True, help="chunk folders, in row order")
    ap.add_argument("--out", required=True, help="the gathered folder")
    what = ap.add_mutually_exclusive_group(required=True)
    what.add_argument("--pairs", help="registrations: the pairs table the chunks cover")
    what.add_argument("--subjects", help="pre-aligned subjects: the input subjects table")
    args = ap.parse_args(argv)
    try:
        if args.pairs:
            gather_registrations(args.parts, args.pairs, args.out,
                                 log=lambda s: print(s, file=sys.stderr))
        else:
            gather_subjects(args.parts, args.subjects, args.out,
                            log=lambda s: print(s, file=sys.stderr))
    except InputError as exc:
        print(f"vtn gather: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(cli())
