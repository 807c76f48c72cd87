"""Losses of the embedding trainers: the VSE hinge loss (VSE / VSE++) and VASE's reconstruction loss."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn


def l2norm(x: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    """x / (||x|| + eps) along `dim` (eps outside the root, as the VSE code has it)."""
    return x / (x.pow(2).sum(dim=dim, keepdim=True).sqrt() + eps)


class ContrastiveLoss(nn.Module):
    """VSE hinge loss on cosine similarities: row i of `a` matches row i of `b`.

    For each positive pair, every negative in the batch costs max(0, margin + s(neg) - s(pos)), in both
    directions (a -> b and b -> a); the positive pair itself costs nothing. `max_violation=False`
    sums over all negatives (VSE), `True` keeps only the hardest negative per query (VSE++).
    `direction`: "both"; "a2b" (the rows of `a` are the queries, the rows of `b` their negatives: See,
    Hear, and Read's ranking loss with image rows as `a`) or "b2a" (the reverse).
    The result is a sum over the batch, not a mean, as in VSE / VSE++ / VASE.
    """

    DIRECTIONS = ("both", "a2b", "b2a")

    def __init__(self, margin: float = 0.2, max_violation: bool = False, direction: str = "both") -> None:
        super().__init__()
        if direction not in self.DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(self.DIRECTIONS)}, got {direction!r}")
        self.margin = float(margin)
        self.max_violation = bool(max_violation)
        self.direction = direction

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The loss of a batch of pairs `(a[i], b[i])`, both `[B, D]`."""
        if a.shape[0] != b.shape[0] or a.dim() != 2 or b.dim() != 2:
            raise ValueError(f"ContrastiveLoss needs two [B, D] batches of pairs; got {tuple(a.shape)} and {tuple(b.shape)}")
        scores = l2norm(a.float()) @ l2norm(b.float()).t()
        pos = scores.diagonal().view(-1, 1)
        cost_b = (self.margin + scores - pos).clamp(min=0)  # query a[i], negatives b[j]
        cost_a = (self.margin + scores - pos.t()).clamp(min=0)  # query b[j], negatives a[i]
        eye = torch.eye(scores.shape[0], dtype=torch.bool, device=scores.device)
        cost_b = cost_b.masked_fill(eye, 0)
        cost_a = cost_a.masked_fill(eye, 0)
        if self.max_violation:
            from_a, from_b = cost_b.max(dim=1).values.sum(), cost_a.max(dim=0).values.sum()
        else:
            from_a, from_b = cost_b.sum(), cost_a.sum()
        return {"both": from_a + from_b, "a2b": from_a, "b2a": from_b}[self.direction]


def distillation_kl(teacher: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher || softmax(student_logits)) per row, averaged over the batch: `teacher` `[B, K]` holds class
    probabilities (rows summing to 1; a zero probability costs nothing), `student_logits` `[B, K]` raw scores."""
    if teacher.shape != student_logits.shape or teacher.dim() != 2:
        raise ValueError(f"distillation_kl needs two [B, K] batches; got {tuple(teacher.shape)} and "
                         f"{tuple(student_logits.shape)}")
    p = teacher.float()
    log_q = torch.log_softmax(student_logits.float(), dim=1)
    return (torch.xlogy(p, p) - p * log_q).sum(dim=1).mean()


def attention_rebuild(target: torch.Tensor, sources: torch.Tensor, smooth: float) -> torch.Tensor:
    """Rebuild each row of `target` as a mixture of `sources`: weights softmax(smooth * l2norm(LeakyReLU(0.1)(t . s)))."""
    s = nn.functional.leaky_relu(target @ sources.t(), 0.1)
    w = torch.softmax(l2norm(s, dim=1) * smooth, dim=1)
    return w @ sources


def reconstruct(views: list[torch.Tensor], smooth: float) -> list[torch.Tensor]:
    """One VASE reconstruction round: every view rebuilt from the batch's items of the other view(s)
    (with three views, from the other two stacked along the batch)."""
    out = []
    for i, target in enumerate(views):
        others = torch.cat([v for j, v in enumerate(views) if j != i], dim=0)
        out.append(attention_rebuild(target, others, smooth))
    return out


def reconstruction_loss(views: list[torch.Tensor], smooth: float, rounds: int = 2) -> torch.Tensor:
    """Sum over views and batch of ||x - x_hat||^2, x_hat from `rounds` reconstruction rounds."""
    rebuilt: list[Any] = list(views)
    for _ in range(rounds):
        rebuilt = reconstruct(rebuilt, smooth)
    return sum(((x - r).pow(2).sum() for x, r in zip(views, rebuilt)), torch.zeros((), device=views[0].device))
