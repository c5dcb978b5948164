"""The job plan: how a study's work is cut into Snakemake jobs, and how long each job may run.

Pure functions of the validated study config (no torch), read by ``workflow/rules/common.smk``
when the DAG is built, so that the number of jobs is known without a checkpoint:

* :func:`n_subjects`, :func:`n_pairs`: the rows of a dataset's ``subjects.csv`` and
  ``pairs.csv`` as preprocessing will write them (embedded data: ``n``; user data: the
  subjects ``vtn import`` will list, :func:`vtn.data.adapters.subject_ids`; all ordered pairs,
  or ``max_pairs`` / ``supervised.pairs`` of them, as :func:`vtn.data.preprocess.make_pairs`).
  Preprocessing may drop a subject: the tables are then shorter and the last chunks empty.
* :func:`chunks`, :func:`chunk_rows`, :func:`parse_rows`: the row ranges of the per-chunk jobs
  (ANTs/Elastix baselines and supervision targets: ``baseline_chunk`` pairs each; atlas
  pre-alignment: ``prealign_chunk`` subjects each), named ``START-STOP`` (0-based, STOP
  exclusive, zero-padded).
* :func:`eval_processes`: the worker processes of an evaluation job.
* :func:`runtime_minutes`: a job's time limit (SLURM ``--time``) from per-item estimates
  (:data:`PER_ITEM_MINUTES`, at 128^3 on the job's threads, scaled by ``(S/128)^3``), plus
  :data:`START_MINUTES`, times the attempt (a retried job gets more time).
"""

from __future__ import annotations

import math

__all__ = ["n_subjects", "n_pairs", "chunks", "chunk_rows", "parse_rows", "PER_ITEM_MINUTES",
           "START_MINUTES", "runtime_minutes", "eval_processes"]

#: minutes per item at 128^3 on the job's threads (2 cores measured or estimated; more threads
#: only help): a pair for registrations and evaluation, a subject for preprocessing and
#: pre-alignment. Sources: docs/performance.md, "Job runtimes".
PER_ITEM_MINUTES = {
    "ants/paper": 60.0,      # the paper's SyN stages: 64^3 pair 346-437 s, 128^3 ~ 1 h (estimate)
    "ants/fast": 20.0,       # 19-21 s per 32^3 pair measured on one thread (x64 = 22 min)
    "elastix/paper": 5.0,    # 115 s per 128^3 pair measured
    "elastix/fast": 3.0,     # 23.5 s per 32^3 pair measured, mostly start-up
    "prealign/paper": 5.0,   # affine ANTs (rigid + affine) per subject
    "prealign/fast": 2.0,
    # per subject; the raw scan's size matters, not S: 0.6 s (liver) and 1.0 s (brain) measured
    # for 1.7 M-voxel embedded scans, extrapolated to 118 M-voxel LiTS CTs and 11 M-voxel T1s
    "preprocess/liver": 1.0,
    "preprocess/brain": 0.2,
    "ground_truth": 0.5,     # per pair and process: 18-32 s measured
    "register": 0.1,         # per pair: forward pass and writing the contract's files
    # per pair, original scan size (not S): 34 s + 10 s of writing for a 9.8 M-voxel fixed grid
    "native_space": 1.0,
    "evaluate": 0.5,         # per pair and process: 19 s (brain, 56 structures), 14 s (liver)
}
#: fixed start-up of a job (imports, model or tool loading, file system)
START_MINUTES = 15
#: kinds whose per-item time does not scale with the model size
_SIZE_FREE = frozenset({"preprocess/liver", "preprocess/brain", "native_space"})


def _learn2reg(config: dict, dataset: str) -> tuple:
    from vtn.data.learn2reg import task_counts
    from vtn.study import learn2reg_subset

    return task_counts(config["datasets"][dataset]["path"], learn2reg_subset(config, dataset))


def n_subjects(config: dict, dataset: str) -> int:
    """Subjects of a dataset: ``n`` of an embedded one, else the subjects ``vtn import`` lists
    (:func:`vtn.data.adapters.subject_ids`, :func:`vtn.data.learn2reg.task_counts`; raises
    :class:`vtn.io.InputError` naming the path)."""
    d = config["datasets"][dataset]
    if d["source"] == "embedded":
        return int(d["n"])
    if d["source"] == "learn2reg":
        return _learn2reg(config, dataset)[0]
    from vtn.data.adapters import subject_ids

    return len(subject_ids(d["source"], d["path"]))


def n_pairs(config: dict, dataset: str, subjects: int | None = None) -> int:
    """Rows of the dataset's ``pairs.csv``: every ordered pair of its ``subjects`` (default
    :func:`n_subjects`) -- or, for a Learn2Reg val/test subset, the pairs the task lists
    (:func:`vtn.study.task_pairs`) -- or the first ``max_pairs`` / ``supervised.pairs`` of them
    (:func:`vtn.study.test_pairs`; 0 = all)."""
    from vtn.study import task_pairs, test_pairs

    if task_pairs(config, dataset):
        every = _learn2reg(config, dataset)[1]
    else:
        n = n_subjects(config, dataset) if subjects is None else int(subjects)
        every = n * (n - 1)
    limit = test_pairs(config, dataset)
    return min(limit, every) if limit else every


def chunks(n: int, k: int) -> list:
    """Names ``START-STOP`` of the chunks of ``k`` rows covering rows ``0 .. n-1``."""
    if k < 1:
        raise ValueError(f"chunk size must be >= 1, got {k}")
    width = max(5, len(str(n)))
    return [f"{a:0{width}d}-{min(a + k, n):0{width}d}" for a in range(0, n, k)]


def chunk_rows(name: str) -> tuple:
    """``(start, stop)`` of a chunk name ``START-STOP``."""
    return parse_rows(name.replace("-", ":"))


def parse_rows(text: str) -> tuple:
    """``"START:STOP"`` -> ``(start, stop)``, ``0 <= start < stop`` (a ValueError otherwise)."""
    try:
        start, stop = (int(v) for v in str(text).split(":"))
    except ValueError:
        raise ValueError(f"rows {text!r}: expected START:STOP (two integers)") from None
    if not 0 <= start < stop:
        raise ValueError(f"rows {text!r}: expected 0 <= START < STOP")
    return start, stop


def eval_processes(pairs: int, threads: int) -> int:
    """Worker processes of an evaluation job (``vtn evaluate --jobs``): one per 50 pairs (a
    worker's start-up costs seconds), at most ``threads``, at least 1."""
    return max(1, min(int(threads), math.ceil(pairs / 50)))


def runtime_minutes(kind: str, items: int, image_size: int, attempt: int = 1) -> int:
    """Time limit of a job doing ``items`` items of ``kind`` (a key of
    :data:`PER_ITEM_MINUTES`): ``attempt * ceil(START + per_item * items * (S/128)^3)``."""
    if kind not in PER_ITEM_MINUTES:
        raise ValueError(f"unknown job kind {kind!r}; known: {sorted(PER_ITEM_MINUTES)}")
    scale = 1.0 if kind in _SIZE_FREE else (image_size / 128.0) ** 3
    return int(attempt) * math.ceil(START_MINUTES + PER_ITEM_MINUTES[kind] * items * scale)
