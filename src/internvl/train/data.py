"""Official SFT datasets: the meta JSON and its JSONL files as one indexable dataset of samples. Spec section 5.

Facts from `internvl_chat/internvl/train/internvl_chat_finetune.py` (`build_datasets`,
`LazySupervisedDataset`): the meta file maps a dataset name to `root` (folder of its images / videos),
`annotation` (a JSONL file, one record per line), `data_augment`, `max_dynamic_patch` (overrides the model's),
`repeat_time` and `length`. Records become samples in `records.py`; bad ones raise `DataError`s starting with
`file:line`, or, with `skip_bad_samples`, are skipped and counted.
- `repeat_time` r: floor(r) full copies plus a seeded random `int(n * frac(r))` lines (upstream takes the
  first lines for r < 1 and allows only integers above 1).
- Relative paths resolve from the working directory, as the official scripts run, else beside the meta file.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataError
from .records import IGNORE_INDEX, DataConfig, Sample, build_sample

__all__ = ["IGNORE_INDEX", "DataConfig", "DatasetSpec", "SFTDataset", "Sample", "build_sample", "read_meta"]
_META_KEYS = ("root", "annotation", "data_augment", "max_dynamic_patch", "repeat_time", "length")
log = logging.getLogger(__name__)


@dataclass
class DatasetSpec:
    """One entry of the meta JSON (its key is `name`)."""
    name: str
    root: str
    annotation: str
    data_augment: bool = False
    max_dynamic_patch: int | None = None  # overrides DataConfig.max_dynamic_patch for this dataset
    repeat_time: float = 1.0
    length: int | None = None  # line count the meta file claims; a mismatch warns


def read_meta(path: str | os.PathLike) -> list[DatasetSpec]:
    """Parse and check an official meta JSON: {name: {root, annotation, repeat_time, ...}, ...}.

    Relative `root` / `annotation` paths resolve from the working directory, as the official scripts do, and
    otherwise from the meta file's folder. Unknown keys warn.

    Raises:
        DataError: The file is missing or not JSON, or an entry lacks a key or has a bad value (named).
    """
    path = Path(path)
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: no such meta file") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None
    if not isinstance(meta, dict) or not meta:
        raise DataError(f"{path}: a meta file is a non-empty JSON object {{name: {{root, annotation, ...}}}}")
    return [_spec(path, name, entry) for name, entry in meta.items()]


def _spec(meta_path: Path, name: str, entry: Any) -> DatasetSpec:
    where = f"{meta_path}: dataset {name!r}"
    if not isinstance(entry, dict):
        raise DataError(f"{where}: must be an object with keys {', '.join(_META_KEYS)}")
    if unknown := sorted(set(entry) - set(_META_KEYS)):
        warnings.warn(f"{where}: ignoring unknown key(s) {unknown}", stacklevel=3)
    repeat, augment = entry.get("repeat_time", 1), entry.get("data_augment", False)
    checks = [(k, isinstance(entry.get(k), str), "a string") for k in ("root", "annotation")] + [
        ("repeat_time", _number(repeat) and 0 < repeat < math.inf, "a number > 0"),
        ("max_dynamic_patch", entry.get("max_dynamic_patch") is None or _integer(entry["max_dynamic_patch"], 1),
         "an integer >= 1"),
        ("length", entry.get("length") is None or _integer(entry["length"], 0), "an integer >= 0"),
        ("data_augment", isinstance(augment, bool), "true or false")]
    for key, ok, want in checks:
        if not ok:
            problem = f"must be {want}, got {entry[key]!r}" if key in entry else "is missing"
            raise DataError(f"{where}: key {key!r} {problem}")
    annotation = _resolve(meta_path, entry["annotation"])
    if not os.path.isfile(annotation):
        raise DataError(f"{where}: key 'annotation': no such file {entry['annotation']!r} (looked in the working "
                        f"directory and in {meta_path.parent})")
    return DatasetSpec(name, _resolve(meta_path, entry["root"]), annotation, augment,
                       entry.get("max_dynamic_patch"), float(repeat), entry.get("length"))


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _integer(v: Any, low: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _resolve(meta_path: Path, p: str) -> str:
    if not p or os.path.isabs(p) or "://" in p or os.path.exists(p):
        return p
    beside = os.path.join(meta_path.parent, p)
    return beside if os.path.exists(beside) else p


class SFTDataset(torch.utils.data.Dataset):
    """All datasets of a meta file as one indexable dataset of `Sample`s (None for skipped bad records).

    At init only the line offsets are read; JSON parsing, tokenization and image loading happen in
    `__getitem__`, i.e. in DataLoader workers. Index order is dataset by dataset, line by line (with
    repeats); shuffling is the sampler's job. `skipped` counts the bad records this process skipped; a worker's
    count stays in the worker, so the collator also reports `Batch.num_skipped`.
    """

    def __init__(self, meta_path_or_specs: str | os.PathLike | list[DatasetSpec], tokenizer: Any, cfg: DataConfig,
                 seed: int = 0) -> None:
        specs = meta_path_or_specs
        self.specs = read_meta(specs) if isinstance(specs, (str, os.PathLike)) else list(specs)
        self.tokenizer, self.cfg, self.seed, self.skipped = tokenizer, cfg, seed, 0
        self._cfgs = [replace(cfg, max_dynamic_patch=s.max_dynamic_patch or cfg.max_dynamic_patch,
                              data_augment=s.data_augment) for s in self.specs]
        self._offsets, self._lines, parts = [], [], [np.zeros((0, 2), dtype=np.int64)]
        for d, spec in enumerate(self.specs):
            offsets, lines = _index_lines(spec.annotation)
            if spec.length is not None and spec.length != len(offsets):
                warnings.warn(f"dataset {spec.name!r}: the meta file says length {spec.length} but "
                              f"{spec.annotation} has {len(offsets)} non-empty lines", stacklevel=2)
            self._offsets.append(offsets)
            self._lines.append(lines)
            chosen = _repeat(len(offsets), spec.repeat_time, seed + d)
            parts.append(np.stack([np.full_like(chosen, d), chosen], axis=1))
        self._index = np.concatenate(parts)  # (len, 2): dataset, line slot

    def __len__(self) -> int:
        return len(self._index)

    def source(self, i: int) -> str:
        d, k = self._index[i]
        return f"{self.specs[d].annotation}:{self._lines[d][k]}"

    def __getitem__(self, i: int) -> Sample | None:
        d, k = (int(v) for v in self._index[i])
        spec, source = self.specs[d], self.source(i)
        try:
            with open(spec.annotation, "rb") as f:
                f.seek(int(self._offsets[d][k]))
                raw = f.readline()
            try:
                record = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise DataError(f"{source}: malformed JSON ({getattr(e, 'msg', e)}, column "
                                f"{getattr(e, 'colno', '?')})") from None
            rng = random.Random(self.seed * 1_000_003 + i) if self._cfgs[d].data_augment else None
            return self.build(record, self._cfgs[d], spec.root, source, rng, i)
        except DataError as e:
            if not self.cfg.skip_bad_samples:
                raise
            self.skipped += 1
            log.warning("skipping bad sample: %s", e)
            return None

    def build(self, record: Any, cfg: DataConfig, root: str, source: str, rng: random.Random | None,
              index: int) -> Any:
        """One parsed record -> its item (a `Sample` here; `mpo_data.PreferenceDataset` makes pairs,
        `region_align.RegionDataset` region samples)."""
        return build_sample(record, self.tokenizer, cfg, root, source, rng)


def _index_lines(path: str) -> tuple[np.ndarray, np.ndarray]:
    """Byte offset and 1-based line number of every non-blank line."""
    offsets, numbers, pos = [], [], 0
    with open(path, "rb") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                offsets.append(pos)
                numbers.append(n)
            pos += len(line)
    return np.asarray(offsets, dtype=np.int64), np.asarray(numbers, dtype=np.int64)


def _repeat(n: int, repeat_time: float, seed: int) -> np.ndarray:
    """floor(r) passes over all n lines, then a seeded random int(n * frac(r)) of them, each in file order."""
    whole = int(repeat_time)
    parts = [np.arange(n, dtype=np.int64)] * whole
    if extra := int(n * (repeat_time - whole)):
        parts.append(np.sort(np.random.default_rng(seed).choice(n, extra, replace=False)).astype(np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
