"""Sharded safetensors reading and writing (`model.safetensors[.index.json]`), spec section 2.

Reading is lazy: `TensorReader` opens every shard with `safe_open` (memory-mapped) and hands out one
tensor at a time, so loading never holds the file contents and the model side by side. Writing splits
tensors into shards of at most `max_shard_bytes` and writes the index transformers and the official code
expect.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import CheckpointError

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


class TensorReader:
    """Name -> tensor access over all shards of a checkpoint directory."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)
        index = self.directory / INDEX
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError) as e:
                raise CheckpointError(f"{index}: not a valid safetensors index ({e})") from e
        elif (self.directory / SINGLE).exists():
            weight_map = None
        else:
            raise CheckpointError(f"{self.directory}: no {SINGLE} or {INDEX} found")
        self._handles = {}
        self._where: dict[str, str] = {}
        files = sorted(set(weight_map.values())) if weight_map else [SINGLE]
        for name in files:
            path = self.directory / name
            if not path.exists():
                raise CheckpointError(f"{path}: shard listed in the index is missing")
            try:
                handle = safe_open(str(path), framework="pt")
            except Exception as e:  # safetensors raises its own error types
                raise CheckpointError(f"{path}: unreadable safetensors file ({e})") from e
            self._handles[name] = handle
            for key in handle.keys():
                self._where[key] = name

    def keys(self) -> list[str]:
        return list(self._where)

    def __contains__(self, key: str) -> bool:
        return key in self._where

    def get(self, key: str) -> torch.Tensor:
        return self._handles[self._where[key]].get_tensor(key)

    def shape(self, key: str) -> list[int]:
        return list(self._handles[self._where[key]].get_slice(key).get_shape())

    def dtype(self, key: str) -> torch.dtype:
        """The stored dtype, without reading the tensor."""
        name = self._handles[self._where[key]].get_slice(key).get_dtype()
        return _DTYPES.get(name) or self.get(key).dtype


_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
           "BOOL": torch.bool}


def write_sharded(tensors: Iterable[tuple[str, torch.Tensor]], directory: str | os.PathLike,
                  max_shard_bytes: int = 5 * 1024 ** 3, metadata: dict | None = None) -> list[str]:
    """Write (name, tensor) pairs as safetensors shards plus an index when there is more than one shard.

    Tensors are consumed as they come, so a caller can stream converted tensors without holding all.
    Returns the shard file names.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    sizes = [0]
    paths: list[str] = []
    weight_map: dict[str, str] = {}
    total = 0
    meta = {"format": "pt", **(metadata or {})}

    def flush(final: bool) -> None:
        if not shards[-1]:
            return
        tmp = directory / f"shard-{len(paths):05d}.tmp"
        save_file(shards[-1], str(tmp), metadata=meta)
        paths.append(str(tmp))
        for k in shards[-1]:
            weight_map[k] = tmp.name
        shards[-1] = {}
        sizes[-1] = 0

    for name, t in tensors:
        nbytes = t.numel() * t.element_size()
        if shards[-1] and sizes[-1] + nbytes > max_shard_bytes:
            flush(False)
        shards[-1][name] = t.contiguous()
        sizes[-1] += nbytes
        total += nbytes
    flush(True)
    n = len(paths)
    rename = {}
    for j, tmp in enumerate(paths):
        final = SINGLE if n == 1 else f"model-{j + 1:05d}-of-{n:05d}.safetensors"
        os.replace(tmp, directory / final)
        rename[Path(tmp).name] = final
    if n > 1:
        index = {"metadata": {"total_size": total}, "weight_map": {k: rename[v] for k, v in sorted(weight_map.items())}}
        (directory / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    return list(rename.values())


def iter_state(reader: TensorReader) -> Iterator[tuple[str, torch.Tensor]]:
    for key in reader.keys():
        yield key, reader.get(key)
