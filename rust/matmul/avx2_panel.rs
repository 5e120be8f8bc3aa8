//! Panel unpackers for AVX2 where the portable ones do not vectorize: the IQ4 types' values
//! are a 16-entry codebook, one `vpshufb` for 32 of them, which the compiler does not find in
//! the portable table lookups (they were a quarter of an IQ4_XS prefill on the AVX2 tier).
//! Each writes exactly what its portable unpacker writes (the panel tests compare them).

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use crate::quant::avx2::{iq4nl_lookup, nibbles32};
use crate::quant::iquants::BlockIq4Xs;
use crate::quant::legacy::BlockIq4Nl;

/// 32 values of the IQ4 codebook from a block's 16 bytes of nibbles, stored at `q`.
#[inline(always)]
unsafe fn store_iq4(qs: *const u8, q: *mut u8) {
    _mm256_storeu_si256(q as *mut __m256i, iq4nl_lookup(nibbles32(qs)));
}

/// IQ4_XS rows, groups of 32 (each with its 6-bit scale).
#[inline(always)]
pub(crate) unsafe fn unpack_iq4_xs(row: &[u8], q: &mut [u8], sd: &mut [f32], m: &mut [f32]) {
    let blocks: &[BlockIq4Xs] = bytemuck::cast_slice(row);
    assert!(
        q.len() >= 256 * blocks.len()
            && sd.len() >= 8 * blocks.len()
            && m.len() >= 8 * blocks.len()
    );
    for (bi, b) in blocks.iter().enumerate() {
        let d = b.d.to_f32();
        for ib in 0..8 {
            store_iq4(
                b.qs.as_ptr().add(16 * ib),
                q.as_mut_ptr().add(256 * bi + 32 * ib),
            );
            sd[8 * bi + ib] = d * b.scale(ib) as f32;
            m[8 * bi + ib] = 0.0;
        }
    }
}

/// IQ4_NL rows, one group per block.
#[inline(always)]
pub(crate) unsafe fn unpack_iq4_nl(row: &[u8], q: &mut [u8], sd: &mut [f32], m: &mut [f32]) {
    let blocks: &[BlockIq4Nl] = bytemuck::cast_slice(row);
    assert!(q.len() >= 32 * blocks.len() && sd.len() >= blocks.len() && m.len() >= blocks.len());
    for (bi, b) in blocks.iter().enumerate() {
        store_iq4(b.qs.as_ptr(), q.as_mut_ptr().add(32 * bi));
        sd[bi] = b.d.to_f32();
        m[bi] = 0.0;
    }
}
