//! The key/value cache: per layer, one row of `kv_dim` elements per position for K and for V,
//! stored in f16 (default), q8_0 or q4_0, chosen independently for K and V as llama.cpp's
//! `-ctk`/`-ctv`. Allocated once for the whole context.
//!
//! A sliding-window layer only ever reads its last `window` positions, so it keeps a ring of
//! `window` + a batch of them rather than the whole context (as llama.cpp's SWA cache does):
//! position p lives in slot p mod ring. On Gemma 3, where 5 layers in 6 slide over 1024
//! positions, that is most of the cache at long contexts. A saved state holds a sliding
//! layer's last positions only (its window and up to `MIN_RING_MARGIN` more).
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

/// Positions beyond the window that a sliding layer's ring holds at least: the rows a batch
/// writes before it attends, and the rows a speculative verification may take back.
pub const MIN_RING_MARGIN: usize = 64;

/// Positions of a sequence each layer holds: the context for global layers; for a sliding
/// layer (`window` > 0 in `sliding`), its window and `margin` more (at least
/// `MIN_RING_MARGIN`), capped at the context.
pub fn layer_positions(n_ctx: usize, window: usize, sliding: &[bool], margin: usize) -> Vec<usize> {
    let ring = (window + margin.max(MIN_RING_MARGIN)).min(n_ctx);
    sliding
        .iter()
        .map(|&s| if s && window > 0 { ring } else { n_ctx })
        .collect()
}

/// Element storage of one cache (K or V) for every layer. Within a layer each KV head's
/// positions are contiguous (`[head][slot]`), so that attention, which walks one head's
/// positions, streams memory in order (deep in a context that is megabytes per head).
/// Positions are `seq * n_ctx + p`; a layer holds `n_seq` runs of its `positions`.
pub struct CacheStore {
    pub ty: GgmlType,
    /// Bytes of one head's slice of a row.
    pub head_bytes: usize,
    row_bytes: usize,
    n_ctx: usize,
    n_seq: usize,
    /// Per layer: positions of a sequence it holds (`n_ctx`, or a sliding layer's ring).
    positions: Vec<usize>,
    /// Per layer: whether it slides (a saved state keeps its last positions only).
    sliding: Vec<bool>,
    layers: Vec<Vec<u8>>,
}

impl CacheStore {
    fn new(ty: GgmlType, shape: &CacheShape, n_head_kv: usize, head_dim: usize) -> Result<Self> {
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
        let layers = shape
            .positions
            .iter()
            .map(|&p| vec![0u8; shape.n_seq * p * row_bytes])
            .collect();
        Ok(CacheStore {
            ty,
            head_bytes,
            row_bytes,
            n_ctx: shape.n_ctx,
            n_seq: shape.n_seq,
            positions: shape.positions.clone(),
            sliding: shape.sliding.clone(),
            layers,
        })
    }

    pub fn bytes(&self) -> usize {
        self.layers.iter().map(Vec::len).sum()
    }

    /// Where position `pos` (`seq * n_ctx + p`) of `layer` starts for head `h`.
    #[inline]
    fn offset(&self, layer: usize, pos: usize, h: usize) -> usize {
        let held = self.positions[layer];
        let slot = if held == self.n_ctx {
            pos
        } else {
            pos / self.n_ctx * held + pos % self.n_ctx % held
        };
        (h * self.n_seq * held + slot) * self.head_bytes
    }

    /// Stores one row (`kv_dim` floats, heads back to back) at `pos` of `layer`.
    pub fn write(&mut self, layer: usize, pos: usize, row: &[f32]) {
        let heads = self.row_bytes / self.head_bytes;
        let head_dim = row.len() / heads;
        for (h, src) in row.chunks_exact(head_dim).enumerate() {
            let start = self.offset(layer, pos, h);
            encode_row(
                self.ty,
                src,
                &mut self.layers[layer][start..start + self.head_bytes],
            );
        }
    }

    /// The positions of `base..base + n` that a saved state holds for `layer`: all of them,
    /// or a sliding layer's last `recent`.
    fn saved(&self, layer: usize, base: usize, n: usize, recent: usize) -> std::ops::Range<usize> {
        let kept = if self.sliding[layer] {
            recent.min(n)
        } else {
            n
        };
        base + n - kept..base + n
    }

    /// Appends positions `base..base + n` of every layer and head (of sliding layers, the last
    /// `recent`) to `out` (a saved state).
    pub fn save(&self, base: usize, n: usize, recent: usize, out: &mut Vec<u8>) {
        let heads = self.row_bytes / self.head_bytes;
        for (l, layer) in self.layers.iter().enumerate() {
            for h in 0..heads {
                for pos in self.saved(l, base, n, recent) {
                    let start = self.offset(l, pos, h);
                    out.extend_from_slice(&layer[start..start + self.head_bytes]);
                }
            }
        }
    }

    /// Bytes that `save` writes for `n` positions.
    pub fn saved_len(&self, n: usize, recent: usize) -> usize {
        (0..self.layers.len())
            .map(|l| self.saved(l, 0, n, recent).len() * self.row_bytes)
            .sum()
    }

    /// Restores positions `base..base + n` from `data` (`saved_len(n, recent)` bytes made by
    /// `save`).
    pub fn load(&mut self, base: usize, n: usize, recent: usize, data: &[u8]) {
        let (heads, hb) = (self.row_bytes / self.head_bytes, self.head_bytes);
        let mut rows = data.chunks_exact(hb);
        for l in 0..self.layers.len() {
            for h in 0..heads {
                for pos in self.saved(l, base, n, recent) {
                    let start = self.offset(l, pos, h);
                    let src = rows.next().expect("checked by saved_len");
                    self.layers[l][start..start + hb].copy_from_slice(src);
                }
            }
        }
    }

    /// Head `h`'s positions of `layer` from `first` (`seq * n_ctx + p`) on, read by index:
    /// where a ring wraps is worked out once here rather than with divisions per read.
    pub fn span(&self, layer: usize, first: usize, h: usize) -> HeadSpan<'_> {
        let held = self.positions[layer];
        let (seq, p) = (first / self.n_ctx, first % self.n_ctx);
        let base = (h * self.n_seq + seq) * held * self.head_bytes;
        HeadSpan {
            data: &self.layers[layer][base..base + held * self.head_bytes],
            head_bytes: self.head_bytes,
            start: p % held,
            held,
        }
    }
}

/// One head's run of a sequence in one layer (see `CacheStore::span`).
pub struct HeadSpan<'a> {
    data: &'a [u8],
    head_bytes: usize,
    /// The slot of the span's first position.
    start: usize,
    held: usize,
}

impl<'a> HeadSpan<'a> {
    /// The bytes of the span's `i`-th position (a span is never longer than what is held, so a
    /// ring wraps at most once).
    #[inline]
    pub fn at(&self, i: usize) -> &'a [u8] {
        let mut slot = self.start + i;
        if slot >= self.held {
            slot -= self.held;
        }
        &self.data[slot * self.head_bytes..][..self.head_bytes]
    }
}

/// A saved KV state starts with this, then the cache's shape (layers, KV heads, head size,
/// sliding window: 4 x u32), K and V type ids (2 x u32), the number of positions and the
/// number the sliding layers keep (2 x u64), little-endian; the K rows, then the V rows follow.
const STATE_MAGIC: &[u8; 8] = b"FLKVST02";
const STATE_SHAPE_LEN: usize = 8 + 6 * 4;
const STATE_HEADER_LEN: usize = STATE_SHAPE_LEN + 2 * 8;

/// The header of a saved KV state.
pub struct StateHeader {
    /// Layers, KV heads, head size, sliding window.
    pub shape: [usize; 4],
    /// K and V types.
    pub types: [GgmlType; 2],
    /// Positions saved, and those of them the sliding layers keep.
    pub n: usize,
    pub recent: usize,
}

impl StateHeader {
    pub fn header(&self) -> Vec<u8> {
        let mut h = STATE_MAGIC.to_vec();
        for x in self.shape {
            h.extend_from_slice(&(x as u32).to_le_bytes());
        }
        for t in self.types {
            h.extend_from_slice(&t.id().to_le_bytes());
        }
        h.extend_from_slice(&(self.n as u64).to_le_bytes());
        h.extend_from_slice(&(self.recent as u64).to_le_bytes());
        h
    }

    /// The positions, sliding positions and rows of a state saved from a cache of this
    /// header's shape and types; Err(false) for what is not a state, Err(true) for a state of
    /// another shape or type.
    pub fn read<'a>(&self, data: &'a [u8]) -> std::result::Result<(usize, usize, &'a [u8]), bool> {
        if data.len() < STATE_HEADER_LEN || &data[..8] != STATE_MAGIC {
            return Err(false);
        }
        if data[..STATE_SHAPE_LEN] != self.header()[..STATE_SHAPE_LEN] {
            return Err(true);
        }
        let field = |i: usize| {
            let at = STATE_SHAPE_LEN + 8 * i;
            u64::from_le_bytes(data[at..at + 8].try_into().expect("8 bytes")) as usize
        };
        Ok((field(0), field(1), &data[STATE_HEADER_LEN..]))
    }
}

/// What the cache holds: `n_seq` sequences of `n_ctx` positions, `positions[layer]` of each
/// kept (see `layer_positions`), and which layers slide.
pub struct CacheShape {
    pub n_ctx: usize,
    pub n_seq: usize,
    pub positions: Vec<usize>,
    pub sliding: Vec<bool>,
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
    pub k: CacheStore,
    pub v: CacheStore,
    /// Dot product of a K head with the query in `k_act` form.
    pub k_dot: VecDotFn,
    pub k_act: GgmlType,
    pub v_dequant: DequantFn,
}

impl KvCache {
    pub fn new(
        shape: &CacheShape,
        n_head_kv: usize,
        head_dim: usize,
        type_k: GgmlType,
        type_v: GgmlType,
    ) -> Result<KvCache> {
        let k = CacheStore::new(type_k, shape, n_head_kv, head_dim)?;
        let v = CacheStore::new(type_v, shape, n_head_kv, head_dim)?;
        let isa = Isa::active();
        let (k_dot, _) = dot_fn(type_k, isa).expect("every KV type has a dot product");
        let k_act = activation_type(type_k).expect("every KV type has an activation type");
        let (v_dequant, _) = dequant_fn(type_v, isa).expect("every KV type dequantizes");
        Ok(KvCache {
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
