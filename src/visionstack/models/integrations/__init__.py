"""Adapters to other libraries' model stacks (torchvision detection: ``detection``)."""
