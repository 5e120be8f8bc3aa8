//! The key/value cache: per layer, one row of `kv_dim` elements per position for K and for V,
//! stored in f16 (default), q8_0 or q4_0, chosen independently for K and V as llama.cpp's
//! `-ctk`/`-ctv`. Allocated once for the whole context.
//!
//! Scores read K rows through the matrix kernels' dot products (the query is quantized to the
//! K type's companion type, as llama.cpp does); V rows are dequantized one head at a time.

use crate::error::{Error, Result};
use crate::gguf::GgmlType;
use crate::matmul::{VecDotFn, activation_type, dot_fn};
use crate::quant::block::F16Le;
use crate::quant::quantize::{quantize_q4_0, quantize_q8_0};
use crate::quant::{DequantFn, Isa, dequant_fn};

pub const KV_TYPES: &[GgmlType] = &[GgmlType::F16, GgmlType::Q8_0, GgmlType::Q4_0];

/// Element storage of one cache (K or V) for every layer. Within a layer each KV head's
/// positions are contiguous (`[head][pos]`), so that attention, which walks one head's
/// positions, streams memory in order (deep in a context that is megabytes per head).
pub struct CacheStore {
    pub ty: GgmlType,
    /// Bytes of one head's slice of a row.
    pub head_bytes: usize,
    row_bytes: usize,
    n_ctx: usize,
    layers: Vec<Vec<u8>>,
}

impl CacheStore {
    fn new(
        ty: GgmlType,
        n_layer: usize,
        n_ctx: usize,
        n_head_kv: usize,
        head_dim: usize,
    ) -> Result<Self> {
        if !KV_TYPES.contains(&ty) {
            return Err(Error::Unsupported(format!(
                "tensor type {ty} as a KV cache type (supported: f16, q8_0, q4_0)"
            )));
        }
        if !head_dim.is_multiple_of(ty.block_elems()) {
            return Err(Error::invalid(format!(
                "a {ty} KV cache needs a head size that is a multiple of {}; this model's is {head_dim}",
                ty.block_elems()
            )));
        }
        let head_bytes = head_dim / ty.block_elems() * ty.block_bytes();
        let row_bytes = head_bytes * n_head_kv;
        let layers = (0..n_layer).map(|_| vec![0u8; n_ctx * row_bytes]).collect();
        Ok(CacheStore {
            ty,
            head_bytes,
            row_bytes,
            n_ctx,
            layers,
        })
    }

    pub fn bytes(&self) -> usize {
        self.layers.len() * self.n_ctx * self.row_bytes
    }

    /// Stores one row (`kv_dim` floats, heads back to back) at `pos` of `layer`.
    pub fn write(&mut self, layer: usize, pos: usize, row: &[f32]) {
        let heads = self.row_bytes / self.head_bytes;
        let head_dim = row.len() / heads;
        for (h, src) in row.chunks_exact(head_dim).enumerate() {
            let start = (h * self.n_ctx + pos) * self.head_bytes;
            encode_row(
                self.ty,
                src,
                &mut self.layers[layer][start..start + self.head_bytes],
            );
        }
    }

    /// Appends positions `base..base + n` of every layer and head to `out` (a saved state).
    pub fn save(&self, base: usize, n: usize, out: &mut Vec<u8>) {
        let heads = self.row_bytes / self.head_bytes;
        for layer in &self.layers {
            for h in 0..heads {
                let start = (h * self.n_ctx + base) * self.head_bytes;
                out.extend_from_slice(&layer[start..start + n * self.head_bytes]);
            }
        }
    }

    /// Bytes that `save` writes for `n` positions.
    pub fn saved_len(&self, n: usize) -> usize {
        self.layers.len() * n * self.row_bytes
    }

    /// Restores positions `base..base + n` from `data` (`saved_len(n)` bytes made by `save`).
    pub fn load(&mut self, base: usize, n: usize, data: &[u8]) {
        let (heads, hb, n_ctx) = (
            self.row_bytes / self.head_bytes,
            self.head_bytes,
            self.n_ctx,
        );
        if n == 0 {
            return;
        }
        let mut chunks = data.chunks_exact(n * hb);
        for layer in &mut self.layers {
            for h in 0..heads {
                let start = (h * n_ctx + base) * hb;
                let src = chunks.next().expect("checked by saved_len");
                layer[start..start + n * hb].copy_from_slice(src);
            }
        }
    }

    /// The bytes of head `h` at `pos`.
    #[inline]
    pub fn head(&self, layer: usize, pos: usize, h: usize) -> &[u8] {
        let start = (h * self.n_ctx + pos) * self.head_bytes;
        &self.layers[layer][start..start + self.head_bytes]
    }
}

/// Converts floats to `ty` blocks in place (no allocation: the cache row is the destination).
fn encode_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) {
    match ty {
        GgmlType::F16 => {
            for (x, d) in src.iter().zip(dst.chunks_exact_mut(2)) {
                d.copy_from_slice(&F16Le::from_f32(*x).0);
            }
        }
        GgmlType::Q8_0 => {
            for (x, d) in src.chunks_exact(32).zip(dst.chunks_exact_mut(34)) {
                let b = quantize_q8_0(x.try_into().expect("32 elements"), None);
                d.copy_from_slice(bytemuck::bytes_of(&b));
            }
        }
        GgmlType::Q4_0 => {
            for (x, d) in src.chunks_exact(32).zip(dst.chunks_exact_mut(18)) {
                let b = quantize_q4_0(x.try_into().expect("32 elements"), None);
                d.copy_from_slice(bytemuck::bytes_of(&b));
            }
        }
        _ => unreachable!("checked in CacheStore::new"),
    }
}

pub struct KvCache {
    pub n_ctx: usize,
    pub k: CacheStore,
    pub v: CacheStore,
    /// Dot product of a K head with the query in `k_act` form.
    pub k_dot: VecDotFn,
    pub k_act: GgmlType,
    pub v_dequant: DequantFn,
}

impl KvCache {
    pub fn new(
        n_layer: usize,
        n_ctx: usize,
        n_head_kv: usize,
        head_dim: usize,
        type_k: GgmlType,
        type_v: GgmlType,
    ) -> Result<KvCache> {
        let k = CacheStore::new(type_k, n_layer, n_ctx, n_head_kv, head_dim)?;
        let v = CacheStore::new(type_v, n_layer, n_ctx, n_head_kv, head_dim)?;
        let isa = Isa::active();
        let (k_dot, _) = dot_fn(type_k, isa).expect("every KV type has a dot product");
        let k_act = activation_type(type_k).expect("every KV type has an activation type");
        let (v_dequant, _) = dequant_fn(type_v, isa).expect("every KV type dequantizes");
        Ok(KvCache {
            n_ctx,
            k,
            v,
            k_dot,
            k_act,
            v_dequant,
        })
    }

    pub fn bytes(&self) -> usize {
        self.k.bytes() + self.v.bytes()
    }
}
