"""MemoryBankGather: under DDP, a memory-bank model (PaDiM, PatchCore, DFM, DFKDE) fits on the
training images of every process, and every process then tests the same fitted model.

anomalib fits such a model in its own ``on_validation_start`` or ``on_train_epoch_end`` hook,
whichever comes first. Lightning calls a callback's hook before the module's, so this callback
gathers the embeddings there, just before the fit; at the next evaluation epoch start (after
the fit) it hands process 0's fitted buffers to the others. In a 1-process run it does nothing.
"""

import logging

from lightning.pytorch import Callback

from quadra_ad.models.memory_bank import embedding_list, gather_embeddings, share_fitted_state
from quadra_ad.runtime.distributed import world_size

log = logging.getLogger(__name__)


def _is_memory_bank_model(pl_module) -> bool:
    from anomalib.models.components import MemoryBankMixin

    return isinstance(pl_module, MemoryBankMixin)


class MemoryBankGather(Callback):
    """Gathers every process's training embeddings before a memory-bank fit (see the module docstring)."""

    def __init__(self) -> None:
        self._image_paths: list[str] = []
        self._share_pending = False

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._image_paths = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        # The model appends one embedding tensor per training step, in this order.
        self._image_paths.extend(str(path) for path in batch.image_path)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._gather_before_fit(pl_module)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._gather_before_fit(pl_module)

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._share_after_fit(pl_module)

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self._share_after_fit(pl_module)

    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        self._share_after_fit(pl_module)

    def _gather_before_fit(self, pl_module) -> None:
        # Every condition below is the same in every process, so all of them enter the collectives.
        if world_size() == 1 or not _is_memory_bank_model(pl_module) or bool(pl_module._is_fitted):
            return
        store = embedding_list(pl_module.model)
        if store is None or not self._image_paths:
            return
        images = gather_embeddings(store, self._image_paths)
        log.info("Memory bank: fitting on the embeddings of %d training images gathered from %d processes",
                 images, world_size())
        self._share_pending = True

    def _share_after_fit(self, pl_module) -> None:
        if self._share_pending and bool(pl_module._is_fitted):
            share_fitted_state(pl_module.model)
            self._share_pending = False
