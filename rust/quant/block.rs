//! What every block type shares: the `Block` trait (layout + reference dequantization) and the
//! little-endian scalar fields blocks are made of. Fields are byte arrays so that every block
//! has alignment 1 and can be viewed in place inside a memory-mapped file at any offset.

use bytemuck::{Pod, Zeroable};

use crate::gguf::GgmlType;

/// An f16 stored little-endian.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct F16Le(pub [u8; 2]);

impl F16Le {
    #[inline(always)]
    pub fn to_f32(self) -> f32 {
        half::f16::from_bits(u16::from_le_bytes(self.0)).to_f32()
    }
    pub fn from_f32(x: f32) -> Self {
        F16Le(half::f16::from_f32(x).to_bits().to_le_bytes())
    }
}

#[inline(always)]
pub fn u16_le(b: [u8; 2]) -> u16 {
    u16::from_le_bytes(b)
}

#[inline(always)]
pub fn u32_le(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// A quantized block layout. `dequantize` is the reference: plain scalar code whose float
/// operations are ordered as ggml's `dequantize_row_*` (and gguf-py's numpy port) order them,
/// so results agree bit for bit; every SIMD path is tested against it.
pub trait Block: Pod {
    const TYPE: GgmlType;
    /// Elements per block.
    const ELEMS: usize;
    fn dequantize(&self, out: &mut [f32]);
}

/// Size check at compile time: `assert_block_size!(BlockQ4_0, 18)`.
macro_rules! assert_block_size {
    ($block:ty, $bytes:expr) => {
        const _: () = assert!(std::mem::size_of::<$block>() == $bytes);
        const _: () = assert!(std::mem::align_of::<$block>() == 1);
    };
}
pub(crate) use assert_block_size;

/// Dequantizes whole blocks from `src` into `dst` with the reference code.
pub fn dequantize_blocks<B: Block>(src: &[u8], dst: &mut [f32]) {
    let blocks: &[B] = bytemuck::cast_slice(src);
    for (block, out) in blocks.iter().zip(dst.chunks_exact_mut(B::ELEMS)) {
        block.dequantize(out);
    }
}
