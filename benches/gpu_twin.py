"""The PyTorch twin of the gpu_bench stacks: the same models, trained the same way, timed call by
call for examples/gpu_bench.rs (which interleaves them with its own steps on the same device).

Usage: python benches/gpu_twin.py --serve

Protocol: after a `ready THREADS TORCH_VERSION DEVICE_NAME` line, every stdin line is a JSON
request and every answer one stdout line:
  {"case": {...}, "compile": false}  -> seconds of one training step (device synchronised)
  {"peak": {...}, "compile": false}  -> peak bytes the CUDA allocator held in the last step (0 on CPU)
  {"drop": true}                     -> "ok" after freeing every model (before the next stack)
A case: stack (dense | switch | mixtral | altup | altup-switch), d, heads, layers, seq, batch,
accum (micro-batches per step), experts, device (cpu | cuda), precision (f32 | bf16-mixed).
Errors are answered as `error: ...`.

The models mirror ModelConfig's presets as gpu_bench builds them: byte vocabulary, pre-norm
blocks (RMSNorm, rotary attention with a fused q/k/v projection, GELU FFN of 4·d), an untied
head; Switch: top-1 of E experts (4·d, GELU) on every other block (1, 3, …), dropless, gates =
router probabilities; Mixtral-style: top-2 of E SwiGLU experts of width 2·d on every block, gates
renormalised; AltUp: K = 2 blocks of width d (a K·d embedding), static predictor/corrector,
output = the blocks' mean; AltUp + Switch: both. Objective: cross-entropy + 0.01 · mean
load-balancing loss + 0.001 · mean z-loss; global-norm clipping at 1; AdamW (β = 0.9, 0.95,
weight decay 0.1, fused on CUDA). bf16-mixed runs the forward under autocast (bf16 matmuls, f32
weights and residual stream). Experts run on torch._grouped_mm where it works (sorted rows,
device offsets: no host sync, so torch.compile keeps one graph; bf16), else as a loop over
experts.
`compile` wraps the model in torch.compile (the loss, backward and optimizer stay eager).
"""

import json
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

WARMUP = 3


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight).type_as(x)


def rope(x, theta=10000.0):
    _, _, t, hd = x.shape
    half = hd // 2
    inv = theta ** (-torch.arange(half, dtype=torch.float32, device=x.device) * 2.0 / hd)
    ang = torch.arange(t, dtype=torch.float32, device=x.device)[:, None] * inv[None, :]
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)


class Attention(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        self.heads = heads

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(rope(q), rope(k), v, is_causal=True)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class FFN(nn.Module):
    def __init__(self, d, f):
        super().__init__()
        self.w_in = nn.Linear(d, f, bias=False)
        self.w_out = nn.Linear(f, d, bias=False)

    def forward(self, x):
        return self.w_out(F.gelu(self.w_in(x))), None


def grouped_mm_works(device, dtype):
    # torch.compile's shape rules for _grouped_mm take bf16 only.
    if not hasattr(torch, "_grouped_mm") or dtype != torch.bfloat16:
        return False
    try:
        x = torch.zeros(16, 16, device=device, dtype=dtype)
        w = torch.zeros(2, 16, 16, device=device, dtype=dtype)
        torch._grouped_mm(x, w, offs=torch.tensor([8, 16], device=device, dtype=torch.int32))
        return True
    except Exception:
        return False


class MoE(nn.Module):
    """Token-choice top-k, dropless: f32 router, rows sorted by expert."""

    def __init__(self, d, f, e, k, swiglu, grouped):
        super().__init__()
        self.router = nn.Linear(d, e, bias=False)
        self.w_in = nn.Parameter(torch.randn(e, d, f) * 0.02)
        self.w_gate = nn.Parameter(torch.randn(e, d, f) * 0.02) if swiglu else None
        self.w_out = nn.Parameter(torch.randn(e, f, d) * 0.02)
        self.e, self.k, self.grouped = e, k, grouped

    def experts(self, rows, counts, dtype):
        w_in, w_out = self.w_in.to(dtype), self.w_out.to(dtype)
        w_gate = None if self.w_gate is None else self.w_gate.to(dtype)
        if self.grouped:
            offs = counts.cumsum(0).to(torch.int32)
            h = torch._grouped_mm(rows, w_in, offs=offs)
            h = F.gelu(h) if w_gate is None else F.silu(torch._grouped_mm(rows, w_gate, offs=offs)) * h
            return torch._grouped_mm(h, w_out, offs=offs)
        outs, start = [], 0
        for i, n in enumerate(counts.tolist()):
            if n:
                x = rows[start:start + n]
                h = x @ w_in[i]
                h = F.gelu(h) if w_gate is None else F.silu(x @ w_gate[i]) * h
                outs.append(h @ w_out[i])
                start += n
        return torch.cat(outs)

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        n = x.shape[0]
        logits = F.linear(x.float(), self.router.weight.float())
        probs = logits.softmax(-1)
        gate, idx = probs.topk(self.k, -1)
        if self.k > 1:
            gate = gate / gate.sum(-1, keepdim=True)
        flat = idx.t().reshape(-1)  # choice-major
        order = flat.argsort(stable=True)
        counts = F.one_hot(flat, self.e).sum(0)
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        rows = x[order % n].to(dtype)
        out = self.experts(rows, counts, dtype)
        weighted = out.float() * gate.t().reshape(-1)[order, None]
        y = torch.zeros(self.k * n, shape[-1], device=x.device, dtype=torch.float32).index_copy(0, order, weighted)
        y = y.view(self.k, n, -1).sum(0).to(x.dtype)
        frac = F.one_hot(idx[:, 0], self.e).float().mean(0)
        balance = self.e * (frac * probs.mean(0)).sum()
        z = logits.logsumexp(-1).pow(2).mean()
        return y.reshape(shape), (balance, z)


class Block(nn.Module):
    def __init__(self, d, heads, ffn):
        super().__init__()
        self.n1, self.attn, self.n2, self.ffn = RMSNorm(d), Attention(d, heads), RMSNorm(d), ffn

    def forward(self, x):
        x = x + self.attn(self.n1(x))
        h, aux = self.ffn(self.n2(x))
        return x + h, aux


class LM(nn.Module):
    def __init__(self, case, grouped):
        super().__init__()
        stack, d, layers, e = case["stack"], case["d"], case["layers"], case.get("experts", 8)
        self.k = 2 if stack.startswith("altup") else 1
        self.d = d

        def ffn(layer):
            if stack in ("switch", "altup-switch") and layer % 2 == 1:
                return MoE(d, 4 * d, e, 1, False, grouped)
            if stack == "mixtral":
                return MoE(d, 2 * d, e, 2, True, grouped)
            return FFN(d, 4 * d)

        self.embed = nn.Embedding(256, self.k * d)
        self.blocks = nn.ModuleList(Block(d, case["heads"], ffn(l)) for l in range(layers))
        if self.k > 1:
            self.p = nn.ParameterList(nn.Parameter(torch.eye(self.k)) for _ in range(layers))
            self.g = nn.ParameterList(nn.Parameter(torch.ones(self.k)) for _ in range(layers))
        self.norm, self.head = RMSNorm(d), nn.Linear(d, 256, bias=False)

    def forward(self, tokens):
        b, t = tokens.shape
        aux = []
        if self.k == 1:
            x = self.embed(tokens)
            for block in self.blocks:
                x, a = block(x)
                aux += [a] if a else []
        else:
            x = self.embed(tokens).view(b, t, self.k, self.d).permute(2, 0, 1, 3)
            for l, block in enumerate(self.blocks):
                j = l % self.k
                pred = torch.einsum("ij,jbtd->ibtd", self.p[l], x)
                out, a = block(x[j])
                aux += [a] if a else []
                x = pred + self.g[l][:, None, None, None] * (out - pred[j])[None]
            x = x.mean(0)
        return self.head(self.norm(x)), aux


class Step:
    def __init__(self, case, compiled):
        device = torch.device(case["device"])
        self.device = device
        mixed = case["precision"] == "bf16-mixed"
        grouped = grouped_mm_works(device, torch.bfloat16 if mixed else torch.float32)
        torch.manual_seed(0)
        self.model = LM(case, grouped).to(device)
        self.forward = torch.compile(self.model) if compiled else self.model
        fused = device.type == "cuda"
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1, fused=fused)
        self.data = torch.randint(256, (case["accum"], case["batch"], case["seq"] + 1), device=device)
        self.mixed = mixed
        for _ in range(WARMUP):
            self()

    def __call__(self):
        self.opt.zero_grad(set_to_none=True)
        accum = self.data.shape[0]
        for micro in self.data:
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.mixed):
                logits, aux = self.forward(micro[:, :-1])
            loss = F.cross_entropy(logits.float().reshape(-1, 256), micro[:, 1:].reshape(-1))
            if aux:
                loss = loss + 0.01 * torch.stack([a[0] for a in aux]).mean() + 0.001 * torch.stack([a[1] for a in aux]).mean()
            (loss / accum).backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0, foreach=True)
        self.opt.step()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def serve():
    steps = {}
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"ready {torch.get_num_threads()} {torch.__version__} {name}", flush=True)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            request = json.loads(line)
            if request.get("drop"):
                steps.clear()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                print("ok", flush=True)
                continue
            case = request.get("case") or request.get("peak")
            key = json.dumps([case, request.get("compile", False)], sort_keys=True)
            if key not in steps:
                steps[key] = Step(case, request.get("compile", False))
            step = steps[key]
            if "peak" in request:
                print(torch.cuda.max_memory_allocated(step.device) if step.device.type == "cuda" else 0, flush=True)
                continue
            sync(step.device)
            if step.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(step.device)
            t = time.perf_counter()
            step()
            sync(step.device)
            print(time.perf_counter() - t, flush=True)
        except Exception as e:  # reported to the driver, which names the case
            print(f"error: {type(e).__name__}: {e}".replace("\n", " "), flush=True)


if __name__ == "__main__":
    if "--serve" in sys.argv:
        serve()
    else:
        print(__doc__)
