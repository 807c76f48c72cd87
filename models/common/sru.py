"""The SRU (Lei et al., "Simple Recurrent Units for Highly Parallelizable Recurrence") in plain torch, as DSVE-loc's
caption encoder runs it: the `sru` package 2.1.3 (the version its environment pins) with `v1=True, use_tanh=True,
has_skip_term=True, rescale=False`, unidirectional, no projection, no layer or weight norm, highway bias 0.

One layer, input `x_t` (n_in) -> output `h_t` (n_out), all steps' matrix product done at once:

    [x~_t, f~_t, r~_t(, s_t)] = x_t W             W: [n_in, n_out * k], column j*k + g = unit j, gate g
    f_t = sigmoid(f~_t + b_f)                      v1: no `v_f * c_{t-1}` peephole (the package's weight_c is 0,
    r_t = sigmoid(r~_t + b_r)                          frozen); v2 would add v_f * c_{t-1} and v_r * c_{t-1}
    c_t = x~_t + (c_{t-1} - x~_t) * f_t            (= f_t c_{t-1} + (1 - f_t) x~_t)
    h_t = x'_t + (tanh(c_t) * m_c - x'_t) * r_t    (= r_t tanh(c_t) m_c + (1 - r_t) x'_t)

The skip input x'_t is the layer's input x_t itself when n_in == n_out (k = 3), else a fourth projection s_t of it
(k = 4). Dropout, both with one mask per sequence shared by all steps and scaled by 1/(1-p), in training only:
`rnn_dropout` masks the layer's input before the product (every layer; the k = 3 skip term reads the unmasked input,
as the package's kernel does), and `dropout` is the mask m_c on tanh(c_t) inside the highway, in every layer but the
last (not between layers). Init: W ~ U(-sqrt(3/n_in), sqrt(3/n_in)), biases 0 (highway bias 0); `rescale=False` keeps
the skip scale at 1 and skips the package's dropout rescaling of W.

Checked against the package's own Python path (sru 2.1.3's `SRU_Compute_CPU`, run with the same seed): the same
initial weights, the same outputs and last states in eval and in train mode (same masks), the same gradients, to
1e-16 in float64. Where numbers may differ from the package's CUDA kernel, which DSVE-loc trained with: the kernel
runs each unit's loop in float32 with an `expf`-based sigmoid, `tanh` and fused multiply-adds, and has a hand-written
backward; here the gates are torch's sigmoid over all steps at once and the gradients come from autograd, so values
agree up to float32 rounding (order 1e-7 relative per operation), not bit for bit. Any dtype and device work (float64
in the tests). The random masks are drawn as the package draws them (`bernoulli_(1-p) / (1-p)`, the input mask then
the state mask, layer by layer), so on CPU one seed gives the package's masks; on CUDA no two libraries agree.
Parameter names follow the package (`rnn_lst.{i}.weight`, `.bias`, `.weight_c`, `.scale_x`; the last two are
buffers here), so a checkpoint of the package's SRU loads as it is (DSVE-loc's under `cap_emb.rnn.`); one with a
non-zero `weight_c` or a `scale_x` other than 1 (v2, or rescale=True) is refused.
Not implemented (DSVE-loc uses none): bidirectional, projection (`n_proj`), layer or weight norm, ReLU/SELU,
`highway_bias`, `mask_pad`, v2's peephole weights.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


class SRUCell(nn.Module):
    """One SRU layer (v1, tanh, skip term): `[T, B, n_in]` -> `[T, B, n_out]` and the last cell state `[B, n_out]`."""

    def __init__(self, input_size: int, hidden_size: int, dropout: float = 0.0, rnn_dropout: float = 0.0,
                 use_tanh: bool = True, has_skip_term: bool = True) -> None:
        super().__init__()
        self.input_size, self.hidden_size = input_size, hidden_size
        self.dropout, self.rnn_dropout = float(dropout), float(rnn_dropout)
        self.use_tanh, self.has_skip_term = use_tanh, has_skip_term
        self.k = 4 if has_skip_term and input_size != hidden_size else 3
        self.weight = nn.Parameter(torch.empty(input_size, hidden_size * self.k))
        self.bias = nn.Parameter(torch.zeros(2 * hidden_size))  # forget gate, then reset gate
        # the package's v1 peephole weights (always 0) and skip scale (1 without rescale), kept for its checkpoints
        self.register_buffer("weight_c", torch.zeros(2 * hidden_size))
        self.register_buffer("scale_x", torch.ones(1))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """W ~ U(-sqrt(3/n_in), sqrt(3/n_in)) (E[w] = 0, Var[w] = 1/n_in), biases 0, as the package's v1."""
        bound = math.sqrt(3.0 / self.input_size)
        with torch.no_grad():
            self.weight.uniform_(-bound, bound)
            self.bias.zero_()
            self.weight_c.zero_()
            self.scale_x.fill_(1.0)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any],
                              strict: bool, missing_keys: list[str], unexpected_keys: list[str],
                              error_msgs: list[str]) -> None:
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if self.weight_c.abs().max() > 0 or self.scale_x.ne(1).any():
            error_msgs.append(f"{prefix}: this SRU is the package's v1=True, rescale=False (weight_c 0, scale_x 1); "
                              "the checkpoint has a non-zero weight_c or another scale_x (v2 or rescale=True)")

    def _mask(self, size: tuple[int, int], p: float) -> torch.Tensor:
        return self.weight.new_empty(size).bernoulli_(1 - p).div_(1 - p)

    def forward(self, x: torch.Tensor, c0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Outputs `[T, B, n_out]` and the cell state after the last step `[B, n_out]` of input `[T, B, n_in]`."""
        length, batch, _ = x.shape
        n = self.hidden_size
        xin = x * self._mask((batch, self.input_size), self.rnn_dropout) if self.training and self.rnn_dropout > 0 \
            else x
        u = (xin.reshape(-1, self.input_size) @ self.weight).view(length, batch, n, self.k)
        x_tilde = u[..., 0]
        forget = torch.sigmoid(u[..., 1] + self.bias[:n])
        reset = torch.sigmoid(u[..., 2] + self.bias[n:])
        c = x.new_zeros(batch, n) if c0 is None else c0
        states = []
        for t in range(length):  # the only sequential part
            c = x_tilde[t] + (c - x_tilde[t]) * forget[t]
            states.append(c)
        cs = torch.stack(states) if states else x.new_zeros(0, batch, n)
        g = torch.tanh(cs) if self.use_tanh else cs
        if self.training and self.dropout > 0:
            g = g * self._mask((batch, n), self.dropout)
        if not self.has_skip_term:
            return g * reset, c
        skip = u[..., 3] if self.k == 4 else x
        return skip + (g - skip) * reset, c

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, k={self.k}, dropout={self.dropout}, "
                f"rnn_dropout={self.rnn_dropout}, v1=True, rescale=False")


class SRU(nn.Module):
    """Stacked SRU layers, time-major like the package: `forward([T, B, D], c0=None) -> ([T, B, H], [layers, B, H])`.
    `dropout` acts inside every layer but the last, `rnn_dropout` on every layer's input (see the module's doc)."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 4, dropout: float = 0.25,
                 rnn_dropout: float = 0.25, use_tanh: bool = True, has_skip_term: bool = True) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"an SRU needs at least one layer, got num_layers={num_layers}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.rnn_lst = nn.ModuleList(
            SRUCell(input_size if i == 0 else hidden_size, hidden_size, dropout if i + 1 < num_layers else 0.0,
                    rnn_dropout, use_tanh, has_skip_term) for i in range(num_layers))

    def forward(self, x: torch.Tensor, c0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Last layer's outputs `[T, B, H]` and each layer's last cell state `[num_layers, B, H]` of `[T, B, D]`."""
        if x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"SRU input must be [T, B, {self.input_size}], got {tuple(x.shape)}")
        if c0 is not None and tuple(c0.shape) != (self.num_layers, x.shape[1], self.hidden_size):
            raise ValueError(f"SRU c0 must be [{self.num_layers}, {x.shape[1]}, {self.hidden_size}], "
                             f"got {tuple(c0.shape)}")
        last = []
        for i, layer in enumerate(self.rnn_lst):
            x, c = layer(x, None if c0 is None else c0[i])
            last.append(c)
        return x, torch.stack(last)


class SruEncoder(nn.Module):
    """DSVE-loc's caption encoder: word vectors `[B, T, dim_in]` -> SRU -> each sequence's output at its last valid
    step (`lengths - 1`) `[B, dim_out]`, not normalised. Padding after a sequence's end cannot change it (the SRU is
    causal). `dropout` is both the SRU's `dropout` and its `rnn_dropout`, as the reference's."""

    def __init__(self, num_layers: int = 4, dim_in: int = 620, dim_out: int = 2400, dropout: float = 0.25) -> None:
        super().__init__()
        self.dim_out = dim_out
        self.rnn = SRU(dim_in, dim_out, num_layers=num_layers, dropout=dropout, rnn_dropout=dropout)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """`[B, dim_out]`: the output at step `lengths[i] - 1` of each sequence of `x` `[B, T, dim_in]`."""
        if x.dim() != 3:
            raise ValueError(f"SruEncoder input must be [B, T, D], got {tuple(x.shape)}")
        lengths = torch.as_tensor(lengths, device=x.device).long()
        if lengths.shape != (x.shape[0],) or (len(lengths) and (lengths.min() < 1 or lengths.max() > x.shape[1])):
            raise ValueError(f"lengths must be [B] = [{x.shape[0]}] values in 1..{x.shape[1]}, got "
                             f"{lengths.tolist()}")
        out, _ = self.rnn(x.transpose(0, 1))
        return out[lengths - 1, torch.arange(x.shape[0], device=x.device)]
