"""Resumable parts of a run: work split into pieces, each written once (atomically) and reread on resume.

- ``ChunkedTables``: a list of items (image indices) in fixed-size chunks; each chunk's tables are one
  part (``<prefix>/<start:08d>_<kind>.parquet``). The chunking (chunk size and the items) is recorded
  in ``<prefix>/chunks.json``: resuming with another chunking raises ``ValueError`` naming the chunk size,
  never mixes parts of two layouts.
- ``ArrayParts``: one npz per named piece (e.g. per optimised target), independent of batching.
- ``cached_arrays``: one npz computed once per run (e.g. dataset exemplars).

A part is complete once all its files exist; a run interrupted mid-part recomputes that part.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .run import Run


@dataclass(frozen=True)
class Chunk:
    """One chunk: its position, the items it covers and its run-relative file stem."""

    index: int
    start: int
    items: list[int]
    key: str


def _digest(items: Sequence[int]) -> str:
    return hashlib.sha256(np.asarray(items, dtype=np.int64).tobytes()).hexdigest()[:16]


class ChunkedTables:
    """``items`` in chunks of ``chunk_size``, each chunk's ``kinds`` tables one resumable part of ``run``.

    ``writer`` is False on the processes of a torchrun group that only read (the main process writes).
    """

    def __init__(self, run: Run, prefix: str, items: Sequence[int], chunk_size: int, kinds: Sequence[str],
                 writer: bool = True) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.run, self.prefix, self.kinds, self.writer = run, prefix, tuple(kinds), writer
        self.items, self.chunk_size = [int(i) for i in items], chunk_size
        self._check_layout()

    def _check_layout(self) -> None:
        """Record the chunking on first use; refuse a resume whose chunking differs."""
        name = f"{self.prefix}/chunks.json"
        layout = {"chunk_size": self.chunk_size, "items": len(self.items), "items_sha256": _digest(self.items)}
        if self.run.has(name):
            old = self.run.read_json(name)
            if old.get("chunk_size") != self.chunk_size:
                raise ValueError(f"{self.run.path / self.prefix} holds parts of chunk size {old.get('chunk_size')}, "
                                 f"not {self.chunk_size}: resume with --chunk-size {old.get('chunk_size')} "
                                 "or pass --force to start over")
            if old != layout:
                raise ValueError(f"{self.run.path / self.prefix} holds parts of another item list ({old.get('items')} "
                                 f"items, not {len(self.items)}): pass --force to start over")
        elif self.writer:
            self.run.write_json(name, layout)

    def __len__(self) -> int:
        return -(-len(self.items) // self.chunk_size)

    def __iter__(self) -> Iterator[Chunk]:
        for index, start in enumerate(range(0, len(self.items), self.chunk_size)):
            yield Chunk(index, start, self.items[start : start + self.chunk_size], f"{self.prefix}/{start:08d}")

    def done(self, chunk: Chunk) -> bool:
        """Whether every table of ``chunk`` is in the run."""
        return all(self.run.has(f"{chunk.key}_{kind}.parquet") for kind in self.kinds)

    def read(self, chunk: Chunk) -> tuple[pd.DataFrame, ...]:
        return tuple(self.run.read_table(f"{chunk.key}_{kind}") for kind in self.kinds)

    def write(self, chunk: Chunk, frames: Sequence[pd.DataFrame]) -> None:
        """Write the chunk's tables (only on the writer); the last one written completes the part."""
        if self.writer:
            for kind, frame in zip(self.kinds, frames, strict=True):
                self.run.write_table(f"{chunk.key}_{kind}", frame)

    def get(self, chunk: Chunk, compute: Callable[[list[int]], Sequence[pd.DataFrame]]) -> tuple[pd.DataFrame, ...]:
        """The chunk's tables: read back when done, else ``compute(chunk.items)`` and written."""
        if self.done(chunk):
            return self.read(chunk)
        frames = tuple(compute(chunk.items))
        self.write(chunk, frames)
        return frames


class ArrayParts:
    """Named resumable pieces of a run, one npz each under ``prefix``."""

    def __init__(self, run: Run, prefix: str = "parts") -> None:
        self.run, self.prefix = run, prefix

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    def has(self, name: str) -> bool:
        return self.run.has(f"{self.key(name)}.npz")

    def pending(self, names: Sequence[str]) -> list[str]:
        """The names whose piece the run does not hold yet."""
        return [n for n in names if not self.has(n)]

    def write(self, name: str, **arrays: np.ndarray) -> None:
        self.run.write_arrays(self.key(name), **arrays)

    def read(self, name: str) -> dict[str, np.ndarray]:
        return self.run.read_arrays(self.key(name))


def cached_arrays(run: Run, name: str, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """``<name>.npz`` of the run, computed and written once; reread on resume."""
    if run.has(f"{name}.npz"):
        return run.read_arrays(name)
    arrays = compute()
    run.write_arrays(name, **arrays)
    return arrays

