//! Float vectors of one instruction set, as one trait: attention and the softmax are written
//! once over it and compiled for AVX-512 (16 lanes) and AVX2 (8 lanes). Every method is
//! `inline(always)` so that it takes on the features of the `target_feature` function that
//! calls it.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use super::softmax::EXP_CUT;

pub trait Lanes: Copy {
    /// Floats per vector.
    const N: usize;
    /// Output vectors per query head that `weighted_values` keeps in registers.
    const ACC_VECS: usize;

    unsafe fn zero() -> Self;
    unsafe fn splat(x: f32) -> Self;
    unsafe fn load(p: *const f32) -> Self;
    unsafe fn store(self, p: *mut f32);
    /// N f16 values.
    unsafe fn load_f16(p: *const u8) -> Self;
    /// N signed bytes times `d`.
    unsafe fn load_i8(p: *const u8, d: f32) -> Self;
    unsafe fn add(self, b: Self) -> Self;
    unsafe fn sub(self, b: Self) -> Self;
    unsafe fn mul(self, b: Self) -> Self;
    /// As `maxps`: `b` where either is NaN.
    unsafe fn max(self, b: Self) -> Self;
    /// As `minps`: `b` where either is NaN.
    unsafe fn min(self, b: Self) -> Self;
    /// `self * b + c`.
    unsafe fn fmadd(self, b: Self, c: Self) -> Self;
    /// `c - self * b`.
    unsafe fn fnmadd(self, b: Self, c: Self) -> Self;
    unsafe fn round(self) -> Self;
    /// `self * 2^n` for integral n in [-126, 127].
    unsafe fn scale_pow2(self, n: Self) -> Self;
    /// 0 where `x < cut`, else `self` (a NaN in x keeps self).
    unsafe fn zero_below(self, x: Self, cut: f32) -> Self;
    unsafe fn reduce_add(self) -> f32;
    /// Four vectors' sums.
    unsafe fn hsum4(v: [Self; 4]) -> [f32; 4] {
        v.map(|x| x.reduce_add())
    }
}

/// `exp(x)` lane by lane, within 2 ulp of `f32::exp`, and an exact 0 below `EXP_CUT` (never a
/// subnormal): a degree-6 polynomial after range reduction by powers of two.
#[inline(always)]
pub unsafe fn exp<L: Lanes>(x: L) -> L {
    // x = n ln2 + r, |r| <= ln2 / 2; exp(x) = 2^n exp(r); n stays in [-126, 127]. The clamps
    // take x as their second operand, which maxps/minps return for a NaN: NaN stays NaN.
    let xc = L::splat(88.0).min(L::splat(EXP_CUT).max(x));
    let n = xc.mul(L::splat(std::f32::consts::LOG2_E)).round();
    let r = n.fnmadd(L::splat(0.693_145_75), xc);
    let r = n.fnmadd(L::splat(1.428_606_8e-6), r);
    let mut p = L::splat(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = p.fmadd(r, L::splat(c));
    }
    p.scale_pow2(n).zero_below(x, EXP_CUT)
}

#[derive(Clone, Copy)]
pub struct V512(__m512);

impl Lanes for V512 {
    const N: usize = 16;
    const ACC_VECS: usize = 4;

    #[inline(always)]
    unsafe fn zero() -> Self {
        V512(_mm512_setzero_ps())
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        V512(_mm512_set1_ps(x))
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        V512(_mm512_loadu_ps(p))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        _mm512_storeu_ps(p, self.0)
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u8) -> Self {
        V512(_mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i)))
    }
    #[inline(always)]
    unsafe fn load_i8(p: *const u8, d: f32) -> Self {
        let q = _mm512_cvtepi8_epi32(_mm_loadu_si128(p as *const __m128i));
        V512(_mm512_mul_ps(_mm512_set1_ps(d), _mm512_cvtepi32_ps(q)))
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        V512(_mm512_add_ps(self.0, b.0))
    }
    #[inline(always)]
    unsafe fn sub(self, b: Self) -> Self {
        V512(_mm512_sub_ps(self.0, b.0))
    }
    #[inline(always)]
    unsafe fn mul(self, b: Self) -> Self {
        V512(_mm512_mul_ps(self.0, b.0))
    }
    #[inline(always)]
    unsafe fn max(self, b: Self) -> Self {
        V512(_mm512_max_ps(self.0, b.0))
    }
    #[inline(always)]
    unsafe fn min(self, b: Self) -> Self {
        V512(_mm512_min_ps(self.0, b.0))
    }
    #[inline(always)]
    unsafe fn fmadd(self, b: Self, c: Self) -> Self {
        V512(_mm512_fmadd_ps(self.0, b.0, c.0))
    }
    #[inline(always)]
    unsafe fn fnmadd(self, b: Self, c: Self) -> Self {
        V512(_mm512_fnmadd_ps(self.0, b.0, c.0))
    }
    #[inline(always)]
    unsafe fn round(self) -> Self {
        V512(_mm512_roundscale_ps::<
            { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
        >(self.0))
    }
    #[inline(always)]
    unsafe fn scale_pow2(self, n: Self) -> Self {
        V512(_mm512_scalef_ps(self.0, n.0))
    }
    #[inline(always)]
    unsafe fn zero_below(self, x: Self, cut: f32) -> Self {
        let below = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x.0, _mm512_set1_ps(cut));
        V512(_mm512_maskz_mov_ps(!below, self.0))
    }
    #[inline(always)]
    unsafe fn reduce_add(self) -> f32 {
        _mm512_reduce_add_ps(self.0)
    }
    /// One shuffle tree for the four instead of four.
    #[inline(always)]
    unsafe fn hsum4(v: [Self; 4]) -> [f32; 4] {
        // No closures here: a closure would not take on the caller's target features.
        V256::hsum4([halves(v[0]), halves(v[1]), halves(v[2]), halves(v[3])])
    }
}

/// The sum of a vector's two 256-bit halves.
#[inline(always)]
unsafe fn halves(x: V512) -> V256 {
    V256(_mm256_add_ps(
        _mm512_castps512_ps256(x.0),
        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(x.0))),
    ))
}

#[derive(Clone, Copy)]
pub struct V256(__m256);

impl Lanes for V256 {
    const N: usize = 8;
    // 16 registers: 4 heads x 2 vectors of accumulators leave room for the rest.
    const ACC_VECS: usize = 2;

    #[inline(always)]
    unsafe fn zero() -> Self {
        V256(_mm256_setzero_ps())
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        V256(_mm256_set1_ps(x))
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        V256(_mm256_loadu_ps(p))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        _mm256_storeu_ps(p, self.0)
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const u8) -> Self {
        V256(_mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)))
    }
    #[inline(always)]
    unsafe fn load_i8(p: *const u8, d: f32) -> Self {
        let q = _mm256_cvtepi8_epi32(_mm_loadl_epi64(p as *const __m128i));
        V256(_mm256_mul_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(q)))
    }
    #[inline(always)]
    unsafe fn add(self, b: Self) -> Self {
        V256(_mm256_add_ps(self.0, b.0))
    }
    #[inline(always)]
    unsafe fn sub(self, b: Self) -> Self {
        V256(_mm256_sub_ps(self.0, b.0))
    }
    #[inline(always)]
    unsafe fn mul(self, b: Self) -> Self {
        V256(_mm256_mul_ps(self.0, b.0))
    }
    #[inline(always)]
    unsafe fn max(self, b: Self) -> Self {
        V256(_mm256_max_ps(self.0, b.0))
    }
    #[inline(always)]
    unsafe fn min(self, b: Self) -> Self {
        V256(_mm256_min_ps(self.0, b.0))
    }
    #[inline(always)]
    unsafe fn fmadd(self, b: Self, c: Self) -> Self {
        V256(_mm256_fmadd_ps(self.0, b.0, c.0))
    }
    #[inline(always)]
    unsafe fn fnmadd(self, b: Self, c: Self) -> Self {
        V256(_mm256_fnmadd_ps(self.0, b.0, c.0))
    }
    #[inline(always)]
    unsafe fn round(self) -> Self {
        V256(_mm256_round_ps::<
            { _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC },
        >(self.0))
    }
    #[inline(always)]
    unsafe fn scale_pow2(self, n: Self) -> Self {
        // 2^n built in the exponent field: n + 127 in [1, 254] is a normal float.
        let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n.0),
            _mm256_set1_epi32(127),
        ));
        V256(_mm256_mul_ps(self.0, _mm256_castsi256_ps(bits)))
    }
    #[inline(always)]
    unsafe fn zero_below(self, x: Self, cut: f32) -> Self {
        let below = _mm256_cmp_ps::<_CMP_LT_OQ>(x.0, _mm256_set1_ps(cut));
        V256(_mm256_andnot_ps(below, self.0))
    }
    #[inline(always)]
    unsafe fn reduce_add(self) -> f32 {
        Self::hsum4([self, Self::zero(), Self::zero(), Self::zero()])[0]
    }
    #[inline(always)]
    unsafe fn hsum4(v: [Self; 4]) -> [f32; 4] {
        // hadd pairs: lanes hold partial sums of (a, b) and (c, d), then of all four.
        let ab = _mm256_hadd_ps(v[0].0, v[1].0);
        let cd = _mm256_hadd_ps(v[2].0, v[3].0);
        let abcd = _mm256_hadd_ps(ab, cd);
        let sums = _mm_add_ps(
            _mm256_castps256_ps128(abcd),
            _mm256_extractf128_ps::<1>(abcd),
        );
        std::mem::transmute::<__m128, [f32; 4]>(sums)
    }
}
