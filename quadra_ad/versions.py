"""Versions of the packages that shape a run and its exported model (model card, run tags)."""

from importlib.metadata import PackageNotFoundError, version

PACKAGES = ("quadra_ad", "anomalib", "torch", "torchvision", "lightning", "timm", "onnx", "onnxruntime", "openvino")


def package_versions() -> dict[str, str]:
    """``{package: version}`` for the installed ones among :data:`PACKAGES`."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return versions
