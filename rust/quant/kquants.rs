//! The K-quants: 256-element super-blocks with 6- or 8-bit sub-block scales (ggml-common.h).
//! Element orders below are those of ggml's `dequantize_row_q*_K`.

use bytemuck::{Pod, Zeroable};

use super::block::{Block, F16Le, assert_block_size};
use crate::gguf::{GgmlType, QK_K};

/// 2.625 bits per weight. 16 sub-blocks of 16, 4-bit scale and 4-bit min each:
/// x = d * sc * q - dmin * m. Element `128 g + 32 j + l` is bits 2j..2j+2 of `qs[32 g + l]`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ2K {
    pub scales: [u8; QK_K / 16],
    pub qs: [u8; QK_K / 4],
    pub d: F16Le,
    pub dmin: F16Le,
}
assert_block_size!(BlockQ2K, 84);

impl Block for BlockQ2K {
    const TYPE: GgmlType = GgmlType::Q2_K;
    const ELEMS: usize = QK_K;
    fn dequantize(&self, out: &mut [f32]) {
        let (d, dmin) = (self.d.to_f32(), self.dmin.to_f32());
        for (i, y) in out.iter_mut().enumerate() {
            let (g, j, l) = (i / 128, (i / 32) % 4, i % 32);
            let q = (self.qs[32 * g + l] >> (2 * j)) & 3;
            let sc = self.scales[i / 16];
            let dl = d * (sc & 0xF) as f32;
            let ml = dmin * (sc >> 4) as f32;
            *y = dl * q as f32 - ml;
        }
    }
}

/// Q3_K's sixteen 6-bit scales: low nibbles in bytes 0..8, high 2-bit pairs in bytes 8..12.
#[inline(always)]
pub fn q3k_scale(scales: &[u8; 12], i: usize) -> i8 {
    let low = (scales[i % 8] >> (4 * (i / 8))) & 0xF;
    let high = (scales[8 + i % 4] >> (2 * (i / 4))) & 3;
    (low | (high << 4)) as i8 - 32
}

/// 3.4375 bits per weight. 16 sub-blocks of 16 with signed 6-bit scales: x = d * sc * q where
/// q = low 2 bits - (4 if the `hmask` bit is clear).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ3K {
    pub hmask: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 4],
    pub scales: [u8; 12],
    pub d: F16Le,
}
assert_block_size!(BlockQ3K, 110);

impl Block for BlockQ3K {
    const TYPE: GgmlType = GgmlType::Q3_K;
    const ELEMS: usize = QK_K;
    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for (i, y) in out.iter_mut().enumerate() {
            let (g, j, l) = (i / 128, (i / 32) % 4, i % 32);
            let low = ((self.qs[32 * g + l] >> (2 * j)) & 3) as i8;
            let high_clear = (self.hmask[i % 32] >> (i / 32)) & 1 == 0;
            let q = low - if high_clear { 4 } else { 0 };
            let dl = d * q3k_scale(&self.scales, i / 16) as f32;
            *y = dl * q as f32;
        }
    }
}

/// Scale and min of sub-block `j` (0..8) from the 12 packed bytes of Q4_K / Q5_K.
#[inline(always)]
pub fn k4_scale_min(scales: &[u8; 12], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0xF) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    }
}

/// Q4_K and Q5_K share scales, mins and nibble order; Q5_K adds a fifth bit from `qh`.
fn dequantize_q45k(
    d: F16Le,
    dmin: F16Le,
    scales: &[u8; 12],
    qs: &[u8; 128],
    qh: Option<&[u8; 32]>,
    out: &mut [f32],
) {
    let (d, dmin) = (d.to_f32(), dmin.to_f32());
    for (sub, chunk) in out.chunks_exact_mut(32).enumerate() {
        let (sc, m) = k4_scale_min(scales, sub);
        let (dl, ml) = (d * sc as f32, dmin * m as f32);
        let (g, h) = (sub / 2, sub % 2);
        for (l, y) in chunk.iter_mut().enumerate() {
            let high = qh.map_or(0, |qh| ((qh[l] >> sub) & 1) << 4);
            let q = ((qs[32 * g + l] >> (4 * h)) & 0xF) | high;
            *y = dl * q as f32 - ml;
        }
    }
}

/// 4.5 bits per weight. 8 sub-blocks of 32 with 6-bit scales and mins: x = d*sc*q - dmin*m.
/// Element `64 g + 32 h + l` is nibble h of `qs[32 g + l]`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ4K {
    pub d: F16Le,
    pub dmin: F16Le,
    pub scales: [u8; 12],
    pub qs: [u8; QK_K / 2],
}
assert_block_size!(BlockQ4K, 144);

impl Block for BlockQ4K {
    const TYPE: GgmlType = GgmlType::Q4_K;
    const ELEMS: usize = QK_K;
    fn dequantize(&self, out: &mut [f32]) {
        dequantize_q45k(self.d, self.dmin, &self.scales, &self.qs, None, out);
    }
}

/// 5.5 bits per weight: Q4_K plus a fifth bit; bit `sub` of `qh[l]` for element `32 sub + l`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ5K {
    pub d: F16Le,
    pub dmin: F16Le,
    pub scales: [u8; 12],
    pub qh: [u8; QK_K / 8],
    pub qs: [u8; QK_K / 2],
}
assert_block_size!(BlockQ5K, 176);

impl Block for BlockQ5K {
    const TYPE: GgmlType = GgmlType::Q5_K;
    const ELEMS: usize = QK_K;
    fn dequantize(&self, out: &mut [f32]) {
        dequantize_q45k(
            self.d,
            self.dmin,
            &self.scales,
            &self.qs,
            Some(&self.qh),
            out,
        );
    }
}

/// 6.5625 bits per weight. 16 sub-blocks of 16 with signed 8-bit scales: x = d * sc * (q - 32).
/// Element `128 g + 32 j + l`: nibble (j / 2) of `ql[64 g + 32 (j % 2) + l]`, high bits
/// 2j..2j+2 of `qh[32 g + l]`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ6K {
    pub ql: [u8; QK_K / 2],
    pub qh: [u8; QK_K / 4],
    pub scales: [i8; QK_K / 16],
    pub d: F16Le,
}
assert_block_size!(BlockQ6K, 210);

impl Block for BlockQ6K {
    const TYPE: GgmlType = GgmlType::Q6_K;
    const ELEMS: usize = QK_K;
    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for (i, y) in out.iter_mut().enumerate() {
            let (g, j, l) = (i / 128, (i / 32) % 4, i % 32);
            let low = (self.ql[64 * g + 32 * (j % 2) + l] >> (4 * (j / 2))) & 0xF;
            let high = (self.qh[32 * g + l] >> (2 * j)) & 3;
            let q = (low | (high << 4)) as i8 - 32;
            let dl = d * self.scales[i / 16] as f32;
            *y = dl * q as f32;
        }
    }
}

/// The activation type of the K- and IQ-quant dot products: f32 scale, 8-bit values and the
/// sums of each group of 16 (used to apply the mins of Q2_K/Q4_K/Q5_K in one step).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ8K {
    pub d: [u8; 4],
    pub qs: [i8; QK_K],
    pub bsums: [[u8; 2]; QK_K / 16],
}
assert_block_size!(BlockQ8K, 292);

impl Block for BlockQ8K {
    const TYPE: GgmlType = GgmlType::Q8_K;
    const ELEMS: usize = QK_K;
    fn dequantize(&self, out: &mut [f32]) {
        let d = f32::from_le_bytes(self.d);
        for (y, &q) in out.iter_mut().zip(&self.qs) {
            *y = d * q as f32;
        }
    }
}
