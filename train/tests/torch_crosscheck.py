"""Independent PyTorch reference for the worker's packed models (docs/science.md#models).

Called by the worker's crosscheck test with a directory holding, as .npy files, one pack's
weights (param_<name>.npy, shaped [M, ...]) and inputs (x [T, M, B], lengths [M, B], h0 [M, B, H],
labels [M, B], and for the recurrent-module control a0 [M, B, A]). Builds each trial as ordinary
nn.Linear layers (the GRU: the lab's cell, one nn.Linear per gate for the input and one for the
state, cut from the stacked parameters r, z, n), runs every sequence unpadded for its own length,
and writes the logits (logits.npy, [M, B, 2]) and, when asked, the gradients of the summed
per-trial mean cross-entropy (grad_<name>.npy). It computes in the dtype of the weights it is
given (float64 or float32).

usage: torch_crosscheck.py DIR {rnn,cbrnn,rmrnn,cbgru,gru} {on,off} {grads,nograds}
"""

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ALPHA = 1.0 / 1.5
# the GRU: ||b_cb|| <= GRU_CB_NORM_RATIO * ||rest of the candidate's pre-activation||, per sequence,
# both norms clamped below at GRU_EPS
GRU_CB_NORM_RATIO = 1.0
GRU_EPS = 1e-8
GATES = ("r", "z", "n")


def linear(weight, bias):
    layer = nn.Linear(weight.shape[1], weight.shape[0]).to(weight.dtype)
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.copy_(bias)
    return layer


class Trial(nn.Module):
    def __init__(self, weights, m, arch):
        super().__init__()
        w = lambda name: torch.tensor(weights[name][m])
        self.arch = arch
        self.gru = arch in ("gru", "cbgru")
        self.layers = {}
        if self.gru:
            # per gate an input layer x_<gate> and a state layer h_<gate>, each with its bias
            hidden = w("core.w_h").shape[1]
            self.gate = {}
            for side, weight, bias in (("x", "core.w_x", "core.b_x"), ("h", "core.w_h", "core.b_h")):
                for k, gate in enumerate(GATES):
                    rows = slice(k * hidden, (k + 1) * hidden)
                    layer = linear(w(weight)[rows], w(bias)[rows])
                    self.add_module(f"{side}_{gate}", layer)
                    self.gate[f"{side}_{gate}"] = layer
        else:
            self.inp = linear(w("core.w_x"), w("core.b_x"))
            self.hh = linear(w("core.w_h"), w("core.b_h"))
            self.layers.update({"core.w_x": self.inp.weight, "core.b_x": self.inp.bias,
                                "core.w_h": self.hh.weight, "core.b_h": self.hh.bias})
        self.readout = linear(w("readout.weight"), w("readout.bias"))
        self.layers.update({"readout.weight": self.readout.weight, "readout.bias": self.readout.bias})
        self.mods = {}
        if arch in ("cbrnn", "cbgru"):
            names = ["cb.granule", "cb.purkinje", "cb.dcn"]
        elif arch == "rmrnn":
            names = ["rm.input", "rm.recurrent", "rm.output"]
        else:
            names = []
        for name in names:
            layer = linear(w(f"{name}.weight"), w(f"{name}.bias"))
            self.add_module(name.replace(".", "_"), layer)
            self.mods[name] = layer
            self.layers[f"{name}.weight"] = layer.weight
            self.layers[f"{name}.bias"] = layer.bias

    def named(self):
        return self.layers

    def grad(self, name):
        """The gradient of parameter `name`; the GRU's stacked ones gathered from its gates."""
        if self.gru and name.startswith("core."):
            side, part = name[len("core."):].split("_")
            attr = "weight" if side == "w" else "bias"
            return torch.cat([getattr(self.gate[f"{part}_{g}"], attr).grad for g in GATES])
        return self.layers[name].grad

    def names(self):
        core = ["core.w_x", "core.b_x", "core.w_h", "core.b_h"] if self.gru else []
        return core + list(self.layers)

    def module_bias(self, h, x, a):
        """The module's output b_cb for state h [B, H], bit x [B, 1] and the recurrent module's
        state a (None for the cerebellar module); returns (b_cb, next a)."""
        hx = torch.cat([h, x], dim=-1)
        if "rm.input" in self.mods:
            pre = self.mods["rm.input"](hx) + self.mods["rm.recurrent"](a)
            a = (1.0 - ALPHA) * a + ALPHA * F.leaky_relu(pre, negative_slope=0.01)
            return self.mods["rm.output"](a), a
        g = F.relu(self.mods["cb.granule"](hx))
        p = F.relu(self.mods["cb.purkinje"](g))
        return self.mods["cb.dcn"](p), a

    def candidate(self, x, h, r):
        """The GRU candidate's pre-activation without the module, the reset before h_n."""
        return self.gate["x_n"](x) + self.gate["h_n"](r * h)

    def forward(self, x, h, a, cb_on):
        """x: [T, B, 1] bits of sequences all of length T; h: [B, H] initial state; a: [B, A]
        the recurrent module's initial state (None without one)."""
        use_module = cb_on and bool(self.mods)
        for t in range(x.shape[0]):
            if self.gru:
                g = self.gate
                z = torch.sigmoid(g["x_z"](x[t]) + g["h_z"](h))
                r = torch.sigmoid(g["x_r"](x[t]) + g["h_r"](h))
                pre = self.candidate(x[t], h, r)
                if use_module:
                    b_cb, _ = self.module_bias(h, x[t], a)
                    # the reference norm is recomputed without gradient (the lab's no_grad)
                    with torch.no_grad():
                        reference = torch.linalg.vector_norm(self.candidate(x[t], h, r), dim=-1, keepdim=True)
                    own = torch.linalg.vector_norm(b_cb, dim=-1, keepdim=True).clamp_min(GRU_EPS)
                    ratio = GRU_CB_NORM_RATIO * reference.clamp_min(GRU_EPS) / own
                    pre = pre + torch.minimum(torch.ones_like(ratio), ratio) * b_cb
                n = F.leaky_relu(pre, negative_slope=0.01)
                h = (1.0 - z) * h + z * n
            else:
                pre = self.inp(x[t]) + self.hh(h)
                if use_module:
                    b_cb, a = self.module_bias(h, x[t], a)
                    pre = pre + b_cb
                h = (1.0 - ALPHA) * h + ALPHA * F.leaky_relu(pre, negative_slope=0.01)
        return self.readout(h)


def main():
    folder, arch, cb, grads = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    load = lambda name: np.load(folder / f"{name}.npy")
    weights = {p.stem[len("param_"):]: np.load(p) for p in folder.glob("param_*.npy")}
    x, lengths, h0, labels = load("x"), load("lengths"), load("h0"), load("labels")
    a0 = load("a0") if (folder / "a0.npy").exists() else None
    dtype = torch.from_numpy(h0).dtype
    m_count, batch = lengths.shape
    trials = [Trial(weights, m, arch) for m in range(m_count)]
    logits = torch.zeros(m_count, batch, 2, dtype=dtype)
    total = torch.zeros((), dtype=dtype)
    for m, trial in enumerate(trials):
        out = [None] * batch
        for length in sorted(set(lengths[m].tolist())):
            idx = [b for b in range(batch) if lengths[m, b] == length]
            xs = torch.tensor(x[:length, m, idx], dtype=dtype).unsqueeze(-1)
            hs = torch.tensor(h0[m, idx], dtype=dtype)
            states = None if a0 is None else torch.tensor(a0[m, idx], dtype=dtype)
            res = trial(xs, hs, states, cb == "on")
            for k, b in enumerate(idx):
                out[b] = res[k]
        trial_logits = torch.stack(out)
        total = total + F.cross_entropy(trial_logits, torch.tensor(labels[m]))
        logits[m] = trial_logits.detach()
    np.save(folder / "logits.npy", logits.numpy())
    if grads == "grads":
        total.backward()
        for name in trials[0].names():
            g = torch.stack([t.grad(name) for t in trials])
            np.save(folder / f"grad_{name}.npy", g.numpy())


if __name__ == "__main__":
    main()
