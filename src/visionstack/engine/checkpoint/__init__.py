"""Checkpoints: the on-disk format (``format``) and which ones a run keeps (``policy``)."""
