"""Turn a nested config into MLflow params: dotted keys, string values, never too long."""

from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

#: MLflow's limits. It refuses a longer key (the run's whole batch with it), and cuts a longer value
#: itself with one warning per value in the run's output and no mark in the value; we cut keys, and
#: cut and mark values, quietly.
MAX_PARAM_LENGTH = 6000
MAX_KEY_LENGTH = 250


def flatten_config(cfg: DictConfig | dict, prefix: str = "") -> dict[str, str]:
    """``{"model.backbone": "resnet18", ...}`` with lists kept as one value."""
    container: Any = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False) if isinstance(cfg, (DictConfig, ListConfig)) else cfg
    flat: dict[str, str] = {}

    def visit(node: Any, path: str) -> None:
        if isinstance(node, dict) and node:
            for key, value in node.items():
                visit(value, f"{path}.{key}" if path else str(key))
        else:
            flat[path[:MAX_KEY_LENGTH]] = _as_param_value(node)

    visit(container, prefix)
    return flat


def _as_param_value(value: Any) -> str:
    text = "null" if value is None else str(value)
    if len(text) > MAX_PARAM_LENGTH:
        text = text[: MAX_PARAM_LENGTH - 15] + "...[truncated]"
    return text
