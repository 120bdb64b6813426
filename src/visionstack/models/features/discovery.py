"""Find a model's multi-scale levels by running it -- no per-model tables.

:func:`discover_stages` runs a probe batch through any ``nn.Module`` with forward hooks (on the ``meta``
device, so even billion-parameter models cost nothing; :mod:`visionstack.models.features.probe`) and notes what
every module outputs:

* **Reduction.** The model runs at two input sizes that differ by 64 x 128 pixels. A module output whose
  height and width grow by ``64 / r`` and ``128 / r`` is a map of reduction (total stride) ``r`` -- exact
  even with unpadded convolutions (Inception). Outputs that do not grow with the input (global or adaptive
  pooling, vectors) are not maps. Models that accept a single input size (ViT) are probed once and the
  reduction is the ratio of image to map size.
* **Layout.** ``NCHW``, ``NHWC`` (Swin) or tokens ``NLC`` (ViT: ``[B, N, C]`` whose ``N`` is a grid plus a
  few prefix -- class / register -- tokens), told apart by which dimensions grow with the image.
* **Levels.** One per reduction. Starting at the root, a container is descended only when its direct
  children end at different reductions; per reduction the level is the outermost (shallowest) of those
  modules that output it, the last one in execution order at that depth. ResNet: ``relu`` (2), ``layer1``
  ... ``layer4`` (32); DenseNet: ``features.denseblock1`` (not the transition's inner conv); Swin: the root
  ``permute`` after the final norm (32); ViT: ``encoder`` (16, tokens).
* **Token blocks.** Where the deepest level is a token sequence (``NLC``: ViT), the transformer blocks
  are levels too, as timm gives them: the outermost container whose direct children (two or more, all of
  one class) each take and return a token sequence of that level's exact shape (a stack of shape-keeping
  blocks) gives one level per block, all at the same reduction, in execution order. The last block is
  represented by the deepest level itself (ViT: ``encoder.layers.encoder_layer_0`` ... ``_10``, then
  ``encoder`` = the last block plus the final norm), so the last level, and a classifier built on it,
  stay as they were. Maps (``NCHW`` / ``NHWC``: CNNs, Swin, MaxViT) keep one level per reduction.

Results are cached per ``cache_key`` (an architecture id the caller chooses) and probe size.
Levels are :class:`~visionstack.models.features.layout.Level` s; :mod:`~visionstack.models.features.layout`
turns their raw outputs into NCHW maps.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from torch import nn

from visionstack.models.features.layout import Level
from visionstack.models.features.probe import Record, classify, run_probe

__all__ = [
    "Discovery",
    "cached",
    "clear_cache",
    "discover_stages",
    "modules_through",
]

#: Probe pairs: two sizes whose difference (64, 128) is a multiple of every plausible total stride.
PROBE_PAIRS: tuple[tuple[tuple[int, int], tuple[int, int]], ...] = (
    ((64, 96), (128, 224)),
    ((128, 160), (192, 288)),
)
#: Square sizes tried, one probe each, for models that accept only their own input size.
SINGLE_SIZES: tuple[int, ...] = (224, 256, 384, 448, 512, 518)
_CACHE: dict[Hashable, Discovery] = {}


@dataclass(frozen=True)
class Discovery:
    """What a probe found: the levels (by increasing reduction) and the facts backbones need besides.

    Attributes:
        levels: one :class:`Level` per reduction (per block at a token model's deepest reduction).
        input_size: the (first) probe size ``(H, W)``.
        fixed_size: the model accepted only one input size (``input_size``).
        input_conv: path of the first ``Conv2d`` that reads the image (what ``in_chans`` adapts), or None.
        units: the modules the level rule chose among (the frontier of the descent, opened down to levels
            that lie inside a unit, e.g. token blocks), in execution order.
        end_order: module path -> position at which its (last) call finished; paths never called are absent.
    """

    levels: tuple[Level, ...]
    input_size: tuple[int, int]
    fixed_size: bool
    input_conv: str | None
    units: tuple[str, ...] = field(repr=False)
    end_order: dict[str, int] = field(repr=False)

    @property
    def body_units(self) -> list[str]:
        """The units that run up to the end of the last level (what a backbone keeps)."""
        end = self.end_order[self.levels[-1].name]
        return [u for u in self.units if self.end_order[u] <= end]


# -- choosing levels ----------------------------------------------------------------------------------
def _called_children(model: nn.Module, records: dict[str, Record]) -> dict[str, list[str]]:
    """Module path -> its direct children that ran; containers never called themselves (ModuleList) are
    see-through (their children count as their parent's)."""
    direct = {
        name: [f"{name}.{c}" if name else c for c, _ in m.named_children()]
        for name, m in model.named_modules()
    }

    def called(name: str) -> list[str]:
        return [n for c in direct[name] for n in ([c] if c in records else called(c))]

    return {name: called(name) for name in direct}


def _units(
    children: dict[str, list[str]], records: dict[str, Record], kinds: dict[str, dict | None]
) -> list[str]:
    """Module paths that can be levels, per the descent rule (see the module docstring)."""

    def reductions(name: str) -> set[int]:
        return {kinds[c]["reduction"] for c in children[name] if kinds.get(c)}

    out: list[str] = []

    def walk(name: str) -> None:
        for child in sorted(children[name], key=lambda c: records[c].end):
            if len(reductions(child)) > 1:
                walk(child)
            else:
                out.append(child)

    walk("")
    return out


def _choose(units: list[str], records: dict[str, Record], kinds: dict[str, dict | None]) -> list[Level]:
    best: dict[int, str] = {}
    for name in units:
        kind = kinds.get(name)
        if not kind:
            continue
        r = kind["reduction"]
        current = best.get(r)
        depth = name.count(".")
        if current is None or (depth, -records[name].end) < (current.count("."), -records[current].end):
            best[r] = name
    return [Level(name=best[r], **kinds[best[r]]) for r in sorted(best)]


def _token_blocks(
    model: nn.Module,
    children: dict[str, list[str]],
    records: dict[str, Record],
    kinds: dict[str, dict | None],
    last: Level,
) -> list[str]:
    """The blocks of a token model's deepest level (see the module docstring), or ``[]``: the children,
    all of one class, of the outermost container whose children each keep the level's token shape."""
    if last.layout != "NLC":
        return []
    types = {name: type(m) for name, m in model.named_modules()}
    shape, end = records[last.name].shape, records[last.name].end

    def keeps_shape(name: str) -> bool:
        kind, record = kinds.get(name), records[name]
        return bool(kind) and kind["reduction"] == last.reduction and record.in_shape == record.shape == shape

    found = [
        (name.count("."), records[kids[0]].start, name)
        for name, kids in children.items()
        if name
        and len(kids) >= 2
        and len({types[k] for k in kids}) == 1
        and all(map(keeps_shape, kids))
        and max(records[k].end for k in kids) <= end
    ]
    if not found:
        return []
    return sorted(children[min(found)[2]], key=lambda c: records[c].end)


def _open_units(
    units: list[str], names: Sequence[str], children: dict[str, list[str]], records: dict[str, Record]
) -> list[str]:
    """``units`` with every unit that strictly contains one of ``names`` replaced by its children (again
    and again), so each named module is a unit or lies on the way to none."""
    out: list[str] = []

    def add(unit: str) -> None:
        if any(n.startswith(unit + ".") for n in names):
            for child in sorted(children[unit], key=lambda c: records[c].end):
                add(child)
        else:
            out.append(unit)

    for unit in units:
        add(unit)
    return out


def _input_conv(model: nn.Module, records: dict[str, Record], in_chans: int) -> str | None:
    convs = [
        (records[n].start, n)
        for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and n in records and m.in_channels == in_chans
    ]
    return min(convs)[1] if convs else None


# -- public API ---------------------------------------------------------------------------------------
def discover_stages(
    model: nn.Module,
    input_size: int | Sequence[int] | None = None,
    *,
    in_chans: int = 3,
    cache_key: Hashable | None = None,
    level_names: Sequence[str] | None = None,
) -> Discovery:
    """Discover the levels of ``model`` (see the module docstring); cached when ``cache_key`` is given.

    Args:
        model: any module taking images ``[B, in_chans, H, W]``; it is not changed (its train / eval modes
            are restored) and nothing is computed: parameters are replaced by meta tensors for the probe.
        input_size: probe at this size first (``H`` or ``(H, W)``), e.g. a ViT's ``image_size``; by default
            pairs of small sizes, then the common square sizes.
        in_chans: channels of the probe images.
        cache_key: an id of the architecture (name + construction options); equal keys share a result.
        level_names: describe these modules as the levels instead of choosing them (e.g. the levels of the
            undilated model, for a model whose later stages are dilated).
    """
    size = None if input_size is None else _pair(input_size)
    key = None if cache_key is None else (cache_key, size, in_chans)
    if key is not None and key in _CACHE:
        return _CACHE[key]
    attempts: list[tuple[tuple[int, int], ...]] = []
    if size is not None:
        attempts += [(size, (size[0] + 64, size[1] + 128)), (size,)]
    attempts += [tuple(pair) for pair in PROBE_PAIRS] + [((s, s),) for s in SINGLE_SIZES]
    errors: list[str] = []
    real = any(t.device.type != "meta" for t in model.parameters())
    # meta tensors first (free); for real (zeros, small sizes first) if no meta attempt ran at all
    plan = [(sizes, True) for sizes in attempts] + [(sizes, False) for sizes in attempts if real]
    ran_on_meta = False
    for sizes, meta in plan:
        if not meta and ran_on_meta:
            break
        try:
            runs = [run_probe(model, s, in_chans, meta) for s in sizes]
        except Exception as err:  # the model rejects this size (too small, fixed size): try the next
            errors.append(f"{sizes}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            continue
        ran_on_meta = ran_on_meta or meta
        result = _analyse(model, runs, list(sizes), in_chans, level_names)
        if result.levels:
            if key is not None:
                _CACHE[key] = result
            return result
        errors.append(f"{sizes}: no module output reads as a feature map")
    raise ValueError(
        f"could not discover feature levels of {type(model).__name__}: " + "; ".join(errors[-3:])
    )


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    h, w = (int(v) for v in size)
    return (h, w)


def _analyse(
    model: nn.Module,
    runs: list[dict[str, Record]],
    sizes: list[tuple[int, int]],
    in_chans: int,
    level_names: Sequence[str] | None,
) -> Discovery:
    records = runs[0]
    names = [n for n in records if all(n in run and run[n].shape for run in runs)]
    kinds = {n: classify([run[n].shape for run in runs], sizes) for n in names}
    children = _called_children(model, records)
    units = _units(children, records, kinds)
    if level_names is None:
        levels = _choose(units, records, kinds)
        blocks = _token_blocks(model, children, records, kinds, levels[-1]) if levels else []
        if blocks:
            levels[-1:] = [Level(name=b, **kinds[b]) for b in blocks[:-1]] + levels[-1:]
    else:
        missing = [n for n in level_names if not kinds.get(n)]
        if missing:
            raise ValueError(f"{type(model).__name__}: no feature map comes out of {', '.join(missing)}")
        levels = [Level(name=n, **kinds[n]) for n in level_names]
    return Discovery(
        levels=tuple(levels),
        input_size=sizes[0],
        fixed_size=len(sizes) == 1,
        input_conv=_input_conv(model, records, in_chans),
        units=tuple(_open_units(units, [level.name for level in levels], children, records)),
        end_order={n: r.end for n, r in records.items()},
    )


def modules_through(discovery: Discovery, level_index: int) -> list[str]:
    """Paths of the modules whose (last) call ends no later than level ``level_index`` (for freezing)."""
    end = discovery.end_order[discovery.levels[level_index].name]
    return [n for n, e in discovery.end_order.items() if n and e <= end]


def cached(cache_key: Hashable, input_size: int | Sequence[int] | None = None, in_chans: int = 3):
    """The cached :class:`Discovery` for these arguments of :func:`discover_stages`, or None."""
    size = None if input_size is None else _pair(input_size)
    return _CACHE.get((cache_key, size, in_chans))


def clear_cache() -> None:
    """Forget every cached discovery."""
    _CACHE.clear()
