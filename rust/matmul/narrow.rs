//! Products for a few activation rows (up to 8: the decoding slots of a server, one token each).
//!
//! `gemm` puts 16 tokens in the lanes of a vector: with 4 tokens three quarters of every
//! `vpdpbusd` are wasted, and its per-row constants and panel are paid for 16 rows of work
//! per token. The per-row dot products, for their part, redo each row's arithmetic once per
//! token. Here a lane is a (token, row) pair, 4 tokens by 4 rows: 4 weight rows interleaved
//! by 4 bytes (16 bytes, broadcast to the 4 token quarters) against the 4 tokens' activation
//! bytes (each repeated for the 4 rows), so one `vpdpbusd` does 64 useful products:
//!
//! - the panel is `gemm`'s (every type's signed bytes, group scales `sd` and offsets `m`),
//!   re-laid out per 4 rows, with 128 added so the weights are the unsigned operand and the
//!   activations go in as they are; Q4_0, Q8_0 and IQ4_NL unpack straight into that form,
//!   512 columns at a time, while the next tile's weights are fetched;
//! - `sum((v + 128) x) = sum(v x) + 128 sum(x)`: per group and token, `128 sum(x)` is taken
//!   back from the integer sum, exactly (no per-row constants, unlike `gemm`).
//!
//! A token's lanes see the same operations whatever the other tokens are, so its result does
//! not depend on the batch beside it (among the batches this product takes).

use std::cell::RefCell;
use std::ops::Range;

use super::panel::{Shape, TILE_ROWS, act_blocks};
use super::{QMatrix, SharedOut, Tiles, quantize_activations};
use crate::error::Result;
use crate::gguf::GgmlType;
use crate::kernels::{LanesFn, PanelForm, TypeKernels};

use super::Pool;

/// Most activation rows this product takes (two groups of 4 tokens).
pub const MAX_TOKENS: usize = 8;
/// Tokens, and rows, per vector.
const QUARTER: usize = 4;
/// Row groups of 4 in a tile.
const ROW_GROUPS: usize = TILE_ROWS / QUARTER;
/// Columns per step of the direct unpackers: 16 rows' lanes of them stay in L1.
const CHUNK_COLS: usize = 512;
/// Tiles ahead whose weights are fetched while one is computed.
const AHEAD: usize = 1;

/// A tile's partial sums: per group of 4 tokens and row group, the 16 (token, row) lanes.
#[derive(Default)]
struct Sums([[[f32; 16]; ROW_GROUPS]; MAX_TOKENS / QUARTER]);

impl Sums {
    /// Into `y[t][first_row + r]` for the tile's `valid` rows.
    fn store(&self, s: &Shape, out: SharedOut, first_row: usize, valid: usize) {
        for (quarter, groups) in self.0.iter().enumerate().take(s.n.div_ceil(QUARTER)) {
            for (rg, lanes) in groups.iter().enumerate() {
                for t in 0..(s.n - quarter * QUARTER).min(QUARTER) {
                    let base = (quarter * QUARTER + t) * s.rows + first_row + rg * QUARTER;
                    for r in 0..QUARTER.min(valid.saturating_sub(rg * QUARTER)) {
                        // SAFETY: token < n and row < rows: inside y; the rows are this task's.
                        unsafe { *out.at(base + r) = lanes[t * QUARTER + r] };
                    }
                }
            }
        }
    }
}

/// A tile in lane form: per row group, `q[quad][row][4]` (value + 128), and per group `sd`
/// and `m` for the group's 4 rows; `rows`: one row group unpacked row-major (in L1).
#[derive(Default)]
struct Lanes {
    q: Vec<u8>,
    sd: Vec<f32>,
    m: Vec<f32>,
    rows: RowMajor,
}

/// One row group as the row unpackers write it: signed bytes, group scales and offsets.
#[derive(Default)]
struct RowMajor {
    q: Vec<u8>,
    sd: Vec<f32>,
    m: Vec<f32>,
}

impl Lanes {
    /// Columns `span` of rows `first..first + TILE_ROWS` of `w` (rows past the end get zero
    /// scales); only the `direct` unpackers take part of a row. `next`: rows whose same
    /// columns to fetch from memory meanwhile, beside the rows unpacked (a burst of
    /// prefetches would stall as loads do).
    fn fill(
        &mut self,
        w: &QMatrix,
        form: &PanelForm,
        direct: Option<LanesFn>,
        first: usize,
        span: Range<usize>,
        next: Option<(&QMatrix, usize)>,
    ) {
        let (cols, groups) = (span.len(), span.len() / form.group);
        self.q.resize(TILE_ROWS * cols, 0);
        self.sd.resize(TILE_ROWS * groups, 0.0);
        self.m.resize(TILE_ROWS * groups, 0.0);
        if let Some(direct) = direct {
            let bytes = span.start / w.ty.block_elems() * w.ty.block_bytes()
                ..span.end / w.ty.block_elems() * w.ty.block_bytes();
            for rg in 0..ROW_GROUPS {
                let at = rg * QUARTER;
                if let Some((next_w, next_first)) = next {
                    for r in 0..QUARTER {
                        prefetch_bytes(next_w, next_first + at + r, bytes.clone());
                    }
                }
                let valid = w.rows.saturating_sub(first + at).min(QUARTER);
                let rows = std::array::from_fn(|r| {
                    &w.row(if r < valid { first + at + r } else { first })[bytes.clone()]
                });
                direct(
                    rows,
                    valid,
                    &mut self.q[at * cols..][..QUARTER * cols],
                    &mut self.sd[at * groups..][..QUARTER * groups],
                    &mut self.m[at * groups..][..QUARTER * groups],
                );
            }
            return;
        }
        debug_assert_eq!(span, 0..w.cols, "row unpackers take whole rows");
        let tmp = &mut self.rows;
        tmp.q.resize(QUARTER * cols, 0);
        tmp.sd.resize(QUARTER * groups, 0.0);
        tmp.m.resize(QUARTER * groups, 0.0);
        for rg in 0..ROW_GROUPS {
            for r in 0..QUARTER {
                let row = first + rg * QUARTER + r;
                if let Some((next_w, next_first)) = next {
                    prefetch_bytes(next_w, next_first + rg * QUARTER + r, 0..w.row_bytes());
                }
                let (sd, m) = (
                    &mut tmp.sd[r * groups..][..groups],
                    &mut tmp.m[r * groups..][..groups],
                );
                if row < w.rows {
                    (form.unpack)(w.row(row), &mut tmp.q[r * cols..][..cols], sd, m);
                } else {
                    sd.fill(0.0);
                    m.fill(0.0);
                }
            }
            let at = rg * QUARTER;
            #[cfg(target_arch = "x86_64")]
            // SAFETY: only built where the type's record chose the 512-bit kernel (features detected).
            unsafe {
                avx512::interleave(&tmp.q, cols, &mut self.q[at * cols..][..QUARTER * cols]);
                avx512::interleave_scales(
                    &tmp.sd,
                    &tmp.m,
                    groups,
                    &mut self.sd[at * groups..][..QUARTER * groups],
                    &mut self.m[at * groups..][..QUARTER * groups],
                );
            }
        }
    }
}

/// The activations per group of 4 tokens: `x[quad][token][4]` (Q8 bytes, spread over the row
/// lanes by the kernel), per activation block `a` and per group `a * sum(x)`, each token's
/// value repeated for its 4 row lanes.
#[derive(Default)]
struct Acts {
    x: Vec<u8>,
    a: Vec<f32>,
    as_: Vec<f32>,
    /// Per group, 128 * the sum of the group's Q8 bytes (what the weights' +128 adds).
    xs: Vec<i32>,
}

impl Acts {
    fn fill(&mut self, act_ty: GgmlType, quantized: &[u8], n: usize, cols: usize, group: usize) {
        let quarters = n.div_ceil(QUARTER);
        let (block_elems, block_bytes) = (act_ty.block_elems(), act_ty.block_bytes());
        let (blocks, groups) = (cols / block_elems, cols / group);
        self.x.clear();
        self.x.resize(quarters * QUARTER * cols, 0);
        self.a.clear();
        self.a.resize(quarters * blocks * 16, 0.0);
        self.as_.clear();
        self.as_.resize(quarters * groups * 16, 0.0);
        self.xs.clear();
        self.xs.resize(quarters * groups * 16, 0);
        let row_bytes = blocks * block_bytes;
        for t in 0..n {
            let (quarter, lane) = (t / QUARTER, t % QUARTER);
            let x = &mut self.x[quarter * QUARTER * cols..][..QUARTER * cols];
            let row = &quantized[t * row_bytes..][..row_bytes];
            for (i, (scale, qs)) in act_blocks(act_ty, row).enumerate() {
                let a = &mut self.a[(quarter * blocks + i) * 16..][..16];
                a[lane * QUARTER..][..QUARTER].fill(scale);
                let col0 = i * block_elems;
                for (k, four) in qs.chunks_exact(4).enumerate() {
                    x[((col0 / 4 + k) * QUARTER + lane) * 4..][..4].copy_from_slice(four);
                }
                for (g, chunk) in qs.chunks_exact(group).enumerate() {
                    let sum: i32 = chunk.iter().map(|&v| v as i8 as i32).sum();
                    let at = (quarter * groups + col0 / group + g) * 16 + lane * QUARTER;
                    self.as_[at..at + QUARTER].fill(scale * sum as f32);
                    self.xs[at..at + QUARTER].fill(128 * sum);
                }
            }
        }
    }
}

thread_local! {
    static LANES: RefCell<Lanes> = RefCell::new(Lanes::default());
    static ACTS: RefCell<Acts> = RefCell::new(Acts::default());
}

/// Whether `narrow` is the fastest product for `n` rows of `k`'s type (the caller has checked
/// that the batched product runs the 512-bit kernel). Below, the per-row dot products, whose
/// cost grows by about one matrix-vector product's arithmetic per row, are faster (measured on
/// 14336 x 4096: from 3 rows on for the types unpacked straight into lanes, from 4 for the
/// others).
pub fn takes(n: usize, k: &TypeKernels) -> bool {
    (first(k)..=MAX_TOKENS).contains(&n)
}

/// The fewest activation rows this product takes for `k`'s type.
pub fn first(k: &TypeKernels) -> usize {
    if k.lanes.is_some() { 3 } else { 4 }
}

/// As `gemm::gemm`, for up to 8 activation rows.
pub(super) fn narrow(
    pool: &Pool,
    ws: &[QMatrix],
    x: &[f32],
    outs: &[SharedOut],
    scratch: &mut Vec<u8>,
) -> Result<()> {
    let w0 = &ws[0];
    let n = x.len() / w0.cols;
    let k = w0.kernels;
    let act_ty = k.activation.expect("checked in QMatrix::new");
    let form: PanelForm = k
        .panel
        .expect("matmul runs narrow only with the 512-bit gemm kernel");
    let direct: Option<LanesFn> = k.lanes;
    let (group, per_block) = (form.group, act_ty.block_elems() / form.group);
    quantize_activations(act_ty, x, scratch)?;
    ACTS.with_borrow_mut(|acts| {
        acts.fill(act_ty, scratch, n, w0.cols, group);
        let acts = &*acts;
        let tiles = Tiles::new(ws, TILE_ROWS);
        // Runs of consecutive tiles per task, so that each can fetch its next tile's weights
        // from memory while it computes (unpacking would otherwise wait on every line).
        let per_task = tiles.total.div_ceil(pool.threads() * 4).max(1);
        pool.run(tiles.total.div_ceil(per_task), |task| {
            LANES.with_borrow_mut(|lanes| {
                for tile in task * per_task..((task + 1) * per_task).min(tiles.total) {
                    let (m, rows) = tiles.locate(tile);
                    let w = &ws[m];
                    let next = (tile + AHEAD < tiles.total).then(|| {
                        let (next_m, next) = tiles.locate(tile + AHEAD);
                        (&ws[next_m], next.start)
                    });
                    let shape = Shape {
                        n,
                        cols: w.cols,
                        rows: w.rows,
                        group,
                        per_block,
                        offset: form.offset,
                    };
                    // The direct unpackers go a few blocks of columns at a time, so that the
                    // tile's lanes stay in L1 between unpacking and use.
                    let step = if direct.is_some() { CHUNK_COLS } else { w.cols };
                    let mut sums = Sums::default();
                    for start in (0..w.cols).step_by(step) {
                        let span = start..(start + step).min(w.cols);
                        lanes.fill(w, &form, direct, rows.start, span.clone(), next);
                        #[cfg(target_arch = "x86_64")]
                        // SAFETY: the type's record chose the 512-bit kernel: the CPU has its features.
                        unsafe {
                            avx512::accumulate(lanes, acts, &shape, span, &mut sums)
                        };
                    }
                    sums.store(&shape, outs[m], rows.start, rows.len());
                }
            })
        });
    });
    Ok(())
}

/// Asks for `bytes` of row `row` of `w` (if it exists) to be brought into L2.
fn prefetch_bytes(w: &QMatrix, row: usize, bytes: Range<usize>) {
    #[cfg(target_arch = "x86_64")]
    if row < w.rows {
        use std::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};
        let bytes = &w.row(row)[bytes];
        for line in (0..bytes.len()).step_by(64) {
            // SAFETY: a hint on an address inside `bytes`.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(bytes.as_ptr().add(line) as *const i8) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (w, row, bytes);
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    #![allow(unsafe_op_in_unsafe_fn)]
    use std::arch::x86_64::*;

    use std::ops::Range;

    use super::{Acts, Lanes, QUARTER, ROW_GROUPS, Shape, Sums};

    /// 4 rows of `cols` signed bytes (row-major) into `q[quad][row][4]`, plus 128.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn interleave(rows: &[u8], cols: usize, q: &mut [u8]) {
        // Dword r * 4 + k (row r's quad k) goes to k * 4 + r.
        let idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        let flip = _mm512_set1_epi8(-128);
        for o in (0..cols).step_by(16) {
            let p = rows.as_ptr().add(o);
            let mut v = _mm512_castsi128_si512(_mm_loadu_si128(p as *const __m128i));
            v = _mm512_inserti32x4::<1>(v, _mm_loadu_si128(p.add(cols) as *const __m128i));
            v = _mm512_inserti32x4::<2>(v, _mm_loadu_si128(p.add(2 * cols) as *const __m128i));
            v = _mm512_inserti32x4::<3>(v, _mm_loadu_si128(p.add(3 * cols) as *const __m128i));
            let lanes = _mm512_xor_si512(_mm512_permutexvar_epi32(idx, v), flip);
            _mm512_storeu_si512(q.as_mut_ptr().add(4 * o) as *mut __m512i, lanes);
        }
    }

    /// 4 rows' group scales and offsets (`groups` each, row-major) into `[group][row]`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn interleave_scales(
        sd: &[f32],
        m: &[f32],
        groups: usize,
        sd_out: &mut [f32],
        m_out: &mut [f32],
    ) {
        let idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
        let four_rows = |v: &[f32], g: usize| {
            let p = v.as_ptr().add(g);
            let mut x = _mm512_castps128_ps512(_mm_loadu_ps(p));
            x = _mm512_insertf32x4::<1>(x, _mm_loadu_ps(p.add(groups)));
            x = _mm512_insertf32x4::<2>(x, _mm_loadu_ps(p.add(2 * groups)));
            x = _mm512_insertf32x4::<3>(x, _mm_loadu_ps(p.add(3 * groups)));
            _mm512_permutexvar_ps(idx, x)
        };
        let mut g = 0;
        while g + 4 <= groups {
            let s = four_rows(sd, g);
            _mm512_storeu_ps(sd_out.as_mut_ptr().add(4 * g), s);
            _mm512_storeu_ps(m_out.as_mut_ptr().add(4 * g), four_rows(m, g));
            g += 4;
        }
        for g in g..groups {
            for r in 0..4 {
                sd_out[4 * g + r] = sd[r * groups + g];
                m_out[4 * g + r] = m[r * groups + g];
            }
        }
    }

    /// Columns `span` of the tile (in `lanes`) against every group of 4 tokens, into `sums`.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn accumulate(
        lanes: &Lanes,
        acts: &Acts,
        s: &Shape,
        span: Range<usize>,
        sums: &mut Sums,
    ) {
        for (quarter, acc) in sums.0.iter_mut().enumerate().take(s.n.div_ceil(QUARTER)) {
            match (s.group, s.offset) {
                (32, false) => pass::<8, false>(lanes, acts, s, quarter, span.clone(), acc),
                (32, true) => pass::<8, true>(lanes, acts, s, quarter, span.clone(), acc),
                (_, false) => pass::<4, false>(lanes, acts, s, quarter, span.clone(), acc),
                (_, true) => pass::<4, true>(lanes, acts, s, quarter, span.clone(), acc),
            }
        }
    }

    /// The tile's 4 row groups against one group of 4 tokens; `QUADS`: group size / 4.
    #[inline(always)]
    unsafe fn pass<const QUADS: usize, const OFFSET: bool>(
        lanes: &Lanes,
        acts: &Acts,
        s: &Shape,
        quarter: usize,
        span: Range<usize>,
        sums: &mut [[f32; 16]; ROW_GROUPS],
    ) {
        let (groups, blocks) = (s.cols / s.group, s.cols / s.group / s.per_block);
        // The lanes hold the span's columns; the activations the whole row.
        let (quads, lane_groups) = (span.len() / 4, span.len() / s.group);
        let g0 = span.start / s.group;
        let x = acts.x.as_ptr().add(quarter * QUARTER * s.cols) as *const __m128i;
        // Token t's 4 bytes into the lanes of its 4 rows.
        let spread = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
        let a = acts.a.as_ptr().add(quarter * blocks * 16);
        let as_ = acts.as_.as_ptr().add(quarter * groups * 16);
        let xs = acts.xs.as_ptr().add(quarter * groups * 16) as *const __m512i;
        let q: [*const __m128i; ROW_GROUPS] =
            std::array::from_fn(|rg| lanes.q.as_ptr().add(rg * quads * 16) as *const __m128i);
        let sd: [*const __m128; ROW_GROUPS] = std::array::from_fn(|rg| {
            lanes.sd.as_ptr().add(rg * lane_groups * QUARTER) as *const __m128
        });
        let m: [*const __m128; ROW_GROUPS] = std::array::from_fn(|rg| {
            lanes.m.as_ptr().add(rg * lane_groups * QUARTER) as *const __m128
        });
        let mut acc: [__m512; ROW_GROUPS] =
            std::array::from_fn(|rg| _mm512_loadu_ps(sums[rg].as_ptr()));
        for b in g0 / s.per_block..span.end / s.group / s.per_block {
            let mut block_acc = [_mm512_setzero_ps(); ROW_GROUPS];
            for gb in 0..s.per_block {
                let g = b * s.per_block + gb;
                let mut isum = [_mm512_setzero_si512(); ROW_GROUPS];
                for k in 0..QUADS {
                    let quad = g * QUADS + k;
                    let xv = _mm512_permutexvar_epi32(
                        spread,
                        _mm512_castsi128_si512(_mm_loadu_si128(x.add(quad))),
                    );
                    let local = quad - g0 * QUADS;
                    for rg in 0..ROW_GROUPS {
                        let wv = _mm512_broadcast_i32x4(_mm_loadu_si128(q[rg].add(local)));
                        isum[rg] = _mm512_dpbusd_epi32(isum[rg], wv, xv);
                    }
                }
                // The weights' +128 back out, exactly: 128 * sum of the group's activations.
                let xsv = _mm512_loadu_si512(xs.add(g));
                for rg in 0..ROW_GROUPS {
                    let sdv =
                        _mm512_broadcast_f32x4(_mm_loadu_ps(sd[rg].add(g - g0) as *const f32));
                    let sums = _mm512_cvtepi32_ps(_mm512_sub_epi32(isum[rg], xsv));
                    block_acc[rg] = _mm512_fmadd_ps(sdv, sums, block_acc[rg]);
                }
                if OFFSET {
                    let asv = _mm512_loadu_ps(as_.add(g * 16));
                    for rg in 0..ROW_GROUPS {
                        let mv =
                            _mm512_broadcast_f32x4(_mm_loadu_ps(m[rg].add(g - g0) as *const f32));
                        acc[rg] = _mm512_fmadd_ps(mv, asv, acc[rg]);
                    }
                }
            }
            let av = _mm512_loadu_ps(a.add(b * 16));
            for rg in 0..ROW_GROUPS {
                acc[rg] = _mm512_fmadd_ps(block_acc[rg], av, acc[rg]);
            }
        }
        for (out, v) in sums.iter_mut().zip(acc) {
            _mm512_storeu_ps(out.as_mut_ptr(), v);
        }
    }
}
