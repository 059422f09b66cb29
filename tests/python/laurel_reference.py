"""transformers' Gemma3nTextLaurelBlock (LAuReL, Menghani et al., arXiv 2411.07501, as shipped in
Gemma 3n): forward + backward in float64, for a Rust test to compare against.

Usage: laurel_reference.py IN.safetensors OUT.safetensors CONFIG_JSON

CONFIG_JSON: dim (hidden_size D), rank (laurel_rank r), rms_norm_eps [1e-6], exact_fp64 [true]
(Gemma3nRMSNorm computes in float32 via `.float()`; true makes that cast a no-op on float64
tensors so everything stays float64; false keeps the float32 norm, ~1e-7 relative differences).

The block (transformers/models/gemma3n/modeling_gemma3n.py, class Gemma3nTextLaurelBlock):
    out = x + RMSNorm(linear_right(linear_left(x)))
        = x + (x Wl^T Wr^T) * rsqrt(mean((x Wl^T Wr^T)^2, -1) + eps) * w
with Wl = linear_left.weight [r, D], Wr = linear_right.weight [D, r], w = post_laurel_norm.weight [D]
(Gemma3nRMSNorm scales by w itself, not 1 + w; w starts at ones).

IN: x [B, T, D], upstream [B, T, D] (loss = (out * upstream).sum()), linear_left.weight [r, D],
    linear_right.weight [D, r], post_laurel_norm.weight [D] (transformers' names; one that IN lacks
    keeps the module's construction value: nn.Linear's default init, ones for the norm weight).
OUT: output [B, T, D], grad.x, grad.<name> for the three parameters, param.<name> (values used).
"""

import json
import sys

import torch
from exact_fp64 import float64_casts
from safetensors.torch import load_file, save_file



def main() -> None:
    from transformers import Gemma3nTextConfig
    from transformers.models.gemma3n.modeling_gemma3n import Gemma3nTextLaurelBlock

    source, target, config = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    torch.manual_seed(0)
    tensors = load_file(source)
    text_config = Gemma3nTextConfig(
        hidden_size=int(config["dim"]),
        laurel_rank=int(config["rank"]),
        rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
    )
    block = Gemma3nTextLaurelBlock(text_config).double()
    params = dict(block.named_parameters())
    unused = set(tensors) - set(params) - {"x", "upstream"}
    if unused:
        raise ValueError(f"IN has tensors the block does not use: {sorted(unused)}")
    with torch.no_grad():
        for name, p in params.items():
            if name in tensors:
                if tuple(tensors[name].shape) != tuple(p.shape):
                    raise ValueError(f"{name}: shape {tuple(tensors[name].shape)}, the block has {tuple(p.shape)}")
                p.copy_(tensors[name].to(torch.float64))
    x = tensors["x"].to(torch.float64).clone().requires_grad_(True)
    with float64_casts(bool(config.get("exact_fp64", True))):
        output = block(x)
        (output * tensors["upstream"].to(torch.float64)).sum().backward()
    out = {"output": output, "grad.x": x.grad}
    for name, p in params.items():
        out[f"grad.{name}"] = p.grad
        out[f"param.{name}"] = p
    save_file({k: v.detach().to(torch.float64).contiguous() for k, v in out.items()}, target)


if __name__ == "__main__":
    main()
