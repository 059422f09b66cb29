"""Forward + backward of the `hyper-connections` package (lucidrains, PyPI hyper-connections==0.4.11)
around a linear branch, for a Rust test to compare against.

Usage:
    hyper_connections_reference.py IN.safetensors OUT.safetensors CONFIG_JSON
    hyper_connections_reference.py --init CONFIG_JSON OUT.safetensors

CONFIG_JSON keys (defaults in brackets):
    n              number of residual streams
    dim            feature dimension D
    dynamic        [true]  false = static hyper-connections: the dynamic parameters (dynamic_*_fn,
                   the dynamic scales, norm.gamma) are left out and held at the package's init (zeros),
                   so every dynamic term is exactly 0 (tanh(0) = 0 for HC; 0 @ x = 0 for mHC)
    layer_index    [0]     picks the stream that feeds the branch at init (layer_index % n); the
                   package picks a random one when none is given, so it is always passed here
    mhc            [false] true = the package's ManifoldConstrainedHyperConnections (mHC)
    mhc_impl       ["v1"]  "v1": hyper_connections.mHC (the top-level export, module
                   manifold_constrained_hyper_connections); "v2": hyper_connections.mHCv2.mHC
    sinkhorn_iters [20]    Sinkhorn-Knopp iterations (mHC only)
    tanh           [true]  HC only: the package's `tanh` switch on the dynamic weights
    exact_fp64     [true]  the mHC modules cast to float32 internally (`.float()`); true makes those
                   casts no-ops for float64 tensors so the whole computation stays in float64. false
                   keeps the package's float32 casts (then expect ~1e-7 relative differences)

Layouts (B batch, T sequence, n streams, D = dim):
    HC and mHC v1: streams are [B*n, T, D], row b*n + s (batch outer, stream inner) - the package's
                   expand_stream (`b ... -> (b s) ...`, repeat) / reduce_stream (sum over s) layout.
    mHC v2:        streams are [B, T, n, D].

IN holds
    streams        float64, the input residual streams (layout above)
    upstream       float64, same shape: the loss is (output * upstream).sum()
    branch.weight  [D, D]; the branch is branch(x) = x @ branch.weight.T (nn.Linear, no bias)
    <param>        any of the module's parameters under the package's names (see --init for the
                   list, names and shapes); a parameter that IN lacks keeps the package's init value.
                   Any other tensor (e.g. a dynamic parameter with dynamic=false) is an error.
OUT holds
    output         the output streams (same layout as streams)
    branch_input   [B, T, D] what the branch received
    grad.streams   d loss / d streams
    grad.<param>   d loss / d param for every trainable parameter, branch.weight included
    param.<param>  the parameter values used (float64)
Parameters (package names; dynamic ones only with dynamic=true; all float32 at construction):
    HC:   static_alpha [n, 1+n] (column 0 = e_{layer_index % n}, columns 1.. = I), static_beta [n]
          (ones), dynamic_alpha_fn [D, 1+n] (zeros), dynamic_alpha_scale [] (0.01),
          dynamic_beta_fn [D] (zeros), dynamic_beta_scale [] (0.01), norm.gamma [D] (zeros)
    mHC v1: static_alpha [n, 1+n], static_beta [n], dynamic_alpha_fn [1, D, 1+n], pre_branch_scale [1],
          residual_scale [1], dynamic_beta_fn [D], h_post_scale [], norm.gamma [D] (same inits)
    mHC v2: as v1 but static_beta [n, 1, 1] and dynamic_beta_fn [D, 1]
With --init, OUT holds the freshly constructed module's parameters (no branch) under their names,
in the package's own dtype (float32), for config (n, dim, dynamic, layer_index, mhc, ...).
"""

import json
import sys

import torch
from exact_fp64 import float64_casts
from safetensors.torch import load_file, save_file
from torch import nn

DYNAMIC_NAMES = (
    "dynamic_alpha_fn",
    "dynamic_alpha_scale",
    "dynamic_beta_fn",
    "dynamic_beta_scale",
    "pre_branch_scale",
    "residual_scale",
    "h_post_scale",
    "norm.gamma",
)


def build(config: dict, branch: nn.Module | None) -> nn.Module:
    n, dim = int(config["n"]), int(config["dim"])
    layer_index = int(config.get("layer_index", 0))
    if config.get("mhc", False):
        impl = config.get("mhc_impl", "v1")
        if impl == "v1":
            from hyper_connections.manifold_constrained_hyper_connections import ManifoldConstrainedHyperConnections as M
        elif impl == "v2":
            from hyper_connections.mHCv2 import ManifoldConstrainedHyperConnections as M
        else:
            raise ValueError(f"mhc_impl {impl!r}: expected v1 or v2")
        return M(n, dim=dim, branch=branch, layer_index=layer_index, sinkhorn_iters=int(config.get("sinkhorn_iters", 20)))
    from hyper_connections.hyper_connections import HyperConnections

    return HyperConnections(n, dim=dim, branch=branch, layer_index=layer_index, tanh=bool(config.get("tanh", True)))


def module_params(module: nn.Module, config: dict) -> dict[str, nn.Parameter]:
    """The parameters that take part (the static variant freezes the dynamic ones at their init)."""
    dynamic = bool(config.get("dynamic", True))
    params = {}
    for name, p in module.named_parameters():
        if not dynamic and name in DYNAMIC_NAMES:
            p.requires_grad_(False)
            continue
        params[name] = p
    return params



def write_init(config: dict, target: str) -> None:
    module = build(config, None)
    params = module_params(module, config)
    save_file({name: p.detach().clone().contiguous() for name, p in params.items()}, target)


def run(source: str, target: str, config: dict) -> None:
    torch.manual_seed(0)
    tensors = load_file(source)
    dim = int(config["dim"])
    branch = nn.Linear(dim, dim, bias=False)
    module = build(config, branch).double()
    params = module_params(module, config)
    with torch.no_grad():
        for name, p in params.items():
            if name in tensors:
                value = tensors[name]
                if tuple(value.shape) != tuple(p.shape):
                    raise ValueError(f"{name}: shape {tuple(value.shape)}, the module has {tuple(p.shape)}")
                p.copy_(value.to(torch.float64))
    unused = set(tensors) - set(params) - {"streams", "upstream"}
    if unused:
        raise ValueError(f"IN has tensors this configuration does not use: {sorted(unused)}")

    streams = tensors["streams"].to(torch.float64).clone().requires_grad_(True)
    upstream = tensors["upstream"].to(torch.float64)
    seen = {}

    def record_branch_input(_module, inputs):  # a pre-hook returning None leaves the input as is
        seen["branch_input"] = inputs[0].detach().clone()

    branch.register_forward_pre_hook(record_branch_input)

    module.train()  # dropout defaults to 0, so train/eval are the same
    with float64_casts(bool(config.get("exact_fp64", True))):
        output = module(streams)
        (output * upstream).sum().backward()

    out = {
        "output": output.detach(),
        "branch_input": seen["branch_input"],
        "grad.streams": streams.grad,
    }
    for name, p in params.items():
        out[f"grad.{name}"] = p.grad if p.grad is not None else torch.zeros_like(p)
        out[f"param.{name}"] = p.detach()
    save_file({k: v.detach().to(torch.float64).contiguous() for k, v in out.items()}, target)


def main() -> None:
    if sys.argv[1] == "--init":
        write_init(json.loads(sys.argv[2]), sys.argv[3])
    else:
        run(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))


if __name__ == "__main__":
    main()
