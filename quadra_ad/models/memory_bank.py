"""Memory-bank models (PaDiM, PatchCore, DFM, DFKDE) fitted on the training images of every DDP
process, not of one.

anomalib's memory-bank models append one tensor of embeddings per training batch to a list on
their torch model and fit on that list once (``MemoryBankMixin``). Under DDP each process holds
only its own shard, so each would fit on 1/N of the training set: two GPUs give half a memory
bank (anomalib issues #2673 and #3038, open). :func:`gather_embeddings` puts every process's
embeddings into every process's list before the fit, each training image once and in the
sampler's order; :func:`share_fitted_state` then gives every process the fit of process 0, so that
random draws (PatchCore's coreset) cannot make the processes test different models.
"""

import torch
from torch import nn

from quadra_ad.runtime.distributed import broadcast_object, gather_objects, gather_rows, global_order, rank

#: Where anomalib's torch models collect the training embeddings, one tensor per batch
#: (PatchCore's ``memory_bank`` is the fitted coreset; PaDiM, DFM and DFKDE collect in ``memory_bank``).
EMBEDDING_LISTS = ("embedding_store", "memory_bank")


def embedding_list(torch_model: nn.Module) -> list[torch.Tensor] | None:
    """The list in which ``torch_model`` collects its training embeddings (None if it has none)."""
    for name in EMBEDDING_LISTS:
        value = getattr(torch_model, name, None)
        if isinstance(value, list):
            return value
    return None


@torch.no_grad()
def gather_embeddings(store: list[torch.Tensor], image_paths: list[str]) -> int:
    """Replace what ``store`` holds (this process's embeddings of ``image_paths``, in that order)
    by the embeddings of every process; returns how many distinct training images they come from.

    A batch tensor holds the same number of rows for each of its images (PaDiM, DFM, DFKDE: one;
    PatchCore: one per patch), so rows are dealt back to images by that count.
    """
    local = torch.cat(store) if store else None
    if local is None or not image_paths or local.shape[0] % len(image_paths):
        raise ValueError(f"cannot share the training embeddings: {0 if local is None else local.shape[0]} rows "
                         f"for {len(image_paths)} training images in this process")
    rows = local.shape[0] // len(image_paths)
    shards = gather_rows(local)
    order = global_order(gather_objects(list(image_paths)))
    merged = torch.cat([shards[rank][index * rows:(index + 1) * rows] for rank, index in order])
    store[:] = [merged]
    return len(order)


def share_fitted_state(torch_model: nn.Module) -> None:
    """Every process's ``torch_model`` takes process 0's buffers (what a memory-bank fit writes).

    Buffers are assigned, not loaded: a fit changes their shapes (PatchCore's coreset, PaDiM's
    Gaussian), which ``load_state_dict`` refuses.
    """
    own = {name: buffer.cpu() for name, buffer in torch_model.named_buffers()} if rank() == 0 else None
    shared = broadcast_object(own)
    for name, value in shared.items():
        owner_name, _, attr = name.rpartition(".")
        owner = torch_model.get_submodule(owner_name)
        setattr(owner, attr, value.to(getattr(owner, attr).device))
