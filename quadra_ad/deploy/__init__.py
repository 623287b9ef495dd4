"""Deployment: load an exported graph with its ``model.json`` and run it — :class:`Predictor`.

``model_card`` is the ``model.json`` format (written by :mod:`quadra_ad.export`, read here),
``images`` reads image files, ``preprocess`` prepares images as the training did (NumPy),
``runners`` open a TorchScript or ONNX file, ``loader`` loads one and checks it against its
card, ``predictor`` puts them together. Nothing here imports the training stack (anomalib,
Lightning, Hydra) or the tasks, and nothing imports torch unless a TorchScript graph is run.
"""

__all__ = ["Prediction", "Predictor"]


def __getattr__(name: str):
    # Lazy: the exporter imports deploy.model_card without paying for OpenCV and ONNX Runtime.
    if name in __all__:
        from quadra_ad.deploy import predictor

        return getattr(predictor, name)
    raise AttributeError(name)
