"""Lightning callbacks: score collection and calibration, heatmaps, and the ones a config names.

:class:`~quadra_ad.callbacks.score_collector.ScoreCollector` keeps every raw output and
calibrates thresholds (over the images of every process under DDP);
:class:`~quadra_ad.callbacks.memory_bank_gather.MemoryBankGather` makes a memory-bank model fit on
the training images of every DDP process; :class:`~quadra_ad.callbacks.visualizer.HeatmapVisualizer` draws the test
images; :func:`~quadra_ad.callbacks.from_config.build_callbacks` builds the ``callbacks`` group.
"""
