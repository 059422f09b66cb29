// Fused CPU kernels for the elementwise chains of every block that ATen runs as many small
// operations: RMSNorm (square, mean, add, rsqrt, mul, mul and their backward), the rotary
// embedding (two slices, four multiplications, an addition, a subtraction, a concatenation and
// their backward), and the split of attention's fused projection into heads-first queries,
// keys and values with the rotation of the first two (a view, a permute, an unbind, two
// rotations, and a stack of the three gradients in backward). Each is one pass over the activations forward and one backward, as a
// libtorch autograd function (torch::autograd::Function), parallel over rows on libtorch's
// intra-op thread pool. Float and double on the CPU only; the Rust side (src/native/fused.rs)
// sends everything else to the composite formulas.
//
// Rounding follows the composite formulas operation by operation (compiled with
// -ffp-contract=off, so no multiply-add is fused): RMSNorm's y = (x · r) · w with
// r = 1 / sqrt(mean(x²) + eps), the rotary embedding's x1·cos − x2·sin and x2·cos + x1·sin. Only
// the order of the sum of squares differs from ATen's. The weight gradient of RMSNorm is summed
// over fixed blocks of rows, then over the blocks in order: the same result whatever the number
// of threads.

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/custom_function.h>

#include "guarded.h"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace {

using altup_moe_native::guarded;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Rows per block of RMSNorm's weight-gradient partial sums.
constexpr int64_t kRowsPerBlock = 64;

// Rows handed to one thread at a time, for rows of `width` elements (about 16k elements).
int64_t row_grain(int64_t width) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, width));
}

// y = (x · r) · w per row, r = 1 / sqrt(mean(x²) + eps); x [N, D] contiguous, w [D].
template <typename T>
void rms_norm_forward(const T* x, const T* w, T* y, T* rstd, int64_t n, int64_t d, double eps) {
  at::parallel_for(0, n, row_grain(d), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const T* xr = x + row * d;
      T* yr = y + row * d;
      T acc[4] = {0, 0, 0, 0};
      int64_t i = 0;
      for (; i + 4 <= d; i += 4) {
        for (int j = 0; j < 4; ++j) {
          acc[j] += xr[i + j] * xr[i + j];
        }
      }
      for (; i < d; ++i) {
        acc[0] += xr[i] * xr[i];
      }
      const T mean = ((acc[0] + acc[1]) + (acc[2] + acc[3])) / static_cast<T>(d);
      const T r = static_cast<T>(1) / std::sqrt(mean + static_cast<T>(eps));
      rstd[row] = r;
      for (i = 0; i < d; ++i) {
        yr[i] = (xr[i] * r) * w[i];
      }
    }
  });
}

// The gradients of RMSNorm: with g = gy · w, gx = r · g − x · r³ · mean(g · x) per row, and
// gw = Σ_rows gy · (x · r) (summed per block of rows into `partial` [blocks, D], then in order).
template <typename T>
void rms_norm_backward(const T* gy, const T* x, const T* w, const T* rstd, T* gx, T* gw, T* partial, int64_t n,
                       int64_t d) {
  const int64_t blocks = (n + kRowsPerBlock - 1) / kRowsPerBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    for (int64_t block = first; block < last; ++block) {
      T* pw = partial + block * d;
      std::fill(pw, pw + d, static_cast<T>(0));
      const int64_t end = std::min(n, (block + 1) * kRowsPerBlock);
      for (int64_t row = block * kRowsPerBlock; row < end; ++row) {
        const T* gr = gy + row * d;
        const T* xr = x + row * d;
        T* gxr = gx + row * d;
        const T r = rstd[row];
        T dot = 0;
        for (int64_t i = 0; i < d; ++i) {
          dot += (gr[i] * w[i]) * xr[i];
          pw[i] += gr[i] * (xr[i] * r);
        }
        const T k = r * r * r * dot / static_cast<T>(d);
        for (int64_t i = 0; i < d; ++i) {
          gxr[i] = r * (gr[i] * w[i]) - xr[i] * k;
        }
      }
    }
  });
  std::fill(gw, gw + d, static_cast<T>(0));
  for (int64_t block = 0; block < blocks; ++block) {
    const T* pw = partial + block * d;
    for (int64_t i = 0; i < d; ++i) {
      gw[i] += pw[i];
    }
  }
}

struct RmsNormFunction : public torch::autograd::Function<RmsNormFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight, double eps) {
    RECORD_FUNCTION("altup_moe::rms_norm", std::vector<c10::IValue>({x}));
    const int64_t d = weight.numel();
    const auto xc = x.contiguous();
    const auto w = weight.contiguous();
    const int64_t n = d == 0 ? 0 : xc.numel() / d;
    auto y = at::empty_like(xc);
    auto rstd = at::empty({n}, xc.options());
    AT_DISPATCH_FLOATING_TYPES(xc.scalar_type(), "altup_moe_rms_norm", [&] {
      rms_norm_forward<scalar_t>(xc.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(),
                                 y.mutable_data_ptr<scalar_t>(), rstd.mutable_data_ptr<scalar_t>(), n, d, eps);
    });
    ctx->save_for_backward({xc, w, rstd});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    RECORD_FUNCTION("altup_moe::rms_norm_backward", std::vector<c10::IValue>());
    const auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &w = saved[1], &rstd = saved[2];
    const auto gy = grads[0].contiguous();
    const int64_t d = w.numel();
    const int64_t n = rstd.numel();
    auto gx = at::empty_like(x);
    auto gw = at::empty_like(w);
    auto partial = at::empty({(n + kRowsPerBlock - 1) / kRowsPerBlock, d}, x.options());
    AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "altup_moe_rms_norm_backward", [&] {
      rms_norm_backward<scalar_t>(gy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                                  w.const_data_ptr<scalar_t>(), rstd.const_data_ptr<scalar_t>(),
                                  gx.mutable_data_ptr<scalar_t>(), gw.mutable_data_ptr<scalar_t>(),
                                  partial.mutable_data_ptr<scalar_t>(), n, d);
    });
    return {gx, gw, at::Tensor()};
  }
};

// One head's rotation: channel i < half turns with channel i + half by the angle whose cosine
// and sine are c[i], s[i] (`inverse`: by minus that angle, the transpose, for the backward).
template <typename T>
inline void rotate_head(const T* x, const T* c, const T* s, T* y, int64_t half, bool inverse) {
  if (inverse) {
    for (int64_t i = 0; i < half; ++i) {
      const T x1 = x[i], x2 = x[i + half];
      y[i] = x1 * c[i] + x2 * s[i];
      y[i + half] = x2 * c[i] - x1 * s[i];
    }
  } else {
    for (int64_t i = 0; i < half; ++i) {
      const T x1 = x[i], x2 = x[i + half];
      y[i] = x1 * c[i] - x2 * s[i];
      y[i + half] = x2 * c[i] + x1 * s[i];
    }
  }
}

// Rotates `x` [B, H, T, 2·half] (any strides, the last one 1) by the angles whose cosines and
// sines are `cos`, `sin` [T, half] into `y` (contiguous); `inverse` rotates the other way (the
// backward pass: the transpose of a rotation is its inverse).
template <typename T>
void rotate(const at::Tensor& x, const T* cos, const T* sin, T* y, int64_t half, bool inverse) {
  const auto size = x.sizes();
  const auto stride = x.strides();
  const int64_t heads = size[1], steps = size[2];
  const int64_t rows = size[0] * heads * steps;
  const T* src = x.const_data_ptr<T>();
  at::parallel_for(0, rows, row_grain(2 * half), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t t = row % steps, bh = row / steps;
      const int64_t h = bh % heads, b = bh / heads;
      const T* xr = src + b * stride[0] + h * stride[1] + t * stride[2];
      T* yr = y + row * 2 * half;
      rotate_head(xr, cos + t * half, sin + t * half, yr, half, inverse);
    }
  });
}

at::Tensor rotated(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, bool inverse) {
  const auto input = x.stride(3) == 1 ? x : x.contiguous();
  auto y = at::empty(input.sizes(), input.options());
  const int64_t half = cos.size(1);
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "altup_moe_rope", [&] {
    rotate<scalar_t>(input, cos.const_data_ptr<scalar_t>(), sin.const_data_ptr<scalar_t>(),
                     y.mutable_data_ptr<scalar_t>(), half, inverse);
  });
  return y;
}

struct RopeFunction : public torch::autograd::Function<RopeFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
    RECORD_FUNCTION("altup_moe::rope", std::vector<c10::IValue>({x}));
    const auto c = cos.contiguous(), s = sin.contiguous();
    ctx->save_for_backward({c, s});
    return rotated(x, c, s, false);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    RECORD_FUNCTION("altup_moe::rope_backward", std::vector<c10::IValue>());
    const auto saved = ctx->get_saved_variables();
    return {rotated(grads[0], saved[0], saved[1], true), at::Tensor(), at::Tensor()};
  }
};

// Splits fused projections `qkv` [B, T, (H + 2·Hkv)·hd] (rows of queries, keys, values; any
// strides, the last one 1) into queries [B, H, T, hd] and keys [B, Hkv, T, hd], rotated by the
// angles of `cos`, `sin` [T, hd/2], and values [B, Hkv, T, hd], all contiguous: the heads-first
// layout attention takes, in one pass.
template <typename T>
void split_rotate(const at::Tensor& qkv, const T* cos, const T* sin, T* q, T* k, T* v, int64_t heads,
                  int64_t kv_heads, int64_t head_dim) {
  const int64_t batch = qkv.size(0), steps = qkv.size(1), half = head_dim / 2;
  const int64_t s0 = qkv.stride(0), s1 = qkv.stride(1);
  const T* src = qkv.const_data_ptr<T>();
  at::parallel_for(0, batch * steps, row_grain((heads + 2 * kv_heads) * head_dim), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / steps, t = row % steps;
      const T* xr = src + b * s0 + t * s1;
      const T* c = cos + t * half;
      const T* s = sin + t * half;
      const auto rotate_into = [&](const T* x, T* y) { rotate_head(x, c, s, y, half, false); };
      for (int64_t h = 0; h < heads; ++h) {
        rotate_into(xr + h * head_dim, q + ((b * heads + h) * steps + t) * head_dim);
      }
      for (int64_t h = 0; h < kv_heads; ++h) {
        const int64_t at = ((b * kv_heads + h) * steps + t) * head_dim;
        rotate_into(xr + (heads + h) * head_dim, k + at);
        std::copy(xr + (heads + kv_heads + h) * head_dim, xr + (heads + kv_heads + h + 1) * head_dim, v + at);
      }
    }
  });
}

// The gradient of split_rotate: rows of `gqkv` [B, T, (H + 2·Hkv)·hd] from the contiguous
// gradients of queries and keys (rotated back) and of values; an absent one (nullptr) gives
// zeros.
template <typename T>
void merge_unrotate(const T* gq, const T* gk, const T* gv, const T* cos, const T* sin, T* gqkv, int64_t batch,
                    int64_t steps, int64_t heads, int64_t kv_heads, int64_t head_dim) {
  const int64_t half = head_dim / 2, width = (heads + 2 * kv_heads) * head_dim;
  at::parallel_for(0, batch * steps, row_grain(width), [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / steps, t = row % steps;
      T* out = gqkv + row * width;
      const T* c = cos + t * half;
      const T* s = sin + t * half;
      const auto unrotate_into = [&](const T* g, T* y) {
        if (g == nullptr) {
          std::fill(y, y + head_dim, static_cast<T>(0));
        } else {
          rotate_head(g, c, s, y, half, true);
        }
      };
      for (int64_t h = 0; h < heads; ++h) {
        unrotate_into(gq == nullptr ? nullptr : gq + ((b * heads + h) * steps + t) * head_dim, out + h * head_dim);
      }
      for (int64_t h = 0; h < kv_heads; ++h) {
        const int64_t at = ((b * kv_heads + h) * steps + t) * head_dim;
        unrotate_into(gk == nullptr ? nullptr : gk + at, out + (heads + h) * head_dim);
        T* gv_out = out + (heads + kv_heads + h) * head_dim;
        if (gv == nullptr) {
          std::fill(gv_out, gv_out + head_dim, static_cast<T>(0));
        } else {
          std::copy(gv + at, gv + at + head_dim, gv_out);
        }
      }
    }
  });
}

struct QkvRopeFunction : public torch::autograd::Function<QkvRopeFunction> {
  static variable_list forward(AutogradContext* ctx, const at::Tensor& qkv, const at::Tensor& cos,
                               const at::Tensor& sin, int64_t heads, int64_t kv_heads) {
    RECORD_FUNCTION("altup_moe::qkv_rope", std::vector<c10::IValue>({qkv}));
    const auto input = qkv.stride(2) == 1 ? qkv : qkv.contiguous();
    const auto c = cos.contiguous(), s = sin.contiguous();
    const int64_t batch = input.size(0), steps = input.size(1), head_dim = 2 * c.size(1);
    auto q = at::empty({batch, heads, steps, head_dim}, input.options());
    auto k = at::empty({batch, kv_heads, steps, head_dim}, input.options());
    auto v = at::empty({batch, kv_heads, steps, head_dim}, input.options());
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "altup_moe_qkv_rope", [&] {
      split_rotate<scalar_t>(input, c.const_data_ptr<scalar_t>(), s.const_data_ptr<scalar_t>(),
                             q.mutable_data_ptr<scalar_t>(), k.mutable_data_ptr<scalar_t>(),
                             v.mutable_data_ptr<scalar_t>(), heads, kv_heads, head_dim);
    });
    ctx->save_for_backward({c, s});
    ctx->saved_data["shape"] = c10::IValue(std::vector<int64_t>{batch, steps, heads, kv_heads, head_dim});
    return {q, k, v};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    RECORD_FUNCTION("altup_moe::qkv_rope_backward", std::vector<c10::IValue>());
    const auto saved = ctx->get_saved_variables();
    const auto shape = ctx->saved_data["shape"].toIntVector();
    const int64_t batch = shape[0], steps = shape[1], heads = shape[2], kv_heads = shape[3], head_dim = shape[4];
    at::Tensor g[3];
    for (int i = 0; i < 3; ++i) {
      if (grads[i].defined()) {
        g[i] = grads[i].contiguous();
      }
    }
    auto gqkv = at::empty({batch, steps, (heads + 2 * kv_heads) * head_dim}, saved[0].options());
    AT_DISPATCH_FLOATING_TYPES(gqkv.scalar_type(), "altup_moe_qkv_rope_backward", [&] {
      const auto ptr = [](const at::Tensor& t) { return t.defined() ? t.const_data_ptr<scalar_t>() : nullptr; };
      merge_unrotate<scalar_t>(ptr(g[0]), ptr(g[1]), ptr(g[2]), saved[0].const_data_ptr<scalar_t>(),
                               saved[1].const_data_ptr<scalar_t>(), gqkv.mutable_data_ptr<scalar_t>(), batch, steps,
                               heads, kv_heads, head_dim);
    });
    return {gqkv, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

extern "C" {

// RMSNorm over the last dimension of `x` (its size equal to `weight`'s length, both float or
// both double, on the CPU), differentiable in `x` and `weight`; the result goes to `*out`.
char* amoe_fused_rms_norm(const at::Tensor* x, const at::Tensor* weight, double eps, at::Tensor** out) {
  return guarded([&] { *out = new at::Tensor(RmsNormFunction::apply(*x, *weight, eps)); });
}

// The rotary embedding of `x` [B, H, T, 2·half] by the angles of `cos`, `sin` [T, half] (the
// dtype of `x`, on the CPU), differentiable in `x`; the result (contiguous) goes to `*out`.
char* amoe_fused_rope(const at::Tensor* x, const at::Tensor* cos, const at::Tensor* sin, at::Tensor** out) {
  return guarded([&] { *out = new at::Tensor(RopeFunction::apply(*x, *cos, *sin)); });
}

// Queries, keys and values [B, H|Hkv, T, hd] (contiguous; queries and keys rotated by the
// angles of `cos`, `sin` [T, hd/2]) from fused projections `qkv` [B, T, (H + 2·Hkv)·hd], the
// dtype of `qkv`, on the CPU; differentiable in `qkv`. The three results go to `out[0..3]`.
char* amoe_fused_qkv_rope(const at::Tensor* qkv, const at::Tensor* cos, const at::Tensor* sin, int64_t heads,
                          int64_t kv_heads, at::Tensor** out) {
  return guarded([&] {
    auto parts = QkvRopeFunction::apply(*qkv, *cos, *sin, heads, kv_heads);
    for (int i = 0; i < 3; ++i) {
      out[i] = new at::Tensor(parts[i]);
    }
  });
}

}  // extern "C"
