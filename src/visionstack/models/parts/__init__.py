"""Parts a model is composed of, one module per kind; importing this package registers them.

``encoders`` (pooling), ``necks``, ``heads``, ``losses`` and ``native`` (a zoo model's own pooling path and
classifier). Their base classes and the channel-wiring rules are in ``base``.
"""

from visionstack.models.parts import encoders, heads, losses, native, necks  # noqa: F401
