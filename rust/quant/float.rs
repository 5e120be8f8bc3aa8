//! Unquantized element types: F32, F16, BF16 (one element per "block").

use bytemuck::{Pod, Zeroable};

use super::block::{Block, F16Le, assert_block_size};
use crate::gguf::GgmlType;

#[repr(transparent)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct F32Le(pub [u8; 4]);
assert_block_size!(F32Le, 4);

impl Block for F32Le {
    const TYPE: GgmlType = GgmlType::F32;
    const ELEMS: usize = 1;
    fn dequantize(&self, out: &mut [f32]) {
        out[0] = f32::from_le_bytes(self.0);
    }
}

assert_block_size!(F16Le, 2);

impl Block for F16Le {
    const TYPE: GgmlType = GgmlType::F16;
    const ELEMS: usize = 1;
    fn dequantize(&self, out: &mut [f32]) {
        out[0] = self.to_f32();
    }
}

/// bfloat16: the top half of an f32.
#[repr(transparent)]
#[derive(Clone, Copy, Pod, Zeroable)]
pub struct Bf16Le(pub [u8; 2]);
assert_block_size!(Bf16Le, 2);

impl Block for Bf16Le {
    const TYPE: GgmlType = GgmlType::BF16;
    const ELEMS: usize = 1;
    fn dequantize(&self, out: &mut [f32]) {
        out[0] = f32::from_bits((u16::from_le_bytes(self.0) as u32) << 16);
    }
}
