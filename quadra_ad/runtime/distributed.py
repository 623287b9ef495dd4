"""What the processes of a distributed (DDP) run exchange, and in which order they put it back.

Under ``trainer.strategy=ddp`` every process sees one shard of each split. Lightning's
``DistributedSampler`` deals image ``j`` of its order to process ``j % N`` and pads the shards to
equal length by dealing the first images of its order a second time. :func:`global_order` undoes
that dealing: what the processes gathered comes back in one order, every image once, so the
memory bank, the thresholds and the metrics of an N-process run are those of a 1-process run.

Everything here is a no-op (one process, nothing exchanged) when no process group is running.
"""

from typing import Any

import torch
import torch.distributed as dist


def world_size() -> int:
    """How many processes take part in the run (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if world_size() > 1 else 0


def gather_objects(value: Any) -> list[Any]:
    """Every process's ``value`` (picklable), in rank order."""
    if world_size() == 1:
        return [value]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def gather_rows(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every process's ``tensor``, in rank order; only the first dimension may differ between them.

    ``all_gather`` needs one shape everywhere, so each tensor travels padded to the longest and
    is cut back to its own length on arrival.
    """
    if world_size() == 1:
        return [tensor]
    count = torch.tensor([tensor.shape[0]], device=tensor.device)
    counts = [torch.empty_like(count) for _ in range(world_size())]
    dist.all_gather(counts, count)
    lengths = [int(c) for c in counts]
    padded = tensor.new_zeros((max(lengths), *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    gathered = [torch.empty_like(padded) for _ in lengths]
    dist.all_gather(gathered, padded.contiguous())
    return [rows[:length] for rows, length in zip(gathered, lengths, strict=True)]


def broadcast_object(value: Any) -> Any:
    """Process 0's ``value`` (picklable), on every process."""
    if world_size() == 1:
        return value
    carrier = [value]
    dist.broadcast_object_list(carrier, src=0)
    return carrier[0]


def global_order(keys_per_rank: list[list[str]]) -> list[tuple[int, int]]:
    """``(rank, index)`` of every distinct key, in the order the sampler dealt them.

    Item ``i`` of process ``r`` was dealt at position ``i * N + r``; a key seen at an earlier
    position (the sampler's padding) is dropped. Shards of unequal length (predict's sampler does
    not pad) are fine.
    """
    seen: set[str] = set()
    order = []
    longest = max((len(keys) for keys in keys_per_rank), default=0)
    for index in range(longest):
        for rank, keys in enumerate(keys_per_rank):
            if index < len(keys) and keys[index] not in seen:
                seen.add(keys[index])
                order.append((rank, index))
    return order
