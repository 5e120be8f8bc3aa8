//! The batched product's integer step with 256-bit vectors, for CPUs without AVX-512 (and for
//! `FERROLLM_ISA=avx2` / `avxvnni`): the same panel and activation bands as the 512-bit
//! kernel, each 16-token band taken as two halves of 8 tokens (one vector of 8 tokens x 4
//! bytes), 4 weight rows per pass (AVX2 has 16 vector registers: 4 integer sums, 4 block sums
//! and 4 totals, and the operands).
//!
//! One step adds 4 products per token and row, three ways:
//! - `VNNI`: AVX-VNNI's `vpdpbusd` (activations plus 128, unsigned, against signed weights);
//! - `OFFSET`: `vpmaddubsw` (the same operands; pairs summed to 16 bits, exact while
//!   |weight| <= 64), then `vpmaddwd` with ones;
//! - `PAIRS`: as `OFFSET`, two steps' 16-bit sums added before the one `vpmaddwd` (exact while
//!   |weight| <= 32: the 4-, 5- and 6-bit types), a quarter fewer multiply operations;
//! - `SIGNED`: `vpmaddubsw` on |weight| against the activations given the weight's sign (as
//!   ggml's AVX2 dot products do), exact for any weight byte: activations are in -127..=127.

#![allow(unsafe_op_in_unsafe_fn)]

use std::arch::x86_64::*;

use super::{Acts, BAND, Panel, Shape, SharedOut, store_transposed};

/// Weight rows per pass.
const PASS_ROWS: usize = 4;
/// Tokens per vector.
const HALF: usize = 8;

const VNNI: u8 = 0;
const OFFSET: u8 = 1;
const SIGNED: u8 = 2;
const PAIRS: u8 = 3;

type TileArgs<'a> = (&'a Panel, &'a Acts, &'a Shape, SharedOut, usize, usize);

/// The kernels' entry points: one per step form, each compiled with its features.
macro_rules! tile_fns {
    ($($name:ident: $features:literal => $mode:expr),* $(,)?) => {$(
        #[target_feature(enable = $features)]
        pub unsafe fn $name(p: &Panel, a: &Acts, s: &Shape, out: SharedOut, first: usize, valid: usize) {
            tile::<$mode>((p, a, s, out, first, valid))
        }
    )*};
}

tile_fns!(
    tile_vnni: "avx2,fma,avxvnni" => VNNI,
    tile_offset: "avx2,fma" => OFFSET,
    tile_pairs: "avx2,fma" => PAIRS,
    tile_signed: "avx2,fma" => SIGNED,
);

/// Every band of tokens against the panel's rows, `PASS_ROWS` rows at a time.
#[inline(always)]
unsafe fn tile<const MODE: u8>((panel, acts, s, out, first_row, valid): TileArgs) {
    for band in 0..s.n.div_ceil(BAND) {
        let halves = (s.n - band * BAND).min(BAND).div_ceil(HALF);
        let mut r = 0;
        while r < valid {
            let mut rows = [[0f32; BAND]; PASS_ROWS];
            for h in 0..halves {
                let sums = match (s.group, s.offset) {
                    (32, false) => pass::<8, false, MODE>(panel, acts, s, band, h, r),
                    (32, true) => pass::<8, true, MODE>(panel, acts, s, band, h, r),
                    (_, false) => pass::<4, false, MODE>(panel, acts, s, band, h, r),
                    (_, true) => pass::<4, true, MODE>(panel, acts, s, band, h, r),
                };
                for (row, v) in rows.iter_mut().zip(&sums) {
                    _mm256_storeu_ps(row.as_mut_ptr().add(HALF * h), *v);
                }
            }
            store_transposed(&rows, s, out, band, first_row + r, valid - r);
            r += PASS_ROWS;
        }
    }
}

/// `acc` plus, per token lane, the sum of 4 activation bytes times 4 weight bytes.
#[inline(always)]
unsafe fn step<const MODE: u8>(acc: __m256i, x: __m256i, w: __m256i) -> __m256i {
    let ones = _mm256_set1_epi16(1);
    match MODE {
        VNNI => _mm256_dpbusd_avx_epi32(acc, x, w),
        OFFSET => _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(x, w), ones)),
        _ => {
            let (abs, signed) = (_mm256_abs_epi8(w), _mm256_sign_epi8(x, w));
            _mm256_add_epi32(
                acc,
                _mm256_madd_epi16(_mm256_maddubs_epi16(abs, signed), ones),
            )
        }
    }
}

// Helpers are functions, not closures: a closure would not take on the caller's features.

/// This half's 8 tokens x 4 bytes of quad `quad` (16 tokens x 4 bytes per quad).
#[inline(always)]
unsafe fn load_x(x: *const u8, quad: usize) -> __m256i {
    _mm256_loadu_si256(x.add(4 * BAND * quad) as *const __m256i)
}

/// A row's 4 weight bytes of quad `quad`, in every lane.
#[inline(always)]
unsafe fn weights4(row: *const u8, quad: usize) -> __m256i {
    _mm256_set1_epi32((row.add(4 * quad) as *const i32).read_unaligned())
}

/// Rows `r0..r0 + PASS_ROWS` of the panel against half `h` of one band: per row, 8 tokens'
/// sums. `QUADS` is the group size in 4-byte steps; `OFFSET_TERMS` whether groups have an
/// offset.
#[inline(always)]
unsafe fn pass<const QUADS: usize, const OFFSET_TERMS: bool, const MODE: u8>(
    panel: &Panel,
    acts: &Acts,
    s: &Shape,
    band: usize,
    h: usize,
    r0: usize,
) -> [__m256; PASS_ROWS] {
    let groups = s.cols / s.group;
    let blocks = groups / s.per_block;
    // Quad q of the band: 16 tokens x 4 bytes at x[q * 64]; this half's 8 tokens at + 32 h.
    let x = acts.x.as_ptr().add(band * BAND * s.cols + 4 * HALF * h);
    let a = acts.a.as_ptr().add(band * blocks * BAND + HALF * h);
    let as_ = acts.as_.as_ptr().add(band * groups * BAND + HALF * h);

    let wq: [*const u8; PASS_ROWS] =
        std::array::from_fn(|i| panel.q.as_ptr().add((r0 + i) * s.cols));
    let sd: [*const f32; PASS_ROWS] =
        std::array::from_fn(|i| panel.sd.as_ptr().add((r0 + i) * groups));
    let m: [*const f32; PASS_ROWS] =
        std::array::from_fn(|i| panel.m.as_ptr().add((r0 + i) * groups));
    let k: [*const f32; PASS_ROWS] =
        std::array::from_fn(|i| panel.k.as_ptr().add((r0 + i) * blocks));
    let mut acc = [_mm256_setzero_ps(); PASS_ROWS];
    for b in 0..blocks {
        let mut block_acc = [_mm256_setzero_ps(); PASS_ROWS];
        for gb in 0..s.per_block {
            let g = b * s.per_block + gb;
            let mut isum = [_mm256_setzero_si256(); PASS_ROWS];
            if MODE == PAIRS {
                let ones = _mm256_set1_epi16(1);
                for q in (0..QUADS).step_by(2) {
                    let quad = g * QUADS + q;
                    let (x0, x1) = (load_x(x, quad), load_x(x, quad + 1));
                    for (i, sum) in isum.iter_mut().enumerate() {
                        let p = _mm256_add_epi16(
                            _mm256_maddubs_epi16(x0, weights4(wq[i], quad)),
                            _mm256_maddubs_epi16(x1, weights4(wq[i], quad + 1)),
                        );
                        *sum = _mm256_add_epi32(*sum, _mm256_madd_epi16(p, ones));
                    }
                }
            } else {
                for q in 0..QUADS {
                    let quad = g * QUADS + q;
                    let xv = load_x(x, quad);
                    for (i, sum) in isum.iter_mut().enumerate() {
                        *sum = step::<MODE>(*sum, xv, weights4(wq[i], quad));
                    }
                }
            }
            for i in 0..PASS_ROWS {
                block_acc[i] = _mm256_fmadd_ps(
                    _mm256_set1_ps(*sd[i].add(g)),
                    _mm256_cvtepi32_ps(isum[i]),
                    block_acc[i],
                );
            }
            if OFFSET_TERMS {
                let asv = _mm256_loadu_ps(as_.add(g * BAND));
                for i in 0..PASS_ROWS {
                    acc[i] = _mm256_fmadd_ps(_mm256_set1_ps(*m[i].add(g)), asv, acc[i]);
                }
            }
        }
        let av = _mm256_loadu_ps(a.add(b * BAND));
        for i in 0..PASS_ROWS {
            let row_sum = _mm256_sub_ps(block_acc[i], _mm256_set1_ps(*k[i].add(b)));
            acc[i] = _mm256_fmadd_ps(row_sum, av, acc[i]);
        }
    }
    acc
}
