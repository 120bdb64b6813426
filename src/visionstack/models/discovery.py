"""Find a model's multi-scale levels by running it -- no per-model tables.

:func:`discover_stages` runs a probe batch through any ``nn.Module`` with forward hooks (on the ``meta``
device, so even billion-parameter models cost nothing) and notes what every module outputs:

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

Results are cached per ``cache_key`` (an architecture id the caller chooses) and probe size.
:func:`to_nchw` / :func:`from_nchw` convert a level's raw output to an NCHW map (plus prefix tokens) and
back; they are what backbone ``forward`` methods call.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from visionstack.models.features import Level, from_nchw, to_nchw, token_grid

__all__ = [
    "Discovery",
    "Level",
    "cached",
    "clear_cache",
    "discover_stages",
    "from_nchw",
    "modules_through",
    "to_nchw",
    "token_grid",
]

#: Probe pairs: two sizes whose difference (64, 128) is a multiple of every plausible total stride.
PROBE_PAIRS: tuple[tuple[tuple[int, int], tuple[int, int]], ...] = (
    ((64, 96), (128, 224)),
    ((128, 160), (192, 288)),
)
#: Square sizes tried, one probe each, for models that accept only their own input size.
SINGLE_SIZES: tuple[int, ...] = (224, 256, 384, 448, 512, 518)
MAX_PREFIX_TOKENS = 16
_BATCH = 2
_CACHE: dict[Hashable, Discovery] = {}


@dataclass(frozen=True)
class Discovery:
    """What a probe found: the levels (by increasing reduction) and the facts backbones need besides.

    Attributes:
        levels: one :class:`Level` per reduction.
        input_size: the (first) probe size ``(H, W)``.
        fixed_size: the model accepted only one input size (``input_size``).
        input_conv: path of the first ``Conv2d`` that reads the image (what ``in_chans`` adapts), or None.
        units: the modules the level rule chose among (the frontier of the descent), in execution order.
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


@dataclass
class _Record:
    start: int
    end: int = -1
    shape: tuple[int, ...] = ()
    in_channels: int | None = None


# -- probing ----------------------------------------------------------------------------------------
def _first_tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


def _run(model: nn.Module, size: tuple[int, int], in_chans: int, meta: bool = True) -> dict[str, _Record]:
    """One probe forward pass in eval mode (on meta tensors, or for real on zeros); module path -> what its
    last call returned."""
    records: dict[str, _Record] = {}
    counter = [0]

    def pre_hook(name: str):
        def hook(module: nn.Module, args: Any) -> None:
            counter[0] += 1
            if name not in records:
                first = _first_tensor(args)
                records[name] = _Record(
                    start=counter[0], in_channels=None if first is None else first.shape[1]
                )

        return hook

    def post_hook(name: str):
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            counter[0] += 1
            record = records[name]
            record.end = counter[0]
            out = _first_tensor(output)
            record.shape = tuple(out.shape) if out is not None else ()

        return hook

    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(pre_hook(name)))
        handles.append(module.register_forward_hook(post_hook(name)))
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            if meta:
                _meta_forward(model, torch.zeros(_BATCH, in_chans, *size, device="meta"))
            else:
                device = next((t.device for t in model.parameters()), torch.device("cpu"))
                model(torch.zeros(_BATCH, in_chans, *size, device=device))
    finally:
        for handle in handles:
            handle.remove()
        for module, mode in modes.items():
            module.training = mode
    return records


def _meta_forward(model: nn.Module, x: torch.Tensor) -> Any:
    """Run ``model`` on a meta tensor with meta stand-ins for its parameters and buffers (no compute)."""
    tensors = {
        n: torch.empty_like(t, device="meta") for n, t in model.named_parameters(remove_duplicate=False)
    }
    tensors.update(
        {n: torch.empty_like(t, device="meta") for n, t in model.named_buffers(remove_duplicate=False)}
    )
    return torch.func.functional_call(model, tensors, (x,), strict=False, tie_weights=True)


# -- reading one output -------------------------------------------------------------------------------
def _stride(delta_in: int, delta_out: int) -> float | None:
    return delta_in / delta_out if delta_out > 0 else None


def _same(a: float, b: float) -> bool:
    return abs(a - b) <= 0.1 * max(a, b)


def _reduction(value: float) -> int:
    """An integral reduction: exact ratios stay (ViT-H/14: 14), others snap to the nearest power of two."""
    if abs(value - round(value)) < 1e-6:
        return max(1, int(round(value)))
    return 2 ** max(0, round(math.log2(value)))


def _token_level(ns: Sequence[int], sizes: Sequence[tuple[int, int]]) -> tuple[int, int, str] | None:
    """(reduction, prefix tokens, rounding) that explain token counts ``ns`` at image ``sizes``."""
    candidates = [2**k for k in range(7)] + [r for r in range(3, 65) if r & (r - 1)]
    for r in candidates:
        for rounding in ("floor", "ceil"):
            prefixes = {n - math.prod(token_grid(n, s, r, rounding)) for n, s in zip(ns, sizes)}
            if len(prefixes) != 1 or not 0 <= (p := prefixes.pop()) <= MAX_PREFIX_TOKENS:
                continue
            if len(ns) > 1 or math.prod(token_grid(0, sizes[0], r, rounding)) > 1:  # one probe: not 1x1
                return r, p, rounding
    return None


def _classify(shapes: Sequence[tuple[int, ...]], sizes: Sequence[tuple[int, int]]) -> dict[str, Any] | None:
    """Layout, channels and reduction of one module's outputs at the probe sizes (None: not a map)."""
    first = shapes[0]
    if not first or first[0] != _BATCH or any(len(s) != len(first) for s in shapes):
        return None
    if len(first) == 4:
        for layout, c_dim, h_dim in (("NCHW", 1, 2), ("NHWC", 3, 1)):
            if any(s[c_dim] != first[c_dim] for s in shapes):
                continue
            reduction = _map_reduction([s[h_dim : h_dim + 2] for s in shapes], sizes)
            if reduction is not None:
                return {"layout": layout, "channels": first[c_dim], "reduction": reduction}
        return None
    if len(first) == 3 and all(s[2] == first[2] for s in shapes):
        found = _token_level([s[1] for s in shapes], sizes)
        if found is not None:
            r, p, rounding = found
            return {
                "layout": "NLC",
                "channels": first[2],
                "reduction": r,
                "num_prefix_tokens": p,
                "grid_rounding": rounding,
            }
    return None


def _map_reduction(hws: Sequence[Sequence[int]], sizes: Sequence[tuple[int, int]]) -> int | None:
    if len(sizes) == 2:
        r_h = _stride(sizes[1][0] - sizes[0][0], hws[1][0] - hws[0][0])
        r_w = _stride(sizes[1][1] - sizes[0][1], hws[1][1] - hws[0][1])
        if r_h is None or r_w is None or not _same(r_h, r_w):
            return None
        # the map must also be about image / r (not e.g. an upsampled or cropped tensor)
        h, w = hws[0]
        if not (sizes[0][0] / (2 * r_h) <= h <= sizes[0][0] / r_h + 2):
            return None
        return _reduction((r_h + r_w) / 2)
    (h, w), (img_h, img_w) = hws[0], sizes[0]
    if h < 1 or w < 1 or (h == 1 and w == 1) or not _same(img_h / h, img_w / w):
        return None  # a 1x1 output of a large image is pooled, not a map
    return _reduction(img_h / h) if img_h / h >= 1 else None


# -- choosing levels ----------------------------------------------------------------------------------
def _units(model: nn.Module, records: dict[str, _Record], kinds: dict[str, dict | None]) -> list[str]:
    """Module paths that can be levels, per the descent rule (see the module docstring)."""
    direct = {
        name: [f"{name}.{c}" if name else c for c, _ in m.named_children()]
        for name, m in model.named_modules()
    }

    def called(name: str) -> list[str]:  # containers never called themselves (ModuleList) are see-through
        return [n for c in direct[name] for n in ([c] if c in records else called(c))]

    children = {name: called(name) for name in direct}

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


def _choose(units: list[str], records: dict[str, _Record], kinds: dict[str, dict | None]) -> list[Level]:
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


def _input_conv(model: nn.Module, records: dict[str, _Record], in_chans: int) -> str | None:
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
            runs = [_run(model, s, in_chans, meta) for s in sizes]
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
    runs: list[dict[str, _Record]],
    sizes: list[tuple[int, int]],
    in_chans: int,
    level_names: Sequence[str] | None,
) -> Discovery:
    records = runs[0]
    names = [n for n in records if all(n in run and run[n].shape for run in runs)]
    kinds = {n: _classify([run[n].shape for run in runs], sizes) for n in names}
    units = _units(model, records, kinds)
    if level_names is None:
        levels = _choose(units, records, kinds)
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
        units=tuple(units),
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
