"""Fine-grained methods, one module each; importing this package registers them in ``METHODS``.

``baseline`` (backbone + pooling + linear head, mixup / cutmix options), ``mcl`` (mutual-channel loss),
``pmg`` (progressive multi-granularity jigsaw training), ``pmg_v2`` (block convolution + category
consistency) and ``recognizer`` (embedding model with a cosine classifier).
"""

from visionstack.models.methods import baseline, mcl, pmg, pmg_v2, recognizer  # noqa: F401
