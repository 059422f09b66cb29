"""mHC (Xie et al., "mHC: Manifold-Constrained Hyper-Connections", arXiv 2512.24880) around a linear
branch: forward + backward in float64, for a Rust test to compare against.

The `hyper-connections` package's mHC (tests/python/hyper_connections_reference.py, "mhc": true)
follows the HC paper's per-stream parameterisation; this script transcribes the mHC paper itself
("impl": "paper"), or runs the DeepSeek-V4 implementation that ships in transformers
("impl": "deepseek_v4": transformers.models.deepseek_v4.modeling_deepseek_v4.DeepseekV4HyperConnection
plus the combination of DeepseekV4DecoderLayer.forward).

Usage: mhc_reference.py IN.safetensors OUT.safetensors CONFIG_JSON

CONFIG_JSON: n (streams), dim (D), impl ["paper"], sinkhorn_iters [20] (t_max), rms_eps [1e-6]
(the unweighted RMSNorm of the flattened streams), hc_eps [1e-6] (deepseek_v4 only),
exact_fp64 [true] (deepseek_v4 only: its `.float()` casts become no-ops on float64 tensors).

Layout: streams and upstream are [B, T, n, D] (the paper's x_l in R^{n x C} per token; DeepSeek-V4's
[batch, seq, hc_mult, hidden]). vec(x_l) is the row-major flattening, index s*D + d.

The paper (section 4.2), per token, with x_l in R^{n x C}, C = D:
    Eq. (3)  x_{l+1} = H^res_l x_l + H^post_l^T F(H^pre_l x_l, W_l)
             i.e. out[i] = sum_j H_res[i, j] x[j] + H_post[i] * F(sum_j H_pre[j] x[j])
    Eq. (7)  x' = RMSNorm(vec(x_l))                                 (1 x nC, no learned gain here)
             H~pre  = alpha_pre  * (x' phi_pre)  + b_pre            (1 x n)
             H~post = alpha_post * (x' phi_post) + b_post           (1 x n)
             H~res  = alpha_res  * mat(x' phi_res) + b_res          (n x n, mat = row-major reshape)
    Eq. (8)  H_pre = sigmoid(H~pre), H_post = 2 sigmoid(H~post), H_res = Sinkhorn-Knopp(H~res)
    Eq. (9)  M(0) = exp(H~res); M(t) = T_r(T_c(M(t-1))) (column then row normalisation), t = 1..t_max;
             H_res = M(t_max)   (rows sum to 1 exactly, columns approximately)
IN ("paper"): phi_pre [nD, n], phi_post [nD, n], phi_res [nD, n*n], b_pre [n], b_post [n],
    b_res [n, n], alpha_pre [], alpha_post [], alpha_res [] (0-dim scalars).
IN ("deepseek_v4"): fn [(2+n)*n, nD] (rows: pre n, post n, comb n*n), base [(2+n)*n], scale [3]
    (pre, post, comb) - the transformers names. There: pre = sigmoid(.) + hc_eps,
    post = 2 sigmoid(.), comb = softmax_lastdim(.) + hc_eps, then comb /= (colsum + eps) and
    (t_max - 1) x [comb /= (rowsum + eps); comb /= (colsum + eps)], and the layer output is
    post[:, None] * F(collapsed) + comb^T @ x, i.e. comb = H_res^T of the paper.
Both: streams, upstream (same shape as streams; loss = (output * upstream).sum()), branch.weight [D, D]
    (branch(y) = y @ branch.weight.T). Every parameter is required (neither source fixes an init).
OUT: output [B, T, n, D], branch_input [B, T, D], H_pre [B, T, n], H_post [B, T, n],
    H_res [B, T, n, n] (paper orientation: out[i] += H_res[i, j] x[j]), grad.streams, grad.<param>
    for every parameter, branch.weight included.
"""

import json
import sys

import torch
from exact_fp64 import float64_casts
import torch.nn.functional as F

PAPER_PARAMS = ("phi_pre", "phi_post", "phi_res", "b_pre", "b_post", "b_res", "alpha_pre", "alpha_post", "alpha_res")
DSV4_PARAMS = ("fn", "base", "scale")


def sinkhorn_knopp(logits: torch.Tensor, iters: int) -> torch.Tensor:
    """Eq. (9) on the last two dims [..., n, n]: exp, then t_max x (column, then row normalisation)."""
    # a constant shift of all logits cancels in the first column normalisation: it only guards exp
    m = (logits - logits.amax(dim=(-2, -1), keepdim=True).detach()).exp()
    for _ in range(iters):
        m = m / m.sum(dim=-2, keepdim=True)  # T_c: every column sums to 1
        m = m / m.sum(dim=-1, keepdim=True)  # T_r: every row sums to 1
    return m


def paper_maps(x: torch.Tensor, p: dict, config: dict):
    """Eqs. (7)-(9): H_pre [B,T,n], H_post [B,T,n], H_res [B,T,n,n] from the streams x [B,T,n,D]."""
    n = x.shape[-2]
    flat = x.flatten(-2)  # vec(x_l), index s*D + d
    xn = flat * torch.rsqrt(flat.square().mean(-1, keepdim=True) + config.get("rms_eps", 1e-6))
    h_pre = p["alpha_pre"] * (xn @ p["phi_pre"]) + p["b_pre"]
    h_post = p["alpha_post"] * (xn @ p["phi_post"]) + p["b_post"]
    h_res = p["alpha_res"] * (xn @ p["phi_res"]).unflatten(-1, (n, n)) + p["b_res"]
    return h_pre.sigmoid(), 2 * h_post.sigmoid(), sinkhorn_knopp(h_res, int(config.get("sinkhorn_iters", 20)))



def main() -> None:
    from safetensors.torch import load_file, save_file

    source, target, config = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    tensors = {k: v.to(torch.float64) for k, v in load_file(source).items()}
    n, dim = int(config["n"]), int(config["dim"])
    impl = config.get("impl", "paper")
    names = {"paper": PAPER_PARAMS, "deepseek_v4": DSV4_PARAMS}[impl]
    missing = [k for k in (*names, "branch.weight", "streams", "upstream") if k not in tensors]
    if missing:
        raise ValueError(f"IN lacks {missing}")
    unused = set(tensors) - {*names, "branch.weight", "streams", "upstream"}
    if unused:
        raise ValueError(f"IN has tensors this configuration does not use: {sorted(unused)}")
    params = {k: tensors[k].clone().requires_grad_(True) for k in (*names, "branch.weight")}
    x = tensors["streams"].clone().requires_grad_(True)
    assert x.shape[-2:] == (n, dim), f"streams {tuple(x.shape)}: expected [B, T, {n}, {dim}]"
    weight = params["branch.weight"]

    if impl == "paper":
        h_pre, h_post, h_res = paper_maps(x, params, config)
        branch_input = torch.einsum("btj,btjd->btd", h_pre, x)
        y = branch_input @ weight.T
        output = torch.einsum("btij,btjd->btid", h_res, x) + h_post[..., None] * y[..., None, :]
    else:
        from transformers import DeepseekV4Config
        from transformers.models.deepseek_v4.modeling_deepseek_v4 import DeepseekV4HyperConnection

        hc_config = DeepseekV4Config(
            hidden_size=dim,
            hc_mult=n,
            hc_sinkhorn_iters=int(config.get("sinkhorn_iters", 20)),
            hc_eps=float(config.get("hc_eps", 1e-6)),
            rms_norm_eps=float(config.get("rms_eps", 1e-6)),
        )
        module = DeepseekV4HyperConnection(hc_config).double()
        with torch.no_grad():
            for k in DSV4_PARAMS:
                getattr(module, k).copy_(tensors[k])
        for k in DSV4_PARAMS:  # gradients land on the module's own parameters
            params[k] = getattr(module, k)
        with float64_casts(bool(config.get("exact_fp64", True))):
            post, comb, branch_input = module(x)
            y = branch_input @ weight.T
            # DeepseekV4DecoderLayer.forward: post * block_output + comb^T @ hidden_streams
            output = post.to(x.dtype).unsqueeze(-1) * y.unsqueeze(-2) + torch.matmul(comb.to(x.dtype).transpose(-1, -2), x)
            # the maps, for OUT (pre is consumed inside the module: recompute it the module's way)
            flat = module.input_norm(x.detach().flatten(2).float())
            mixes = F.linear(flat, module.fn.detach().float())
            h_pre = torch.sigmoid(mixes[..., :n] * module.scale[0].detach() + module.base[:n].detach()) + module.hc_eps
        h_post, h_res = post, comb.transpose(-1, -2)

    (output * tensors["upstream"]).sum().backward()
    out = {
        "output": output,
        "branch_input": branch_input,
        "H_pre": h_pre,
        "H_post": h_post,
        "H_res": h_res,
        "grad.streams": x.grad,
    }
    for k, p in params.items():
        out[f"grad.{k}"] = p.grad if p.grad is not None else torch.zeros_like(p)
    save_file({k: v.detach().to(torch.float64).contiguous() for k, v in out.items()}, target)


if __name__ == "__main__":
    main()
