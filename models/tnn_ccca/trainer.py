"""TNN-C-CCA (Zeng et al.): triplet neural networks for audio and visual, with Cluster-CCA on top.

Each view has its own branch: 3 x (dense `hidden` tanh, dropout), dense `out_dim` tanh, dropout,
sigmoid (the TNN-C-CCA code's stack, Keras initialisers: Glorot-uniform first layer, N(0, 0.05)
after). Triplets: anchor = an audio clip, positive = the visual of another clip of its class,
negative = the visual of a clip of another class (the reference code's choice: a clip's own visual
is not a positive). Loss: hinge on squared Euclidean distances, max(0, d(a,p) - d(a,n) + margin),
averaged over every triplet of a batch (`mining: all`, as the reference generator builds them) or
over each anchor's hardest positive and negative (`mining: hard`, after `warmup_epochs` of `all`:
from a fresh network, whose outputs all sit near 0.5, batch-hard collapses every output to one
point, loss = margin). Adam. Cluster-CCA (k, beta) is
then fitted on the branch outputs of the training clips.

`order: ccca-tnn` runs the other way round, as the reference scripts that produce their TNN-C-CCA
embeddings do: Cluster-CCA on the features, then the triplet network on its k-dim outputs.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from models.common.base import ClipVectorTrainer, TrainConfig, arrays, tensors
from models.common.loop import EpochTrainer
from models.tnn_ccca.cluster_cca import ClusterCCA
from pipeline.registry import register_trainer

log = logging.getLogger(__name__)


@dataclass
class TNNCCCAConfig(TrainConfig):
    margin: float = 0.3
    mining: Literal["all", "hard"] = "all"
    warmup_epochs: int = 10  # with mining: hard, epochs of `all` first (batch-hard from the start collapses)
    hidden: int = 100
    layers: int = 3
    out_dim: int = 10
    dropout: float = 0.1
    lr: float = 1e-3
    epochs: int = 10
    triplet_batch: int = 64  # clips per step; every valid triplet among them counts
    n_components: int = 10
    beta: float = 0.2
    reg: float = 1e-4
    order: Literal["tnn-ccca", "ccca-tnn"] = "tnn-ccca"

    def __post_init__(self) -> None:
        checks = [(self.margin >= 0, "margin must be >= 0"), (self.hidden >= 1, "hidden must be >= 1"),
                  (self.layers >= 1, "layers must be >= 1"), (self.out_dim >= 1, "out_dim must be >= 1"),
                  (0 <= self.dropout < 1, "dropout must be in [0, 1)"), (self.lr > 0, "lr must be > 0"),
                  (self.epochs >= 1, "epochs must be >= 1"),
                  (self.warmup_epochs >= 0, "warmup_epochs must be >= 0"), (self.triplet_batch >= 3, "triplet_batch must be >= 3"),
                  (self.n_components >= 1, "n_components must be >= 1"), (0 <= self.beta <= 1, "beta must be in [0, 1]"),
                  (self.reg >= 0, "reg must be >= 0")]
        for ok, msg in checks:
            if not ok:
                raise ValueError(msg)
        if self.mining == "hard" and self.epochs <= self.warmup_epochs:
            raise ValueError(f"mining: hard trains with every triplet for warmup_epochs ({self.warmup_epochs}) "
                             f"first; set epochs above that (got {self.epochs}) or lower warmup_epochs")
        if self.order == "tnn-ccca" and self.n_components > self.out_dim:
            raise ValueError(f"n_components ({self.n_components}) cannot exceed out_dim ({self.out_dim}): "
                             "Cluster-CCA runs on the branch outputs")


def branch(in_dim: int, cfg: TNNCCCAConfig) -> Any:
    """One view's network: `layers` x (dense tanh, dropout), dense `out_dim` tanh, dropout, sigmoid."""
    from torch import nn

    mods: list[Any] = []
    dims = [in_dim] + [cfg.hidden] * cfg.layers
    for a, b in zip(dims[:-1], dims[1:]):
        mods += [nn.Linear(a, b), nn.Tanh(), nn.Dropout(cfg.dropout)]
    mods += [nn.Linear(dims[-1], cfg.out_dim), nn.Tanh(), nn.Dropout(cfg.dropout), nn.Sigmoid()]
    net = nn.Sequential(*mods)
    linears = [m for m in net if isinstance(m, nn.Linear)]
    nn.init.xavier_uniform_(linears[0].weight)  # Keras Dense default
    for m in linears[1:]:
        nn.init.normal_(m.weight, 0.0, 0.05)  # kernel_initializer='normal'
    for m in linears:
        nn.init.zeros_(m.bias)
    return net


def triplet_loss(a: Any, v: Any, labels: Any, margin: float, mining: str = "all") -> tuple[Any, float]:
    """Hinge triplet loss (squared Euclidean) of audio anchors against visual positives/negatives.

    Returns the loss and the fraction of triplets (or anchors, for `hard`) with a positive hinge."""
    import torch

    d = torch.cdist(a, v).square()  # d[i, j] = ||a_i - v_j||^2
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=a.device)
    pos, neg = same & ~eye, ~same
    if mining == "hard":
        hp = d.masked_fill(~pos, float("-inf")).amax(1)
        hn = d.masked_fill(~neg, float("inf")).amin(1)
        ok = pos.any(1) & neg.any(1)
        if not ok.any():
            return d.sum() * 0, 0.0
        h = torch.relu(hp[ok] - hn[ok] + margin)
        return h.mean(), float((h > 0).float().mean())
    valid = pos[:, :, None] & neg[:, None, :]  # [anchor, positive, negative]
    n = int(valid.sum())
    if n == 0:
        return d.sum() * 0, 0.0
    h = torch.relu(d[:, :, None] - d[:, None, :] + margin) * valid
    return h.sum() / n, float((h > 0).sum()) / n


@register_trainer
class TNNCCCATrainer(ClipVectorTrainer, EpochTrainer):
    """TNN-C-CCA: per-view triplet networks, then Cluster-CCA on their outputs."""

    name = "tnn_ccca"
    VERSION = 1
    Config = TNNCCCAConfig

    def _ccca(self) -> ClusterCCA:
        c = self.config
        return ClusterCCA(c.n_components, c.beta, c.reg, device=self.device)

    def _build(self, da: int, dv: int) -> None:
        import torch

        self.model = torch.nn.ModuleDict({"audio": branch(da, self.config), "visual": branch(dv, self.config)})

    def _nets(self, audio: np.ndarray, visual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        import torch

        dev = self.torch_device
        assert self.model is not None
        outs = []
        with torch.inference_mode():
            for net, x in ((self.model["audio"], audio), (self.model["visual"], visual)):
                net.eval().to(dev)
                outs.append(net(torch.as_tensor(x, dtype=torch.float32, device=dev)).double().cpu().numpy())
        return outs[0], outs[1]

    def fit_arrays(self, audio: np.ndarray, visual: np.ndarray, labels: np.ndarray) -> "TNNCCCATrainer":
        """Train the two branches on triplets, then fit Cluster-CCA on their outputs."""
        import torch

        cfg = self.config
        audio, visual = np.asarray(audio, dtype=np.float64), np.asarray(visual, dtype=np.float64)
        _, y = np.unique(np.asarray(labels).reshape(-1), return_inverse=True)
        self.fit_scaler(audio, visual)
        a, v = self.scale(audio, "audio"), self.scale(visual, "visual")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            if cfg.order == "ccca-tnn":
                self.ccca = self._ccca().fit(a, v, y)
                a, v = self.ccca.transform(a, v)
            self._build(a.shape[1], v.shape[1])
            assert self.model is not None
            self.model.to(self.torch_device)
            self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
            self._gen = torch.Generator().manual_seed(cfg.seed)
            self.history = {"loss": [], "active": []}
            dev = self.torch_device
            self.run_epochs((torch.as_tensor(a, dtype=torch.float32, device=dev),
                             torch.as_tensor(v, dtype=torch.float32, device=dev), torch.as_tensor(y, device=dev)))
            if cfg.order == "tnn-ccca":
                self.ccca = self._ccca().fit(*self._nets(a, v), y)
        return self

    def batches(self, train: Any, epoch: int) -> Any:
        order = torch_randperm(len(train[2]), self._gen).to(self.torch_device)
        for s in range(0, len(order), self.config.triplet_batch):
            yield order[s:s + self.config.triplet_batch]

    def batch_loss(self, train: Any, batch: Any, epoch: int) -> tuple[Any, dict[str, float]]:
        ta, tv, ty = train
        assert self.model is not None
        mining = "all" if epoch < self.config.warmup_epochs else self.config.mining
        loss, frac = triplet_loss(self.model["audio"](ta[batch]), self.model["visual"](tv[batch]), ty[batch],
                                  self.config.margin, mining)
        return loss, {"loss": float(loss.detach()), "active": frac}

    def rng_state(self) -> dict[str, Any]:
        return {"triplet_order": self._gen.get_state()}

    def set_rng_state(self, state: dict[str, Any]) -> None:
        if "triplet_order" in state:
            self._gen.set_state(state["triplet_order"])

    def transform(self, audio: np.ndarray, visual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Branch outputs projected by the fitted Cluster-CCA (or the reverse, for `ccca-tnn`)."""
        if not hasattr(self, "ccca"):
            raise RuntimeError("tnn_ccca is not fitted; call .fit first")
        a, v = self.scale(audio, "audio"), self.scale(visual, "visual")
        if self.config.order == "ccca-tnn":
            return self._nets(*self.ccca.transform(a, v))
        return self.ccca.transform(*self._nets(a, v))

    def state_dict(self) -> dict[str, Any]:
        assert self.model is not None
        return {"audio_net": self.model["audio"].state_dict(), "visual_net": self.model["visual"].state_dict(),
                "ccca": tensors(self.ccca.state_dict()), "norm": tensors(self.norm_)}

    def load_state_dict(self, state: dict[str, Any]) -> "TNNCCCATrainer":
        self.norm_ = arrays(state["norm"])
        self.ccca = self._ccca().load_state_dict(arrays(state["ccca"]))
        self._build(state["audio_net"]["0.weight"].shape[1], state["visual_net"]["0.weight"].shape[1])
        assert self.model is not None
        self.model["audio"].load_state_dict(state["audio_net"])
        self.model["visual"].load_state_dict(state["visual_net"])
        return self


def torch_randperm(n: int, generator: Any) -> Any:
    """A permutation of range(n) drawn from `generator` (on the CPU, as the reference order is)."""
    import torch

    return torch.randperm(n, generator=generator)
