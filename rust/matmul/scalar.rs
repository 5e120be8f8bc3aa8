//! The reference dot products: one weight row against one quantized activation row, computed
//! from the integer forms of `unpack` with exact integer sums per block (or per 16-element
//! group) and one float multiply-add per block, in the order ggml's `vec_dot_*` kernels use.

use bytemuck::Pod;

use super::unpack::{IntSuperBlock, Unpack32, UnpackK};
use crate::quant::block::F16Le;
use crate::quant::kquants::BlockQ8K;
use crate::quant::legacy::BlockQ8_0;

/// `w` holds whole blocks of `B`, `a` as many Q8_0 blocks.
pub fn dot_q8_0<B: Unpack32 + Pod>(w: &[u8], a: &[u8]) -> f32 {
    let w: &[B] = bytemuck::cast_slice(w);
    let a: &[BlockQ8_0] = bytemuck::cast_slice(a);
    let mut sum = 0f32;
    for (wb, ab) in w.iter().zip(a) {
        let u = wb.unpack();
        let da = ab.d.to_f32();
        let isum: i32 =
            u.q.iter()
                .zip(&ab.qs)
                .map(|(&q, &x)| q as i32 * x as i32)
                .sum();
        let asum: i32 = ab.qs.iter().map(|&x| x as i32).sum();
        sum += u.d * da * isum as f32 + u.m * da * asum as f32;
    }
    sum
}

/// `w` holds whole super-blocks of `B`, `a` as many Q8_K blocks.
pub fn dot_q8_k<B: UnpackK + Pod>(w: &[u8], a: &[u8]) -> f32 {
    let w: &[B] = bytemuck::cast_slice(w);
    let a: &[BlockQ8K] = bytemuck::cast_slice(a);
    let mut u = IntSuperBlock::default();
    let mut sum = 0f32;
    for (wb, ab) in w.iter().zip(a) {
        wb.unpack(&mut u);
        let da = f32::from_le_bytes(ab.d);
        let (mut sumi, mut summ) = (0i32, 0i32);
        for g in 0..16 {
            let span = 16 * g..16 * g + 16;
            let isum: i32 = u.q[span.clone()]
                .iter()
                .zip(&ab.qs[span])
                .map(|(&q, &x)| q as i32 * x as i32)
                .sum();
            sumi += u.scales[g] as i32 * isum;
            summ += u.mins[g] as i32 * i16::from_le_bytes(ab.bsums[g]) as i32;
        }
        sum += u.d * da * sumi as f32 + u.dmin * da * summ as f32;
    }
    sum
}

/// Float weights against float activations (little-endian f32 bytes).
fn dot_float(w: &[u8], a: &[u8], elem_bytes: usize, to_f32: impl Fn(&[u8]) -> f32) -> f32 {
    w.chunks_exact(elem_bytes)
        .zip(a.chunks_exact(4))
        .map(|(w, x)| to_f32(w) * f32::from_le_bytes([x[0], x[1], x[2], x[3]]))
        .sum()
}

pub fn dot_f32(w: &[u8], a: &[u8]) -> f32 {
    dot_float(w, a, 4, |b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

pub fn dot_f16(w: &[u8], a: &[u8]) -> f32 {
    dot_float(w, a, 2, |b| F16Le([b[0], b[1]]).to_f32())
}

pub fn dot_bf16(w: &[u8], a: &[u8]) -> f32 {
    dot_float(w, a, 2, |b| {
        f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)
    })
}
