"""Pretrained weights: reading files (``io``), matching their names to a model (``mapping``), tags of the
torchvision / timm caches (``tags``) and loading with a report (``load``)."""
