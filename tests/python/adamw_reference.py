"""torch.optim.AdamW on the parameters and gradients a Rust test wrote (tests/optimizer.rs).

Usage: adamw_reference.py IN.safetensors OUT.safetensors CONFIG_JSON

IN holds `param.<name>` (initial values) and `grad.<name>` ([steps, *shape], the gradient of
every step; a parameter without one never gets a gradient). CONFIG_JSON gives `names`, the
learning rate of each step (`lr`), `beta1`, `beta2`, `eps`, `weight_decay` and the names in
the weight-decay group (`decayed`); the other parameters get no decay. OUT holds the parameters
after the last step, under their names. The single-tensor implementation is used
(foreach=False, fused=False): PyTorch's plainest code path, independent of the fused kernel.
"""

import json
import sys

import torch
from safetensors.torch import load_file, save_file


def main() -> None:
    source, target, config = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    tensors = load_file(source)
    names = config["names"]
    params = {n: torch.nn.Parameter(tensors[f"param.{n}"].clone()) for n in names}
    decayed = set(config["decayed"])
    groups = [
        {"params": [params[n] for n in names if n in decayed], "weight_decay": config["weight_decay"]},
        {"params": [params[n] for n in names if n not in decayed], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(
        groups,
        lr=config["lr"][0],
        betas=(config["beta1"], config["beta2"]),
        eps=config["eps"],
        foreach=False,
        fused=False,
    )
    for step, lr in enumerate(config["lr"]):
        for group in optimizer.param_groups:
            group["lr"] = lr
        for n in names:
            grad = tensors.get(f"grad.{n}")
            params[n].grad = None if grad is None else grad[step].clone()
        optimizer.step()
    save_file({n: p.detach().contiguous() for n, p in params.items()}, target)


if __name__ == "__main__":
    main()
