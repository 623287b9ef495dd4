"""A PatchCore training embedding kept in an unnamed file instead of in memory.

On CPU a PatchCore fit used to hold every training patch's features until the coreset was
chosen: the embedding (patches x features x 4 bytes) was the fit's floor. The coreset search only
needs the embedding's random projection, and the coreset itself is a tenth of the rows, so the
rows can wait on disk from the moment the backbone produces them. :class:`SpilledEmbedding`
appends them to a file as they come, keeps one float per row (its sum, for the ``coreset_seed``
row order), and gives them back a block at a time (for the projection) or by index (the coreset).

The file has no name (``tempfile.TemporaryFile``): it is gone when it is closed or the process
ends, however it ends. It is written to a directory the caller chooses (the run folder), not to
the temporary folder, which may itself be memory. Reads are plain sequential reads into one
reused buffer, never a memory map, whose pages would count as the process's own.
"""

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

#: Dtypes whose rows can go through NumPy to the file (bfloat16 cannot).
SPILLABLE = (torch.float32, torch.float16, torch.float64)
#: Bytes read back from the file at a time (the one buffer the reads reuse).
READ_BLOCK_BYTES = 2**20


def sums_of_rows(chunk: torch.Tensor) -> torch.Tensor:
    """Each row's sum, in float32: what the ``coreset_seed`` row order sorts by, for rows in
    memory and rows on disk alike (one rule, so both give the same order)."""
    return chunk.float().sum(dim=1)


class SpilledEmbedding:
    """Rows (``n x features``, one dtype) appended to an unnamed file in ``directory``."""

    def __init__(self, directory: str | Path) -> None:
        # Kept open for the embedding's life and closed by close(): no with-block can span that.
        self._file = tempfile.TemporaryFile(dir=directory, prefix=".patchcore-embedding-")  # noqa: SIM115 - closed by close()
        self.rows = 0
        self.features: int | None = None
        self.dtype: torch.dtype | None = None
        self._row_sums: list[torch.Tensor] = []

    def __enter__(self) -> "SpilledEmbedding":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove the rows (the file has no name: closing it frees its disk)."""
        self._file.close()

    def append(self, chunk: torch.Tensor) -> None:
        """Write ``chunk``'s rows after those already held. The caller drops its own reference to
        free the memory."""
        if chunk.ndim != 2:
            raise ValueError(f"embedding chunks must be 2-D (rows x features), got shape {tuple(chunk.shape)}")
        if chunk.dtype not in SPILLABLE:
            raise ValueError(f"cannot keep {chunk.dtype} rows on disk (only {', '.join(map(str, SPILLABLE))})")
        if self.features is None:
            self.features, self.dtype = chunk.shape[1], chunk.dtype
        elif (chunk.shape[1], chunk.dtype) != (self.features, self.dtype):
            raise ValueError(f"an embedding chunk of {chunk.shape[1]} {chunk.dtype} features after "
                             f"{self.features} {self.dtype} ones")
        chunk = chunk.detach().cpu().contiguous()
        self._file.write(memoryview(chunk.numpy()).cast("B"))  # the chunk's own bytes, not a copy
        self._row_sums.append(sums_of_rows(chunk))
        self.rows += len(chunk)

    def row_sums(self) -> torch.Tensor:
        """Each row's sum (float32), in the order the rows were appended."""
        return torch.cat(self._row_sums) if self._row_sums else torch.empty(0)

    def _row_bytes(self) -> int:
        return self.features * torch.empty(0, dtype=self.dtype).element_size()

    def _buffer(self, rows: int) -> torch.Tensor:
        block_rows = max(1, min(rows, READ_BLOCK_BYTES // self._row_bytes()))
        return torch.empty(block_rows, self.features, dtype=self.dtype)

    def blocks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """``(first row, rows)`` of every block of the file, in order. The rows are a view of one
        buffer that the next block overwrites."""
        self._file.flush()
        self._file.seek(0)
        buffer = self._buffer(self.rows)
        first = 0
        while first < self.rows:
            block = buffer[:min(len(buffer), self.rows - first)]
            got = self._file.readinto(memoryview(block.numpy()).cast("B"))
            if got != block.numel() * block.element_size():
                raise OSError(f"the spilled PatchCore embedding ended early (row {first + got // self._row_bytes()} "
                              f"of {self.rows})")
            yield first, block
            first += len(block)

    def read_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows ``rows`` (in that order), read back in one sequential pass."""
        self._file.flush()
        wanted = rows.cpu().numpy()
        by_row = np.argsort(wanted, kind="stable")
        sorted_rows = wanted[by_row]
        out = torch.empty(len(wanted), self.features, dtype=self.dtype)
        out_array = out.numpy()
        row_bytes = self._row_bytes()
        buffer = self._buffer(self.rows).numpy()
        done = 0
        while done < len(sorted_rows):
            block_start = int(sorted_rows[done])
            self._file.seek(block_start * row_bytes)
            got = self._file.readinto(memoryview(buffer).cast("B")) // row_bytes
            end = int(np.searchsorted(sorted_rows, block_start + got, side="left"))
            if got == 0 or end == done:
                raise OSError(f"the spilled PatchCore embedding ended early (row {block_start} of {self.rows})")
            out_array[by_row[done:end]] = buffer[sorted_rows[done:end] - block_start]
            done = end
        return out
