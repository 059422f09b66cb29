"""Loads an altup-moe checkpoint folder with safetensors and PyTorch (tests/resume.rs).

Usage: python tests/python/load_checkpoint.py CHECKPOINT_DIR
"""

import json
import os
import sys

import torch
from safetensors.torch import load_file

ckpt = sys.argv[1]
model = load_file(os.path.join(ckpt, "model.safetensors"))
optimizer = load_file(os.path.join(ckpt, "optimizer.safetensors"))
with open(os.path.join(ckpt, "config.json")) as f:
    config = json.load(f)
assert all(isinstance(t, torch.Tensor) for t in model.values())
assert model["embed.weight"].shape[0] == config["vocab_size"]
for name, tensor in model.items():
    assert torch.isfinite(tensor).all(), name
print(f"model tensors: {len(model)}")
print(f"optimizer step: {int(optimizer['step'][0])}")
