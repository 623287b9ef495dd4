"""Deployment: load an exported graph with its ``model.json`` and run it.

``model_card`` is the ``model.json`` format (written by :mod:`quadra_ad.export`, read here),
``runners`` open a TorchScript or ONNX file, ``loader`` loads one for inference and checks it
against its card. Nothing here imports the training stack (anomalib, Lightning) or the tasks.
"""
