"""A GPU trainer on a machine without a GPU runs on the CPU, with one warning line.

Experiment files written for a GPU workstation (Quadra's use ``trainer: lightning_gpu`` with
``devices: [0]``) should run unchanged on a laptop or a CPU-only CI machine: the run is the same
apart from its speed, so refusing it would only make the user edit a file they will take back to
the GPU. The switch happens on the composed config, so ``--cfg job`` prints what runs.
"""

import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

GPU_ACCELERATORS = ("gpu", "cuda")
#: ``trainer.strategy`` values a run supports. ``ddp`` is Lightning's DDP started from the command
#: line (one process per device; gloo on CPU); the spawn/fork variants cannot hand the collected
#: scores back to the run (see quadra_ad/tasks/anomaly_training.py).
STRATEGIES = ("auto", "ddp", "ddp_find_unused_parameters_true")


def process_count(devices: Any) -> int | None:
    """How many processes ``trainer.devices`` asks for on one machine (None: Lightning decides)."""
    if isinstance(devices, int) and not isinstance(devices, bool):
        return devices
    if isinstance(devices, (list, tuple, ListConfig)):
        return len(devices)
    return None


def gpus_visible() -> bool:
    """Whether this machine shows a GPU device, told without torch (which takes seconds to import).

    Linux exposes NVIDIA GPUs as /dev/nvidia<N> (containers too), AMD ones through /dev/kfd and
    WSL's through /dev/dxg. Elsewhere we cannot tell cheaply, and Lightning decides.
    """
    if not sys.platform.startswith("linux"):
        return True
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    dev = Path("/dev")
    return any(dev.glob("nvidia[0-9]*")) or (dev / "kfd").exists() or (dev / "dxg").exists()


def fall_back_to_cpu(cfg: DictConfig) -> str | None:
    """Move a GPU trainer to the CPU when this machine has no GPU; return the warning line, or None
    when nothing changed. DDP stays DDP, on as many CPU processes as it asked GPUs; any other
    strategy (and DDP over one GPU, or over ``auto``: every GPU of none) runs one process."""
    accelerator = OmegaConf.select(cfg, "trainer.accelerator", throw_on_missing=False)
    devices = OmegaConf.select(cfg, "trainer.devices", default=1, throw_on_missing=False)
    # ``auto`` with a list of device indices (Quadra's ``devices: [2]``) asks for those GPUs too.
    asks_gpus = accelerator in GPU_ACCELERATORS or (accelerator == "auto" and isinstance(devices, ListConfig))
    if not asks_gpus or gpus_visible():
        return None
    strategy = OmegaConf.select(cfg, "trainer.strategy", default="auto", throw_on_missing=False)
    asks_ddp = strategy in STRATEGIES[1:]
    # As many CPU processes as GPUs asked for; ``auto`` or ``-1`` (every GPU, of which there are none): one.
    processes = max(1, process_count(devices) or 1) if asks_ddp else 1
    ddp = processes > 1
    struct = OmegaConf.is_struct(cfg)
    OmegaConf.set_struct(cfg, False)
    try:
        OmegaConf.update(cfg, "trainer.accelerator", "cpu", merge=False)
        OmegaConf.update(cfg, "trainer.devices", processes, merge=False)
        if asks_ddp and not ddp:
            OmegaConf.update(cfg, "trainer.strategy", "auto", merge=False)  # DDP of one process is one process
    finally:
        OmegaConf.set_struct(cfg, struct)
    shown = OmegaConf.to_container(devices) if isinstance(devices, ListConfig) else devices
    how = f"DDP on {processes} CPU processes" if ddp else "1 CPU process"
    return (f"trainer.accelerator={accelerator} (devices={shown}) but this machine has no GPU: running on the CPU "
            f"({how}); use trainer=cpu to say so and silence this line")
