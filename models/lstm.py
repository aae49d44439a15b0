"""Recurrent cells with optional layer normalisation (Ba, Kiros & Hinton 2016).

Without layer normalisation each cell is the textbook cell with the parameter
names and gate order of `torch.nn.LSTMCell` / `torch.nn.GRUCell`, so a state
dict copies across and the numbers match. With layer normalisation the summed
inputs from the input and from the hidden state are normalised separately, each
with its own gain and bias, before they are added (Eq. 20-22 of the LN paper).

Both cells step one time step at a time; the models in glimpse unroll them in
Python so the same code runs under teacher forcing and in the exported step graph.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

LSTMState = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (B, H)


class LSTMCell(nn.Module):
    """One LSTM step; gates in nn.LSTMCell's order (input, forget, cell, output).

    Standard (layer_norm=False), as nn.LSTMCell:
        (i, f, g, o) = W_ih x + b_ih + W_hh h + b_hh
    Layer-normalised (Eq. 20-22 of Ba et al. 2016):
        (i, f, g, o) = LN(W_hh h; α1, β1) + LN(W_ih x; α2, β2)
        c' = σ(f) ⊙ c + σ(i) ⊙ tanh(g)
        h' = σ(o) ⊙ tanh(LN(c'; α3, β3))
    The paper's separate bias b is absorbed into β1 + β2, so the LN cell has no
    bias_ih / bias_hh. LN normalises each summed-input vector over all 4H units,
    as the equations are written.
    """

    def __init__(self, input_size: int, hidden_size: int, *, layer_norm: bool = False) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.layer_norm = layer_norm
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden_size, hidden_size))
        if layer_norm:
            self.ln_ih = nn.LayerNorm(4 * hidden_size)
            self.ln_hh = nn.LayerNorm(4 * hidden_size)
            self.ln_cell = nn.LayerNorm(hidden_size)
        else:
            self.bias_ih = nn.Parameter(torch.empty(4 * hidden_size))
            self.bias_hh = nn.Parameter(torch.empty(4 * hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.LSTMCell's init: every weight and bias uniform in ±1/sqrt(H); LN gains 1, biases 0."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for name, p in self.named_parameters():
            if name.startswith("ln_"):
                continue
            nn.init.uniform_(p, -bound, bound)
        if self.layer_norm:
            for ln in (self.ln_ih, self.ln_hh, self.ln_cell):
                ln.reset_parameters()

    def initial_state(self, batch_size: int, *, like: torch.Tensor) -> LSTMState:
        zeros = like.new_zeros(batch_size, self.hidden_size)
        return zeros, zeros.clone()

    def forward(self, x: torch.Tensor, state: LSTMState | None = None) -> LSTMState:
        """x (B, I), state (h, c) each (B, H) or None for zeros -> (h', c')."""
        h, c = state if state is not None else self.initial_state(x.shape[0], like=x)
        if self.layer_norm:
            gates = self.ln_hh(h @ self.weight_hh.T) + self.ln_ih(x @ self.weight_ih.T)
        else:
            gates = F.linear(x, self.weight_ih, self.bias_ih) + F.linear(
                h, self.weight_hh, self.bias_hh
            )  # (B, 4H)
        i, f, g, o = gates.chunk(4, dim=-1)
        c_next = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        c_out = self.ln_cell(c_next) if self.layer_norm else c_next
        h_next = torch.sigmoid(o) * torch.tanh(c_out)
        return h_next, c_next


class GRUCell(nn.Module):
    """One GRU step; gates in nn.GRUCell's order (reset, update, new).

    Standard (layer_norm=False), as nn.GRUCell:
        (r, z, n_x) = W_ih x + b_ih,  (r_h, z_h, n_h) = W_hh h + b_hh
        r = σ(r_x + r_h), z = σ(z_x + z_h), n = tanh(n_x + r ⊙ n_h)
        h' = (1 - z) ⊙ n + z ⊙ h
    Layer-normalised: W_ih x and W_hh h are each normalised over their 3H units
    (own gains and biases, as for the LSTM in Eq. 20 of Ba et al. 2016) before
    the same gate equations; the biases are again absorbed into the LN biases.
    """

    def __init__(self, input_size: int, hidden_size: int, *, layer_norm: bool = False) -> None:
        super().__init__()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.layer_norm = layer_norm
        self.weight_ih = nn.Parameter(torch.empty(3 * hidden_size, input_size))
        self.weight_hh = nn.Parameter(torch.empty(3 * hidden_size, hidden_size))
        if layer_norm:
            self.ln_ih = nn.LayerNorm(3 * hidden_size)
            self.ln_hh = nn.LayerNorm(3 * hidden_size)
        else:
            self.bias_ih = nn.Parameter(torch.empty(3 * hidden_size))
            self.bias_hh = nn.Parameter(torch.empty(3 * hidden_size))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)
        for name, p in self.named_parameters():
            if not name.startswith("ln_"):
                nn.init.uniform_(p, -bound, bound)
        if self.layer_norm:
            self.ln_ih.reset_parameters()
            self.ln_hh.reset_parameters()

    def forward(self, x: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, I), h (B, H) or None for zeros -> h' (B, H)."""
        if h is None:
            h = x.new_zeros(x.shape[0], self.hidden_size)
        if self.layer_norm:
            gx = self.ln_ih(x @ self.weight_ih.T)
            gh = self.ln_hh(h @ self.weight_hh.T)
        else:
            gx = F.linear(x, self.weight_ih, self.bias_ih)  # (B, 3H)
            gh = F.linear(h, self.weight_hh, self.bias_hh)  # (B, 3H)
        r_x, z_x, n_x = gx.chunk(3, dim=-1)
        r_h, z_h, n_h = gh.chunk(3, dim=-1)
        r = torch.sigmoid(r_x + r_h)
        z = torch.sigmoid(z_x + z_h)
        n = torch.tanh(n_x + r * n_h)
        return (1.0 - z) * n + z * h
