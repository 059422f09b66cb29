//! Multi-head attention: causal or bidirectional self-attention with rotary position embeddings
//! and a key/value cache, and cross-attention to an encoder's output (Vaswani et al. 2017, §3.2;
//! RoPE from Su et al. 2021).
//!
//! The attention itself is libtorch's `scaled_dot_product_attention`, which picks a fused kernel
//! (flash / memory-efficient) where one exists for the device and dtype. Without a padding mask
//! and without cached keys, causal attention uses its `is_causal` fast path; otherwise an explicit
//! boolean mask is built (`key ≤ query` for causal attention, real keys only). Every query may
//! always attend to its own position, so a fully padded row yields finite (ignored) values.

use crate::dtype::{accumulate_kind, Cast};
use crate::error::{ensure_config, Error, Result};
use crate::native::fused;
use crate::nn::linear::Linear;
use crate::nn::rope::{Rope, DEFAULT_ROPE_THETA};
use crate::nn::var_builder::VarBuilder;
use crate::shape::expect_shape;
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Configuration of [`SelfAttention`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttentionConfig {
    /// Number of query heads `H`; must divide `d_model`, and `d_model / H` must be even (RoPE).
    pub num_heads: usize,
    /// Number of key/value heads `H_kv` of self-attention (grouped-query attention, Ainslie et
    /// al. 2023, arXiv 2305.13245; Llama's `num_key_value_heads`); must divide `H`. Query head
    /// `h` attends with key/value head `h / (H / H_kv)`: each key/value head serves `H / H_kv`
    /// consecutive query heads, as Hugging Face's `repeat_kv` does. `None` (the default) = `H`
    /// (multi-head attention). Cross-attention always has `H` key/value heads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_kv_heads: Option<usize>,
    /// RoPE base frequency θ.
    pub rope_theta: f64,
    /// Causal (decoder) or bidirectional (encoder) self-attention.
    pub causal: bool,
}

impl Default for AttentionConfig {
    fn default() -> Self {
        Self { num_heads: 4, num_kv_heads: None, rope_theta: DEFAULT_ROPE_THETA, causal: true }
    }
}

impl AttentionConfig {
    /// Checks the config against the model width.
    ///
    /// # Errors
    /// [`crate::Error::Config`] naming the value: zero heads, heads not dividing `d_model`,
    /// key/value heads not dividing the heads, an odd head dimension, or a bad `rope_theta`.
    pub fn validate(&self, d_model: usize) -> Result<()> {
        ensure_config(self.num_heads > 0, || "num_heads (0) must be positive".into())?;
        ensure_config(d_model % self.num_heads == 0, || {
            format!("num_heads ({}) must divide d_model ({d_model})", self.num_heads)
        })?;
        if let Some(kv) = self.num_kv_heads {
            ensure_config(kv > 0 && self.num_heads % kv == 0, || {
                format!("num_kv_heads ({kv}) must be positive and divide num_heads ({})", self.num_heads)
            })?;
        }
        Rope::new((d_model / self.num_heads) as i64, self.rope_theta)?;
        Ok(())
    }

    /// Number of key/value heads `H_kv` of self-attention (`num_kv_heads`, or `H`).
    pub fn kv_heads(&self) -> usize {
        self.num_kv_heads.unwrap_or(self.num_heads)
    }

    /// Parameters of self-attention at width `D`: `D·(H + 2·H_kv)·hd` for the query/key/value
    /// projection and `D²` for the output (`4·D²` without grouped-query attention).
    pub fn num_params(&self, d_model: usize) -> usize {
        let head_dim = d_model / self.num_heads.max(1);
        d_model * (self.num_heads + 2 * self.kv_heads()) * head_dim + d_model * d_model
    }
}

/// Cached keys and values of one attention layer for incremental decoding.
#[derive(Debug, Default)]
pub struct KvCache {
    /// Keys, `[B, H_kv, T_past, head_dim]` (`H_kv = H` without grouped-query attention).
    pub keys: Option<Tensor>,
    /// Values, `[B, H_kv, T_past, head_dim]`.
    pub values: Option<Tensor>,
    /// Which cached positions are real tokens, `[B, T_past]` bool (when a mask was given).
    pub key_mask: Option<Tensor>,
}

impl KvCache {
    /// Number of cached positions.
    pub fn len(&self) -> i64 {
        self.keys.as_ref().map_or(0, |k| k.size()[2])
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Splits `[B, T, n·D]` projections into `n` tensors of `[B, H, T, hd]`.
fn split_heads(x: &Tensor, n: i64, heads: i64, head_dim: i64) -> Result<Vec<Tensor>> {
    let (b, t) = (x.size()[0], x.size()[1]);
    // `unbind`, not `n` selects: its backward stacks the parts' gradients in one operation
    // instead of writing each into a zero tensor of the full size.
    Ok(x.f_view([b, t, n, heads, head_dim])?.f_permute([2, 0, 3, 1, 4])?.f_unbind(0)?)
}

/// Splits `[B, T, (H + 2·H_kv)·hd]` (grouped-query attention) into queries `[B, H, T, hd]`
/// and keys and values `[B, H_kv, T, hd]`.
fn split_gqa(x: &Tensor, heads: i64, kv_heads: i64, head_dim: i64) -> Result<[Tensor; 3]> {
    let (b, t) = (x.size()[0], x.size()[1]);
    // One split (one backward operation) rather than three slices.
    let parts = x.f_split_with_sizes([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], -1)?;
    let [q, k, v]: [Tensor; 3] =
        parts.try_into().map_err(|_| crate::Error::Shape("a split into three parts".into()))?;
    let heads_first =
        |p: Tensor, n: i64| -> Result<Tensor> { Ok(p.f_reshape([b, t, n, head_dim])?.f_transpose(1, 2)?) };
    Ok([heads_first(q, heads)?, heads_first(k, kv_heads)?, heads_first(v, kv_heads)?])
}

/// Repeats each of the `H_kv` key/value heads `n_rep` times consecutively (`[B, H_kv, T, hd]` →
/// `[B, H_kv·n_rep, T, hd]`): query head `h` meets key/value head `h / n_rep` (Hugging Face
/// `repeat_kv`, `models/llama/modeling_llama.py`).
fn repeat_kv(x: &Tensor, n_rep: i64) -> Result<Tensor> {
    if n_rep == 1 {
        return Ok(x.shallow_clone());
    }
    Ok(x.f_repeat_interleave_self_int(n_rep, Some(1), None)?)
}

/// Merges `[B, H, T, hd]` back to `[B, T, D]`.
fn merge_heads(y: &Tensor) -> Result<Tensor> {
    let (b, h, t, hd) = y.size4()?;
    Ok(y.f_transpose(1, 2)?.f_contiguous()?.f_view([b, t, h * hd])?)
}

/// Boolean attention mask `[B|1, 1, Tq, Tk]` (true = may attend) for queries at positions
/// `past .. past + Tq` over keys `0 .. Tk`, or `None` for the unmasked bidirectional case.
fn attention_mask(
    causal: bool,
    past: i64,
    tq: i64,
    tk: i64,
    key_mask: Option<&Tensor>,
    device: tch::Device,
) -> Result<Option<Tensor>> {
    if !causal && key_mask.is_none() {
        return Ok(None);
    }
    let int = (Kind::Int64, device);
    let q = Tensor::f_arange_start(past, past + tq, int)?.f_view([tq, 1])?;
    let k = Tensor::f_arange(tk, int)?.f_view([1, tk])?;
    let mut allowed = if causal { k.f_le_tensor(&q)? } else { Tensor::f_ones([tq, tk], (Kind::Bool, device))? };
    allowed = allowed.f_unsqueeze(0)?.f_unsqueeze(0)?; // [1, 1, Tq, Tk]
    if let Some(m) = key_mask {
        allowed = allowed.f_logical_and(&m.cast(Kind::Bool)?.f_view([-1, 1, 1, tk])?)?;
    }
    Ok(Some(allowed.f_logical_or(&k.f_eq_tensor(&q)?)?))
}

/// Multi-head self-attention, causal or bidirectional, optionally with grouped-query attention
/// (`H_kv < H` key/value heads; Ainslie et al. 2023, arXiv 2305.13245, as in Hugging Face's
/// `LlamaAttention`).
///
/// Parameters: `qkv.weight` `[(H + 2·H_kv)·hd, D]` (queries, keys, values stacked in that
/// order, each head's `hd` rows consecutive; `[3·D, D]` without grouped-query attention),
/// `out.weight` `[D, D]`.
#[derive(Debug)]
pub struct SelfAttention {
    qkv: Linear,
    out: Linear,
    rope: Rope,
    num_heads: i64,
    num_kv_heads: i64,
    head_dim: i64,
    causal: bool,
}

impl SelfAttention {
    /// Builds the layer under `path`.
    ///
    /// # Errors
    /// [`crate::Error::Config`] from [`AttentionConfig::validate`].
    pub fn new<'a>(vb: impl Into<VarBuilder<'a>>, d_model: usize, config: &AttentionConfig) -> Result<Self> {
        config.validate(d_model)?;
        let (vb, d) = (vb.into(), d_model as i64);
        let init = *vb.init();
        let num_heads = config.num_heads as i64;
        let num_kv_heads = config.kv_heads() as i64;
        let head_dim = d / num_heads;
        Ok(Self {
            qkv: Linear::new(&vb / "qkv", d, (num_heads + 2 * num_kv_heads) * head_dim, init.std)?,
            out: Linear::new(&vb / "out", d, d, init.residual_std)?,
            rope: Rope::new(head_dim, config.rope_theta)?,
            num_heads,
            num_kv_heads,
            head_dim,
            causal: config.causal,
        })
    }

    /// Whether the attention is causal.
    pub fn is_causal(&self) -> bool {
        self.causal
    }

    /// Queries `[B, H, T, hd]`, keys and values `[B, H_kv, T, hd]` from the fused projection
    /// `[B, T, (H + 2·H_kv)·hd]`, queries and keys rotated at `positions` (`[T]`). On the CPU
    /// in f32/f64 one fused kernel does the split and both rotations (and one its backward);
    /// elsewhere views and the composite rotation, with the same values.
    fn queries_keys_values(&self, projected: &Tensor, positions: &Tensor) -> Result<[Tensor; 3]> {
        let t = projected.size()[1];
        let (cos, sin) = self.rope.cos_sin(t, Some(positions), accumulate_kind(projected), projected.device())?;
        if fused::applies(&[projected, &cos, &sin]) {
            return fused::qkv_rope(projected, &cos, &sin, self.num_heads, self.num_kv_heads);
        }
        self.queries_keys_values_composite(projected, &cos, &sin)
    }

    /// [`Self::queries_keys_values`] in views and the composite rotation.
    fn queries_keys_values_composite(&self, projected: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<[Tensor; 3]> {
        let [q, k, v]: [Tensor; 3] = if self.num_kv_heads == self.num_heads {
            split_heads(projected, 3, self.num_heads, self.head_dim)?
                .try_into()
                .map_err(|_| Error::Shape("qkv split".into()))?
        } else {
            split_gqa(projected, self.num_heads, self.num_kv_heads, self.head_dim)?
        };
        Ok([Rope::rotate(&q, cos, sin)?, Rope::rotate(&k, cos, sin)?, v])
    }

    /// Self-attention over `x` (causal: token `t` attends to tokens `≤ t`; bidirectional: to all
    /// real tokens). Rotary angles use `positions` (`[T]`, e.g. Sequence-AltUp's strided
    /// anchors), else `past .. past + T` with `past` the cached length. `mask` (`[B, T]`, true or
    /// non-zero = real token) keeps padded keys out. With `cache`, the new keys/values (and mask)
    /// are appended to it and the queries attend to every cached key as well. `positions` and
    /// `mask` may live on another device than `x` (e.g. the host): they are moved to `x`'s.
    ///
    /// # Shapes
    /// `x`: `[B, T, D]`, `positions`: `[T]`, `mask`: `[B, T]` → `[B, T, D]`.
    ///
    /// # Errors
    /// [`crate::Error::Shape`] if `x` is not `[B, T, D]`, `positions` is not `[T]`, the mask
    /// does not match, or the cache holds another batch size.
    pub fn forward(
        &self,
        x: &Tensor,
        positions: Option<&Tensor>,
        mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let d = self.num_heads * self.head_dim;
        expect_shape(x, "attention input", "[B, T, D]", &[None, None, Some(d)])?;
        let (b, t) = (x.size()[0], x.size()[1]);
        if let Some(m) = mask {
            expect_shape(m, "attention mask", "[B, T]", &[Some(b), Some(t)])?;
        }
        let past = cache.as_ref().map_or(0, |c| c.len());
        let default_positions;
        let positions = match positions {
            Some(p) => p,
            None => {
                default_positions = Tensor::f_arange_start(past, past + t, (Kind::Int64, x.device()))?;
                &default_positions
            }
        };
        let [q, mut k, mut v] = self.queries_keys_values(&self.qkv.forward(x)?, positions)?;
        let mut key_mask = mask.map(|m| m.f_to_device(x.device())?.cast(Kind::Bool)).transpose()?;
        if let Some(cache) = cache {
            if let (Some(ck), Some(cv)) = (&cache.keys, &cache.values) {
                if ck.size()[0] != b {
                    return Err(Error::Shape(format!("the cache holds batch {} but the input has {b}", ck.size()[0])));
                }
                k = Tensor::f_cat(&[ck, &k], 2)?;
                v = Tensor::f_cat(&[cv, &v], 2)?;
            }
            key_mask = match (&cache.key_mask, key_mask) {
                (None, None) => None,
                (old, new) => {
                    let old = old.as_ref().map_or_else(
                        || Tensor::f_ones([b, past], (Kind::Bool, x.device())),
                        |m| Ok(m.shallow_clone()),
                    )?;
                    let new = new.map_or_else(|| Tensor::f_ones([b, t], (Kind::Bool, x.device())), Ok)?;
                    Some(Tensor::f_cat(&[old, new], 1)?)
                }
            };
            cache.keys = Some(k.shallow_clone());
            cache.values = Some(v.shallow_clone());
            cache.key_mask = key_mask.as_ref().map(|m| m.shallow_clone());
        }
        let tk = k.size()[2];
        // The cache keeps the H_kv heads; each serves H / H_kv consecutive query heads.
        let n_rep = self.num_heads / self.num_kv_heads;
        let (k, v) = (repeat_kv(&k, n_rep)?, repeat_kv(&v, n_rep)?);
        let y = if self.causal && key_mask.is_none() && past == 0 {
            Tensor::f_scaled_dot_product_attention::<Tensor>(&q, &k, &v, None, 0.0, true, None, false)?
        } else {
            let m = attention_mask(self.causal, past, t, tk, key_mask.as_ref(), x.device())?;
            Tensor::f_scaled_dot_product_attention(&q, &k, &v, m.as_ref(), 0.0, false, None, false)?
        };
        self.out.forward(&merge_heads(&y)?)
    }
}

/// Cross-attention from decoder queries to an encoder's output (no rotary embedding: the two
/// sequences have no common positions).
///
/// Parameters: `q.weight` `[D, D]`, `kv.weight` `[2·D, D]`, `out.weight` `[D, D]`.
#[derive(Debug)]
pub struct CrossAttention {
    q: Linear,
    kv: Linear,
    out: Linear,
    num_heads: i64,
    head_dim: i64,
}

impl CrossAttention {
    /// Builds the layer under `path` (the head count comes from `config`).
    ///
    /// # Errors
    /// [`crate::Error::Config`] from [`AttentionConfig::validate`].
    pub fn new<'a>(vb: impl Into<VarBuilder<'a>>, d_model: usize, config: &AttentionConfig) -> Result<Self> {
        config.validate(d_model)?;
        let (vb, d) = (vb.into(), d_model as i64);
        let init = *vb.init();
        let num_heads = config.num_heads as i64;
        Ok(Self {
            q: Linear::new(&vb / "q", d, d, init.std)?,
            kv: Linear::new(&vb / "kv", d, 2 * d, init.std)?,
            out: Linear::new(&vb / "out", d, d, init.residual_std)?,
            num_heads,
            head_dim: d / num_heads,
        })
    }

    /// Every query attends to every real position of `memory`. With `cache`, the memory's keys
    /// and values are computed on the first call and reused afterwards. `memory_mask` may live on
    /// another device than `x`: it is moved to `x`'s.
    ///
    /// # Shapes
    /// `x`: `[B, T, D]`, `memory`: `[B, S, D]`, `memory_mask`: `[B, S]` → `[B, T, D]`.
    ///
    /// # Errors
    /// [`crate::Error::Shape`] if the shapes disagree.
    pub fn forward(
        &self,
        x: &Tensor,
        memory: &Tensor,
        memory_mask: Option<&Tensor>,
        cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        let d = self.num_heads * self.head_dim;
        expect_shape(x, "cross-attention input", "[B, T, D]", &[None, None, Some(d)])?;
        let b = x.size()[0];
        expect_shape(memory, "encoder output", "[B, S, D]", &[Some(b), None, Some(d)])?;
        let s = memory.size()[1];
        if let Some(m) = memory_mask {
            expect_shape(m, "source mask", "[B, S]", &[Some(b), Some(s)])?;
        }
        let cached =
            cache.as_ref().and_then(|c| Some((c.keys.as_ref()?.shallow_clone(), c.values.as_ref()?.shallow_clone())));
        let (k, v) = match cached {
            Some(kv) => kv,
            None => {
                let [k, v]: [Tensor; 2] = split_heads(&self.kv.forward(memory)?, 2, self.num_heads, self.head_dim)?
                    .try_into()
                    .map_err(|_| Error::Shape("kv split".into()))?;
                if let Some(cache) = cache {
                    cache.keys = Some(k.shallow_clone());
                    cache.values = Some(v.shallow_clone());
                }
                (k, v)
            }
        };
        let q = split_heads(&self.q.forward(x)?, 1, self.num_heads, self.head_dim)?.remove(0);
        let mask = memory_mask
            .map(|m| -> Result<Tensor> { Ok(m.f_to_device(x.device())?.cast(Kind::Bool)?.f_view([b, 1, 1, s])?) })
            .transpose()?;
        let y = Tensor::f_scaled_dot_product_attention(&q, &k, &v, mask.as_ref(), 0.0, false, None, false)?;
        self.out.forward(&merge_heads(&y)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::InitScheme;
    use tch::{nn, Device};

    fn attn(causal: bool) -> (nn::VarStore, SelfAttention) {
        let vs = nn::VarStore::new(Device::Cpu);
        let config = AttentionConfig { causal, ..Default::default() };
        let vb = VarBuilder::new(&vs.root()).with_init(InitScheme { std: 0.3, residual_std: 0.3, seed: 1 });
        let a = SelfAttention::new(vb, 16, &config).unwrap();
        (vs, a)
    }

    /// The fused split-and-rotate kernel against views and the composite rotation, with and
    /// without grouped-query heads: the same bits forward, the same gradient of the projection
    /// (also when the values get none).
    #[test]
    fn fused_split_and_rotation_match_the_composite_path() {
        for kv_heads in [None, Some(2)] {
            for (kind, tol) in [(Kind::Double, 1e-12), (Kind::Float, 1e-6)] {
                let vs = nn::VarStore::new(Device::Cpu);
                let config = AttentionConfig { num_heads: 4, num_kv_heads: kv_heads, ..Default::default() };
                let attn = SelfAttention::new(&vs.root(), 32, &config).unwrap();
                let width = (4 + 2 * kv_heads.unwrap_or(4) as i64) * 8;
                // A strided projection: every other row of a wider batch.
                let projected =
                    Tensor::randn([6, 5, width], (kind, Device::Cpu)).slice(0, 0, 6, 2).set_requires_grad(true);
                let positions = Tensor::arange_start(3, 8, (Kind::Int64, Device::Cpu));
                let (cos, sin) = attn.rope.cos_sin(5, Some(&positions), kind, Device::Cpu).unwrap();
                let fused = attn.queries_keys_values(&projected, &positions).unwrap();
                let composite = attn.queries_keys_values_composite(&projected, &cos, &sin).unwrap();
                for (a, b) in fused.iter().zip(&composite) {
                    assert_eq!(a.size(), b.size());
                    assert!(a.equal(b), "{kind:?}, kv heads {kv_heads:?}: values differ");
                }
                for with_values in [true, false] {
                    let grad = |parts: &[Tensor; 3]| {
                        let mut loss = (&parts[0] * 1.5).sum(kind) + (&parts[1] * &parts[1]).sum(kind);
                        if with_values {
                            loss = loss + (&parts[2] * -0.5).sum(kind);
                        }
                        Tensor::run_backward(&[loss], &[&projected], true, false).remove(0)
                    };
                    assert!(grad(&fused).allclose(&grad(&composite), tol, tol, false), "{kind:?} gradient");
                }
            }
        }
    }

    #[test]
    fn causal_ignores_the_future_and_bidirectional_does_not() {
        for causal in [true, false] {
            let (_vs, attn) = attn(causal);
            let x = Tensor::randn([2, 6, 16], (Kind::Float, Device::Cpu));
            let x2 = x.copy();
            let _ = x2.narrow(1, 4, 2).fill_(3.0);
            let (y, y2) = (attn.forward(&x, None, None, None).unwrap(), attn.forward(&x2, None, None, None).unwrap());
            let past_equal = y.narrow(1, 0, 4).allclose(&y2.narrow(1, 0, 4), 1e-6, 1e-6, false);
            assert_eq!(past_equal, causal, "causal = {causal}");
        }
    }

    #[test]
    fn padding_keys_do_not_affect_real_tokens() {
        for causal in [true, false] {
            let (_vs, attn) = attn(causal);
            let x = Tensor::randn([1, 5, 16], (Kind::Float, Device::Cpu));
            let mask = Tensor::from_slice(&[true, false, true, true, false]).view([1, 5]);
            let x2 = x.copy();
            let _ = x2.select(1, 1).fill_(7.0);
            let _ = x2.select(1, 4).fill_(-7.0);
            let y = attn.forward(&x, None, Some(&mask), None).unwrap();
            let y2 = attn.forward(&x2, None, Some(&mask), None).unwrap();
            let real = Tensor::from_slice(&[0i64, 2, 3]);
            assert!(
                y.index_select(1, &real).allclose(&y2.index_select(1, &real), 1e-5, 1e-5, false),
                "causal = {causal}"
            );
        }
    }

    #[test]
    fn cached_steps_equal_the_full_pass() {
        let (_vs, attn) = attn(true);
        let x = Tensor::randn([2, 7, 16], (Kind::Float, Device::Cpu));
        let full = attn.forward(&x, None, None, None).unwrap();
        let mut cache = KvCache::default();
        let first = attn.forward(&x.narrow(1, 0, 3), None, None, Some(&mut cache)).unwrap();
        let mut outs = vec![first];
        for t in 3..7 {
            outs.push(attn.forward(&x.narrow(1, t, 1), None, None, Some(&mut cache)).unwrap());
        }
        assert_eq!(cache.len(), 7);
        assert!(Tensor::cat(&outs, 1).allclose(&full, 1e-5, 1e-5, false));
    }

    /// Grouped-query attention equals multi-head attention whose key/value heads are copies:
    /// query head `h` uses key/value head `h / (H / H_kv)` (Hugging Face `repeat_kv`), and the
    /// cache keeps only the `H_kv` heads.
    #[test]
    fn grouped_query_attention_repeats_each_kv_head_consecutively() {
        let init = InitScheme { std: 0.3, residual_std: 0.3, seed: 3 };
        let (d, h, kv, hd) = (32i64, 8i64, 2i64, 4i64);
        let vs = nn::VarStore::new(Device::Cpu);
        let gqa_config = AttentionConfig { num_heads: 8, num_kv_heads: Some(2), ..Default::default() };
        let vb = VarBuilder::new(&vs.root()).with_init(init);
        let gqa = SelfAttention::new(&vb / "gqa", 32, &gqa_config).unwrap();
        assert_eq!(gqa.qkv.weight.size(), vec![(h + 2 * kv) * hd, d]);
        assert_eq!(gqa_config.num_params(32) as i64, (h + 2 * kv) * hd * d + d * d);
        let mha = SelfAttention::new(&vb / "mha", 32, &AttentionConfig { num_heads: 8, ..Default::default() }).unwrap();
        let w = gqa.qkv.weight.detach();
        let heads =
            |start: i64| w.narrow(0, start * hd, kv * hd).view([kv, 1, hd, d]).expand([kv, h / kv, hd, d], true);
        let full = Tensor::cat(
            &[w.narrow(0, 0, h * hd), heads(h).reshape([h * hd, d]), heads(h + kv).reshape([h * hd, d])],
            0,
        );
        tch::no_grad(|| {
            mha.qkv.weight.shallow_clone().copy_(&full);
            mha.out.weight.shallow_clone().copy_(&gqa.out.weight);
        });
        let x = Tensor::randn([2, 5, 32], (Kind::Float, Device::Cpu));
        let y = gqa.forward(&x, None, None, None).unwrap();
        assert!(y.allclose(&mha.forward(&x, None, None, None).unwrap(), 1e-5, 1e-5, false));
        // Another assignment of key/value heads to query heads (tiled instead of consecutive) differs.
        let tiled = Tensor::cat(
            &[
                w.narrow(0, 0, h * hd),
                w.narrow(0, h * hd, kv * hd).repeat([h / kv, 1]),
                w.narrow(0, (h + kv) * hd, kv * hd).repeat([h / kv, 1]),
            ],
            0,
        );
        tch::no_grad(|| mha.qkv.weight.shallow_clone().copy_(&tiled));
        assert!(!y.allclose(&mha.forward(&x, None, None, None).unwrap(), 1e-3, 1e-3, false));
        // Cached decoding keeps H_kv heads and equals the full pass.
        let mut cache = KvCache::default();
        let mut outs = vec![gqa.forward(&x.narrow(1, 0, 3), None, None, Some(&mut cache)).unwrap()];
        outs.push(gqa.forward(&x.narrow(1, 3, 2), None, None, Some(&mut cache)).unwrap());
        assert_eq!(cache.keys.as_ref().unwrap().size(), vec![2, kv, 5, hd]);
        assert!(Tensor::cat(&outs, 1).allclose(&y, 1e-5, 1e-5, false));
        let err =
            AttentionConfig { num_heads: 8, num_kv_heads: Some(3), ..Default::default() }.validate(32).unwrap_err();
        assert_eq!(err.to_string(), "invalid config: num_kv_heads (3) must be positive and divide num_heads (8)");
    }

    #[test]
    fn heads_must_divide_width() {
        let err = AttentionConfig { num_heads: 3, ..Default::default() }.validate(16).unwrap_err();
        assert_eq!(err.to_string(), "invalid config: num_heads (3) must divide d_model (16)");
    }
}
