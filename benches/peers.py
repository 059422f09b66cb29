"""Times the peers of altup-moe's layers and training step at the same shapes and thread count.

Usage: python benches/peers.py OUT.json [--quick]     fastest-of-N timings of every case, as JSON
       python benches/peers.py --serve                 one timed call per case name read on stdin

In `--serve` mode benches/bench_report.rs drives this process: it times one call of its own,
asks for one call of the peer (a line `CASE` on stdin; the answer is the seconds, or `error: ...`),
and so on, A B A B, so that both sides see the same machine state and each pair gives a ratio.
Case names: switch/e{E}_t{TOKENS}, mixtral_e8_k2_t16384, gemma3n_altup_k4_d512_t2048,
train_step/{dense,switch,altup,altup-moe}_d{D}.

Measures (forward + backward, fastest of several runs after warm-up, CPU):
  * Hugging Face SwitchTransformersSparseMLP (top-1, capacity never binding) at E in {1, 8, 64},
    2,048 and 16,384 tokens, D = 256, F = 1024, GELU experts;
  * Hugging Face MixtralSparseMoeBlock (top-2, SwiGLU) at E = 8, 16,384 tokens;
  * Hugging Face Gemma3nTextAltUp predict + correct at K = 4, d = 512, 2,048 tokens;
  * a plain PyTorch-eager version of altup-moe's training step (forward, LM + auxiliary losses,
    backward, clipping, AdamW) for the dense, switch, altup and altup-moe stacks at the default
    size (d = 128) and a tiny size (d = 64).
benches/bench_report.rs reads the JSON and prints ours/theirs ratios.
"""

import json
import math
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

QUICK = "--quick" in sys.argv
RUNS, WARMUP = (2, 1) if QUICK else (7, 2)


def best_seconds(fn):
    """Fastest of RUNS calls after WARMUP untimed ones (the most repeatable figure on a noisy machine)."""
    for _ in range(WARMUP):
        fn()
    times = []
    for _ in range(RUNS):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def fwd_bwd(module, x, call):
    """A step callable: forward + backward of `call(x)` against a random cotangent."""
    g = torch.randn_like(x)

    def step():
        module.zero_grad(set_to_none=True)
        (call(x) * g).sum().backward()

    return step


def switch_layer(e, d=256, f=1024, tokens=2048):
    from transformers import SwitchTransformersConfig
    from transformers.models.switch_transformers.modeling_switch_transformers import SwitchTransformersSparseMLP

    seq = 256
    config = SwitchTransformersConfig(
        d_model=d, d_ff=f, num_experts=e, expert_capacity=seq, router_jitter_noise=0.0,
        dense_act_fn="gelu", router_bias=False, router_dtype="float32", dropout_rate=0.0,
    )
    mlp = SwitchTransformersSparseMLP(config)
    x = torch.randn(tokens // seq, seq, d)
    return fwd_bwd(mlp, x, mlp)


def mixtral_block(e=8, k=2, d=256, f=1024, tokens=16384):
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    config = MixtralConfig(hidden_size=d, intermediate_size=f, num_local_experts=e, num_experts_per_tok=k, router_jitter_noise=0.0)
    block = MixtralSparseMoeBlock(config)
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0.0, 0.02)
    x = torch.randn(tokens // 256, 256, d)
    return fwd_bwd(block, x, block)


def gemma_altup(k=4, d=512, tokens=2048):
    from transformers import Gemma3nTextConfig
    from transformers.models.gemma3n.modeling_gemma3n import Gemma3nTextAltUp

    config = Gemma3nTextConfig(hidden_size=d, altup_num_inputs=k, altup_active_idx=0, altup_coef_clip=120.0)
    altup = Gemma3nTextAltUp(config)
    with torch.no_grad():
        for p in altup.parameters():
            p.normal_(0.0, 0.02)
    x = torch.randn(k, tokens // 256, 256, d)

    def call(x):
        pred = altup.predict(x)
        return altup.correct(pred, pred[0] * 0.5)

    return fwd_bwd(altup, x, call)


# --- a plain PyTorch-eager version of altup-moe's language model -----------------------------


class RMSNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))
        self.eps = eps

    def forward(self, x):
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight).type_as(x)


def rope(x, theta=10000.0):
    b, h, t, hd = x.shape
    half = hd // 2
    inv = theta ** (-torch.arange(half, dtype=torch.float32) * 2.0 / hd)
    ang = torch.arange(t, dtype=torch.float32)[:, None] * inv[None, :]
    cos, sin = ang.cos(), ang.sin()
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
        return self.w_out(F.gelu(self.w_in(x)))


class MoE(nn.Module):
    """Switch top-1, dropless: f32 router, stable sort by expert, one matmul per expert."""

    def __init__(self, d, f, e):
        super().__init__()
        self.router = nn.Linear(d, e, bias=False)
        self.w_in = nn.Parameter(torch.randn(e, d, f) * 0.02)
        self.w_out = nn.Parameter(torch.randn(e, f, d) * 0.02)
        self.e = e

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        logits = self.router(x.float())
        probs = logits.softmax(-1)
        gate, idx = probs.max(-1)
        order = idx.argsort(stable=True)
        counts = torch.bincount(idx, minlength=self.e).tolist()
        rows = x[order]
        outs, start = [], 0
        w_in, w_out = self.w_in.unbind(0), self.w_out.unbind(0)
        for i, n in enumerate(counts):
            if n:
                outs.append(F.gelu(rows[start:start + n] @ w_in[i]) @ w_out[i])
                start += n
        y = torch.empty_like(x).index_copy(0, order, torch.cat(outs) * gate[order, None])
        frac = torch.bincount(idx, minlength=self.e).float() / x.shape[0]
        balance = self.e * (frac * probs.mean(0)).sum()
        z = logits.logsumexp(-1).pow(2).mean()
        return y.reshape(shape), balance, z


class Block(nn.Module):
    def __init__(self, d, heads, f, experts):
        super().__init__()
        self.n1, self.attn, self.n2 = RMSNorm(d), Attention(d, heads), RMSNorm(d)
        self.ffn = MoE(d, f, experts) if experts else FFN(d, f)

    def forward(self, x):
        x = x + self.attn(self.n1(x))
        h = self.ffn(self.n2(x))
        if isinstance(h, tuple):
            return x + h[0], (h[1], h[2])
        return x + h, None


class LM(nn.Module):
    def __init__(self, arch, d, layers=4, heads=4, experts=8, k_blocks=2, vocab=256):
        super().__init__()
        moe = arch in ("switch", "altup-moe")
        self.k = k_blocks if arch in ("altup", "altup-moe") else 1
        self.embed = nn.Embedding(vocab, self.k * d)
        # As the presets place them: MoE on every other block (1, 3) for switch, on every block for
        # altup-moe (ModelConfig::preset(Arch::AltUpMoe)).
        every = 1 if arch == "altup-moe" else 2
        self.blocks = nn.ModuleList(
            Block(d, heads, 4 * d, experts if moe and l % every == every - 1 else 0) for l in range(layers)
        )
        if self.k > 1:
            self.p = nn.ParameterList(nn.Parameter(torch.eye(self.k)) for _ in range(layers))
            self.g = nn.ParameterList(nn.Parameter(torch.ones(self.k)) for _ in range(layers))
        self.norm, self.head, self.d = RMSNorm(d), nn.Linear(d, vocab, bias=False), d

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
        logits = self.head(self.norm(x))
        return logits, aux


def train_step(arch, d, batch=16, seq=128):
    torch.manual_seed(0)
    model = LM(arch, d, heads=4 if d >= 128 else 2)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.1)
    data = torch.randint(256, (batch, seq + 1))

    def step():
        logits, aux = model(data[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, 256), data[:, 1:].reshape(-1))
        if aux:
            loss = loss + 0.01 * torch.stack([a[0] for a in aux]).mean() + 0.001 * torch.stack([a[1] for a in aux]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss.item()

    return step


def case(name):
    """The step callable of a case name (see the module docs)."""
    if name.startswith("switch/"):
        e, tokens = name.split("/")[1].split("_")
        return switch_layer(int(e[1:]), tokens=int(tokens[1:]))
    if name.startswith("mixtral_e8_k2_t"):
        return mixtral_block(tokens=int(name.rsplit("_t", 1)[1]))
    if name == "gemma3n_altup_k4_d512_t2048":
        return gemma_altup()
    if name.startswith("train_step/"):
        arch, d = name.split("/")[1].rsplit("_d", 1)
        return train_step(arch, int(d))
    raise ValueError(f"unknown case {name!r}")


def serve():
    """Answer `CASE` lines with the seconds of one call (the first request of a case also runs
    WARMUP untimed calls)."""
    steps = {}
    print(f"ready {torch.get_num_threads()} {torch.__version__}", flush=True)
    for line in sys.stdin:
        name = line.strip()
        if not name:
            continue
        try:
            if name not in steps:
                steps[name] = case(name)
                for _ in range(WARMUP):
                    steps[name]()
            t = time.perf_counter()
            steps[name]()
            print(time.perf_counter() - t, flush=True)
        except Exception as e:  # reported to the driver, which names the case
            print(f"error: {e}", flush=True)


def main():
    if "--serve" in sys.argv:
        return serve()
    out = sys.argv[1]
    threads = torch.get_num_threads()
    results = {"threads": threads, "torch": torch.__version__, "runs": RUNS, "switch": {}, "train_step": {}}
    token_counts = [2048] if QUICK else [2048, 16384]
    for tokens in token_counts:
        for e in [1, 8, 64]:
            results["switch"][f"e{e}_t{tokens}"] = best_seconds(switch_layer(e, tokens=tokens))
            print(f"HF Switch E={e} tokens={tokens}: {results['switch'][f'e{e}_t{tokens}'] * 1e3:.1f} ms", file=sys.stderr)
    results["mixtral_e8_k2_t16384"] = best_seconds(mixtral_block(tokens=2048 if QUICK else 16384))
    print(f"HF Mixtral E=8 k=2: {results['mixtral_e8_k2_t16384'] * 1e3:.1f} ms", file=sys.stderr)
    results["gemma3n_altup_k4_d512_t2048"] = best_seconds(gemma_altup())
    print(f"HF Gemma3nTextAltUp: {results['gemma3n_altup_k4_d512_t2048'] * 1e3:.1f} ms", file=sys.stderr)
    for d in [128, 64]:
        for arch in ["dense", "switch", "altup", "altup-moe"]:
            results["train_step"][f"{arch}_d{d}"] = best_seconds(train_step(arch, d))
            print(f"PyTorch eager train step {arch} d={d}: {results['train_step'][f'{arch}_d{d}'] * 1e3:.1f} ms", file=sys.stderr)
    with open(out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
