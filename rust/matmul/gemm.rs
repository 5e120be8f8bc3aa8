//! Batched products (prefill): `Y = X W^T` for many activation rows at once, for every
//! quantized weight type through one integer kernel.
//!
//! The per-row dot kernels unpack a weight block once per (row, token): a 512-token prefill
//! unpacks every weight 512 times. Here each task unpacks a tile of 16 weight rows once, in
//! element order, into a panel in L2 that every token of the batch then streams over:
//!
//! - every type becomes the same integer form: per element a signed byte `v`, per group of G
//!   elements (the type's scale grain: 16 or 32) the float scale `sd` of the values and, for the
//!   types that have one, the group's offset `m` (the K-quants' mins, Q4_1's m);
//! - activations are Q8 bytes plus 128 (unsigned), interleaved 16 tokens by 4 bytes, so that
//!   one 512-bit `vpdpbusd` with 4 weight bytes broadcast from memory adds 16 tokens' partial
//!   sums (no transposes, no horizontal adds; the weight side needs no reordering at all);
//! - per token and row: `sum(w x) = sum_blocks a * (sum_groups sd * sum((x + 128) v) - k)
//!   + sum_groups m * a * sum(x)`, with `a` the activation block's scale and the row constant
//!   `k = 128 * sum_groups sd * sum(v)` taking the 128 back; the integer sums are exact.
//!
//! The weights stay in the file (the panel is a per-thread scratch of one tile, not a copy of
//! the model). The integer step is one `Kernel` per instruction set: 512-bit `vpdpbusd`, its
//! 256-bit AVX-VNNI form (8 tokens per vector), or AVX2's `vpmaddubsw` + `vpmaddwd` (`avx2`);
//! for float weights, and without AVX2, `matmul` keeps using the per-row kernels. The integer
//! sums are exact; only float rounding differs from `scalar`.

use std::cell::RefCell;

use super::panel::{Shape, TILE_ROWS, act_blocks};
use super::{QMatrix, SharedOut, Tiles, quantize_activations};
use crate::error::Result;
use crate::gguf::GgmlType;
use crate::kernels::PanelForm;

use super::Pool;

/// Tokens per vector of the kernel.
const BAND: usize = 16;
/// Weight rows whose accumulators the kernel keeps in registers at once.
const PASS_ROWS: usize = 8;

/// The integer step of the batched product, by instruction set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// 512-bit `vpdpbusd`: 16 tokens per vector.
    Avx512Vnni,
    /// AVX-VNNI's 256-bit `vpdpbusd`: 8 tokens per vector.
    AvxVnni,
    /// AVX2's `vpmaddubsw` on the activations plus 128, two steps' 16-bit sums added before
    /// `vpmaddwd`: exact while |weight| <= 32 (4 x 255 x 32 < 2^15).
    Avx2Pairs,
    /// AVX2's `vpmaddubsw` on the activations plus 128: its 16-bit pair sums are exact while
    /// |weight| <= 64 (IQ2's and IQ3_XXS's grids).
    Avx2,
    /// AVX2's `vpmaddubsw` on |weight| and the activations with the weight's sign (as ggml's
    /// AVX2 dot products): exact for any weight byte, one more operation per step.
    Avx2Signed,
}

impl Kernel {
    /// Whether activations enter as unsigned bytes (value + 128), each row's constants `k`
    /// taking the 128 back; else as they are, with `k` = 0.
    fn offset128(self) -> bool {
        self != Kernel::Avx2Signed
    }
}

/// A tile of 16 weight rows: row r's bytes at `q[r * cols..]`, its group terms at
/// `sd[r * groups..]` and `m[r * groups..]`, its constants `k` per activation block at
/// `k[r * blocks..]` (rows past the matrix's end are zeros).
#[derive(Default)]
struct Panel {
    q: Vec<u8>,
    sd: Vec<f32>,
    m: Vec<f32>,
    k: Vec<f32>,
}

impl Panel {
    fn fill(&mut self, w: &QMatrix, s: &Shape, form: &PanelForm, kernel: Kernel, first: usize) {
        let (cols, group, groups) = (w.cols, s.group, w.cols / s.group);
        let blocks = groups / s.per_block;
        self.k.resize(blocks * TILE_ROWS, 0.0);
        self.q.resize(cols * TILE_ROWS, 0);
        self.sd.resize(groups * TILE_ROWS, 0.0);
        self.m.resize(groups * TILE_ROWS, 0.0);
        for r in 0..TILE_ROWS {
            let (sd, m) = (
                &mut self.sd[r * groups..][..groups],
                &mut self.m[r * groups..][..groups],
            );
            let k = &mut self.k[r * blocks..][..blocks];
            if first + r >= w.rows {
                sd.fill(0.0);
                m.fill(0.0);
                k.fill(0.0);
                continue;
            }
            let q = &mut self.q[r * cols..][..cols];
            (form.unpack)(w.row(first + r), q, sd, m);
            match kernel {
                #[cfg(target_arch = "x86_64")]
                // SAFETY: this kernel runs only where its features were detected.
                Kernel::Avx512Vnni => unsafe {
                    avx512::row_constants(q, sd, group, s.per_block * group, k)
                },
                #[cfg(target_arch = "x86_64")]
                // SAFETY: the 256-bit kernels run only where AVX2 was detected.
                _ if kernel.offset128() => unsafe {
                    row_constants_avx2(q, sd, group, s.per_block * group, k)
                },
                #[cfg(not(target_arch = "x86_64"))]
                _ if kernel.offset128() => row_constants(q, sd, group, s.per_block * group, k),
                _ => k.fill(0.0),
            }
        }
    }
}

/// `row_constants` with its byte sums vectorized (at the baseline ISA they were 7% of an
/// IQ2_XS prefill on the AVX2 tier); the float sums keep their order, so the bits are the same.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_constants_avx2(q: &[u8], sd: &[f32], group: usize, block: usize, k: &mut [f32]) {
    row_constants(q, sd, group, block, k)
}

/// The rows' constants `k = 128 * sum over a block's elements of sd(group) * v` (as
/// `avx512::row_constants`, summed in plain order).
#[inline(always)]
fn row_constants(q: &[u8], sd: &[f32], group: usize, block: usize, k: &mut [f32]) {
    for (b, k) in k.iter_mut().enumerate() {
        let groups = q[b * block..][..block].chunks_exact(group);
        *k = 128.0
            * groups
                .zip(&sd[b * block / group..])
                .map(|(g, &sd)| sd * g.iter().map(|&v| v as i8 as i32).sum::<i32>() as f32)
                .sum::<f32>();
    }
}

/// Activation rows in bands of 16 tokens: `x[band][col / 4][token][col % 4]` as Q8 bytes plus
/// 128 (as they are for `Kernel::Avx2Signed`); per band and activation block the 16 scales `a`; per band and group the 16
/// `a * sum(Q8 bytes)` where the weights have group offsets (zeros for the tokens past n).
#[derive(Default)]
struct Acts {
    x: Vec<u8>,
    a: Vec<f32>,
    as_: Vec<f32>,
}

impl Acts {
    fn fill(
        &mut self,
        act_ty: GgmlType,
        quantized: &[u8],
        n: usize,
        cols: usize,
        form: &PanelForm,
        offset128: bool,
    ) {
        let group = form.group;
        let bands = n.div_ceil(BAND);
        let (block_elems, block_bytes) = (act_ty.block_elems(), act_ty.block_bytes());
        let (blocks, groups) = (cols / block_elems, cols / group);
        self.x.clear();
        let (zero, flip) = if offset128 { (128, 0x80) } else { (0, 0) };
        self.x.resize(bands * BAND * cols, zero);
        self.a.clear();
        self.a.resize(bands * blocks * BAND, 0.0);
        self.as_.clear();
        self.as_.resize(bands * groups * BAND, 0.0);
        let row_bytes = blocks * block_bytes;
        for t in 0..n {
            let (band, lane) = (t / BAND, t % BAND);
            let x = &mut self.x[band * BAND * cols..][..BAND * cols];
            let row = &quantized[t * row_bytes..][..row_bytes];
            for (i, (scale, qs)) in act_blocks(act_ty, row).enumerate() {
                self.a[(band * blocks + i) * BAND + lane] = scale;
                let col0 = i * block_elems;
                for (k, four) in qs.chunks_exact(4).enumerate() {
                    let at = ((col0 / 4 + k) * BAND + lane) * 4;
                    for (d, &v) in x[at..at + 4].iter_mut().zip(four) {
                        *d = v ^ flip;
                    }
                }
                if !form.offset {
                    continue;
                }
                for (g, chunk) in qs.chunks_exact(group).enumerate() {
                    let sum: i32 = chunk.iter().map(|&v| v as i8 as i32).sum();
                    self.as_[(band * groups + col0 / group + g) * BAND + lane] = scale * sum as f32;
                }
            }
        }
    }
}

thread_local! {
    static PANEL: RefCell<Panel> = RefCell::new(Panel::default());
    static ACTS: RefCell<Acts> = RefCell::new(Acts::default());
}

/// `y_i[t][r] = sum_c W_i[r][c] x[t][c]` for the n rows of `x` and matrices of one type and
/// width, with the kernel and panel form of `ws[0]`'s record; the caller checked the shapes.
pub(super) fn gemm(
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
    let (Some(kernel), Some(form)) = (k.gemm, k.panel) else {
        unreachable!("matmul runs gemm only for types with a batched kernel")
    };
    let (group, per_block) = (form.group, act_ty.block_elems() / form.group);
    quantize_activations(act_ty, x, scratch)?;
    ACTS.with_borrow_mut(|acts| {
        acts.fill(act_ty, scratch, n, w0.cols, &form, kernel.offset128());
        let acts = &*acts;
        let tiles = Tiles::new(ws, TILE_ROWS);
        pool.run(tiles.total, |tile| {
            let (m, rows) = tiles.locate(tile);
            let w = &ws[m];
            PANEL.with_borrow_mut(|panel| {
                let shape = Shape {
                    n,
                    cols: w.cols,
                    rows: w.rows,
                    group,
                    per_block,
                    offset: form.offset,
                };
                panel.fill(w, &shape, &form, kernel, rows.start);
                let (out, first, valid) = (outs[m], rows.start, rows.len());
                #[cfg(target_arch = "x86_64")]
                // SAFETY: kernel() checked the CPU's features; each task writes its own rows.
                unsafe {
                    match kernel {
                        Kernel::Avx512Vnni => avx512::tile(panel, acts, &shape, out, first, valid),
                        Kernel::AvxVnni => avx2::tile_vnni(panel, acts, &shape, out, first, valid),
                        Kernel::Avx2Pairs => {
                            avx2::tile_pairs(panel, acts, &shape, out, first, valid)
                        }
                        Kernel::Avx2 => avx2::tile_offset(panel, acts, &shape, out, first, valid),
                        Kernel::Avx2Signed => {
                            avx2::tile_signed(panel, acts, &shape, out, first, valid)
                        }
                    }
                };
            })
        });
    });
    Ok(())
}

/// Writes a block of row-major sums (`sums[r][t]`: up to `valid` rows, 16 tokens of `band`)
/// into `y[t][first_row + r]`, token by token so that each token's row is written in one run.
fn store_transposed(
    sums: &[[f32; BAND]],
    s: &Shape,
    out: SharedOut,
    band: usize,
    first_row: usize,
    valid: usize,
) {
    let valid = valid.min(sums.len());
    for t in 0..(s.n - band * BAND).min(BAND) {
        let base = (band * BAND + t) * s.rows + first_row;
        for (r, row) in sums[..valid].iter().enumerate() {
            // SAFETY: t < n and first_row + r < rows: inside y; rows are this task's own.
            unsafe { *out.at(base + r) = row[t] };
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2;

#[cfg(target_arch = "x86_64")]
mod avx512 {
    #![allow(unsafe_op_in_unsafe_fn)]
    use std::arch::x86_64::*;

    use super::{Acts, BAND, PASS_ROWS, Panel, Shape, SharedOut};

    /// The rows' constants `k = 128 * sum over a block's elements of sd(group) * v` for a row
    /// of signed bytes `q` (`block` 32 or 256 elements, `group` 16 or 32).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn row_constants(q: &[u8], sd: &[f32], group: usize, block: usize, k: &mut [f32]) {
        // Each 64 bytes: sums of 4 (vpdpbusd with ones), times their group's scale, summed.
        let per_lane: [u32; 16] = if group == 16 {
            [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]
        } else {
            [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1]
        };
        let lanes = _mm512_loadu_si512(per_lane.as_ptr() as *const __m512i);
        let groups_per_chunk = 64 / group;
        let mut acc = _mm512_setzero_ps();
        for (c, chunk) in q.chunks_exact(64).enumerate() {
            let v = _mm512_loadu_si512(chunk.as_ptr() as *const __m512i);
            let fours = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_set1_epi8(1), v);
            let at = sd.as_ptr().add(c * groups_per_chunk);
            let chunk_sd = if group == 16 {
                _mm_loadu_ps(at)
            } else {
                _mm_castpd_ps(_mm_load_sd(at as *const f64))
            };
            let scales = _mm512_permutexvar_ps(lanes, _mm512_castps128_ps512(chunk_sd));
            acc = _mm512_fmadd_ps(scales, _mm512_cvtepi32_ps(fours), acc);
            let end = 64 * (c + 1);
            if block == 32 {
                // Two blocks per 64 bytes.
                k[2 * c] = 128.0 * _mm512_mask_reduce_add_ps(0x00FF, acc);
                k[2 * c + 1] = 128.0 * _mm512_mask_reduce_add_ps(0xFF00, acc);
                acc = _mm512_setzero_ps();
            } else if end.is_multiple_of(block) {
                k[end / block - 1] = 128.0 * _mm512_reduce_add_ps(acc);
                acc = _mm512_setzero_ps();
            }
        }
        let tail = q.chunks_exact(64).remainder();
        if !tail.is_empty() {
            // A row of one 32-element block.
            let sum: i32 = tail.iter().map(|&v| v as i8 as i32).sum();
            k[k.len() - 1] = 128.0 * sd[sd.len() - 1] * sum as f32;
        }
    }

    /// Every band of tokens against the panel's rows, `PASS_ROWS` rows at a time.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub unsafe fn tile(
        panel: &Panel,
        acts: &Acts,
        s: &Shape,
        out: SharedOut,
        first_row: usize,
        valid: usize,
    ) {
        for band in 0..s.n.div_ceil(BAND) {
            let mut r = 0;
            while r < valid {
                let sums = match (s.group, s.offset) {
                    (32, false) => pass::<8, false>(panel, acts, s, band, r),
                    (32, true) => pass::<8, true>(panel, acts, s, band, r),
                    (_, false) => pass::<4, false>(panel, acts, s, band, r),
                    (_, true) => pass::<4, true>(panel, acts, s, band, r),
                };
                let mut rows = [[0f32; BAND]; PASS_ROWS];
                for (row, v) in rows.iter_mut().zip(&sums) {
                    _mm512_storeu_ps(row.as_mut_ptr(), *v);
                }
                super::store_transposed(&rows, s, out, band, first_row + r, valid - r);
                r += PASS_ROWS;
            }
        }
    }

    /// Rows `r0..r0 + PASS_ROWS` of the panel against one band: per row, 16 tokens' sums.
    /// `QUADS` is the group size in 4-byte steps; `OFFSET` whether groups have an offset.
    #[inline(always)]
    unsafe fn pass<const QUADS: usize, const OFFSET: bool>(
        panel: &Panel,
        acts: &Acts,
        s: &Shape,
        band: usize,
        r0: usize,
    ) -> [__m512; PASS_ROWS] {
        let groups = s.cols / s.group;
        let blocks = groups / s.per_block;
        let x = acts.x.as_ptr().add(band * BAND * s.cols) as *const __m512i;
        let a = acts.a.as_ptr().add(band * blocks * BAND);
        let as_ = acts.as_.as_ptr().add(band * groups * BAND);

        let wq: [*const u8; PASS_ROWS] =
            std::array::from_fn(|i| panel.q.as_ptr().add((r0 + i) * s.cols));
        let sd: [*const f32; PASS_ROWS] =
            std::array::from_fn(|i| panel.sd.as_ptr().add((r0 + i) * groups));
        let m: [*const f32; PASS_ROWS] =
            std::array::from_fn(|i| panel.m.as_ptr().add((r0 + i) * groups));
        let k: [*const f32; PASS_ROWS] =
            std::array::from_fn(|i| panel.k.as_ptr().add((r0 + i) * blocks));
        let mut acc = [_mm512_setzero_ps(); PASS_ROWS];
        for b in 0..blocks {
            let mut block_acc = [_mm512_setzero_ps(); PASS_ROWS];
            for gb in 0..s.per_block {
                let g = b * s.per_block + gb;
                let mut isum = [_mm512_setzero_si512(); PASS_ROWS];
                for k in 0..QUADS {
                    let quad = g * QUADS + k;
                    let xv = _mm512_loadu_si512(x.add(quad));
                    for i in 0..PASS_ROWS {
                        let wv = (wq[i].add(4 * quad) as *const i32).read_unaligned();
                        isum[i] = _mm512_dpbusd_epi32(isum[i], xv, _mm512_set1_epi32(wv));
                    }
                }
                for i in 0..PASS_ROWS {
                    block_acc[i] = _mm512_fmadd_ps(
                        _mm512_set1_ps(*sd[i].add(g)),
                        _mm512_cvtepi32_ps(isum[i]),
                        block_acc[i],
                    );
                }
                if OFFSET {
                    let asv = _mm512_loadu_ps(as_.add(g * BAND));
                    for i in 0..PASS_ROWS {
                        acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(*m[i].add(g)), asv, acc[i]);
                    }
                }
            }
            let av = _mm512_loadu_ps(a.add(b * BAND));
            for i in 0..PASS_ROWS {
                let row_sum = _mm512_sub_ps(block_acc[i], _mm512_set1_ps(*k[i].add(b)));
                acc[i] = _mm512_fmadd_ps(row_sum, av, acc[i]);
            }
        }
        acc
    }
}
