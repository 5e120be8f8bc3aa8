//! Quantized matrix products: `y = W x` with W a weight matrix in any GGUF block type, stored
//! as in the file (rows of `cols` elements, row-major, no repacking: the file stays mmapped and
//! memory is not doubled).
//!
//! As in llama.cpp, activations are quantized on the fly to the weight type's companion type
//! (Q8_0 for the 32-element types, Q8_K for the K- and IQ-types; float weights keep float
//! activations) and the dot products run on integers with per-block scales. Each weight type has
//! a reference kernel (`scalar`, built on the integer forms of `unpack`) and SIMD kernels
//! (`avx2`: AVX2, and the same code with AVX-512 VNNI's `vpdpbusd` where present), picked once
//! at run time like the dequantizers.

mod bandwidth;
mod denormals;
pub mod gemm;
pub mod narrow;
pub(crate) mod panel;
mod pool;
pub mod scalar;
pub mod unpack;

#[cfg(target_arch = "x86_64")]
mod act_quant;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2_panel;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512;

pub use bandwidth::read_bandwidth;
pub use denormals::{FlushDenormals, flushing};
pub use pool::{Pool, physical_cores};

use crate::error::{Error, Result};
use crate::gguf::GgmlType;
pub use crate::kernels::{TypeKernels, VecDotFn, VecDotManyFn, kernels};
use crate::quant::{Isa, quantize};

/// Most activation rows a `VecDotManyFn` takes.
pub const MAX_DOT_TOKENS: usize = 8;
/// Up to this many activation rows, types with a multi-token dot product use it rather than
/// the narrow or batched products.
pub(crate) const MANY_DOT_UP_TO: usize = 8;

/// The most activation rows for which `matmul` gives each row the bits it gets alone (the
/// per-row and multi-token dot products; the narrow and batched products sum in another
/// order). Speculative decoding verifies that many guesses per call, so that its greedy text
/// is decoding's.
pub fn exact_rows(ty: GgmlType, isa: Isa) -> usize {
    kernels(ty, isa).exact_rows
}

/// The multi-token dot product of `ty`, where the type and CPU have one (the codebook types:
/// taking a super-block apart costs more than its products, so it is done once per row).
pub fn dot_many_fn(ty: GgmlType, isa: Isa) -> Option<VecDotManyFn> {
    kernels(ty, isa).dot_many
}

/// The type activations are converted to before a dot product with weights of `ty`.
pub fn activation_type(ty: GgmlType) -> Option<GgmlType> {
    kernels(ty, Isa::Scalar).activation
}

/// The reference dot product for weights of `ty`.
pub fn reference_dot(ty: GgmlType) -> Option<VecDotFn> {
    kernels(ty, Isa::Scalar).reference_dot
}

/// The fastest dot product for `ty` at or below tier `isa`, with the tier it belongs to.
pub fn dot_fn(ty: GgmlType, isa: Isa) -> Option<(VecDotFn, Isa)> {
    kernels(ty, isa).dot
}

/// Converts activation rows `x` (whole rows of `cols`) to `act_ty`, replacing `out`'s contents
/// (its capacity is reused, so steady-state calls do not allocate).
pub fn quantize_activations(act_ty: GgmlType, x: &[f32], out: &mut Vec<u8>) -> Result<()> {
    // The integer quantizers would turn NaN into 0 and hide it; a NaN or Inf here means the
    // weights hold one (a corrupt file), so say so instead of computing garbage.
    if !all_finite(x) {
        return Err(Error::invalid(
            "non-finite activations (NaN or Inf): the model's weights hold NaN or Inf values",
        ));
    }
    out.clear();
    if act_ty == GgmlType::F32 {
        out.extend(x.iter().flat_map(|v| v.to_le_bytes()));
        return Ok(());
    }
    #[cfg(target_arch = "x86_64")]
    if Isa::active() >= Isa::Avx512
        && act_quant::detected()
        && x.len().is_multiple_of(act_ty.block_elems())
        // SAFETY: the features were detected; x holds whole blocks.
        && unsafe { act_quant::quantize(act_ty, x, out) }
    {
        return Ok(());
    }
    #[cfg(target_arch = "x86_64")]
    if Isa::active() >= Isa::Avx2
        && matches!(act_ty, GgmlType::Q8_0 | GgmlType::Q8_K)
        && x.len().is_multiple_of(act_ty.block_elems())
    {
        // SAFETY: Isa::active() detected AVX2 and FMA; x holds whole blocks.
        unsafe { quantize_activations_avx2(act_ty, x, out) };
        return Ok(());
    }
    quantize::quantize(act_ty, x, out)
}

/// The reference Q8_0 / Q8_K quantizers compiled for AVX2 (same operations, same bits): at the
/// baseline ISA each rounding is a libm call (7% of an AVX2 prefill, measured with perf).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_activations_avx2(act_ty: GgmlType, x: &[f32], out: &mut Vec<u8>) {
    if act_ty == GgmlType::Q8_K {
        for c in x.chunks_exact(crate::gguf::QK_K) {
            let block = quantize::quantize_q8_k(c.try_into().expect("whole blocks"));
            out.extend_from_slice(bytemuck::bytes_of(&block));
        }
    } else {
        for c in x.chunks_exact(32) {
            let block = quantize::quantize_q8_0(c.try_into().expect("whole blocks"), None);
            out.extend_from_slice(bytemuck::bytes_of(&block));
        }
    }
}

/// True when no value is NaN or Inf (v * 0 is NaN exactly for those); 16 lanes so that it
/// vectorizes: about one cycle per 16 values.
pub fn all_finite(x: &[f32]) -> bool {
    let mut lanes = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let tail = chunks.remainder().iter().fold(0f32, |a, &v| a + v * 0.0);
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += v * 0.0;
        }
    }
    (lanes.iter().sum::<f32>() + tail) == 0.0
}

/// A weight matrix as stored in a GGUF file: `rows` rows of `cols` elements of type `ty`, with
/// its type's kernels (resolved once, at load).
#[derive(Clone, Copy)]
pub struct QMatrix<'a> {
    pub ty: GgmlType,
    pub rows: usize,
    pub cols: usize,
    pub data: &'a [u8],
    pub kernels: &'static TypeKernels,
}

impl<'a> QMatrix<'a> {
    /// The matrix with the kernels of the active tier.
    pub fn new(ty: GgmlType, rows: usize, cols: usize, data: &'a [u8]) -> Result<Self> {
        let kernels = kernels(ty, Isa::active());
        if kernels.activation.is_none() {
            return Err(Error::Unsupported(format!(
                "tensor type {ty}: no matrix product for this type"
            )));
        }
        let (be, bb) = (ty.block_elems(), ty.block_bytes());
        if cols == 0 || rows == 0 || !cols.is_multiple_of(be) {
            return Err(Error::invalid(format!(
                "{ty}: a {rows}x{cols} matrix needs nonzero rows and a row length that is a \
                 multiple of {be}"
            )));
        }
        let want = rows.checked_mul(cols / be * bb);
        if want != Some(data.len()) {
            return Err(Error::invalid(format!(
                "{ty}: a {rows}x{cols} matrix takes {} bytes, got {}",
                rows * (cols / be * bb),
                data.len()
            )));
        }
        Ok(QMatrix {
            ty,
            rows,
            cols,
            data,
            kernels,
        })
    }

    /// The same matrix with the kernels of tier `isa` (tests, benchmarks, `FERROLLM_ISA`-like
    /// choices per call).
    pub fn with_isa(self, isa: Isa) -> Self {
        QMatrix {
            kernels: kernels(self.ty, isa),
            ..self
        }
    }

    pub fn row_bytes(&self) -> usize {
        self.cols / self.ty.block_elems() * self.ty.block_bytes()
    }

    fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }
}

/// From this many activation rows on, a product unpacks each weight tile once for all of them
/// (`gemm`) instead of once per row.
pub const GEMM_MIN_TOKENS: usize = 4;

/// Rows handled together by one task of a product: small enough that their weights stay in
/// L1/L2 while all activation rows pass over them.
const ROW_TILE: usize = 16;

/// A raw output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// Taken through a method so that closures capture the whole (Sync) wrapper.
    fn at(self, i: usize) -> *mut f32 {
        self.0.wrapping_add(i)
    }
}

/// `y[t][r] = sum_c W[r][c] * x[t][c]` for `n` activation rows `x` (n x cols, row-major) into
/// `y` (n x rows), with the kernels of `w`'s record. `scratch` holds the quantized activations
/// between calls.
pub fn matmul(
    pool: &Pool,
    w: &QMatrix,
    x: &[f32],
    y: &mut [f32],
    scratch: &mut Vec<u8>,
) -> Result<()> {
    matmul_many(pool, &[*w], x, &mut [y], scratch)
}

/// Most matrices `matmul_many` runs in one dispatch.
pub const MAX_MANY: usize = 4;

/// The products of one input with several matrices (`ys[i] = ws[i] x`, as `matmul`): where
/// they share a type and a width (attention's q/k/v, experts' gate/up) the activations are
/// quantized once and the rows of all of them are split between the threads in one dispatch,
/// so no thread waits at a barrier between them.
pub fn matmul_many(
    pool: &Pool,
    ws: &[QMatrix],
    x: &[f32],
    ys: &mut [&mut [f32]],
    scratch: &mut Vec<u8>,
) -> Result<()> {
    let Some(&w0) = ws.first() else {
        return Ok(());
    };
    if ws.len() != ys.len() {
        return Err(Error::invalid(format!(
            "{} matrices and {} outputs",
            ws.len(),
            ys.len()
        )));
    }
    let n = x.len() / w0.cols;
    for (w, y) in ws.iter().zip(ys.iter()) {
        if n == 0 || x.len() != n * w.cols || y.len() != n * w.rows {
            return Err(Error::invalid(format!(
                "matrix {}x{}: {} inputs and {} outputs are not whole rows of the same count",
                w.rows,
                w.cols,
                x.len(),
                y.len()
            )));
        }
    }
    let alike = ws
        .iter()
        .all(|w| std::ptr::eq(w.kernels, w0.kernels) && w.cols == w0.cols);
    if !alike || ws.len() > MAX_MANY {
        for (w, y) in ws.iter().zip(ys.iter_mut()) {
            matmul_many(
                pool,
                std::slice::from_ref(w),
                x,
                std::slice::from_mut(y),
                scratch,
            )?;
        }
        return Ok(());
    }
    let mut outs = [SharedOut(std::ptr::null_mut()); MAX_MANY];
    for (o, y) in outs.iter_mut().zip(ys.iter_mut()) {
        *o = SharedOut(y.as_mut_ptr());
    }
    let outs = &outs[..ws.len()];
    let k = w0.kernels;
    let many = k.dot_many.filter(|_| (2..=MANY_DOT_UP_TO).contains(&n));
    if let Some(kernel) = k.gemm
        && many.is_none()
    {
        // The narrow product is written for 512-bit vectors only.
        if kernel == gemm::Kernel::Avx512Vnni && narrow::takes(n, k) {
            return narrow::narrow(pool, ws, x, outs, scratch);
        }
        if n >= GEMM_MIN_TOKENS {
            return gemm::gemm(pool, ws, x, outs, scratch);
        }
    }
    let act_ty = k.activation.expect("checked in QMatrix::new");
    let (dot, _) = k.dot.expect("every matrix type has a dot product");
    quantize_activations(act_ty, x, scratch)?;
    let act_row_bytes = w0.cols / act_ty.block_elems() * act_ty.block_bytes();
    let acts: &[u8] = scratch;

    // Tasks are runs of tiles of rows (of every matrix in turn); enough of them that the pool
    // balances uneven progress.
    let tiles = Tiles::new(ws, ROW_TILE);
    let tiles_per_task = tiles.total.div_ceil(pool.threads() * 4).max(1);
    let n_tasks = tiles.total.div_ceil(tiles_per_task);
    pool.run(n_tasks, |task| {
        let first = task * tiles_per_task;
        for tile in first..(first + tiles_per_task).min(tiles.total) {
            let (m, rows) = tiles.locate(tile);
            let (w, out) = (&ws[m], outs[m]);
            if let Some(many) = many {
                let mut sums = [0f32; MAX_DOT_TOKENS];
                for r in rows.clone() {
                    many(w.row(r), acts, &mut sums[..n]);
                    for (t, &v) in sums[..n].iter().enumerate() {
                        // SAFETY: each (m, t, r) is written by exactly one task, t < n, r < rows.
                        unsafe { *out.at(t * w.rows + r) = v };
                    }
                }
                continue;
            }
            for (t, a) in acts.chunks_exact(act_row_bytes).enumerate() {
                for r in rows.clone() {
                    // SAFETY: each (m, t, r) is written by exactly one task, t < n, r < rows.
                    unsafe { *out.at(t * w.rows + r) = dot(w.row(r), a) };
                }
            }
        }
    });
    Ok(())
}

/// The row tiles of several matrices, numbered across them in order.
struct Tiles {
    /// Tiles of each matrix before it, and its row count.
    starts: [(usize, usize); MAX_MANY],
    tile_rows: usize,
    total: usize,
}

impl Tiles {
    fn new(ws: &[QMatrix], tile_rows: usize) -> Tiles {
        let mut starts = [(0, 0); MAX_MANY];
        let mut total = 0;
        for (s, w) in starts.iter_mut().zip(ws) {
            *s = (total, w.rows);
            total += w.rows.div_ceil(tile_rows);
        }
        let used = ws.len();
        for s in &mut starts[used..] {
            *s = (usize::MAX, 0);
        }
        Tiles {
            starts,
            tile_rows,
            total,
        }
    }

    /// The matrix of global tile `tile` and that tile's rows.
    fn locate(&self, tile: usize) -> (usize, std::ops::Range<usize>) {
        let m = self
            .starts
            .iter()
            .rposition(|&(start, _)| start <= tile)
            .unwrap_or(0);
        let (start, rows) = self.starts[m];
        let first = (tile - start) * self.tile_rows;
        (m, first..(first + self.tile_rows).min(rows))
    }
}

/// `y = W x` for one activation row (decode).
pub fn matvec(
    pool: &Pool,
    w: &QMatrix,
    x: &[f32],
    y: &mut [f32],
    scratch: &mut Vec<u8>,
) -> Result<()> {
    if x.len() != w.cols || y.len() != w.rows {
        return Err(Error::invalid(format!(
            "matrix {}x{}: got {} inputs and {} outputs",
            w.rows,
            w.cols,
            x.len(),
            y.len()
        )));
    }
    matmul(pool, w, x, y, scratch)
}

#[cfg(test)]
mod tests;
