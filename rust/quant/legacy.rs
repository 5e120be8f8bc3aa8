//! The 32-element block types: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 and IQ4_NL (ggml-common.h).
//! Element `j` of a 4-bit block is the low nibble of `qs[j]` for j < 16, the high nibble of
//! `qs[j - 16]` otherwise; Q5 types add bit `j` of `qh` as the fifth bit.

use bytemuck::{Pod, Zeroable};

use super::block::{Block, F16Le, assert_block_size};
use super::grids::KVALUES_IQ4NL;
use crate::gguf::GgmlType;

pub const QK: usize = 32;

#[inline(always)]
pub(crate) fn nibble(qs: &[u8; 16], j: usize) -> u8 {
    if j < 16 {
        qs[j] & 0x0F
    } else {
        qs[j - 16] >> 4
    }
}

/// 4.5 bits per weight: x = d * (q - 8).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ4_0 {
    pub d: F16Le,
    pub qs: [u8; QK / 2],
}
assert_block_size!(BlockQ4_0, 18);

impl Block for BlockQ4_0 {
    const TYPE: GgmlType = GgmlType::Q4_0;
    const ELEMS: usize = QK;
    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for (j, y) in out.iter_mut().enumerate() {
            *y = d * (nibble(&self.qs, j) as i32 - 8) as f32;
        }
    }
}

/// 5 bits per weight: x = d * q + m.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ4_1 {
    pub d: F16Le,
    pub m: F16Le,
    pub qs: [u8; QK / 2],
}
assert_block_size!(BlockQ4_1, 20);

impl Block for BlockQ4_1 {
    const TYPE: GgmlType = GgmlType::Q4_1;
    const ELEMS: usize = QK;
    fn dequantize(&self, out: &mut [f32]) {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        for (j, y) in out.iter_mut().enumerate() {
            *y = d * nibble(&self.qs, j) as f32 + m;
        }
    }
}

/// 5.5 bits per weight: x = d * (q - 16), fifth bits in `qh`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ5_0 {
    pub d: F16Le,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}
assert_block_size!(BlockQ5_0, 22);

impl Block for BlockQ5_0 {
    const TYPE: GgmlType = GgmlType::Q5_0;
    const ELEMS: usize = QK;
    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        let qh = u32::from_le_bytes(self.qh);
        for (j, y) in out.iter_mut().enumerate() {
            let q = nibble(&self.qs, j) as i32 | (((qh >> j) & 1) << 4) as i32;
            *y = d * (q - 16) as f32;
        }
    }
}

/// 6 bits per weight: x = d * q + m, fifth bits in `qh`.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ5_1 {
    pub d: F16Le,
    pub m: F16Le,
    pub qh: [u8; 4],
    pub qs: [u8; QK / 2],
}
assert_block_size!(BlockQ5_1, 24);

impl Block for BlockQ5_1 {
    const TYPE: GgmlType = GgmlType::Q5_1;
    const ELEMS: usize = QK;
    fn dequantize(&self, out: &mut [f32]) {
        let (d, m) = (self.d.to_f32(), self.m.to_f32());
        let qh = u32::from_le_bytes(self.qh);
        for (j, y) in out.iter_mut().enumerate() {
            let q = nibble(&self.qs, j) as u32 | (((qh >> j) & 1) << 4);
            *y = d * q as f32 + m;
        }
    }
}

/// 8.5 bits per weight: x = d * q.
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockQ8_0 {
    pub d: F16Le,
    pub qs: [i8; QK],
}
assert_block_size!(BlockQ8_0, 34);

impl Block for BlockQ8_0 {
    const TYPE: GgmlType = GgmlType::Q8_0;
    const ELEMS: usize = QK;
    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for (y, &q) in out.iter_mut().zip(&self.qs) {
            *y = q as f32 * d;
        }
    }
}

/// 4.5 bits per weight, non-linear: x = d * KVALUES_IQ4NL[q].
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct BlockIq4Nl {
    pub d: F16Le,
    pub qs: [u8; QK / 2],
}
assert_block_size!(BlockIq4Nl, 18);

impl Block for BlockIq4Nl {
    const TYPE: GgmlType = GgmlType::IQ4_NL;
    const ELEMS: usize = QK;
    fn dequantize(&self, out: &mut [f32]) {
        let d = self.d.to_f32();
        for (j, y) in out.iter_mut().enumerate() {
            *y = d * KVALUES_IQ4NL[nibble(&self.qs, j) as usize] as f32;
        }
    }
}
