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

use super::unpack::{IntSuperBlock, Unpack32, UnpackK};
use super::{QMatrix, SharedOut, Tiles, activation_type, quantize_activations};
use crate::error::Result;
use crate::gguf::{GgmlType, QK_K};
use crate::quant::iquants::*;
use crate::quant::kquants::*;
use crate::quant::legacy::*;
use crate::quant::{Isa, block::F16Le};

use super::Pool;

/// Weight rows per tile (one task).
pub const TILE_ROWS: usize = 16;
/// Tokens per vector of the kernel.
const BAND: usize = 16;
/// Weight rows whose accumulators the kernel keeps in registers at once.
const PASS_ROWS: usize = 8;

/// One weight row in the panel's form: `q` (cols signed bytes), and per group `sd` and `m`.
pub(super) type RowUnpackFn = fn(row: &[u8], q: &mut [u8], sd: &mut [f32], m: &mut [f32]);

/// How a type enters the batched product.
#[derive(Clone, Copy)]
pub(super) struct PanelForm {
    pub unpack: RowUnpackFn,
    /// Elements per scale group: 16 or 32.
    pub group: usize,
    /// Whether groups have an offset `m` besides the scale.
    pub offset: bool,
}

#[inline(always)]
fn unpack_row_32<B: Unpack32 + bytemuck::Pod>(
    row: &[u8],
    q: &mut [u8],
    sd: &mut [f32],
    m: &mut [f32],
) {
    let blocks: &[B] = bytemuck::cast_slice(row);
    for (b, block) in blocks.iter().enumerate() {
        let u = block.unpack();
        for (d, &v) in q[32 * b..32 * b + 32].iter_mut().zip(&u.q) {
            *d = v as u8;
        }
        sd[b] = u.d;
        m[b] = u.m;
    }
}

/// Super-blocks through their integer form, with groups of `G` elements (for G = 32, the two
/// 16-element halves of a group share their scale and min).
#[inline(always)]
pub(super) fn unpack_row_k<B: UnpackK + bytemuck::Pod, const G: usize>(
    row: &[u8],
    q: &mut [u8],
    sd: &mut [f32],
    m: &mut [f32],
) {
    let blocks: &[B] = bytemuck::cast_slice(row);
    let mut u = IntSuperBlock::default();
    let per_block = QK_K / G;
    // Chunked (no index arithmetic) so that the stores vectorize: for Q2_K the group terms
    // were 40% of the unpacking.
    let groups = sd
        .chunks_exact_mut(per_block)
        .zip(m.chunks_exact_mut(per_block));
    for ((block, q), (sd, m)) in blocks.iter().zip(q.chunks_exact_mut(QK_K)).zip(groups) {
        block.unpack(&mut u);
        for (d, &v) in q.iter_mut().zip(&u.q) {
            *d = v as u8;
        }
        for (g, (sd, m)) in sd.iter_mut().zip(m.iter_mut()).enumerate() {
            let half = g * G / 16;
            *sd = u.d * u.scales[half] as f32;
            *m = u.dmin * u.mins[half] as f32;
        }
    }
}

/// The panel form of `ty` for `kernel`: the 512-bit unpackers where that kernel runs, the
/// portable ones (compiled for AVX2 on the 256-bit kernels) elsewhere.
pub(super) fn panel_form(ty: GgmlType, kernel: Kernel) -> Option<PanelForm> {
    #[cfg(target_arch = "x86_64")]
    match kernel {
        Kernel::Avx512Vnni => super::avx512::panel_form(ty).or_else(|| scalar_panel_form(ty)),
        _ => avx2_panel_form(ty),
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = kernel;
        scalar_panel_form(ty)
    }
}

/// Each type with its portable unpacker, scale grain (elements per scale) and whether its
/// groups have offsets: `scalar_panel_form` at the baseline instruction set and, on x86-64,
/// `avx2_panel_form`, the same unpackers compiled with AVX2 (their lane loops vectorize; at
/// the baseline ISA they ran 4-20x slower).
macro_rules! portable_panels {
    ($($ty:ident => $unpack:path, $group:literal, $offset:literal),* $(,)?) => {
        pub(super) fn scalar_panel_form(ty: GgmlType) -> Option<PanelForm> {
            let form = |unpack: RowUnpackFn, group, offset| PanelForm { unpack, group, offset };
            match ty {
                $(GgmlType::$ty => Some(form($unpack, $group, $offset)),)*
                _ => None,
            }
        }

        // SAFETY (of the wrappers' calls): the 256-bit kernels, the only users, run where AVX2
        // was detected.
        #[cfg(target_arch = "x86_64")]
        featured_panel_form!(fn avx2_panel_form, "avx2,fma,f16c", true;
                             $($ty => $unpack, $group, $offset),*);
    };
}

/// A panel-form table compiled with `features` (where `guard` holds): per type a wrapper with
/// the features that its unpacker is inlined into (their lane loops vectorize there).
macro_rules! featured_panel_form {
    ($vis:vis fn $name:ident, $features:literal, $guard:expr;
     $($ty:ident => $unpack:path, $group:literal, $offset:literal),* $(,)?) => {
        $vis fn $name(ty: GgmlType) -> Option<PanelForm> {
            if !$guard {
                return None;
            }
            $(
                #[allow(non_snake_case)]
                #[target_feature(enable = $features)]
                unsafe fn $ty(row: &[u8], q: &mut [u8], sd: &mut [f32], m: &mut [f32]) {
                    $unpack(row, q, sd, m)
                }
            )*
            let form = |unpack: RowUnpackFn, group, offset| PanelForm { unpack, group, offset };
            match ty {
                $(GgmlType::$ty => Some(form(|row, q, sd, m| unsafe { $ty(row, q, sd, m) }, $group, $offset)),)*
                _ => None,
            }
        }
    };
}
#[cfg(target_arch = "x86_64")]
pub(super) use featured_panel_form;

portable_panels!(
    Q4_0 => unpack_row_32::<BlockQ4_0>, 32, false,
    Q4_1 => unpack_row_32::<BlockQ4_1>, 32, true,
    Q5_0 => unpack_row_32::<BlockQ5_0>, 32, false,
    Q5_1 => unpack_row_32::<BlockQ5_1>, 32, true,
    Q8_0 => unpack_row_32::<BlockQ8_0>, 32, false,
    IQ4_NL => unpack_row_32::<BlockIq4Nl>, 32, false,
    Q2_K => unpack_row_k::<BlockQ2K, 16>, 16, true,
    Q3_K => unpack_row_k::<BlockQ3K, 16>, 16, false,
    Q4_K => unpack_row_k::<BlockQ4K, 32>, 32, true,
    Q5_K => unpack_row_k::<BlockQ5K, 32>, 32, true,
    Q6_K => unpack_row_k::<BlockQ6K, 16>, 16, false,
    IQ2_XXS => unpack_row_k::<BlockIq2Xxs, 32>, 32, false,
    IQ2_XS => unpack_row_k::<BlockIq2Xs, 16>, 16, false,
    IQ2_S => unpack_row_k::<BlockIq2S, 16>, 16, false,
    IQ3_XXS => unpack_row_k::<BlockIq3Xxs, 32>, 32, false,
    IQ3_S => unpack_row_k::<BlockIq3S, 32>, 32, false,
    IQ1_S => unpack_row_k::<BlockIq1S, 32>, 32, false,
    IQ1_M => unpack_row_k::<BlockIq1M, 16>, 16, false,
    IQ4_XS => unpack_row_k::<BlockIq4Xs, 32>, 32, false,
);

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

/// The largest magnitude of a type's weight bytes in the panel (its integer form, `unpack`).
pub(super) fn weight_bound(ty: GgmlType) -> u32 {
    use GgmlType::*;
    match ty {
        Q2_K => 3,
        Q3_K => 4,
        Q4_0 => 8,
        IQ1_S | IQ1_M => 9,
        Q4_1 | Q4_K | IQ3_S => 15,
        Q5_0 => 16,
        Q5_1 | Q5_K => 31,
        Q6_K => 32,
        IQ2_XXS | IQ2_XS | IQ2_S => 43,
        IQ3_XXS => 62,
        IQ4_NL | IQ4_XS => 127,
        _ => 128, // Q8_0, and any byte
    }
}

/// The kernel `gemm` runs `ty` with at tier `isa` on this CPU, if any.
pub fn kernel(ty: GgmlType, isa: Isa) -> Option<Kernel> {
    scalar_panel_form(ty)?;
    #[cfg(target_arch = "x86_64")]
    {
        let isa = isa.min(Isa::detected());
        if isa >= Isa::Avx512 && vnni_detected() {
            return Some(Kernel::Avx512Vnni);
        }
        if isa >= Isa::AvxVnni && is_x86_feature_detected!("avxvnni") {
            return Some(Kernel::AvxVnni);
        }
        if isa >= Isa::Avx2 {
            return Some(match weight_bound(ty) {
                0..=32 => Kernel::Avx2Pairs,
                33..=64 => Kernel::Avx2,
                _ => Kernel::Avx2Signed,
            });
        }
    }
    let _ = isa;
    None
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
                _ if kernel.offset128() => row_constants(q, sd, group, s.per_block * group, k),
                _ => k.fill(0.0),
            }
        }
    }
}

/// The rows' constants `k = 128 * sum over a block's elements of sd(group) * v` (as
/// `avx512::row_constants`, summed in plain order).
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

/// The blocks of one quantized activation row (Q8_0 or Q8_K): each block's scale and its
/// quants (signed bytes).
pub(super) fn act_blocks(act_ty: GgmlType, row: &[u8]) -> impl Iterator<Item = (f32, &[u8])> {
    let (block_elems, block_bytes) = (act_ty.block_elems(), act_ty.block_bytes());
    row.chunks_exact(block_bytes).map(move |block| {
        if act_ty == GgmlType::Q8_0 {
            (
                F16Le([block[0], block[1]]).to_f32(),
                &block[2..2 + block_elems],
            )
        } else {
            let b: &BlockQ8K = bytemuck::from_bytes(block);
            (f32::from_le_bytes(b.d), bytemuck::cast_slice(&b.qs))
        }
    })
}

thread_local! {
    static PANEL: RefCell<Panel> = RefCell::new(Panel::default());
    static ACTS: RefCell<Acts> = RefCell::new(Acts::default());
}

/// The features of the `vpdpbusd` kernel (AVX-512 F/BW with VNNI).
#[cfg(target_arch = "x86_64")]
fn vnni_detected() -> bool {
    is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
}

/// `y_i[t][r] = sum_c W_i[r][c] x[t][c]` for the n rows of `x` and matrices of one type and
/// width, with `kernel` (from `kernel(ws[0].ty, ..)`); the caller checked the shapes.
pub(super) fn gemm(
    pool: &Pool,
    ws: &[QMatrix],
    x: &[f32],
    outs: &[SharedOut],
    scratch: &mut Vec<u8>,
    kernel: Kernel,
) -> Result<()> {
    let w0 = &ws[0];
    let n = x.len() / w0.cols;
    let act_ty = activation_type(w0.ty).expect("checked in QMatrix::new");
    let form = panel_form(w0.ty, kernel).expect("checked by kernel()");
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

/// The sizes the kernel walks.
pub(super) struct Shape {
    pub n: usize,
    pub cols: usize,
    pub rows: usize,
    pub group: usize,
    pub per_block: usize,
    pub offset: bool,
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
