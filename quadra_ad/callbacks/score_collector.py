"""Lightning callback that keeps the raw outputs of validation, test and predict batches, and
calibrates thresholds on the validation ones.

It is passed to the Trainer, so it runs before any callback the model brings itself: it sees
scores and maps exactly as the network produced them.

Under DDP each process scores its shard of a split; at the end of each epoch every process gets
the whole split (each image once, in dataset order), so thresholds, metrics and the validation
AUROC a checkpoint monitors are computed over all images and are the same in every process.
"""

from lightning.pytorch import Callback
from lightning.pytorch.trainer.states import TrainerFn

from quadra_ad.evaluation.metrics import Metrics, auroc, image_metrics, scored_set_metrics
from quadra_ad.evaluation.scored_set import ScoredSet, concat_scored_sets
from quadra_ad.evaluation.thresholds import Calibration, ThresholdRule, calibrate, f1_optimal_threshold
from quadra_ad.runtime.distributed import gather_objects, global_order, world_size

#: Logged at every validation epoch during fit; a best-epoch checkpoint monitors it.
VALIDATION_AUROC = "val_image_AUROC"
#: The best F1 over thresholds on the validation images (Quadra's checkpoints monitor it).
VALIDATION_F1 = "val_image_F1"


class ScoreCollector(Callback):
    """Collects one :class:`ScoredSet` per stage; validation restarts at every epoch.

    ``calibration`` gives the thresholds and score ranges of the latest validation set (None
    until one with labels has been seen). It is computed on first use, not at every epoch: the
    pixel threshold sorts every pixel, and only the validation of the weights that are finally
    tested and exported matters.
    """

    def __init__(self, rule: ThresholdRule | None = None) -> None:
        self.rule = rule or ThresholdRule()
        self._calibration: Calibration | None = None
        self.validation = ScoredSet()
        self.test = ScoredSet()
        self.predict = ScoredSet()

    @staticmethod
    def _add(target: ScoredSet, batch) -> None:
        target.add_batch(
            image_paths=batch.image_path,
            labels=batch.gt_label,
            scores=batch.pred_score if batch.pred_score is not None else batch.anomaly_map.amax(dim=(-2, -1)),
            maps=batch.anomaly_map,
            masks=batch.gt_mask,
        )

    @property
    def calibration(self) -> Calibration | None:
        if self._calibration is None and self.validation.labelled:
            self._calibration = calibrate(self.validation, self.rule)
        return self._calibration

    @property
    def tested(self) -> ScoredSet:
        """The test images, then the unlabelled ones (predict): every image a run reports on."""
        return concat_scored_sets(self.test, self.predict)

    @property
    def has_anomaly_maps(self) -> bool:
        """True when the model produced anomaly maps (image-level models only give scores)."""
        return self.test.has_maps or self.validation.has_maps

    def test_metrics(self) -> Metrics:
        """The test images' metrics at the latest validation's thresholds, with the words for how
        each threshold was really set (the calibration's, not the rule asked for)."""
        calibration = self.calibration
        metrics = scored_set_metrics(self.test, calibration)
        metrics.provenance["image_threshold"] = calibration.image_threshold_rule
        if calibration.pixel_threshold_rule is not None:
            metrics.provenance["pixel_threshold"] = calibration.pixel_threshold_rule
        return metrics

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self.validation = ScoredSet()
        self._calibration = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._add(self.validation, outputs)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self.validation = _whole_split(self.validation)
        labelled = self.validation.labelled
        # Only during fit: a later re-validation of the best epoch is not a training epoch.
        if not labelled or trainer.state.fn != TrainerFn.FITTING:
            return
        labels = self.validation.label_tensor(labelled)
        if 0 < int(labels.sum()) < len(labelled):
            # Logged so checkpointing and early stopping can monitor it.
            scores = self.validation.score_tensor(labelled)
            best_f1 = image_metrics(scores, labels, f1_optimal_threshold(scores, labels))["image_F1"]
            # Every process holds the same values: syncing averages them to themselves, and tells Lightning so.
            pl_module.log(VALIDATION_AUROC, auroc(scores, labels), prog_bar=True, logger=True, sync_dist=world_size() > 1)
            pl_module.log(VALIDATION_F1, best_f1, logger=True, sync_dist=world_size() > 1)

    def on_test_epoch_start(self, trainer, pl_module) -> None:
        self.test = ScoredSet()

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._add(self.test, outputs)

    def on_test_epoch_end(self, trainer, pl_module) -> None:
        self.test = _whole_split(self.test)

    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        self.predict = ScoredSet()

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._add(self.predict, outputs)

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        self.predict = _whole_split(self.predict)


def _whole_split(own: ScoredSet) -> ScoredSet:
    """Every process's part of a split, merged: each image once, in the order the sampler dealt them."""
    if world_size() == 1:
        return own
    parts = gather_objects(own)
    merged = ScoredSet()
    for rank, index in global_order([part.image_paths for part in parts]):
        part = parts[rank]
        merged.image_paths.append(part.image_paths[index])
        merged.labels.append(part.labels[index])
        merged.defect_types.append(part.defect_types[index])
        merged.scores.append(part.scores[index])
        if part.has_maps:
            merged.maps.append(part.maps[index])
        if part.has_masks:
            merged.masks.append(part.masks[index])
    return merged
