//! Reference quantizers F32 -> the 32-element types and Q8_K (round-to-nearest, as ggml's
//! `quantize_row_*_ref`; the K- and IQ4 types are in `quantize_k`). They start the
//! matrix-product layer: Q8_0 and Q8_K are also the activation types the
//! integer dot products consume. Operation order follows ggml so results match gguf-py's
//! quantizers bit for bit.

use super::block::F16Le;
use super::kquants::BlockQ8K;
use super::legacy::*;
use super::quantize_k;
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

pub fn quantize_q4_0(x: &[f32; QK]) -> BlockQ4_0 {
    let (d, q) = symmetric_quants(x, 8.0, 15);
    BlockQ4_0 {
        d: F16Le::from_f32(d),
        qs: pack_nibbles(&q),
    }
}

pub fn quantize_q4_1(x: &[f32; QK]) -> BlockQ4_1 {
    let (d, min, q) = affine_quants(x, 15);
    BlockQ4_1 {
        d: F16Le::from_f32(d),
        m: F16Le::from_f32(min),
        qs: pack_nibbles(&q),
    }
}

pub fn quantize_q5_0(x: &[f32; QK]) -> BlockQ5_0 {
    let (d, q) = symmetric_quants(x, 16.0, 31);
    BlockQ5_0 {
        d: F16Le::from_f32(d),
        qh: high_bits(&q),
        qs: pack_nibbles(&q.map(|v| v & 0xF)),
    }
}

pub fn quantize_q5_1(x: &[f32; QK]) -> BlockQ5_1 {
    let (d, min, q) = affine_quants(x, 31);
    let qs = pack_nibbles(&q.map(|v| v & 0xF));
    BlockQ5_1 {
        d: F16Le::from_f32(d),
        m: F16Le::from_f32(min),
        qh: high_bits(&q),
        qs,
    }
}

pub fn quantize_q8_0(x: &[f32; QK]) -> BlockQ8_0 {
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

/// Quantizes `x` (whole blocks) to `ty`, appending the blocks to `out`.
pub fn quantize(ty: GgmlType, x: &[f32], out: &mut Vec<u8>) -> Result<()> {
    fn blocks<const N: usize, B: bytemuck::Pod>(
        x: &[f32],
        out: &mut Vec<u8>,
        f: fn(&[f32; N]) -> B,
    ) {
        for chunk in x.chunks_exact(N) {
            out.extend_from_slice(bytemuck::bytes_of(&f(chunk
                .try_into()
                .expect("exact chunk"))));
        }
    }
    if !x.len().is_multiple_of(ty.block_elems()) {
        return Err(Error::invalid(format!(
            "{ty}: {} values is not a whole number of {}-element blocks",
            x.len(),
            ty.block_elems()
        )));
    }
    match ty {
        GgmlType::Q4_0 => blocks(x, out, quantize_q4_0),
        GgmlType::Q4_1 => blocks(x, out, quantize_q4_1),
        GgmlType::Q5_0 => blocks(x, out, quantize_q5_0),
        GgmlType::Q5_1 => blocks(x, out, quantize_q5_1),
        GgmlType::Q8_0 => blocks(x, out, quantize_q8_0),
        GgmlType::Q8_K => blocks(x, out, quantize_q8_k),
        GgmlType::Q2_K => blocks(x, out, quantize_k::quantize_q2_k),
        GgmlType::Q3_K => blocks(x, out, quantize_k::quantize_q3_k),
        GgmlType::Q4_K => blocks(x, out, quantize_k::quantize_q4_k),
        GgmlType::Q5_K => blocks(x, out, quantize_k::quantize_q5_k),
        GgmlType::Q6_K => blocks(x, out, quantize_k::quantize_q6_k),
        GgmlType::IQ4_NL => blocks(x, out, quantize_k::quantize_iq4_nl),
        GgmlType::IQ4_XS => blocks(x, out, quantize_k::quantize_iq4_xs),
        _ => {
            return Err(Error::Unsupported(format!(
                "{ty}: no reference quantizer (IQ1/IQ2/IQ3 types need an importance matrix)"
            )));
        }
    }
    Ok(())
}
