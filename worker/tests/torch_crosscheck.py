"""Independent PyTorch reference for the worker's packed CB-RNN / RNN (docs/science.md#models).

Called by the worker's crosscheck test with a directory holding, as .npy files, one pack's
weights (param_<name>.npy, shaped [M, ...]) and inputs (x [T, M, B], lengths [M, B], h0 [M, B, H],
labels [M, B]). Builds each trial as ordinary nn.Linear layers, runs every sequence unpadded for
its own length, and writes the logits (logits.npy, [M, B, 2]) and, when asked, the gradients of
the summed per-trial mean cross-entropy (grad_<name>.npy).

usage: torch_crosscheck.py DIR {rnn,cbrnn} {on,off} {grads,nograds}
"""

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ALPHA = 1.0 / 1.5


class Trial(nn.Module):
    def __init__(self, weights, m, with_cb):
        super().__init__()
        w = lambda name: torch.tensor(weights[name][m])
        hidden = w("core.w_h").shape[0]
        self.inp = nn.Linear(1, hidden).double()
        self.hh = nn.Linear(hidden, hidden).double()
        self.readout = nn.Linear(hidden, 2).double()
        with torch.no_grad():
            self.inp.weight.copy_(w("core.w_x"))
            self.inp.bias.copy_(w("core.b_x"))
            self.hh.weight.copy_(w("core.w_h"))
            self.hh.bias.copy_(w("core.b_h"))
            self.readout.weight.copy_(w("readout.weight"))
            self.readout.bias.copy_(w("readout.bias"))
        self.with_cb = with_cb
        if with_cb:
            granule, purkinje = w("cb.granule.weight").shape[0], w("cb.purkinje.weight").shape[0]
            self.gc = nn.Linear(hidden + 1, granule).double()
            self.pc = nn.Linear(granule, purkinje).double()
            self.dcn = nn.Linear(purkinje, hidden).double()
            with torch.no_grad():
                for layer, name in [(self.gc, "granule"), (self.pc, "purkinje"), (self.dcn, "dcn")]:
                    layer.weight.copy_(w(f"cb.{name}.weight"))
                    layer.bias.copy_(w(f"cb.{name}.bias"))

    def named(self):
        named = {
            "core.w_x": self.inp.weight, "core.b_x": self.inp.bias,
            "core.w_h": self.hh.weight, "core.b_h": self.hh.bias,
            "readout.weight": self.readout.weight, "readout.bias": self.readout.bias,
        }
        if self.with_cb:
            for layer, name in [(self.gc, "granule"), (self.pc, "purkinje"), (self.dcn, "dcn")]:
                named[f"cb.{name}.weight"] = layer.weight
                named[f"cb.{name}.bias"] = layer.bias
        return named

    def forward(self, x, h, cb_on):
        """x: [T, B, 1] bits of sequences all of length T; h: [B, H] initial state."""
        for t in range(x.shape[0]):
            pre = self.inp(x[t]) + self.hh(h)
            if self.with_cb and cb_on:
                g = F.relu(self.gc(torch.cat([h, x[t]], dim=-1)))
                p = F.relu(self.pc(g))
                pre = pre + self.dcn(p)
            h = (1.0 - ALPHA) * h + ALPHA * F.leaky_relu(pre, negative_slope=0.01)
        return self.readout(h)


def main():
    folder, arch, cb, grads = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    load = lambda name: np.load(folder / f"{name}.npy")
    weights = {p.stem[len("param_"):]: np.load(p) for p in folder.glob("param_*.npy")}
    x, lengths, h0, labels = load("x"), load("lengths"), load("h0"), load("labels")
    m_count, batch = lengths.shape
    trials = [Trial(weights, m, arch == "cbrnn") for m in range(m_count)]
    logits = torch.zeros(m_count, batch, 2, dtype=torch.float64)
    total = torch.zeros((), dtype=torch.float64)
    for m, trial in enumerate(trials):
        out = [None] * batch
        for length in sorted(set(lengths[m].tolist())):
            idx = [b for b in range(batch) if lengths[m, b] == length]
            xs = torch.tensor(x[:length, m, idx], dtype=torch.float64).unsqueeze(-1)
            hs = torch.tensor(h0[m, idx], dtype=torch.float64)
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
