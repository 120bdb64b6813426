"""The Trainer: one loop for every model; ``model.train_step(batch, optim)`` does the method's update.

``Trainer(cfg).fit()`` trains from a resolved run config (:func:`visionstack.core.config.load_config`). The
``train`` section: ``epochs`` or ``steps`` (batches), ``optimizer``, ``scheduler``, ``amp``, ``grad_accum``,
``clip_grad``, ``ema``, ``channels_last``, ``compile``, ``mixup`` / ``cutmix`` / ``mix_prob``, ``seed``,
``deterministic``, ``checkpoint``, ``nonfinite`` (``stop`` | ``skip``), ``log_interval``, ``progress``,
``device``, ``sync_bn``, ``max_steps_per_epoch``. See docs/training.md.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from visionstack.core.schema import validate_config
from visionstack.engine import distributed
from visionstack.engine.checkpoint.format import (
    checkpoint_name,
    latest_checkpoint,
    load_checkpoint,
    weights_metadata,
)
from visionstack.engine.checkpoint.policy import Checkpointer
from visionstack.engine.ema import build_ema
from visionstack.engine.evaluation import Evaluator
from visionstack.engine.metrics import RunningSums
from visionstack.engine.optim import build_optim_wrapper
from visionstack.engine.optim_wrapper import NonFiniteLossError
from visionstack.engine.run_log import EpochProgress, RunLogger, progress_enabled
from visionstack.engine.schedulers import build_scheduler
from visionstack.engine.seeding import capture_rng, restore_rng, seed_everything, set_deterministic
from visionstack.engine.setup import (
    build_data,
    eval_interval,
    library_versions,
    model_config_with_classes,
    positive_int,
    resolve_work_dir,
    run_length,
    set_transforms,
    write_run_files,
)
from visionstack.errors import CheckpointError
from visionstack.models.methods.mixing import build_batch_mixer


def scalar_values(logs: Mapping[str, Any]) -> dict[str, float]:
    """The one-element tensors of ``logs`` as floats, read from the device in one transfer."""
    keys = [k for k, v in logs.items() if isinstance(v, torch.Tensor) and v.numel() == 1]
    if not keys:
        return {}
    stacked = torch.stack([logs[k].detach().reshape(()).float() for k in keys])
    return dict(zip(keys, stacked.tolist()))


class Trainer:
    """Builds data, model, optimizer, scheduler, EMA, logger and checkpointer from ``cfg``; :meth:`fit` trains.

    Args:
        cfg: a resolved run config (sections ``model``, ``data``, ``train``, ``eval``, ``work_dir``).
        work_dir: the run directory (default: ``cfg["work_dir"]``, else ``runs/<config stem>``).
        resume: ``None``, ``"auto"`` (the newest valid checkpoint of the run, if any) or a checkpoint path.
        device: ``cpu``, ``cuda``, ``cuda:1``... (default: ``train.device``, else CUDA when available).
    """

    def __init__(
        self,
        cfg: Mapping[str, Any],
        work_dir: str | Path | None = None,
        resume: str | Path | None = None,
        device: str | None = None,
    ) -> None:
        validate_config(cfg)
        self.cfg = json.loads(json.dumps(dict(cfg), default=str))
        self.train_cfg = dict(self.cfg.get("train") or {})
        self.eval_cfg = dict(self.cfg.get("eval") or {})
        data_cfg = dict(self.cfg.get("data") or {})
        tc = self.train_cfg
        self.device = distributed.init_distributed(device or tc.get("device"))
        self.rank, self.world = distributed.get_rank(), distributed.get_world_size()
        self.is_main = self.rank == 0
        self.seed = int(tc.get("seed", 0))
        set_deterministic(bool(tc.get("deterministic", False)))
        seed_everything(self.seed + self.rank)
        self.work_dir = resolve_work_dir(self.cfg, work_dir)
        self.cfg["work_dir"] = str(self.work_dir)

        self.data = build_data(data_cfg, self.seed, self.world > 1)
        self.class_names = self.data.class_names
        self.cfg["model"] = model_config_with_classes(self.cfg.get("model") or {}, len(self.class_names))
        from visionstack.models.build import build_model

        self.model = build_model(self.cfg["model"])
        self.num_classes = int(getattr(self.model, "num_classes", len(self.class_names)))
        set_transforms(self.data, data_cfg, self.model)
        self.channels_last = bool(tc.get("channels_last", False))
        self.model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        if self.world > 1 and self.device.type == "cuda" and tc.get("sync_bn", True):
            self.model = distributed.convert_sync_bn(self.model)
        self.ema = build_ema(self.model, tc.get("ema"))
        self.optim = build_optim_wrapper(self.model, tc, self.device.type)
        self.mixer = build_batch_mixer(
            self.num_classes, tc.get("mixup"), tc.get("cutmix"), tc.get("mix_prob")
        )

        self.epoch_len = len(self.data.train_loader)
        if tc.get("max_steps_per_epoch") is not None:
            self.epoch_len = min(
                self.epoch_len, positive_int(tc["max_steps_per_epoch"], "train.max_steps_per_epoch")
            )
        self.total_steps, self.epochs, self.run_unit = run_length(tc, self.epoch_len)
        steps_per_epoch = max(1, self.epoch_len // self.optim.grad_accum)
        self.scheduler = build_scheduler(
            self.optim.optimizer,
            tc.get("scheduler"),
            steps_per_epoch,
            self.total_steps / self.epoch_len,
            self.run_unit,
        )
        self.checkpointer = Checkpointer(self.work_dir, tc.get("checkpoint"), enabled=self.is_main)
        self.log_interval = positive_int(tc.get("log_interval", 10), "train.log_interval")
        self.eval_every, self.eval_unit = eval_interval(
            self.eval_cfg.get("interval", {"epochs": 1}), self.run_unit
        )
        self.topk = self.eval_cfg.get("topk", [1, 5])
        self.topk = [self.topk] if isinstance(self.topk, int) else list(self.topk)
        self.evaluator = None
        if self.data.val_loader is not None:
            self.evaluator = Evaluator(
                self.data.val_loader,
                self.num_classes,
                self.topk,
                self.device,
                tc.get("amp"),
                self.channels_last,
            )
        self.epoch, self.batches_done, self.global_step = 0, 0, 0
        self.epoch_sums: dict[str, list[float]] = {}
        self.metrics: dict[str, float] = {}
        self.versions = library_versions()
        self._rng_to_restore: dict[str, Any] | None = None
        self.resumed_from = self._resume(resume) if resume else None
        if self.world > 1:
            self.optim.ddp = distributed.wrap_ddp(
                self.model, self.device, bool(tc.get("find_unused_parameters", True))
            )
        if tc.get("compile"):
            for child in self.model.children():
                child.compile()
        self.logger = RunLogger(
            self.work_dir, enabled=self.is_main, resume_step=self.global_step if self.resumed_from else None
        )
        if self.is_main:
            write_run_files(self.work_dir, self.cfg, self.versions)
        if self._rng_to_restore is not None:  # last: nothing after this may draw random numbers
            restore_rng(self._rng_to_restore)

    # -- setup helpers ---------------------------------------------------------------------------------------
    def _resume(self, resume: str | Path) -> Path | None:
        if str(resume) == "auto":
            found = None
            if self.is_main:
                found, _ = latest_checkpoint(self.checkpointer.folder)
            found = distributed.broadcast_object(None if found is None else str(found))
            if found is None:
                if self.is_main:
                    print(f"no checkpoint in {self.checkpointer.folder}: starting from scratch")
                return None
            path = Path(found)
        else:
            path = Path(resume)
        ckpt = load_checkpoint(path)
        state = ckpt["state"]
        if state is None:
            raise CheckpointError(
                f"{ckpt['path']}: no training state beside the weights; cannot resume from it"
            )
        if ckpt["class_names"] is not None and list(ckpt["class_names"]) != self.class_names:
            raise CheckpointError(f"{ckpt['path']}: the checkpoint's classes differ from the training set's")
        self.model.load_state_dict(ckpt["state_dict"])
        self.optim.load_state_dict(state["optim"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.load_state_dict(state["ema"])
        self.checkpointer.load_state_dict(state)
        self.epoch, self.batches_done = int(state["epoch"]), int(state["batches_done"])
        self.global_step = int(state["global_step"])
        self.epoch_sums = {k: [float(s), float(n)] for k, (s, n) in state.get("epoch_sums", {}).items()}
        self.metrics = dict(state.get("metrics", {}))
        rngs = state["rng"]
        self._rng_to_restore = rngs[self.rank] if len(rngs) == self.world else rngs[0]
        if self.is_main:
            print(
                f"resumed from {ckpt['path']} (epoch {self.epoch + 1}, {self.batches_done} batches done, "
                f"step {self.global_step})"
            )
        return Path(ckpt["path"])

    # -- checkpoints -----------------------------------------------------------------------------------------
    def _metadata(self, weights: str = "model") -> dict[str, str]:
        return weights_metadata(
            self.cfg,
            self.class_names,
            epoch=self.epoch,
            step=self.global_step,
            metrics=self.metrics,
            versions=self.versions,
            weights=weights,
        )

    def _state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "batches_done": self.batches_done,
            "global_step": self.global_step,
            "optim": self.optim.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "rng": distributed.all_gather_object(capture_rng()),
            "epoch_sums": {k: list(v) for k, v in self.epoch_sums.items()},
            "metrics": dict(self.metrics),
            "class_names": list(self.class_names),
            "config": json.dumps(self.cfg),
            "versions": dict(self.versions),
            **self.checkpointer.state_dict(),
        }

    def save_checkpoint(self) -> Path | None:
        """Write a resumable checkpoint of the current position (rank 0 writes; every rank must call)."""
        self.check_finite()
        state = self._state()  # collective: every rank contributes its RNG state
        name = checkpoint_name(self.epoch if self.batches_done == 0 else self.epoch + 1, self.batches_done)
        return self.checkpointer.save(name, self.model.state_dict(), self._metadata(), state)

    # -- the loop --------------------------------------------------------------------------------------------
    def _to_device(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Tensors to the device, except ``index`` (bookkeeping: a host-to-device copy of pageable memory per
        step would stall the device queue for nothing)."""
        device = self.device
        out = {
            k: v.to(device, non_blocking=True)
            if isinstance(v, torch.Tensor) and k != "index" and v.device != device
            else v
            for k, v in batch.items()
        }
        if self.channels_last:
            out["image"] = out["image"].contiguous(memory_format=torch.channels_last)
        return out

    def step(self, batch: Mapping[str, Any], sums: RunningSums) -> Mapping[str, Any]:
        """One training batch: device, mixing, ``model.train_step``, counters, scheduler, EMA; the logs are
        added to ``sums`` (on the device: no host sync)."""
        batch = self._to_device(batch)
        if self.mixer is not None:
            images, labels = self.mixer(batch["image"], batch["label"])
            batch = {**batch, "image": images, "label": labels}
        skipped = self.optim.skipped
        with self._nonfinite_context():
            logs = self.model.train_step(batch, self.optim)
        self.global_step += 1
        self.batches_done += 1
        if self.optim.window_done:
            steps = self.global_step // self.optim.grad_accum
            self.scheduler.step_update(steps)
            if self.optim.stepped and self.ema is not None:
                self.ema.update(self.model, steps)
        if self.optim.skipped != skipped:
            self.logger.print(f"[yellow]skipped step {self.global_step}: non-finite loss[/]")
        sums.add(logs)
        return logs

    @contextlib.contextmanager
    def _nonfinite_context(self) -> Iterator[None]:
        """Turn the OptimWrapper's non-finite loss error into one that says where training stopped."""
        try:
            yield
        except NonFiniteLossError as err:
            last = self.checkpointer.last_saved
            raise NonFiniteLossError(
                f"non-finite loss at epoch {self.epoch + 1}, step {self.global_step + 1}: {err}; training "
                f"stopped (last good checkpoint: {last or 'none written yet'}). Lower the learning rate, "
                "enable clip_grad, or set train.nonfinite: skip"
            ) from None

    def check_finite(self) -> None:
        """Settle a non-finite check still pending on the accelerator (before anything is saved)."""
        with self._nonfinite_context():
            self.optim.check_pending()

    def _lr(self) -> float:
        return max(self.scheduler.lrs)

    def train_epoch(self, progress: EpochProgress) -> None:
        """Train from the current position to the end of the epoch (or of the run)."""
        loader, sampler = self.data.train_loader, self.data.train_loader.sampler
        sampler.set_epoch(self.epoch)
        if self.batches_done:
            sampler.skip(self.batches_done * loader.batch_size)
        self.model.train()
        sums = RunningSums()
        end = min(self.epoch_len, self.batches_done + self.total_steps - self.global_step)
        progress.start_epoch(f"epoch {self.epoch + 1}/{self.epochs}", end, self.batches_done, self._lr())
        tick, seen = time.perf_counter(), 0
        iterator = iter(loader)
        while self.batches_done < end:
            batch = next(iterator)
            logs = self.step(batch, sums)
            seen += len(batch["image"])
            progress.advance()
            if self.global_step % self.log_interval == 0 or self.batches_done == end:
                elapsed = time.perf_counter() - tick
                values = scalar_values(logs)
                values.update(lr=self._lr(), ips=seen * self.world / max(elapsed, 1e-9))
                self.logger.log_step(self.global_step, self.epoch + 1, values)
                progress.show(values)
                tick, seen = time.perf_counter(), 0
            mid_epoch = self.batches_done < self.epoch_len and self.global_step < self.total_steps
            if mid_epoch and self._eval_due(epoch_end=False):
                self._evaluate_mid_epoch()
            every = self.checkpointer.every_n_steps
            if every and self.global_step % every == 0 and self.batches_done < self.epoch_len:
                self._merge_sums(sums)
                self.save_checkpoint()
        self._merge_sums(sums)
        progress.end_epoch()

    def _merge_sums(self, sums: RunningSums) -> None:
        for key, (total, count) in sums.drain().items():
            entry = self.epoch_sums.setdefault(key, [0.0, 0.0])
            entry[0] += total
            entry[1] += count

    def evaluate(self) -> dict[str, float]:
        """``val/...`` (and ``val_ema/...``) results on the validation set; empty without one."""
        if self.evaluator is None:
            return {}
        results = {f"val/{k}": v for k, v in self.evaluator.run(self.model).items()}
        if self.ema is not None:
            results.update({f"val_ema/{k}": v for k, v in self.evaluator.run(self.ema.module).items()})
        return results

    def _eval_due(self, epoch_end: bool) -> bool:
        """Whether ``eval.interval`` calls for an evaluation now (after a step; ``epoch_end``: and an epoch)."""
        if self.eval_unit == "step":
            return self.global_step % self.eval_every == 0
        return epoch_end and self.epoch % self.eval_every == 0

    def _validate(self) -> dict[str, float]:
        """Evaluate at the current position; the results enter ``metrics`` and the best-k list (and
        ``best.safetensors`` when they are the best so far)."""
        self.check_finite()
        results = self.evaluate()
        self.metrics.update(results)
        name = checkpoint_name(self.epoch if self.batches_done == 0 else self.epoch + 1, self.batches_done)
        if self.is_main and results and self.checkpointer.consider(name, results):
            ema = self.checkpointer.uses_ema() and self.ema is not None
            weights = self.ema.module.state_dict() if ema else self.model.state_dict()
            self.checkpointer.write_weights(
                self.checkpointer.best_weights, weights, self._metadata("ema" if ema else "model")
            )
        return results

    def _evaluate_mid_epoch(self) -> None:
        """An evaluation by steps inside an epoch: its own row in ``metrics.csv`` (epoch, step, lr, val/...)."""
        results = self._validate()
        if not results:
            return
        self.scheduler.step_epoch(self.epoch, results)  # same epoch count: only ``plateau`` observes
        values = {"lr": self._lr(), **results}
        self.logger.log_epoch(self.epoch + 1, self.global_step, values)
        shown = "  ".join(f"{k} {v:.4g}" for k, v in results.items())
        self.logger.print(f"step {self.global_step}/{self.total_steps}  {shown}")

    def _end_epoch(self, seconds: float) -> None:
        self.check_finite()
        self.epoch += 1
        self.batches_done = 0
        last = self.global_step >= self.total_steps
        values: dict[str, float] = {"lr": self._lr()}
        values.update({f"train/{k}": s / n for k, (s, n) in self.epoch_sums.items() if n})
        self.epoch_sums = {}
        results = self._validate() if (last or self._eval_due(epoch_end=True)) else {}
        values.update(results)
        self.scheduler.step_epoch(self.epoch, results)
        values["time"] = seconds
        self.logger.log_epoch(self.epoch, self.global_step, values)
        self.logger.summary(self.epoch, self.epochs, values, seconds)
        if self.epoch % self.checkpointer.interval == 0 or last:
            self.save_checkpoint()

    def fit(self) -> dict[str, Any]:
        """Train to the end; returns the last evaluation (``val/top1``...), ``best`` and ``work_dir``."""
        progress = EpochProgress(self.is_main and progress_enabled(self.train_cfg.get("progress")))
        try:
            while self.global_step < self.total_steps:
                start = time.perf_counter()
                self.train_epoch(progress)
                if self.batches_done >= self.epoch_len or self.global_step >= self.total_steps:
                    self._end_epoch(time.perf_counter() - start)
            self.check_finite()
            self.checkpointer.write_weights(
                self.checkpointer.last_weights, self.model.state_dict(), self._metadata()
            )
            distributed.barrier()
        finally:
            progress.stop()
            self.logger.close()
        best = self.checkpointer.best[0] if self.checkpointer.best else None
        return {**self.metrics, "best": best, "work_dir": str(self.work_dir)}
