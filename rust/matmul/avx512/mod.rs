//! 512-bit kernels (AVX-512 F/BW/VL with VNNI, VBMI and BITALG: Ice Lake, Sapphire Rapids,
//! Zen 4 and later; elsewhere `dot_fn` keeps the 256-bit kernels and `gemm` the scalar
//! unpackers):
//! - `codebook`: the IQ1/IQ2/IQ3 types and IQ4_XS, where the 256-bit kernels spent most of
//!   their time assembling grid rows and sign bytes with scalar code (16% of the memory wall on
//!   IQ2_XS). A super-block is taken apart with vector operations instead: grid rows by one
//!   gather per 64 weights, sign bits (7 stored, the 8th their parity) as one 64-bit mask that
//!   negates the activations, so the unsigned grid bytes go straight into `vpmaddubsw`, and
//!   per-group scales permuted into i16 lanes for `vpdpwssd`. The same taken-apart form feeds
//!   the decode dot products and the batched product's panel.
//! - `pairs`: the 32-element types (Q4_0, Q8_0, IQ4_NL), two blocks per vector, for the dot
//!   products and the batched product's panel.
//! - `q6k`: Q6_K rows unpacked into the batched product's panel.
//!
//! The integer sums are those of `scalar`, exactly; only the float accumulation order differs.
//! The type table (`crate::kernels`) compiles each kernel with this module's `FEATURES`.

#![allow(unsafe_op_in_unsafe_fn)]
pub(crate) mod codebook;
pub(crate) mod pairs;
pub(crate) mod q6k;

use std::arch::x86_64::*;

use crate::quant::block::F16Le;

#[inline(always)]
pub(super) unsafe fn fp16(x: F16Le) -> f32 {
    x.to_f32()
}

/// How far ahead the row's weights are prefetched (see the 256-bit kernels).
pub(super) const PREFETCH_BYTES: usize = 2048;

#[inline(always)]
pub(super) unsafe fn load_table<T>(t: &T) -> __m512i {
    _mm512_loadu_si512(t as *const T as *const __m512i)
}

/// Two blocks' 16 bytes of packed nibbles as their 64 quants in element order (each block's low
/// nibbles, then its high nibbles).
#[inline(always)]
pub(super) unsafe fn nibbles64(a: &[u8; 16], b: &[u8; 16]) -> __m512i {
    let lo = _mm256_broadcastsi128_si256(_mm_loadu_si128(a.as_ptr() as *const __m128i));
    let hi = _mm256_broadcastsi128_si256(_mm_loadu_si128(b.as_ptr() as *const __m128i));
    let both = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi);
    let shifted = _mm512_srlv_epi64(both, _mm512_set_epi64(4, 4, 0, 0, 4, 4, 0, 0));
    _mm512_and_si512(shifted, _mm512_set1_epi8(0x0F))
}

pub(crate) fn detected() -> bool {
    static DETECTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DETECTED.get_or_init(|| {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
            && is_x86_feature_detected!("avx512vbmi")
            && is_x86_feature_detected!("avx512bitalg")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}
