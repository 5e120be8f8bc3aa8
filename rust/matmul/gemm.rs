//! Batched products (prefill): `Y = X W^T` for many activation rows at once, for every
//! quantized weight type through one integer kernel.
//!
//! The per-row dot kernels unpack a weight block once per (row, token): a 512-token prefill
//! unpacks every weight 512 times. Here each task unpacks a tile of 16 weight rows once, into a
//! panel in L2 that every token of the batch then streams over:
//!
//! - every type becomes the same integer form (`unpack`): groups of 16 elements with
//!   `w = S * q + M` (S, M floats per row and group, q small integers), stored as unsigned
//!   bytes `q + 128`, interleaved 4 bytes per row so that one 512-bit `vpdpbusd` with the
//!   token's 4 activation bytes broadcast yields 16 rows' partial sums with no horizontal adds;
//! - per token and group, activations are Q8 bytes with a scale `a` and their sum `s`, and
//!   `sum(w x) = a * (S * sum((q + 128) x) + (M - 128 S) * s)`.
//!
//! The weights stay in the file (the panel is a per-thread scratch of one tile, not a copy of
//! the model). Needs AVX-512 VNNI; elsewhere, and for float weights, `matmul` keeps using the
//! per-row kernels. The integer sums are exact; only float rounding differs from `scalar`.

use std::cell::RefCell;

use super::unpack::{IntSuperBlock, Unpack32, UnpackK};
use super::{QMatrix, SharedOut, activation_type, quantize_activations};
use crate::error::Result;
use crate::gguf::{GgmlType, QK_K};
use crate::quant::iquants::*;
use crate::quant::kquants::*;
use crate::quant::legacy::*;
use crate::quant::{Isa, block::F16Le};

use super::Pool;

/// Weight rows per tile: one 512-bit vector of i32 lanes.
pub const TILE_ROWS: usize = 16;
/// Elements per scale group (the finest grain any type has).
const GROUP: usize = 16;
/// Tokens that share one pass over a group's weights (accumulators in registers).
const TOKEN_BLOCK: usize = 4;

/// One weight row in integer form: `q` (cols), and per group of 16, `s` and `m`.
type RowUnpackFn = fn(row: &[u8], q: &mut [i8], s: &mut [f32], m: &mut [f32]);

fn unpack_row_32<B: Unpack32 + bytemuck::Pod>(
    row: &[u8],
    q: &mut [i8],
    s: &mut [f32],
    m: &mut [f32],
) {
    let blocks: &[B] = bytemuck::cast_slice(row);
    for (b, block) in blocks.iter().enumerate() {
        let u = block.unpack();
        q[32 * b..32 * b + 32].copy_from_slice(&u.q);
        s[2 * b..2 * b + 2].fill(u.d);
        m[2 * b..2 * b + 2].fill(u.m);
    }
}

fn unpack_row_k<B: UnpackK + bytemuck::Pod>(
    row: &[u8],
    q: &mut [i8],
    s: &mut [f32],
    m: &mut [f32],
) {
    let blocks: &[B] = bytemuck::cast_slice(row);
    let mut u = IntSuperBlock::default();
    for (b, block) in blocks.iter().enumerate() {
        block.unpack(&mut u);
        q[QK_K * b..QK_K * (b + 1)].copy_from_slice(&u.q);
        for g in 0..QK_K / GROUP {
            s[16 * b + g] = u.d * u.scales[g] as f32;
            m[16 * b + g] = u.dmin * u.mins[g] as f32;
        }
    }
}

fn row_unpacker(ty: GgmlType) -> Option<RowUnpackFn> {
    use GgmlType::*;
    Some(match ty {
        Q4_0 => unpack_row_32::<BlockQ4_0>,
        Q4_1 => unpack_row_32::<BlockQ4_1>,
        Q5_0 => unpack_row_32::<BlockQ5_0>,
        Q5_1 => unpack_row_32::<BlockQ5_1>,
        Q8_0 => unpack_row_32::<BlockQ8_0>,
        IQ4_NL => unpack_row_32::<BlockIq4Nl>,
        Q2_K => unpack_row_k::<BlockQ2K>,
        Q3_K => unpack_row_k::<BlockQ3K>,
        Q4_K => unpack_row_k::<BlockQ4K>,
        Q5_K => unpack_row_k::<BlockQ5K>,
        Q6_K => unpack_row_k::<BlockQ6K>,
        IQ2_XXS => unpack_row_k::<BlockIq2Xxs>,
        IQ2_XS => unpack_row_k::<BlockIq2Xs>,
        IQ2_S => unpack_row_k::<BlockIq2S>,
        IQ3_XXS => unpack_row_k::<BlockIq3Xxs>,
        IQ3_S => unpack_row_k::<BlockIq3S>,
        IQ1_S => unpack_row_k::<BlockIq1S>,
        IQ1_M => unpack_row_k::<BlockIq1M>,
        IQ4_XS => unpack_row_k::<BlockIq4Xs>,
        _ => return None,
    })
}

/// A tile of 16 weight rows in kernel order. For group g: `q[g]` is 256 bytes laid out
/// [4 quads][16 rows][4 bytes]; `s[g]`, `c[g]` hold S and M - 128 S for the 16 rows.
#[derive(Default)]
struct Panel {
    q: Vec<u8>,
    s: Vec<f32>,
    c: Vec<f32>,
    // one row's integer form, before interleaving
    row_q: Vec<i8>,
    row_s: Vec<f32>,
    row_m: Vec<f32>,
}

impl Panel {
    /// Fills the panel from rows `first..first + 16` of `w` (rows past the end are zeros).
    fn fill(&mut self, w: &QMatrix, unpack: RowUnpackFn, first: usize) {
        let (cols, groups) = (w.cols, w.cols / GROUP);
        self.q.resize(cols * TILE_ROWS, 128);
        self.s.resize(groups * TILE_ROWS, 0.0);
        self.c.resize(groups * TILE_ROWS, 0.0);
        self.row_q.resize(cols, 0);
        self.row_s.resize(groups, 0.0);
        self.row_m.resize(groups, 0.0);
        for r in 0..TILE_ROWS {
            if first + r >= w.rows {
                for g in 0..groups {
                    self.s[g * TILE_ROWS + r] = 0.0;
                    self.c[g * TILE_ROWS + r] = 0.0;
                }
                continue;
            }
            unpack(
                w.row(first + r),
                &mut self.row_q,
                &mut self.row_s,
                &mut self.row_m,
            );
            for g in 0..groups {
                let (s, m) = (self.row_s[g], self.row_m[g]);
                self.s[g * TILE_ROWS + r] = s;
                self.c[g * TILE_ROWS + r] = m - 128.0 * s;
                let src: &[u8] = bytemuck::cast_slice(&self.row_q[g * GROUP..][..GROUP]);
                let dst = &mut self.q[g * GROUP * TILE_ROWS..][..GROUP * TILE_ROWS];
                for quad in 0..4 {
                    // q + 128 as a byte is q's bits with the top one flipped.
                    let four = u32::from_le_bytes(src[4 * quad..4 * quad + 4].try_into().unwrap());
                    let at = quad * 64 + r * 4;
                    dst[at..at + 4].copy_from_slice(&(four ^ 0x8080_8080).to_le_bytes());
                }
            }
        }
    }
}

/// Activation rows as Q8 bytes with, per group of 16, the scale `a` and `a * sum(bytes)`.
#[derive(Default)]
struct Acts {
    x: Vec<i8>,
    a: Vec<f32>,
    as_: Vec<f32>,
}

impl Acts {
    fn fill(&mut self, act_ty: GgmlType, quantized: &[u8], n: usize, cols: usize) {
        let groups = cols / GROUP;
        self.x.resize(n * cols, 0);
        self.a.resize(n * groups, 0.0);
        self.as_.resize(n * groups, 0.0);
        let (block_elems, block_bytes) = (act_ty.block_elems(), act_ty.block_bytes());
        for (i, block) in quantized.chunks_exact(block_bytes).enumerate() {
            let (scale, qs): (f32, &[u8]) = if act_ty == GgmlType::Q8_0 {
                (
                    F16Le([block[0], block[1]]).to_f32(),
                    &block[2..2 + block_elems],
                )
            } else {
                let b: &BlockQ8K = bytemuck::from_bytes(block);
                (f32::from_le_bytes(b.d), bytemuck::cast_slice(&b.qs))
            };
            let x = &mut self.x[i * block_elems..][..block_elems];
            for (d, &v) in x.iter_mut().zip(qs) {
                *d = v as i8;
            }
            for (g, chunk) in x.chunks_exact(GROUP).enumerate() {
                let sum: i32 = chunk.iter().map(|&v| v as i32).sum();
                let at = i * block_elems / GROUP + g;
                self.a[at] = scale;
                self.as_[at] = scale * sum as f32;
            }
        }
    }
}

thread_local! {
    static PANEL: RefCell<Panel> = RefCell::new(Panel::default());
    static ACTS: RefCell<Acts> = RefCell::new(Acts::default());
}

/// Whether `gemm` can run `ty` on this CPU at tier `isa`.
pub fn supported(ty: GgmlType, isa: Isa) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        isa >= Isa::Avx512 && avx512::detected() && row_unpacker(ty).is_some()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (ty, isa);
        false
    }
}

/// `y[t][r] = sum_c W[r][c] x[t][c]` for the n rows of `x`; the caller checked the shapes and
/// `supported(w.ty, isa)`.
pub fn gemm(
    pool: &Pool,
    w: &QMatrix,
    x: &[f32],
    y: &mut [f32],
    scratch: &mut Vec<u8>,
) -> Result<()> {
    let n = x.len() / w.cols;
    let act_ty = activation_type(w.ty).expect("checked in QMatrix::new");
    let unpack = row_unpacker(w.ty).expect("checked by supported()");
    quantize_activations(act_ty, x, scratch)?;
    ACTS.with_borrow_mut(|acts| {
        acts.fill(act_ty, scratch, n, w.cols);
        let acts = &*acts;
        let tiles = w.rows.div_ceil(TILE_ROWS);
        let out = SharedOut(y.as_mut_ptr());
        pool.run(tiles, |tile| {
            PANEL.with_borrow_mut(|panel| {
                panel.fill(w, unpack, tile * TILE_ROWS);
                let valid = (w.rows - tile * TILE_ROWS).min(TILE_ROWS);
                #[cfg(target_arch = "x86_64")]
                // SAFETY: supported() checked the CPU; each task writes its own rows.
                unsafe {
                    avx512::tile(panel, acts, n, w.cols, out, w.rows, tile * TILE_ROWS, valid)
                };
            })
        });
    });
    Ok(())
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    #![allow(unsafe_op_in_unsafe_fn)]
    use std::arch::x86_64::*;

    use super::{Acts, GROUP, Panel, SharedOut, TILE_ROWS, TOKEN_BLOCK};

    pub fn detected() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
    }

    /// All tokens against one panel: blocks of `TOKEN_BLOCK` tokens, then the rest one by one.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn tile(
        panel: &Panel,
        acts: &Acts,
        n: usize,
        cols: usize,
        out: SharedOut,
        rows: usize,
        first_row: usize,
        valid: usize,
    ) {
        let mut t = 0;
        while t + TOKEN_BLOCK <= n {
            tokens::<TOKEN_BLOCK>(panel, acts, t, cols, out, rows, first_row, valid);
            t += TOKEN_BLOCK;
        }
        while t < n {
            tokens::<1>(panel, acts, t, cols, out, rows, first_row, valid);
            t += 1;
        }
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tokens<const T: usize>(
        panel: &Panel,
        acts: &Acts,
        t0: usize,
        cols: usize,
        out: SharedOut,
        rows: usize,
        first_row: usize,
        valid: usize,
    ) {
        let groups = cols / GROUP;
        let mut acc = [_mm512_setzero_ps(); T];
        let xq = acts.x.as_ptr();
        for g in 0..groups {
            let wq = panel.q.as_ptr().add(g * GROUP * TILE_ROWS) as *const __m512i;
            let w = [
                _mm512_loadu_si512(wq),
                _mm512_loadu_si512(wq.add(1)),
                _mm512_loadu_si512(wq.add(2)),
                _mm512_loadu_si512(wq.add(3)),
            ];
            let s = _mm512_loadu_ps(panel.s.as_ptr().add(g * TILE_ROWS));
            let c = _mm512_loadu_ps(panel.c.as_ptr().add(g * TILE_ROWS));
            for (i, acc) in acc.iter_mut().enumerate() {
                let t = t0 + i;
                let x = xq.add(t * cols + g * GROUP) as *const i32;
                let mut isum = _mm512_setzero_si512();
                for (quad, wv) in w.iter().enumerate() {
                    let xb = _mm512_set1_epi32(x.add(quad).read_unaligned());
                    isum = _mm512_dpbusd_epi32(isum, *wv, xb);
                }
                let at = t * groups + g;
                let a = _mm512_set1_ps(*acts.a.get_unchecked(at));
                let as_ = _mm512_set1_ps(*acts.as_.get_unchecked(at));
                let scaled = _mm512_mul_ps(_mm512_cvtepi32_ps(isum), a);
                *acc = _mm512_fmadd_ps(s, scaled, *acc);
                *acc = _mm512_fmadd_ps(c, as_, *acc);
            }
        }
        let mask: __mmask16 = if valid == TILE_ROWS {
            0xFFFF
        } else {
            (1u16 << valid) - 1
        };
        for (i, acc) in acc.iter().enumerate() {
            let dst = out.at((t0 + i) * rows + first_row);
            _mm512_mask_storeu_ps(dst, mask, *acc);
        }
    }
}
