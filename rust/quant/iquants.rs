//! The importance-matrix quants: lattice codebooks (IQ1, IQ2, IQ3) and the non-linear 4-bit
//! IQ4_XS (ggml-common.h). Grid rows hold 8 (IQ1/IQ2) or 4 (IQ3) values; sign bits flip them.

use bytemuck::{Pod, Zeroable};

use super::block::{Block, F16Le, assert_block_size, u16_le, u32_le};
use super::grids::*;
use crate::gguf::{GgmlType, QK_K};

/// The i-th byte of a packed grid row, as a float.
#[inline(always)]
fn grid_u8(row: u64, i: usize) -> f32 {
    ((row >> (8 * i)) & 0xFF) as u8 as f32
}

/// Writes `db * grid[k] * (+-1)` for the 8 values of a grid row; sign bit k set means negative.
#[inline(always)]
fn signed_grid8(out: &mut [f32], db: f32, row: u64, signs: u8) {
    for (k, y) in out[..8].iter_mut().enumerate() {
        let v = db * grid_u8(row, k);
        *y = if signs & (1 << k) != 0 { -v } else { v };
    }
}

/// 2.0625 bits per weight. 8 groups of 32; per group two u32: four 8-bit grid indices, then
/// four 7-bit sign indices and a 4-bit scale: db = d * (0.5 + s) * 0.25.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockIq2Xxs {
    pub d: F16Le,
    pub qs: [u8; QK_K / 4],
}
assert_block_size!(BlockIq2Xxs, 66);

impl Block for BlockIq2Xxs {
    const TYPE: GgmlType = GgmlType::IQ2_XXS;
    const ELEMS: usize = QK_K;
    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for (ib, chunk) in out.chunks_exact_mut(32).enumerate() {
            let grid_idx = &self.qs[8 * ib..8 * ib + 4];
            let aux = u32_le(&self.qs[8 * ib + 4..]);
            let db = d * (0.5 + (aux >> 28) as f32) * 0.25;
            for k in 0..4 {
                let signs = KSIGNS_IQ2XS[((aux >> (7 * k)) & 127) as usize];
                signed_grid8(
                    &mut chunk[8 * k..],
                    db,
                    IQ2XXS_GRID[grid_idx[k] as usize],
                    signs,
                );
            }
        }
    }
}

/// 2.3125 bits per weight. 32 u16 per block: 9-bit grid index, 7-bit sign index; sixteen 4-bit
/// scales, one per 16 elements.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockIq2Xs {
    pub d: F16Le,
    pub qs: [[u8; 2]; QK_K / 8],
    pub scales: [u8; QK_K / 32],
}
assert_block_size!(BlockIq2Xs, 74);

#[inline(always)]
pub(crate) fn nibble_scale(scales: &[u8], i: usize) -> u8 {
    (scales[i / 2] >> (4 * (i % 2))) & 0xF
}

impl Block for BlockIq2Xs {
    const TYPE: GgmlType = GgmlType::IQ2_XS;
    const ELEMS: usize = QK_K;
    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for (e, chunk) in out.chunks_exact_mut(8).enumerate() {
            let q = u16_le(self.qs[e]);
            let db = d * (0.5 + nibble_scale(&self.scales, e / 2) as f32) * 0.25;
            signed_grid8(
                chunk,
                db,
                IQ2XS_GRID[(q & 511) as usize],
                KSIGNS_IQ2XS[(q >> 9) as usize],
            );
        }
    }
}

/// 2.5625 bits per weight. 10-bit grid indices (8 low bits in `qs`, 2 high in `qh`), explicit
/// sign bytes, sixteen 4-bit scales.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockIq2S {
    pub d: F16Le,
    pub qs: [u8; QK_K / 8],
    pub signs: [u8; QK_K / 8],
    pub qh: [u8; QK_K / 32],
    pub scales: [u8; QK_K / 32],
}
assert_block_size!(BlockIq2S, 82);

impl Block for BlockIq2S {
    const TYPE: GgmlType = GgmlType::IQ2_S;
    const ELEMS: usize = QK_K;
    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for (e, chunk) in out.chunks_exact_mut(8).enumerate() {
            let high = ((self.qh[e / 4] >> (2 * (e % 4))) & 3) as usize;
            let idx = self.qs[e] as usize | (high << 8);
            let db = d * (0.5 + nibble_scale(&self.scales, e / 2) as f32) * 0.25;
            signed_grid8(chunk, db, IQ2S_GRID[idx], self.signs[e]);
        }
    }
}

/// 3.0625 bits per weight. 64 8-bit indices into a 4-value grid, then per group of 32 a u32 of
/// four 7-bit sign indices and a 4-bit scale: db = d * (0.5 + s) * 0.5.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockIq3Xxs {
    pub d: F16Le,
    pub qs: [u8; QK_K / 4],
    pub scales_signs: [u8; QK_K / 8],
}
assert_block_size!(BlockIq3Xxs, 98);

/// Writes `db * grid * (+-1)` for two 4-value grid rows (8 elements) under one sign byte.
#[inline(always)]
fn signed_grid4x2(out: &mut [f32], db: f32, rows: [u32; 2], signs: u8) {
    let row = rows[0] as u64 | ((rows[1] as u64) << 32);
    signed_grid8(out, db, row, signs);
}

impl Block for BlockIq3Xxs {
    const TYPE: GgmlType = GgmlType::IQ3_XXS;
    const ELEMS: usize = QK_K;
    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for (ib, chunk) in out.chunks_exact_mut(32).enumerate() {
            let aux = u32_le(&self.scales_signs[4 * ib..]);
            let db = d * (0.5 + (aux >> 28) as f32) * 0.5;
            for k in 0..4 {
                let signs = KSIGNS_IQ2XS[((aux >> (7 * k)) & 127) as usize];
                let q = &self.qs[8 * ib + 2 * k..];
                let rows = [IQ3XXS_GRID[q[0] as usize], IQ3XXS_GRID[q[1] as usize]];
                signed_grid4x2(&mut chunk[8 * k..], db, rows, signs);
            }
        }
    }
}

/// 3.4375 bits per weight. 9-bit indices into a 4-value grid (high bits in `qh`), explicit sign
/// bytes, eight 4-bit scales: db = d * (1 + 2 s).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockIq3S {
    pub d: F16Le,
    pub qs: [u8; QK_K / 4],
    pub qh: [u8; QK_K / 32],
    pub signs: [u8; QK_K / 8],
    pub scales: [u8; QK_K / 64],
}
assert_block_size!(BlockIq3S, 110);

impl Block for BlockIq3S {
    const TYPE: GgmlType = GgmlType::IQ3_S;
    const ELEMS: usize = QK_K;
    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for (e, chunk) in out.chunks_exact_mut(8).enumerate() {
            let db = d * (1 + 2 * nibble_scale(&self.scales, e / 4)) as f32;
            let index = |g: usize| {
                self.qs[g] as usize | ((((self.qh[g / 8] >> (g % 8)) & 1) as usize) << 8)
            };
            let rows = [IQ3S_GRID[index(2 * e)], IQ3S_GRID[index(2 * e + 1)]];
            signed_grid4x2(chunk, db, rows, self.signs[e]);
        }
    }
}

/// Writes `dl * (grid + delta)` for the 8 values of a ternary IQ1 grid row.
#[inline(always)]
fn iq1_grid8(out: &mut [f32], dl: f32, row: u64, delta: f32) {
    for (k, y) in out[..8].iter_mut().enumerate() {
        let g = ((row >> (8 * k)) & 0xFF) as u8 as i8 as f32;
        *y = dl * (g + delta);
    }
}

pub const IQ1S_DELTA: f32 = 0.125;

/// 1.5625 bits per weight. 11-bit indices into a ternary grid (8 low bits in `qs`, 3 high in
/// `qh`); per group of 32 a u16 `qh` with a 3-bit scale and the sign of a +-0.125 shift.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockIq1S {
    pub d: F16Le,
    pub qs: [u8; QK_K / 8],
    pub qh: [[u8; 2]; QK_K / 32],
}
assert_block_size!(BlockIq1S, 50);

impl Block for BlockIq1S {
    const TYPE: GgmlType = GgmlType::IQ1_S;
    const ELEMS: usize = QK_K;
    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for (ib, chunk) in out.chunks_exact_mut(32).enumerate() {
            let qh = u16_le(self.qh[ib]);
            let dl = d * (2 * ((qh >> 12) & 7) + 1) as f32;
            let delta = if qh & 0x8000 != 0 {
                -IQ1S_DELTA
            } else {
                IQ1S_DELTA
            };
            for k in 0..4 {
                let idx = self.qs[4 * ib + k] as usize | ((((qh >> (3 * k)) & 7) as usize) << 8);
                iq1_grid8(&mut chunk[8 * k..], dl, IQ1S_GRID[idx], delta);
            }
        }
    }
}

/// 1.75 bits per weight. Like IQ1_S with a shift sign per 8 elements and a 3-bit scale per 16;
/// the f16 super-block scale is spread over the top nibbles of the four scale u16s.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockIq1M {
    pub qs: [u8; QK_K / 8],
    pub qh: [u8; QK_K / 16],
    pub scales: [[u8; 2]; QK_K / 64],
}
assert_block_size!(BlockIq1M, 56);

impl BlockIq1M {
    pub fn d(&self) -> f32 {
        let sc = self.scales.map(u16_le);
        let bits =
            (sc[0] >> 12) | ((sc[1] >> 8) & 0x00F0) | ((sc[2] >> 4) & 0x0F00) | (sc[3] & 0xF000);
        half::f16::from_bits(bits).to_f32()
    }
}

impl Block for BlockIq1M {
    const TYPE: GgmlType = GgmlType::IQ1_M;
    const ELEMS: usize = QK_K;
    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d();
        let sc = self.scales.map(u16_le);
        for (e, chunk) in out.chunks_exact_mut(8).enumerate() {
            let s = e / 2; // one 3-bit scale per 16 elements
            let ls = (sc[s / 4] >> (3 * (s % 4))) & 7;
            let dl = d * (2 * ls + 1) as f32;
            let h = (self.qh[e / 2] >> (4 * (e % 2))) & 0xF;
            let idx = self.qs[e] as usize | (((h & 7) as usize) << 8);
            let delta = if h & 8 != 0 { -IQ1S_DELTA } else { IQ1S_DELTA };
            iq1_grid8(chunk, dl, IQ1S_GRID[idx], delta);
        }
    }
}

/// 4.25 bits per weight. IQ4_NL's codebook with a 6-bit signed scale per 32 elements
/// (low nibble in `scales_l`, high 2 bits in `scales_h`): x = d * (ls - 32) * KVALUES[q].
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockIq4Xs {
    pub d: F16Le,
    pub scales_h: [u8; 2],
    pub scales_l: [u8; QK_K / 64],
    pub qs: [u8; QK_K / 2],
}
assert_block_size!(BlockIq4Xs, 136);

impl BlockIq4Xs {
    #[inline(always)]
    pub fn scale(&self, ib: usize) -> i32 {
        let low = (self.scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF;
        let high = ((u16_le(self.scales_h) >> (2 * ib)) & 3) as u8;
        (low | (high << 4)) as i32 - 32
    }
}

impl Block for BlockIq4Xs {
    const TYPE: GgmlType = GgmlType::IQ4_XS;
    const ELEMS: usize = QK_K;
    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for (ib, chunk) in out.chunks_exact_mut(32).enumerate() {
            let dl = d * self.scale(ib) as f32;
            let qs = &self.qs[16 * ib..16 * ib + 16];
            for (j, y) in chunk.iter_mut().enumerate() {
                let q = if j < 16 { qs[j] & 0xF } else { qs[j - 16] >> 4 };
                *y = dl * KVALUES_IQ4NL[q as usize] as f32;
            }
        }
    }
}
