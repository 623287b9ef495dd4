"""The frozen TorchScript graph behind the CPU-optimised one, built once and kept beside the model.

Freezing ``model.pt`` and optimising it for CPU inference (``torch.jit.optimize_for_inference``:
conv+BN folding, oneDNN layouts) gives 1.1-1.2x more images/s, but building it costs seconds at
every load (up to 18 s on a busy 2-core machine). The first load keeps the frozen graph it
checked; later loads read it, run the cheap oneDNN pass again and check that the result gives
``model.pt``'s outputs on a fresh random batch (scripts/torchscript_load.py measures all three).

Beside ``model.pt`` (hidden, so a deployment folder still lists the exported files only):

- ``.model.pt.cpu.frozen.pt``: the frozen graph, saved *before* the oneDNN pass (torch cannot load
  a graph back once its weights are oneDNN tensors). It is built from ``model.pt`` only, so the
  same ``model.pt`` still loads anywhere, CUDA included;
- ``.model.pt.cpu.frozen.json``: what it was built from (the graph's SHA-256, torch version,
  device, CPU capability) and its own SHA-256; or, when optimising changed the outputs or failed,
  that verdict alone, so later loads keep the plain graph without trying again. Written after
  the graph file: a record names only a complete graph.

A record for another graph, torch, device or CPU is stale; a graph file whose content is not the
one recorded (truncated, altered) is corrupt: both are ignored, rebuilt and overwritten. Each
file is written under a temporary name and renamed over its target. A folder that cannot be
written to (read-only media, permissions, full disk) is no error: the load just rebuilds each time.

Nothing here is covered by model.json's hashes, and a record's hashes sit beside the files they
describe: whoever swaps the cached graph can rewrite its record to match. So the cache is trusted
for speed only. What runs is decided by the verified ``model.pt``: a cached graph whose outputs
differ from it is thrown away (:meth:`~quadra_ad.deploy.runners.TorchScriptModel.optimize_for_cpu`),
and the worst a swapped verdict can do is keep the plain graph.
"""

import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from quadra_ad.deploy.model_card import file_sha256
from quadra_ad.errors import first_line
from quadra_ad.files import atomic_path, write_text

log = logging.getLogger(__name__)

#: Bumped when the cache's contents or meaning change: older records are then stale.
CACHE_FORMAT = 1


@dataclass
class CachedGraph:
    """What a valid cache says: the frozen graph to optimise, or None when optimising is known not to pay."""

    frozen: object | None


def cache_paths(graph_file: Path, device: str) -> tuple[Path, Path]:
    """(frozen graph file, its record) beside ``graph_file`` for ``device``."""
    tag = device.replace(":", "")
    return (graph_file.with_name(f".{graph_file.name}.{tag}.frozen.pt"),
            graph_file.with_name(f".{graph_file.name}.{tag}.frozen.json"))


def cache_key(graph_file: Path, device: str, graph_sha256: str | None = None) -> dict[str, str | int]:
    """Everything the optimised graph depends on: the graph's content, torch, the device and the CPU."""
    import torch

    return {
        "cache_format": CACHE_FORMAT,
        "graph_sha256": graph_sha256 or file_sha256(graph_file),
        "torch": torch.__version__,
        "device": device,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn": str(torch.backends.mkldnn.is_available()),
    }


def read_cache(graph_file: Path, device: str, key: dict) -> CachedGraph | None:
    """The cached frozen graph (or the recorded verdict) for ``key``; None when there is no valid cache."""
    import torch

    frozen_path, record_path = cache_paths(graph_file, device)
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        log.info("Ignoring the unreadable TorchScript cache record '%s' (%s): rebuilding it", record_path, error)
        return None
    if not isinstance(record, dict) or record.get("key") != key:
        log.info("The TorchScript cache beside '%s' was built for another graph, torch or CPU: rebuilding it", graph_file)
        return None
    if not record.get("optimized"):
        return CachedGraph(frozen=None)
    try:
        content = frozen_path.read_bytes()
        if hashlib.sha256(content).hexdigest() != record.get("frozen_sha256"):
            raise ValueError("its content is not the one recorded")
        frozen = torch.jit.load(io.BytesIO(content), map_location=device)
    except Exception as error:  # noqa: BLE001 - whatever is wrong with the file, rebuild it
        log.info("Ignoring the corrupt TorchScript cache '%s' (%s): rebuilding it", frozen_path, first_line(error))
        return None
    return CachedGraph(frozen=frozen)


def write_cache(graph_file: Path, device: str, key: dict, frozen_bytes: bytes | None) -> bool:
    """Keep ``frozen_bytes`` (a saved frozen graph), or the verdict that optimising does not pay
    when None; False when the folder cannot be written to (the load goes on without a cache)."""
    frozen_path, record_path = cache_paths(graph_file, device)
    record = {"key": key, "optimized": frozen_bytes is not None}
    try:
        if frozen_bytes is not None:
            with atomic_path(frozen_path) as temporary:
                temporary.write_bytes(frozen_bytes)
            record["frozen_sha256"] = hashlib.sha256(frozen_bytes).hexdigest()
        else:
            frozen_path.unlink(missing_ok=True)
        write_text(record_path, json.dumps(record, indent=2) + "\n")
    except OSError as error:
        log.info("Cannot keep the optimised TorchScript graph beside '%s' (%s): each load will optimise it again",
                 graph_file, first_line(error))
        return False
    return True
