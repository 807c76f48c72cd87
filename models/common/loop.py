"""One epoch loop for every torch trainer: epochs (and resuming after the last completed one), the lr
schedule, bf16 autocast on CUDA, gradient clipping, model selection on a validation score, the
per-epoch history and progress line, and checkpoints that resume bit for bit (weights, optimizer,
RNG state, best model so far).

A trainer supplies the model and optimizer and four hooks: `batches(train, epoch)`,
`batch_loss(train, batch, epoch) -> (loss, parts)`, optionally `validate(val) -> {"val_<score>": ...}`
and `lr_at(epoch)`. The pipeline's run loop calls `fit`, which calls `run_epochs` with an `on_epoch`
callback that writes the checkpoint and reports progress.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Iterable

import numpy as np

from models.common.base import Trainer
from models.common.lazy import lazy

if TYPE_CHECKING:
    import torch
else:
    torch = lazy("torch")  # imported when a trainer first computes, not when the registry loads

log = logging.getLogger(__name__)


def autocast(device: "torch.device") -> Any:
    """bf16 autocast on CUDA; nothing on a CPU (where it would only be slower)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def shuffled_batches(n: int, batch_size: int, seed: int, epoch: int) -> Iterable[np.ndarray]:
    """Indices 0..n-1 in an order seeded by (seed, epoch), cut into batches; a last batch of one (no negatives) is
    dropped."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    for a in range(0, n, batch_size):
        idx = order[a:a + batch_size]
        if len(idx) >= 2:
            yield idx


class EpochTrainer(Trainer):
    """A torch trainer driven by the shared loop. Set `self.model` (an nn.Module) and `self.optimizer`."""

    score_name: ClassVar[str | None] = None  # validation score the best model is selected on ("rsum")

    def __init__(self, config: Any = None, device: str = "auto") -> None:
        super().__init__(config, device)
        self.model: Any = None  # an nn.Module
        self.optimizer: Any = None
        self.epoch = -1  # last completed epoch
        self.best_score = -math.inf
        self.best_epoch = -1
        self.best_state: dict[str, Any] | None = None

    @functools.cached_property
    def torch_device(self) -> "torch.device":
        """The device to train on (picked on first use: declaring views needs no torch)."""
        from extractors._torch import pick_device

        return pick_device(self.device)

    # -- hooks ---------------------------------------------------------------------------------------

    @property
    def total_epochs(self) -> int:
        return int(self.config.epochs)

    @property
    def grad_clip(self) -> float:
        return float(getattr(self.config, "grad_clip", 0.0) or 0.0)

    def lr_at(self, epoch: int) -> float | None:
        """The learning rate of an epoch (None: leave the optimizer's as it is)."""
        return None

    def batches(self, train: Any, epoch: int) -> Iterable[Any]:
        raise NotImplementedError

    def batch_loss(self, train: Any, batch: Any, epoch: int) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss to minimise on one batch, and the numbers to average into the history ("loss" first)."""
        raise NotImplementedError

    def validate(self, val: Any) -> dict[str, float]:
        """Validation numbers after an epoch; `val_<score_name>` selects the best model."""
        raise NotImplementedError

    def rng_state(self) -> dict[str, Any]:
        """Generators of the trainer's own (besides torch's global one) to checkpoint."""
        return {}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        """Restore what `rng_state` saved."""

    # -- the loop ------------------------------------------------------------------------------------

    def run_epochs(self, train: Any, val: Any = None,
                   on_epoch: Callable[["EpochTrainer", bool], None] | None = None) -> "EpochTrainer":
        """Train the remaining epochs (all of them, unless resumed), validating after each one when there
        is a validation set; at the end the best validated model (or the last one) is kept."""
        assert self.model is not None and self.optimizer is not None
        for epoch in range(self.epoch + 1, self.total_epochs):
            lr = self.lr_at(epoch)
            if lr is not None:
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
            self.model.train()
            sums: dict[str, float] = {}
            steps = 0
            for batch in self.batches(train, epoch):
                with autocast(self.torch_device):
                    loss, parts = self.batch_loss(train, batch, epoch)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if self.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
                self.optimizer.step()
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0.0) + v
                steps += 1
            scores = self.validate(val) if val is not None and self.score_name else {}
            self.epoch = epoch
            record = {k: v / max(steps, 1) for k, v in sums.items()}
            if lr is not None:
                record["lr"] = lr
            record.update(scores)
            for k, v in record.items():
                self.history.setdefault(k, []).append(float(v))
            improved = False
            if scores:
                score = float(scores[f"val_{self.score_name}"])
                improved = score > self.best_score
                if improved:
                    self.best_score, self.best_epoch = score, epoch
                    self.best_state = copy.deepcopy({k: v.detach().cpu() for k, v in self.model.state_dict().items()})
            log.info("%s epoch %d/%d: %s%s", self.name, epoch + 1, self.total_epochs,
                     ", ".join(f"{k} {v:.4g}" for k, v in record.items() if not k.startswith("val_") or
                               k == f"val_{self.score_name}"), " (best)" if improved else "")
            if on_epoch:
                on_epoch(self, improved)
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        return self

    def infer(self, n: int, bs: int, step: Callable[[np.ndarray], "torch.Tensor"],
              empty: tuple[int, ...]) -> np.ndarray:
        """`step(indices)` over 0..n-1 in batches of `bs`, with the model in eval mode, no gradients and autocast;
        the outputs as one float32 array (shape `empty` when n is 0). Every trainer's batched inference."""
        assert self.model is not None
        self.model.eval()
        out = []
        with torch.inference_mode(), autocast(self.torch_device):
            for a in range(0, n, bs):
                out.append(step(np.arange(a, min(a + bs, n))).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros(empty, np.float32)

    def build_state(self) -> dict[str, Any]:
        """What rebuilds the model before its weights load (shapes, vocabulary, word vectors' record)."""
        raise NotImplementedError

    def rebuild(self, state: dict[str, Any]) -> None:
        """Build the model (and optimizer) from `build_state()`'s entries of a saved state."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The kept model (the best validated epoch's, else the current one), what rebuilds it, and how it was
        selected; loadable with torch.load(weights_only=True)."""
        assert self.model is not None
        return {"model": self.best_state or self.model.state_dict(), **self.build_state(),
                "best_epoch": int(self.best_epoch), "best_score": float(self.best_score)}

    def load_state_dict(self, state: dict[str, Any]) -> "EpochTrainer":
        """Restore a trained model from `state_dict()` (or a checkpoint: its best weights so far)."""
        self.rebuild(state)
        assert self.model is not None
        self.model.load_state_dict(state["model"])
        self.best_epoch = int(state.get("best_epoch", -1))
        self.best_score = float(state.get("best_score", state.get("best_rsum", -math.inf)))  # best_rsum: runs before #29
        return self

    def selection(self) -> dict[str, Any]:
        """How the kept model was chosen, for metrics.json."""
        if not self.score_name:
            return {"epochs": self.total_epochs}
        return {"best_epoch": self.best_epoch + 1, "epochs": self.total_epochs,
                f"best_val_{self.score_name}": self.best_score}

    # -- checkpoints ---------------------------------------------------------------------------------

    def checkpoint(self) -> dict[str, Any]:
        """Everything to resume training after the last completed epoch."""
        assert self.model is not None and self.optimizer is not None
        rng: dict[str, Any] = {"torch_rng": torch.get_rng_state()}
        if self.torch_device.type == "cuda":  # dropout on the GPU draws from the CUDA generator
            rng["cuda_rng"] = torch.cuda.get_rng_state_all()
        return {**self.state_dict(), "current": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "epoch": int(self.epoch), "history": self.history, "best_score": float(self.best_score),
                "own_rng": self.rng_state(), **rng}

    def resume(self, ckpt: dict[str, Any]) -> "EpochTrainer":
        """Continue from `checkpoint()`: current weights, optimizer, epoch, best model so far, history, RNG."""
        self.load_state_dict(ckpt)  # builds the model (and optimizer) and loads the best weights so far
        assert self.model is not None and self.optimizer is not None
        self.best_state = ckpt["model"] if "model" in ckpt else None
        self.model.load_state_dict(ckpt["current"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.epoch, self.history = int(ckpt["epoch"]), dict(ckpt["history"])
        torch.set_rng_state(ckpt["torch_rng"])
        if self.torch_device.type == "cuda" and "cuda_rng" in ckpt:
            torch.cuda.set_rng_state_all(ckpt["cuda_rng"])
        self.set_rng_state(ckpt.get("own_rng", {}))
        return self
