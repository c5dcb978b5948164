"""Training data: the images of the subject tables, the supervised targets, and the stream of
pairs (:class:`PairSchedule`), every random choice a pure function of ``(seed, step)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from vtn.io import InputError, load_disp_l2r, load_volume, read_pairs, read_subjects

__all__ = ["load_subjects", "load_targets", "PairSchedule", "augment_generator", "seeded_generator",
           "PAIR_STREAM", "AUGMENT_STREAM", "PROBE_PAIR_STREAM", "PROBE_AUGMENT_STREAM"]

#: random streams of a run (the first entry of the seed sequence after ``seed``)
PAIR_STREAM, AUGMENT_STREAM, PROBE_PAIR_STREAM, PROBE_AUGMENT_STREAM = 1, 2, 3, 4


def load_subjects(subject_csvs, size: int):
    """All training images of the union of subject tables as one ``(N, 1, S, S, S)`` tensor."""
    ids, arrays = [], []
    for csv_path in subject_csvs:
        for row in read_subjects(csv_path):
            data, _ = load_volume(row["image"])
            if data.shape != (size, size, size):
                raise InputError(f"{row['image']}: image of shape {data.shape}, but the config's "
                                 f"image_size is {size} (listed in {csv_path})")
            ids.append(row["subject"])
            arrays.append(torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)))
    if len(arrays) < 2:
        raise InputError(f"{', '.join(map(str, subject_csvs))}: training needs at least 2 "
                         f"subjects, found {len(arrays)}")
    return ids, torch.stack(arrays).unsqueeze(1)


def load_targets(ids, targets_dir, pairs_csv, size: int):
    """Pairs ``[(fixed index, moving index)]`` and their target flows ``(P, 3, S, S, S)``."""
    if targets_dir is None or pairs_csv is None:
        raise InputError("supervised training needs --targets DIR and --target-pairs CSV")
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise InputError(f"supervised training needs unique subject ids across the subject "
                         f"tables; duplicated: {dup}")
    index = {s: k for k, s in enumerate(ids)}
    pairs, flows = [], []
    for f, m in read_pairs(pairs_csv):
        for s in (f, m):
            if s not in index:
                raise InputError(f"{pairs_csv}: subject {s!r} is not in the training subjects")
        path = Path(targets_dir) / f"disp_{f}_{m}.nii.gz"
        flow, _ = load_disp_l2r(path)
        if flow.shape != (3, size, size, size):
            raise InputError(f"{path}: displacement of shape {flow.shape}, expected "
                             f"{(3, size, size, size)}")
        pairs.append((index[f], index[m]))
        flows.append(torch.from_numpy(flow))
    if not pairs:
        raise InputError(f"{pairs_csv}: no pairs listed")
    return pairs, torch.stack(flows)


class PairSchedule:
    """The stream of training pairs, a pure function of ``(seed, position)``.

    Position ``q`` (0-based, over the whole run) falls in pass ``p = q // P`` (``P`` pairs per
    pass); pass ``p`` visits the pairs in the order ``default_rng([seed, 1, p]).permutation(P)``.
    Unsupervised pairs are all ordered pairs ``(i, j), i != j`` of ``n`` subjects; pair number
    ``r`` is ``i = r // (n - 1)``, ``j = r % (n - 1)`` (skipping ``i``).

    Args:
        n: number of subjects (unsupervised) -- or ``None`` with ``pairs`` given.
        seed: the run's seed.
        pairs: explicit list of ``(fixed, moving)`` index pairs (supervised training).
    """

    def __init__(self, n: int | None, seed: int, pairs=None):
        self.seed = int(seed)
        self.pairs = None if pairs is None else list(pairs)
        self.n = n
        self.size = len(self.pairs) if self.pairs is not None else n * (n - 1)
        self._pass = None
        self._perm = None

    def pair(self, number: int):
        """``(fixed, moving)`` subject indices of pair ``number`` (``0 <= number < size``)."""
        if self.pairs is not None:
            return self.pairs[number]
        i, j = divmod(number, self.n - 1)
        return i, j + (j >= i)

    def __call__(self, start: int, count: int):
        """Pairs at positions ``start .. start + count - 1``.

        Returns:
            three lists: fixed subject indices, moving subject indices, pair numbers (index
            into ``pairs`` when given).
        """
        fixed, moving, numbers = [], [], []
        for q in range(start, start + count):
            p, r = divmod(q, self.size)
            if p != self._pass:
                rng = np.random.default_rng([self.seed, PAIR_STREAM, p])
                self._perm = rng.permutation(self.size)
                self._pass = p
            number = int(self._perm[r])
            i, j = self.pair(number)
            fixed.append(i)
            moving.append(j)
            numbers.append(number)
        return fixed, moving, numbers


def seeded_generator(seed: int, stream: int, index: int) -> torch.Generator:
    """A CPU :class:`torch.Generator` seeded from ``(seed, stream, index)``."""
    state = np.random.SeedSequence([int(seed), int(stream), int(index)]).generate_state(
        2, np.uint32)
    gen = torch.Generator()
    gen.manual_seed(int(state[0]) << 32 | int(state[1]))
    return gen


def augment_generator(seed: int, step: int) -> torch.Generator:
    """The CPU generator of the augmentation of ``step``, seeded from ``(seed, 2, step)``."""
    return seeded_generator(seed, AUGMENT_STREAM, step)
