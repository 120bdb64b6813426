"""Registry: names, aliases, insensitive lookup, suggestions, glob listing, closed lookups."""

from __future__ import annotations

import pytest

import visionstack as vs
from visionstack.core.registry import Registry, normalize
from visionstack.errors import UnknownNameError


def make_registry() -> Registry:
    reg = Registry("widget")

    @reg.register("global_avg_pool", aliases=("GlobalAveragePooling", "gap"))
    class Pool:
        pass

    @reg.register()
    def max_pool():
        return "max"

    return reg


def test_lookup_is_case_and_separator_insensitive() -> None:
    reg = make_registry()
    target = reg.get("global_avg_pool")
    for name in (
        "GlobalAvgPool",
        "global-avg-pool",
        "GLOBAL AVG POOL",
        "global.avg.pool",
        "gap",
        "GlobalAveragePooling",
        "global_average_pooling",
    ):
        assert reg.get(name) is target
    assert reg.get("MaxPool")() == "max"
    assert normalize("Global_Avg-Pool") == "globalavgpool"


def test_unknown_name_names_kind_suggests_and_says_how_to_list() -> None:
    reg = make_registry()
    with pytest.raises(UnknownNameError) as info:
        reg.get("global_avg_poool")
    message = str(info.value)
    assert "unknown widget 'global_avg_poool'" in message
    assert "global_avg_pool" in message.split("Did you mean:")[1]
    assert "visionstack list widget" in message
    assert isinstance(info.value, KeyError)  # also a KeyError for callers that expect one


def test_duplicate_registration_is_refused_unless_forced() -> None:
    reg = make_registry()
    with pytest.raises(ValueError, match="already registered"):
        reg.register("gap")(object())
    other = object()
    reg.register("gap2", aliases=("gap",), force=True)(other)
    assert reg.get("gap") is other


def test_glob_listing_and_aliases() -> None:
    reg = make_registry()
    assert reg.list("*pool") == ["global_avg_pool", "max_pool"]
    assert reg.list("GLOBAL*") == ["global_avg_pool"]
    assert "gap" in reg.list("*", include_aliases=True)
    assert reg.aliases_of("global_avg_pool") == ["GlobalAveragePooling", "gap"]


def test_resolver_and_lister_for_open_families() -> None:
    reg = make_registry()
    reg.register_family(lambda: ["zoo/a", "zoo/b"])(
        lambda name: (lambda: name) if name.startswith("zoo/") else None
    )
    assert reg.get("zoo/anything")() == "zoo/anything"
    assert reg.list("zoo/*") == ["zoo/a", "zoo/b"]


def test_no_import_paths_are_resolved() -> None:
    """A dotted path never imports code: it is just an unknown name."""
    with pytest.raises(UnknownNameError):
        vs.registry_for("loss").get("torch.nn.CrossEntropyLoss")
    with pytest.raises(UnknownNameError):
        vs.registry_for("head").get("os.system")


def test_every_kind_has_a_registry_and_public_registration() -> None:
    kinds = [
        "backbone",
        "encoder",
        "neck",
        "head",
        "loss",
        "method",
        "dataset",
        "transform",
        "optimizer",
        "scheduler",
        "metric",
    ]
    for kind in kinds:
        assert vs.registry_for(kind).kind == kind
        assert vs.registry_for(kind + "s").kind == kind
    with pytest.raises(UnknownNameError, match="kinds are"):
        vs.registry_for("widget")

    class MyHead:
        pass

    vs.register("head", "my_test_head_xyz", aliases=("MyTestHeadXYZ",))(MyHead)
    assert vs.HEADS.get("my-test-head-xyz") is MyHead
    assert "my_test_head_xyz" in vs.list_models("my_test*", kind="head")
