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

#![allow(unsafe_op_in_unsafe_fn)]
mod codebook;
mod pairs;
mod q6k;

use std::arch::x86_64::*;

use super::gemm::{PanelForm, RowUnpackFn, featured_panel_form, unpack_row_k};
use super::narrow::LanesFn;
use super::{VecDotFn, VecDotManyFn};
use crate::gguf::GgmlType;
use crate::quant::block::F16Le;
use crate::quant::iquants::*;
use crate::quant::kquants::{BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K};
use crate::quant::legacy::{BlockIq4Nl, BlockQ4_0, BlockQ8_0};
use codebook::*;
use pairs::{dot_pairs, dot_q4_1, lanes_pairs, unpack_row_pairs};
use q6k::q6_k_row;

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

pub(super) fn detected() -> bool {
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

/// Kernels compiled for this module's features, one wrapper per type (as `avx2`'s `tier!`).
macro_rules! dot_table {
    ($($ty:ident => $kernel:path),*) => {
        /// The 512-bit dot product for `ty`, if it has one; only call when `detected()`.
        pub(super) fn table(ty: GgmlType) -> Option<VecDotFn> {
            $(
                #[allow(non_snake_case)]
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx512bitalg,avx2,fma,f16c")]
                unsafe fn $ty(w: &[u8], a: &[u8]) -> f32 {
                    $kernel(w, a)
                }
            )*
            match ty {
                $(GgmlType::$ty => Some(|w, a| unsafe { $ty(w, a) }),)*
                _ => None,
            }
        }
    };
}

dot_table!(
    IQ2_XXS => dot::<BlockIq2Xxs>, IQ2_XS => dot::<BlockIq2Xs>, IQ2_S => dot::<BlockIq2S>,
    IQ3_XXS => dot::<BlockIq3Xxs>, IQ3_S => dot::<BlockIq3S>, IQ1_S => dot::<BlockIq1S>,
    IQ1_M => dot::<BlockIq1M>, IQ4_XS => dot::<BlockIq4Xs>,
    Q4_0 => dot_pairs::<BlockQ4_0>, Q8_0 => dot_pairs::<BlockQ8_0>, IQ4_NL => dot_pairs::<BlockIq4Nl>,
    Q4_1 => dot_q4_1
);

/// As `dot_table`, the products of one row with several activation rows (`codebook::dot_many`).
macro_rules! dot_many_table {
    ($($ty:ident => $kernel:path),*) => {
        /// The 512-bit multi-token dot product for `ty`, if it has one; only call when
        /// `detected()`.
        pub(super) fn many_table(ty: GgmlType) -> Option<VecDotManyFn> {
            $(
                #[allow(non_snake_case)]
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx512bitalg,avx2,fma,f16c")]
                unsafe fn $ty(w: &[u8], a: &[u8], out: &mut [f32]) {
                    $kernel(w, a, out)
                }
            )*
            match ty {
                $(GgmlType::$ty => Some(|w, a, out| unsafe { $ty(w, a, out) }),)*
                _ => None,
            }
        }
    };
}

dot_many_table!(
    IQ2_XXS => dot_many::<BlockIq2Xxs>, IQ2_XS => dot_many::<BlockIq2Xs>, IQ2_S => dot_many::<BlockIq2S>,
    IQ3_XXS => dot_many::<BlockIq3Xxs>, IQ3_S => dot_many::<BlockIq3S>, IQ1_S => dot_many::<BlockIq1S>,
    IQ1_M => dot_many::<BlockIq1M>, IQ4_XS => dot_many::<BlockIq4Xs>
);

// Each type with its scale grain (elements per scale) and whether it has offsets (mins), for
// the batched product. Q2_K..Q5_K take the portable unpackers, compiled here with the 512-bit
// features (their straight lane loops vectorize; at the baseline ISA they ran 4-20x slower).
featured_panel_form!(
    pub(super) fn panel_form,
    "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx512bitalg,avx2,fma,f16c",
    detected();
    IQ2_XXS => unpack_row::<BlockIq2Xxs, 32>, 32, false, IQ2_XS => unpack_row::<BlockIq2Xs, 16>, 16, false,
    IQ2_S => unpack_row::<BlockIq2S, 16>, 16, false, IQ3_XXS => unpack_row::<BlockIq3Xxs, 32>, 32, false,
    IQ3_S => unpack_row::<BlockIq3S, 32>, 32, false, IQ1_S => unpack_row::<BlockIq1S, 32>, 32, false,
    IQ1_M => unpack_row::<BlockIq1M, 16>, 16, false, IQ4_XS => unpack_row::<BlockIq4Xs, 32>, 32, false,
    Q6_K => q6_k_row, 16, false, Q4_0 => unpack_row_pairs::<BlockQ4_0>, 32, false,
    Q8_0 => unpack_row_pairs::<BlockQ8_0>, 32, false, IQ4_NL => unpack_row_pairs::<BlockIq4Nl>, 32, false,
    Q2_K => unpack_row_k::<BlockQ2K, 16>, 16, true, Q3_K => unpack_row_k::<BlockQ3K, 16>, 16, false,
    Q4_K => unpack_row_k::<BlockQ4K, 32>, 32, true, Q5_K => unpack_row_k::<BlockQ5K, 32>, 32, true
);

macro_rules! lanes_table {
    ($($ty:ident => $kernel:path),*) => {
        /// The narrow product's direct unpacker for `ty` (4 rows into lanes in one pass), where
        /// the type has one and the CPU the features.
        pub(super) fn lanes_form(ty: GgmlType) -> Option<LanesFn> {
            if !detected() {
                return None;
            }
            $(
                #[allow(non_snake_case)]
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx512bitalg,avx2,fma,f16c")]
                unsafe fn $ty(rows: [&[u8]; 4], valid: usize, q: &mut [u8], sd: &mut [f32], m: &mut [f32]) {
                    $kernel(rows, valid, q, sd, m)
                }
            )*
            match ty {
                $(GgmlType::$ty => Some(|rows, valid, q, sd, m| unsafe { $ty(rows, valid, q, sd, m) }),)*
                _ => None,
            }
        }
    };
}

lanes_table!(
    Q4_0 => lanes_pairs::<BlockQ4_0>, Q8_0 => lanes_pairs::<BlockQ8_0>,
    IQ4_NL => lanes_pairs::<BlockIq4Nl>
);
