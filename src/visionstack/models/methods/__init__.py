"""Whole models, one module each; importing this package registers them in ``METHODS``.

``image_classifier`` (``visionstack.models.methods.classifier``), ``baseline`` (with mixup / cutmix options),
``mcl`` (mutual-channel loss), ``pmg`` (progressive multi-granularity jigsaw training), ``pmg_v2`` (block
convolution + category consistency) and ``recognizer`` (embedding model with a cosine classifier). The
contract every method follows is :class:`visionstack.models.methods.base.Method`.
"""

from visionstack.models.methods import baseline, classifier, mcl, pmg, pmg_v2, recognizer  # noqa: F401
