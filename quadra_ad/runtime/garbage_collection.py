"""Python's cyclic garbage collector, kept off the objects a training process holds for its life.

A run imports torch, Lightning, anomalib and MLflow: about a million objects that live until the
process ends. Every full collection walks all of them again, and the ONNX exporter's tracing
triggers many; at exit the interpreter walks them once more (~2.5 s of a PaDiM run on 2 cores,
timed by hand from the run's end to the process's exit). Frozen objects (``gc.freeze``) are skipped by collections; they are
still freed by reference counting like any other object. Frozen pages are also left alone by the
collector in forked DataLoader workers, so those share them with the parent instead of copying.
"""

import gc

_imports_frozen = False


def freeze_imports() -> None:
    """Freeze what is alive once the heavy imports are done (once per process: a later call would
    also freeze the garbage of a previous job in the same process, which then is never collected)."""
    global _imports_frozen
    if not _imports_frozen:
        _imports_frozen = True
        gc.freeze()


def skip_final_collection() -> None:
    """Leave the objects alive at exit to the operating system instead of a last full collection.

    Python does not promise ``__del__`` for objects still alive when the interpreter exits; ours
    close their files and MLflow runs explicitly before this point.
    """
    gc.freeze()
