"""Property-based: mutated valid configs never raise anything but ConfigError."""

from __future__ import annotations

import copy

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from visionstack.core.config import load_config
from visionstack.errors import ConfigError
from visionstack.models.build import build_model

VALID = {
    "model": {
        "type": "image_classifier",
        "backbone": {"type": "test_tiny", "widths": [4, 6, 8], "out_indices": [-1]},
        "encoder": {"type": "gem", "p": 3.0},
        "head": {"type": "stacked_linear", "mid_channels": [8], "dropout": 0.1},
        "loss": [
            {"type": "cross_entropy", "label_smoothing": 0.1},
            {"type": "focal", "gamma": 2.0, "weight": 0.5},
        ],
        "num_classes": 3,
    },
    "train": {"epochs": 1, "seed": 0},
}

values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 1000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.lists(st.integers(-2, 8), max_size=4),
    st.dictionaries(st.text(max_size=6), st.integers(), max_size=2),
)


def paths(node, prefix=()):
    if isinstance(node, dict):
        for k, v in node.items():
            yield (*prefix, k)
            yield from paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield (*prefix, i)
            yield from paths(v, (*prefix, i))


ALL_PATHS = list(paths(VALID))


def mutate(cfg: dict, path: tuple, action: str, value, new_key: str) -> dict:
    cfg = copy.deepcopy(cfg)
    parent = cfg
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if action == "set":
        parent[last] = value
    elif action == "delete":
        if isinstance(parent, list):
            parent.pop(last)
        else:
            del parent[last]
    elif action == "rename" and isinstance(parent, dict):
        parent[new_key or "x"] = parent.pop(last)
    elif action == "add" and isinstance(parent[last], dict):
        parent[last][new_key or "x"] = value
    return cfg


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(ALL_PATHS),
    st.sampled_from(["set", "delete", "rename", "add"]),
    values,
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", max_size=10),
)
def test_mutated_configs_raise_only_config_errors(path, action, value, new_key) -> None:
    cfg = mutate(VALID, path, action, value, new_key)
    try:
        resolved = load_config(cfg)
        if "model" not in resolved:
            return
        model = build_model(resolved["model"])
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, 16, 16))
    except ConfigError:
        pass


def test_the_unmutated_config_is_valid() -> None:
    model = build_model(load_config(VALID)["model"])
    assert model(torch.zeros(2, 3, 16, 16)).shape == (2, 3)
