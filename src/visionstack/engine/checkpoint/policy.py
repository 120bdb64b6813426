"""Which checkpoints a run keeps: the last N, the best K by a metric, ``best.safetensors``, ``last.safetensors``.

``train.checkpoint`` config: ``{keep_last: 2, keep_best: 1, metric: val/top1, mode: max, interval: 1,
every_n_steps: null}``. ``interval``: save at the end of every N-th epoch (and always after the last);
``every_n_steps``: also save mid-epoch every N global steps (what makes a kill mid-epoch resumable without
losing the epoch). ``keep_last`` counts every resumable checkpoint; one that is among the ``keep_best``
best by ``metric`` (``mode``: ``max``, or ``min`` -- the default for metrics ending in ``loss``) is not
rotated out. ``best.safetensors`` always holds the best weights so far (EMA weights when ``metric`` starts
with ``val_ema/``). Layout and file contents: :mod:`visionstack.engine.checkpoint.format`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from visionstack.core.build import check_keys
from visionstack.core.io import save_weights
from visionstack.engine.checkpoint.format import (
    WEIGHTS_SUFFIX,
    find_checkpoints,
    remove_checkpoint,
    save_checkpoint,
)
from visionstack.errors import ConfigError

_KEYS = ("keep_last", "keep_best", "metric", "mode", "interval", "every_n_steps")


class Checkpointer:
    """Writes checkpoints into ``<work_dir>/checkpoints`` and rotates them (only where ``enabled``: rank 0)."""

    def __init__(
        self, work_dir: str | Path, cfg: Mapping[str, Any] | None = None, enabled: bool = True
    ) -> None:
        cfg = dict(cfg or {})
        check_keys(cfg, _KEYS, "train.checkpoint")
        self.work_dir = Path(work_dir)
        self.folder = self.work_dir / "checkpoints"
        self.enabled = enabled
        self.keep_last = self._count(cfg.get("keep_last", 2), "keep_last", minimum=1)
        self.keep_best = self._count(cfg.get("keep_best", 1), "keep_best", minimum=0)
        self.interval = self._count(cfg.get("interval", 1), "interval", minimum=1)
        steps = cfg.get("every_n_steps")
        self.every_n_steps = None if steps is None else self._count(steps, "every_n_steps", minimum=1)
        self.metric = str(cfg.get("metric", "val/top1"))
        self.mode = cfg.get("mode") or ("min" if self.metric.endswith("loss") else "max")
        if self.mode not in ("max", "min"):
            raise ConfigError("train.checkpoint.mode", f"expected 'max' or 'min', got {self.mode!r}")
        self.best: list[list[Any]] = []  # [[value, checkpoint name], ...], best first
        self.last_saved: Path | None = None

    @staticmethod
    def _count(value: Any, key: str, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"train.checkpoint.{key}", f"expected an integer >= {minimum}, got {value!r}")
        return value

    @property
    def best_weights(self) -> Path:
        return self.work_dir / f"best{WEIGHTS_SUFFIX}"

    @property
    def last_weights(self) -> Path:
        return self.work_dir / f"last{WEIGHTS_SUFFIX}"

    def uses_ema(self) -> bool:
        return self.metric.startswith("val_ema/")

    def _better(self, a: float, b: float) -> bool:
        return a > b if self.mode == "max" else a < b

    def consider(self, name: str, metrics: Mapping[str, float]) -> bool:
        """Enter checkpoint ``name`` with its evaluation in the best list; returns whether it is the new best."""
        value = metrics.get(self.metric)
        if value is None or not math.isfinite(float(value)):
            return False
        value = float(value)
        is_best = not self.best or self._better(value, float(self.best[0][0]))
        self.best = [e for e in self.best if e[1] != name] + [[value, name]]
        self.best.sort(key=lambda e: -float(e[0]) if self.mode == "max" else float(e[0]))
        self.best = self.best[: max(self.keep_best, 1)]
        return is_best

    def save(
        self,
        name: str,
        state_dict: Mapping[str, torch.Tensor],
        metadata: Mapping[str, str],
        state: Mapping[str, Any],
    ) -> Path | None:
        """Write checkpoint ``name`` (weights, then training state) and rotate old ones."""
        if not self.enabled:
            return None
        path = save_checkpoint(self.folder, name, state_dict, metadata, state)
        self.last_saved = path
        self.prune()
        return path

    def write_weights(
        self, path: Path, state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
    ) -> None:
        """An inference weights file (``best`` / ``last``), atomically."""
        if self.enabled:
            save_weights(state_dict, path, metadata)

    def prune(self) -> None:
        """Delete checkpoints beyond the newest ``keep_last`` unless they are among the ``keep_best``."""
        protected = {e[1] for e in self.best[: self.keep_best]}
        for i, weights in enumerate(find_checkpoints(self.folder)):
            if i >= self.keep_last and weights.name[: -len(WEIGHTS_SUFFIX)] not in protected:
                remove_checkpoint(weights)

    def state_dict(self) -> dict[str, Any]:
        return {"best": [list(e) for e in self.best]}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = [[float(v), str(n)] for v, n in state.get("best", [])]
