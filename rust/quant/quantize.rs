//! Reference quantizers F32 -> the 32-element types and Q8_K (round-to-nearest, as ggml's
//! `quantize_row_*_ref`; the K- and IQ4 types are in `quantize_k`). They start the
//! matrix-product layer: Q8_0 and Q8_K are also the activation types the
//! integer dot products consume. Operation order follows ggml so results match gguf-py's
//! quantizers bit for bit.

use super::block::F16Le;
use super::kquants::BlockQ8K;
use super::legacy::*;
use super::quantize_iq::{self, element_weights};
use super::quantize_k::{make_qkx2_quants, make_qx_quants};
use crate::error::{Error, Result};
use crate::gguf::{GgmlType, QK_K};

/// The element with the largest magnitude (the first one on ties), sign kept.
pub(super) fn signed_absmax(x: &[f32]) -> f32 {
    x.iter()
        .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m })
}

fn min_max(x: &[f32]) -> (f32, f32) {
    x.iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        })
}

/// 1/d, or 0 when d is 0 or so small (subnormal) that 1/d overflows: such a block's f16
/// scale rounds to 0 anyway, and 0 keeps the quants defined (ggml would cast infinities).
fn inverse(d: f32) -> f32 {
    let id = 1.0 / d;
    if d != 0.0 && id.is_finite() { id } else { 0.0 }
}

fn pack_nibbles(q: &[u8; QK]) -> [u8; QK / 2] {
    std::array::from_fn(|j| q[j] | (q[j + QK / 2] << 4))
}

fn high_bits(q: &[u8; QK]) -> [u8; 4] {
    let bits = q
        .iter()
        .enumerate()
        .fold(0u32, |acc, (j, &v)| acc | (((v as u32 >> 4) & 1) << j));
    bits.to_le_bytes()
}

/// Symmetric quants (Q4_0, Q5_0): d = extreme / -half, so the extreme value maps to level 0;
/// q = x / d + half, rounded by truncating after adding 0.5 (as ggml does).
fn symmetric_quants(x: &[f32; QK], half: f32, max_q: u8) -> (f32, [u8; QK]) {
    let d = signed_absmax(x) / -half;
    let id = inverse(d);
    (
        d,
        std::array::from_fn(|j| ((x[j] * id + (half + 0.5)) as u8).min(max_q)),
    )
}

/// Affine quants (Q4_1, Q5_1): x = min + d * q with q in 0..=max_q.
fn affine_quants(x: &[f32; QK], max_q: u8) -> (f32, f32, [u8; QK]) {
    let (min, max) = min_max(x);
    let d = (max - min) / max_q as f32;
    let id = inverse(d);
    (
        d,
        min,
        std::array::from_fn(|j| (((x[j] - min) * id + 0.5) as u8).min(max_q)),
    )
}

/// Symmetric quants under importance weights: a searched scale (llama.cpp's imatrix path).
fn weighted_symmetric(x: &[f32; QK], im: &[f32], half: i32) -> (f32, [u8; QK]) {
    let mut q = [0u8; QK];
    let d = make_qx_quants(x, &element_weights(x, Some(im)), half, &mut q);
    (d, q)
}

/// Affine quants under importance weights: returns (d, min, q) with x ~ d q + min.
fn weighted_affine(x: &[f32; QK], im: &[f32], max_q: i32) -> (f32, f32, [u8; QK]) {
    let mut q = [0u8; QK];
    let w = element_weights(x, Some(im));
    let (d, neg_min) = make_qkx2_quants(x, &w, max_q, &mut q, -0.9, 0.05, 36, false);
    (d, -neg_min, q)
}

pub fn quantize_q4_0(x: &[f32; QK], im: Option<&[f32]>) -> BlockQ4_0 {
    let (d, q) = match im {
        None => symmetric_quants(x, 8.0, 15),
        Some(im) => weighted_symmetric(x, im, 8),
    };
    BlockQ4_0 {
        d: F16Le::from_f32(d),
        qs: pack_nibbles(&q),
    }
}

pub fn quantize_q4_1(x: &[f32; QK], im: Option<&[f32]>) -> BlockQ4_1 {
    let (d, min, q) = match im {
        None => affine_quants(x, 15),
        Some(im) => weighted_affine(x, im, 15),
    };
    BlockQ4_1 {
        d: F16Le::from_f32(d),
        m: F16Le::from_f32(min),
        qs: pack_nibbles(&q),
    }
}

pub fn quantize_q5_0(x: &[f32; QK], im: Option<&[f32]>) -> BlockQ5_0 {
    let (d, q) = match im {
        None => symmetric_quants(x, 16.0, 31),
        Some(im) => weighted_symmetric(x, im, 16),
    };
    BlockQ5_0 {
        d: F16Le::from_f32(d),
        qh: high_bits(&q),
        qs: pack_nibbles(&q.map(|v| v & 0xF)),
    }
}

pub fn quantize_q5_1(x: &[f32; QK], im: Option<&[f32]>) -> BlockQ5_1 {
    let (d, min, q) = match im {
        None => affine_quants(x, 31),
        Some(im) => weighted_affine(x, im, 31),
    };
    let qs = pack_nibbles(&q.map(|v| v & 0xF));
    BlockQ5_1 {
        d: F16Le::from_f32(d),
        m: F16Le::from_f32(min),
        qh: high_bits(&q),
        qs,
    }
}

/// Q8_0 ignores the importance matrix, as llama.cpp does: 8 bits leave nothing to trade.
#[inline(always)] // into matmul's AVX2 activation quantizer, where its rounding is inline
pub fn quantize_q8_0(x: &[f32; QK], _im: Option<&[f32]>) -> BlockQ8_0 {
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = inverse(d);
    BlockQ8_0 {
        d: F16Le::from_f32(d),
        qs: std::array::from_fn(|j| (x[j] * id).round() as i8),
    }
}

/// Q8_K as ggml's `quantize_row_q8_K_ref`: scale from the signed extreme so that it maps to
/// -127 (the +128 side is never used), sums of each 16 values kept for the K-quant mins.
#[inline(always)] // into matmul's AVX2 activation quantizer, where its rounding is inline
pub fn quantize_q8_k(x: &[f32; QK_K]) -> BlockQ8K {
    let max = signed_absmax(x);
    if max == 0.0 {
        return BlockQ8K {
            d: 0f32.to_le_bytes(),
            qs: [0; QK_K],
            bsums: [[0; 2]; QK_K / 16],
        };
    }
    let iscale = -127.0 / max;
    let qs: [i8; QK_K] =
        std::array::from_fn(|j| (iscale * x[j]).round_ties_even().min(127.0) as i8);
    let bsums = std::array::from_fn(|g| {
        qs[16 * g..16 * g + 16]
            .iter()
            .map(|&q| q as i16)
            .sum::<i16>()
            .to_le_bytes()
    });
    BlockQ8K {
        d: (1.0 / iscale).to_le_bytes(),
        qs,
        bsums,
    }
}

/// Quantizes `x` (whole blocks) to `ty` with the reference quantizers (no importance matrix),
/// appending the blocks to `out`.
pub fn quantize(ty: GgmlType, x: &[f32], out: &mut Vec<u8>) -> Result<()> {
    quantize_weighted(ty, x, None, out)
}

/// Quantizes `x`, rows of `im.len()` values when an importance matrix is given (its columns'
/// mean squared activations), appending the blocks to `out`. Without one the K and legacy
/// types use the reference quantizers (bit-identical to ggml's) and the codebook types weigh
/// every column alike.
pub fn quantize_weighted(
    ty: GgmlType,
    x: &[f32],
    im: Option<&[f32]>,
    out: &mut Vec<u8>,
) -> Result<()> {
    let n = ty.block_elems();
    if !x.len().is_multiple_of(n) {
        return Err(Error::invalid(format!(
            "{ty}: {} values is not a whole number of {n}-element blocks",
            x.len()
        )));
    }
    if let Some(im) = im {
        if im.is_empty() || !im.len().is_multiple_of(n) || !x.len().is_multiple_of(im.len()) {
            return Err(Error::invalid(format!(
                "{ty}: an importance matrix of {} columns does not fit rows of whole {n}-element blocks in {} values",
                im.len(),
                x.len()
            )));
        }
        if let Some(bad) = im.iter().find(|v| !v.is_finite()) {
            return Err(Error::invalid(format!(
                "importance matrix holds a non-finite value ({bad})"
            )));
        }
    }
    let quantize = crate::kernels::kernels(ty, crate::quant::Isa::Scalar)
        .quantize
        .ok_or_else(|| {
            Error::Unsupported(format!("tensor type {ty}: no quantizer for this type"))
        })?;
    quantize(x, im, out);
    Ok(())
}

/// The importance-matrix columns (rows of `im.len()`) of the `n` elements from `start` on.
fn im_cols(im: Option<&[f32]>, start: usize, n: usize) -> Option<&[f32]> {
    im.map(|im| &im[start % im.len()..][..n])
}

/// Quantizes `x` (whole blocks of N) with the block quantizer `f`, appending to `out`.
pub(crate) fn quantize_blocks<const N: usize, B: bytemuck::Pod>(
    x: &[f32],
    im: Option<&[f32]>,
    out: &mut Vec<u8>,
    f: fn(&[f32; N], Option<&[f32]>) -> B,
) {
    for (k, chunk) in x.chunks_exact(N).enumerate() {
        let block = f(
            chunk.try_into().expect("exact chunk"),
            im_cols(im, k * N, N),
        );
        out.extend_from_slice(bytemuck::bytes_of(&block));
    }
}

/// Quantizes `x` (whole super-blocks) to the codebook type `ty`, appending to `out`.
pub(crate) fn quantize_codebook(ty: GgmlType, x: &[f32], im: Option<&[f32]>, out: &mut Vec<u8>) {
    for (k, chunk) in x.chunks_exact(QK_K).enumerate() {
        quantize_iq::quantize_block(ty, chunk, im_cols(im, k * QK_K, QK_K), out);
    }
}

/// `quantize_weighted` over `threads` workers (0: all cores), rows of `n_per_row` values split
/// between them in order. Returns the blocks of all rows.
pub fn quantize_rows(
    ty: GgmlType,
    x: &[f32],
    n_per_row: usize,
    im: Option<&[f32]>,
    threads: usize,
) -> Result<Vec<u8>> {
    use rayon::prelude::*;
    let block = ty.block_elems();
    if !x.len().is_multiple_of(block) {
        return Err(Error::invalid(format!(
            "{ty}: {} values is not a whole number of {block}-element blocks",
            x.len()
        )));
    }
    if n_per_row == 0 || !x.len().is_multiple_of(n_per_row) {
        return Err(Error::invalid(format!(
            "{} values are not whole rows of {n_per_row}",
            x.len()
        )));
    }
    if im.is_some_and(|im| im.len() != n_per_row) {
        return Err(Error::invalid(format!(
            "the importance matrix has {} columns, the rows {n_per_row}",
            im.map_or(0, <[f32]>::len)
        )));
    }
    // 0 threads: rayon's global pool (all cores), rather than a new pool per tensor.
    let pool = match threads {
        0 => None,
        n => Some(
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .map_err(|e| Error::invalid(format!("cannot start {n} quantizer threads: {e}")))?,
        ),
    };
    let rows = x.len() / n_per_row;
    let n_threads = pool
        .as_ref()
        .map_or_else(rayon::current_num_threads, |p| p.current_num_threads());
    // A few chunks per thread so that uneven rows (codebook searches vary) even out.
    let rows_per_chunk = rows.div_ceil(n_threads * 8).max(1);
    let run = || -> Vec<Result<Vec<u8>>> {
        x.par_chunks(rows_per_chunk * n_per_row)
            .map(|chunk| {
                let mut out = Vec::with_capacity(chunk.len() / ty.block_elems() * ty.block_bytes());
                quantize_weighted(ty, chunk, im, &mut out).map(|_| out)
            })
            .collect()
    };
    let parts = match &pool {
        Some(p) => p.install(run),
        None => run(),
    };
    let mut out = Vec::with_capacity(x.len() / ty.block_elems() * ty.block_bytes());
    for part in parts {
        out.extend_from_slice(&part?);
    }
    Ok(out)
}
