"""Shared by the reference scripts: keep a float64 computation float64 inside code that casts to
float32 on purpose (`.float()`), so the references are exact to float64 round-off."""

import contextlib

import torch


@contextlib.contextmanager
def float64_casts(enabled: bool):
    """Make `.float()` a no-op on float64 tensors while the block runs (when `enabled`)."""
    if not enabled:
        yield
        return
    original = torch.Tensor.float

    def keep_float64(self, *args, **kwargs):
        return self if self.dtype == torch.float64 else original(self, *args, **kwargs)

    torch.Tensor.float = keep_float64
    try:
        yield
    finally:
        torch.Tensor.float = original
