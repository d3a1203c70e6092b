"""The yardstick for cbsweep's training benchmark: the CB-RNN and the plain RNN written from
docs/science.md in plain PyTorch and trained the way the study does: one trial per process, a
Python loop over time steps, torch.optim.SGD (Nesterov, momentum 0.1), global-norm clipping.
Not part of the product. Prints one JSON line: {"steps": K, "seconds": s}. On a GPU
(`--device cuda:N`) the same loop runs there, one trial per process, as the study would.
"""
import argparse, json, math, time
import torch

p = argparse.ArgumentParser()
p.add_argument("--arch", choices=["cbrnn", "rnn"], default="cbrnn")
p.add_argument("--hidden", type=int, default=64)
p.add_argument("--granule", type=int, default=256)
p.add_argument("--purkinje", type=int, default=64)
p.add_argument("--level", type=int, default=10)
p.add_argument("--steps", type=int, default=50)
p.add_argument("--warmup", type=int, default=3)
p.add_argument("--batch", type=int, default=64)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--device", default="cpu")
a = p.parse_args()
torch.set_num_threads(1)
torch.manual_seed(a.seed)
dev = torch.device(a.device)

class CBRNN(torch.nn.Module):
    def __init__(s, H, G, P, cb):
        super().__init__()
        s.inp = torch.nn.Linear(1, H)
        s.rec = torch.nn.Linear(H, H)
        s.out = torch.nn.Linear(H, 2)
        s.cb = cb
        if cb:
            s.gc = torch.nn.Linear(H + 1, G)
            s.pc = torch.nn.Linear(G, P)
            s.dcn = torch.nn.Linear(P, H)
            for m, sd in ((s.gc, 0.01), (s.pc, 0.1), (s.dcn, 0.1)):
                torch.nn.init.normal_(m.weight, 0.0, sd)
                torch.nn.init.zeros_(m.bias)
        s.alpha = 1 / 1.5

    def forward(s, x):  # x: [T, B, 1]
        h = 0.1 * torch.rand(x.shape[1], s.rec.in_features, device=x.device)
        for t in range(x.shape[0]):
            pre = s.inp(x[t]) + s.rec(h)
            if s.cb:
                g = torch.relu(s.gc(torch.cat([h, x[t]], dim=1)))
                pre = pre + s.dcn(torch.relu(s.pc(g)))
            h = (1 - s.alpha) * h + s.alpha * torch.nn.functional.leaky_relu(pre, 0.01)
        return s.out(h)

net = CBRNN(a.hidden, a.granule, a.purkinje, a.arch == "cbrnn").to(dev)
opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.1, nesterov=True)
N = a.level

def step():
    T = int(torch.randint(N + 2, 4 * N + 2, (1,)))
    x = torch.randint(0, 2, (T, a.batch, 1), device=dev).float()
    y = (x[T - N, :, 0] == x[T - 1, :, 0]).long()  # N-DMS
    loss = torch.nn.functional.cross_entropy(net(x), y)
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 7.5)
    opt.step()

def sync():
    # CUDA runs asynchronously: the clock stops when the GPU's work is done
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)

for _ in range(a.warmup):
    step()
sync()
t0 = time.perf_counter()
for _ in range(a.steps):
    step()
sync()
print(json.dumps({"steps": a.steps, "seconds": time.perf_counter() - t0}))
