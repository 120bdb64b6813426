"""Models: backbones, encoders, necks, heads, losses, whole methods, weights and feature-level discovery.

Subpackages register their parts when the registries first look them up; this package stays import-light.
"""
