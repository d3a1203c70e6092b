"""Independent PyTorch reference for the worker's packed models (docs/science.md#models).

Called by the worker's crosscheck test with a directory holding, as .npy files, one pack's
weights (param_<name>.npy, shaped [M, ...]) and inputs (x [T, M, B], lengths [M, B], h0 [M, B, H],
labels [M, B]). Builds each trial as ordinary nn.Linear layers (the GRU: torch.nn.GRUCell's
parameters with its gate math written out, the candidate's tanh replaced by LeakyReLU), runs
every sequence unpadded for its own length, and writes the logits (logits.npy, [M, B, 2]) and,
when asked, the gradients of the summed per-trial mean cross-entropy (grad_<name>.npy). It
computes in the dtype of the weights it is given (float64 or float32).

usage: torch_crosscheck.py DIR {rnn,cbrnn,rmrnn,cbgru,gru} {on,off} {grads,nograds}
"""

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ALPHA = 1.0 / 1.5
# the GRU: ||b_cb|| <= GRU_CB_NORM_RATIO * ||rest of the candidate's pre-activation||, per sequence
GRU_CB_NORM_RATIO = 1.0


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
            hidden = w("core.w_hh").shape[1]
            self.cell = nn.GRUCell(1, hidden).to(w("core.w_hh").dtype)
            with torch.no_grad():
                self.cell.weight_ih.copy_(w("core.w_ih"))
                self.cell.bias_ih.copy_(w("core.b_ih"))
                self.cell.weight_hh.copy_(w("core.w_hh"))
                self.cell.bias_hh.copy_(w("core.b_hh"))
            self.layers["core.w_ih"] = self.cell.weight_ih
            self.layers["core.b_ih"] = self.cell.bias_ih
            self.layers["core.w_hh"] = self.cell.weight_hh
            self.layers["core.b_hh"] = self.cell.bias_hh
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

    def forward(self, x, h, cb_on):
        """x: [T, B, 1] bits of sequences all of length T; h: [B, H] initial state."""
        use_module = cb_on and bool(self.mods)
        a = None
        if "rm.input" in self.mods:
            a = torch.zeros(h.shape[0], self.mods["rm.recurrent"].weight.shape[0], dtype=h.dtype)
        for t in range(x.shape[0]):
            if self.gru:
                c = self.cell
                gi = x[t] @ c.weight_ih.T + c.bias_ih
                gh = h @ c.weight_hh.T + c.bias_hh
                i_r, i_z, i_n = gi.chunk(3, dim=-1)
                h_r, h_z, h_n = gh.chunk(3, dim=-1)
                r = torch.sigmoid(i_r + h_r)
                z = torch.sigmoid(i_z + h_z)
                rest = i_n + r * h_n
                if t == 0:
                    # the gate convention written out is torch.nn.GRUCell's (whose candidate is tanh)
                    ours = (1.0 - z) * torch.tanh(rest) + z * h
                    assert torch.allclose(ours, c(x[t], h), rtol=1e-5, atol=1e-6), "GRUCell's gate convention"
                if use_module:
                    b_cb, _ = self.module_bias(h, x[t], a)
                    rest_norm = torch.linalg.vector_norm(rest, dim=-1, keepdim=True)
                    cb_norm = torch.linalg.vector_norm(b_cb, dim=-1, keepdim=True)
                    scale = torch.clamp(GRU_CB_NORM_RATIO * rest_norm / cb_norm, max=1.0)
                    rest = rest + scale * b_cb
                n = F.leaky_relu(rest, negative_slope=0.01)
                h = (1.0 - z) * n + z * h
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
            res = trial(xs, hs, cb == "on")
            for k, b in enumerate(idx):
                out[b] = res[k]
        trial_logits = torch.stack(out)
        total = total + F.cross_entropy(trial_logits, torch.tensor(labels[m]))
        logits[m] = trial_logits.detach()
    np.save(folder / "logits.npy", logits.numpy())
    if grads == "grads":
        total.backward()
        for name in trials[0].named():
            g = torch.stack([t.named()[name].grad for t in trials])
            np.save(folder / f"grad_{name}.npy", g.numpy())


if __name__ == "__main__":
    main()
