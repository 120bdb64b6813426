"""Backbones, one module per family; importing this package registers them in ``BACKBONES``.

``torchvision`` (every torchvision classifier under its own name), ``timm`` (every timm model as
``timm/<name>``, resolved on demand) and ``resnet_bc`` (PMG-V2's block-convolution ResNets). The contract
every backbone follows is :class:`visionstack.models.backbones.base.Backbone`.
"""

from visionstack.models.backbones import resnet_bc, timm, torchvision  # noqa: F401
