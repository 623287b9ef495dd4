"""Export: write a trained model's graph (TorchScript, ONNX) and its ``model.json`` card.

Only writing lives here; loading and running an exported model is :mod:`quadra_ad.deploy`.
"""
