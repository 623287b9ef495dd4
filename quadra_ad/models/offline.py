"""Build models whose constructors always download weights, with random weights instead.

STFPM, U-Flow, SuperSimpleNet and CS-Flow have no ``pre_trained`` switch: they ask timm or
torchvision for ImageNet weights unconditionally. With ``backbone.pre_trained=false`` quadra_ad
builds them inside :func:`random_backbone_weights`, which makes those requests return nothing
for the duration of the constructor only. Random weights are for smoke tests, benchmarks and
offline demos; real use wants the pretrained ones.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def random_backbone_weights() -> Iterator[None]:
    """Within the block, timm and torchvision models are created without pretrained weights."""
    import timm
    from torchvision.models import _api as torchvision_weights

    create_model = timm.create_model
    get_state_dict = torchvision_weights.WeightsEnum.get_state_dict
    load_state_dict = torch.nn.Module.load_state_dict
    skipped = object()

    def create_without_weights(*args, **kwargs):
        kwargs["pretrained"] = False
        return create_model(*args, **kwargs)

    def no_state_dict(self, *args, **kwargs):
        return skipped

    def load_unless_skipped(self, state_dict, *args, **kwargs):
        if state_dict is skipped:
            return None
        return load_state_dict(self, state_dict, *args, **kwargs)

    timm.create_model = create_without_weights
    torchvision_weights.WeightsEnum.get_state_dict = no_state_dict
    torch.nn.Module.load_state_dict = load_unless_skipped
    try:
        yield
    finally:
        timm.create_model = create_model
        torchvision_weights.WeightsEnum.get_state_dict = get_state_dict
        torch.nn.Module.load_state_dict = load_state_dict
