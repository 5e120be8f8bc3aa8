//! Every SIMD dot product against the reference, and the products against dequantize-then-
//! multiply in f64, on random blocks (scales kept finite) and random activations.

use super::*;
use crate::quant::tests::random_bytes;

/// Byte offsets of the f16 scale fields in a block of `ty`.
fn f16_fields(ty: GgmlType) -> &'static [usize] {
    use GgmlType::*;
    match ty {
        Q4_1 | Q5_1 | Q4_K | Q5_K => &[0, 2],
        Q2_K => &[80, 82],
        Q3_K => &[108],
        Q6_K => &[208],
        IQ1_M => &[54], // the high byte of the last scale word holds the f16's top nibble
        _ => &[0],
    }
}

/// Random blocks of `ty` with every f16 scale below 2 in magnitude (exponent bit 14 cleared).
pub(crate) fn random_weights(ty: GgmlType, seed: u64, n_blocks: usize) -> Vec<u8> {
    let bb = ty.block_bytes();
    if matches!(ty, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
        let x = random_floats(seed, n_blocks);
        let mut out = Vec::new();
        for v in x {
            match ty {
                GgmlType::F32 => out.extend(v.to_le_bytes()),
                GgmlType::F16 => out.extend(half::f16::from_f32(v).to_le_bytes()),
                _ => out.extend(half::bf16::from_f32(v).to_le_bytes()),
            }
        }
        return out;
    }
    let mut bytes = random_bytes(seed, n_blocks * bb);
    for block in bytes.chunks_exact_mut(bb) {
        for &f in f16_fields(ty) {
            block[f + 1] &= 0xBF;
        }
    }
    bytes
}

pub(crate) fn random_floats(seed: u64, n: usize) -> Vec<f32> {
    random_bytes(seed ^ 0xABCD, 2 * n)
        .chunks_exact(2)
        .map(|b| (u16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0) - 1.0)
        .collect()
}

const DOT_TYPES: &[GgmlType] = &[
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::IQ4_NL,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ2_XXS,
    GgmlType::IQ2_XS,
    GgmlType::IQ2_S,
    GgmlType::IQ3_XXS,
    GgmlType::IQ3_S,
    GgmlType::IQ1_S,
    GgmlType::IQ1_M,
    GgmlType::IQ4_XS,
];

/// (dot of dequantized weights and dequantized activations in f64, sum of |products|).
fn exact_dot(ty: GgmlType, w: &[u8], act_ty: GgmlType, a: &[u8], n: usize) -> (f64, f64) {
    let mut wf = vec![0f32; n];
    crate::quant::dequantize_with(ty, w, &mut wf, Isa::Scalar).unwrap();
    let af: Vec<f32> = if act_ty == GgmlType::F32 {
        a.chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    } else {
        let mut v = vec![0f32; n];
        crate::quant::dequantize_with(act_ty, a, &mut v, Isa::Scalar).unwrap();
        v
    };
    let dot = wf.iter().zip(&af).map(|(&w, &x)| w as f64 * x as f64).sum();
    let mag = wf
        .iter()
        .zip(&af)
        .map(|(&w, &x)| (w as f64 * x as f64).abs())
        .sum();
    (dot, mag)
}

#[test]
fn every_tier_matches_the_exact_dot_product() {
    for &ty in DOT_TYPES {
        let act_ty = activation_type(ty).unwrap();
        let reference = reference_dot(ty).unwrap();
        for (seed, n_blocks) in [(1u64, 1usize), (2, 3), (3, 16)] {
            let n = n_blocks * ty.block_elems().max(256);
            let w = random_weights(ty, seed + 100 * ty.id() as u64, n / ty.block_elems());
            let x = random_floats(seed, n);
            let mut a = Vec::new();
            quantize_activations(act_ty, &x, &mut a).unwrap();
            let (exact, mag) = exact_dot(ty, &w, act_ty, &a, n);
            let tol = 1e-5 * mag + 1e-6;
            for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512] {
                let (dot, tier) = dot_fn(ty, isa).unwrap();
                let got = dot(&w, &a) as f64;
                assert!(
                    (got - exact).abs() <= tol,
                    "{ty} {tier:?} seed {seed}: got {got}, exact {exact}, tolerance {tol}"
                );
                let r = reference(&w, &a) as f64;
                assert!(
                    (got - r).abs() <= tol,
                    "{ty} {tier:?}: {got} vs reference {r}"
                );
            }
        }
    }
}

#[test]
fn matmul_rows_and_threads() {
    let pool = Pool::new(Some(3)).unwrap();
    let ty = GgmlType::Q4_K;
    let (rows, cols, n) = (37, 512, 5);
    let w = random_weights(ty, 7, rows * cols / 256);
    let m = QMatrix::new(ty, rows, cols, &w).unwrap();
    let x = random_floats(9, n * cols);
    let mut y = vec![0f32; n * rows];
    let mut scratch = Vec::new();
    matmul(&pool, &m, &x, &mut y, &mut scratch).unwrap();
    let mut a = Vec::new();
    for t in 0..n {
        quantize_activations(GgmlType::Q8_K, &x[t * cols..(t + 1) * cols], &mut a).unwrap();
        for r in 0..rows {
            let want = reference_dot(ty).unwrap()(m.row(r), &a);
            let got = y[t * rows + r];
            assert!((want - got).abs() <= 1e-4 * want.abs().max(1.0), "{t},{r}");
        }
    }
}

#[test]
fn bad_shapes_are_errors() {
    assert!(QMatrix::new(GgmlType::Q4_0, 2, 48, &[0; 100]).is_err());
    assert!(QMatrix::new(GgmlType::Q4_0, 2, 64, &[0; 71]).is_err());
    assert!(QMatrix::new(GgmlType::I32, 1, 1, &[0; 4]).is_err());
    let w = vec![0u8; 2 * 36];
    let m = QMatrix::new(GgmlType::Q4_0, 2, 64, &w).unwrap();
    let pool = Pool::new(Some(1)).unwrap();
    let mut y = vec![0f32; 2];
    assert!(matvec(&pool, &m, &[0.0; 63], &mut y, &mut Vec::new()).is_err());
    assert!(Pool::new(Some(0)).is_err());
}

/// The batched product's kernels this CPU runs for `ty`, one per tier, with a tier that runs
/// each.
fn kernels(ty: GgmlType) -> impl Iterator<Item = (Isa, gemm::Kernel)> {
    let mut found: Vec<(Isa, gemm::Kernel)> = [Isa::Avx2, Isa::AvxVnni, Isa::Avx512]
        .into_iter()
        .filter_map(|isa| crate::kernels::kernels(ty, isa).gemm.map(|k| (isa, k)))
        .collect();
    found.dedup_by_key(|(_, k)| *k);
    found.into_iter()
}

#[test]
fn the_batched_product_matches_the_per_row_kernels() {
    // Token counts across bands (16 tokens each, 8 per 256-bit half) and a ragged last tile
    // of rows, on every kernel the CPU has.
    let pool = Pool::new(Some(2)).unwrap();
    for &ty in DOT_TYPES {
        for (isa, _) in kernels(ty) {
            // cols: the 32-element types also at one block (rows shorter than a vector).
            for cols in [ty.block_elems().max(256) * 2, ty.block_elems().max(32)] {
                check_batched(&pool, ty, 37, cols, Product::Gemm(isa));
            }
        }
    }
}

/// The 256-bit kernels on extreme bytes: weights of every type at their largest magnitudes
/// against activations at +-127, where a saturating 16-bit pair sum would show.
#[test]
fn the_256_bit_kernels_are_exact_at_the_extremes() {
    let pool = Pool::new(Some(1)).unwrap();
    for &ty in DOT_TYPES {
        for (isa, kernel) in kernels(ty).filter(|(_, k)| *k != gemm::Kernel::Avx512Vnni) {
            let (rows, cols, n) = (5, ty.block_elems().max(256), 9);
            let w = random_weights(ty, 900 + ty.id() as u64, rows * cols / ty.block_elems());
            let m = QMatrix::new(ty, rows, cols, &w).unwrap().with_isa(isa);
            let mut wf = vec![0f32; rows * cols];
            crate::quant::dequantize_with(ty, &w, &mut wf, Isa::Scalar).unwrap();
            // Each activation the sign of its weight times the row's extreme: every product
            // at its largest, all of one sign.
            let x: Vec<f32> = (0..n * cols)
                .map(|i| if wf[i % cols] < 0.0 { -1.0 } else { 1.0 } * (1 + i / cols) as f32)
                .collect();
            let mut y = vec![0f32; n * rows];
            let out = [SharedOut(y.as_mut_ptr())];
            gemm::gemm(&pool, &[m], &x, &out, &mut Vec::new()).unwrap();
            let act_ty = activation_type(ty).unwrap();
            for t in 0..n {
                let mut a = Vec::new();
                quantize_activations(act_ty, &x[t * cols..][..cols], &mut a).unwrap();
                for r in 0..rows {
                    let (exact, mag) = exact_dot(ty, m.row(r), act_ty, &a, cols);
                    let got = y[t * rows + r] as f64;
                    assert!(
                        (got - exact).abs() <= 1e-5 * mag + 1e-6,
                        "{ty} {kernel:?} token {t} row {r}: {got} vs exact {exact}"
                    );
                }
            }
        }
    }
}

#[test]
fn the_narrow_product_matches_the_per_row_kernels_whatever_the_batch() {
    let pool = Pool::new(Some(2)).unwrap();
    for &ty in DOT_TYPES {
        if crate::kernels::kernels(ty, Isa::detected()).gemm != Some(gemm::Kernel::Avx512Vnni) {
            continue;
        }
        for cols in [ty.block_elems().max(256) * 2, ty.block_elems().max(32)] {
            check_batched(&pool, ty, 37, cols, Product::Narrow);
            // A token's result is the same bits whatever else is in the batch.
            let rows = 37;
            let w = random_weights(ty, 3 + ty.id() as u64, rows * cols / ty.block_elems());
            let m = QMatrix::new(ty, rows, cols, &w)
                .unwrap()
                .with_isa(Isa::detected());
            let x = random_floats(5, narrow::MAX_TOKENS * cols);
            let run = |x: &[f32]| {
                let mut y = vec![0f32; x.len() / cols * rows];
                let out = [SharedOut(y.as_mut_ptr())];
                narrow::narrow(&pool, &[m], x, &out, &mut Vec::new()).unwrap();
                y
            };
            let all = run(&x);
            let pair = run(&x[5 * cols..7 * cols]);
            assert_eq!(pair, all[5 * rows..7 * rows], "{ty}");
        }
    }
}

#[derive(Clone, Copy)]
enum Product {
    /// The batched product with the kernel of a tier.
    Gemm(Isa),
    Narrow,
}

fn check_batched(pool: &Pool, ty: GgmlType, rows: usize, cols: usize, product: Product) {
    {
        let w = random_weights(ty, 7 + ty.id() as u64, rows * cols / ty.block_elems());
        let m = QMatrix::new(ty, rows, cols, &w).unwrap();
        let m = match product {
            Product::Gemm(isa) => m.with_isa(isa),
            Product::Narrow => m.with_isa(Isa::detected()),
        };
        let dot = reference_dot(ty).unwrap();
        let act_ty = activation_type(ty).unwrap();
        let counts: &[usize] = match product {
            Product::Gemm(_) => &[4, 9, 17, 33],
            Product::Narrow => &[2, 3, 5, 8],
        };
        for &n in counts {
            let x = random_floats(11 + n as u64, n * cols);
            let mut y = vec![0f32; n * rows];
            let mut scratch = Vec::new();
            let out = [SharedOut(y.as_mut_ptr())];
            match product {
                Product::Gemm(_) => gemm::gemm(pool, &[m], &x, &out, &mut scratch).unwrap(),
                Product::Narrow => narrow::narrow(pool, &[m], &x, &out, &mut scratch).unwrap(),
            }
            for t in 0..n {
                let mut a = Vec::new();
                quantize_activations(act_ty, &x[t * cols..][..cols], &mut a).unwrap();
                for r in 0..rows {
                    let want = dot(m.row(r), &a);
                    let (_, mag) = exact_dot(ty, m.row(r), act_ty, &a, cols);
                    let got = y[t * rows + r];
                    assert!(
                        ((got - want) as f64).abs() <= 1e-5 * mag + 1e-6,
                        "{ty} n {n} token {t} row {r}: gemm {got}, per-row {want}"
                    );
                }
            }
        }
    }
}

#[test]
fn activation_quantizers_match_the_reference_bit_for_bit() {
    // Ties (x / d = k + 1/2), zeros, a negative extreme, and random rows.
    let mut rows: Vec<Vec<f32>> = vec![vec![0.0; 512], random_floats(3, 512)];
    let mut ties: Vec<f32> = (0..512).map(|i| (i % 255) as f32 - 127.0 + 0.5).collect();
    ties[7] = -127.0;
    rows.push(ties);
    let mut neg = random_floats(4, 512);
    neg[300] = -5.0;
    rows.push(neg);
    for ty in [GgmlType::Q8_0, GgmlType::Q8_K] {
        for x in &rows {
            let mut fast = Vec::new();
            quantize_activations(ty, x, &mut fast).unwrap();
            let mut reference = Vec::new();
            quantize::quantize(ty, x, &mut reference).unwrap();
            assert_eq!(fast, reference, "{ty}");
            #[cfg(target_arch = "x86_64")]
            if Isa::detected() >= Isa::Avx2 {
                let mut avx2 = Vec::new();
                // SAFETY: AVX2 and FMA were detected; whole blocks.
                unsafe { super::quantize_activations_avx2(ty, x, &mut avx2) };
                assert_eq!(avx2, reference, "{ty} (AVX2)");
            }
        }
    }
}

#[test]
fn several_matrices_in_one_dispatch_equal_separate_products() {
    let pool = Pool::new(Some(2)).unwrap();
    for ty in [GgmlType::Q4_0, GgmlType::Q4_K, GgmlType::IQ2_XS] {
        let cols = 512;
        let rows = [37usize, 16, 5];
        let data: Vec<Vec<u8>> = rows
            .iter()
            .enumerate()
            .map(|(i, &r)| random_weights(ty, 40 + i as u64, r * cols / ty.block_elems()))
            .collect();
        let ws: Vec<QMatrix> = rows
            .iter()
            .zip(&data)
            .map(|(&r, d)| QMatrix::new(ty, r, cols, d).unwrap())
            .collect();
        for n in [1usize, 5, 20] {
            let x = random_floats(50 + n as u64, n * cols);
            let mut scratch = Vec::new();
            let mut ys: Vec<Vec<f32>> = rows.iter().map(|&r| vec![0f32; n * r]).collect();
            let mut refs: Vec<&mut [f32]> = ys.iter_mut().map(|y| y.as_mut_slice()).collect();
            matmul_many(&pool, &ws, &x, &mut refs, &mut scratch).unwrap();
            for (w, y) in ws.iter().zip(&ys) {
                let mut alone = vec![0f32; n * w.rows];
                matmul(&pool, w, &x, &mut alone, &mut scratch).unwrap();
                assert_eq!(
                    y, &alone,
                    "{ty} n {n}: one dispatch differs from separate products"
                );
            }
        }
    }
}

#[test]
fn the_pool_runs_every_task_once_and_passes_panics_to_the_caller() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    for threads in [1, 2, 3] {
        let pool = Pool::new(Some(threads)).unwrap();
        for n in [0usize, 1, 2, 7, 100] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            for _ in 0..50 {
                pool.run(n, |i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                });
            }
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 50));
        }
        let mut items = vec![0usize; 9];
        pool.for_each_mut(&mut items, |i, v| *v = i * i);
        assert_eq!(items, (0..9).map(|i| i * i).collect::<Vec<_>>());
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.run(8, |i| assert!(i != 5, "task five fails"));
        }));
        assert!(
            caught.is_err(),
            "{threads} threads: the panic reached the caller"
        );
        // The pool still works after a panic.
        let count = AtomicUsize::new(0);
        pool.run(16, |_| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 16);
    }
}

#[test]
fn the_vector_panel_unpackers_equal_the_portable_ones() {
    // The portable unpackers of the codebook types and Q6_K only run on CPUs without the
    // 512-bit ones; here both unpack the same rows and must agree exactly.
    for (&ty, (isa, kernel)) in DOT_TYPES
        .iter()
        .flat_map(|ty| kernels(*ty).map(move |k| (ty, k)))
    {
        let k = crate::kernels::kernels(ty, isa);
        let (Some(fast), Some(portable)) = (k.panel, k.portable_panel) else {
            continue;
        };
        assert_eq!(
            (fast.group, fast.offset),
            (portable.group, portable.offset),
            "{ty}"
        );
        let cols = 1024;
        let row = random_weights(ty, 70 + ty.id() as u64, cols / ty.block_elems());
        let groups = cols / fast.group;
        let unpack = |f: crate::kernels::RowUnpackFn| {
            let (mut q, mut sd, mut m) = (vec![0u8; cols], vec![0f32; groups], vec![0f32; groups]);
            f(&row, &mut q, &mut sd, &mut m);
            (q, sd, if fast.offset { m } else { Vec::new() })
        };
        assert!(
            unpack(fast.unpack) == unpack(portable.unpack),
            "{ty} {kernel:?}: unpackers differ"
        );
    }
}

#[test]
fn multi_token_dot_products_equal_the_single_ones_bit_for_bit() {
    for &ty in DOT_TYPES {
        let Some(many) = dot_many_fn(ty, Isa::detected()) else {
            continue;
        };
        let (dot, _) = dot_fn(ty, Isa::detected()).unwrap();
        let cols = 3 * 256;
        let w = random_weights(ty, 11 + ty.id() as u64, cols / ty.block_elems());
        let act_ty = activation_type(ty).unwrap();
        let mut acts = Vec::new();
        quantize_activations(act_ty, &random_floats(13, MAX_DOT_TOKENS * cols), &mut acts).unwrap();
        let row = acts.len() / MAX_DOT_TOKENS;
        for n in 1..=MAX_DOT_TOKENS {
            let mut out = vec![0f32; n];
            many(&w, &acts[..n * row], &mut out);
            for (t, got) in out.iter().enumerate() {
                let want = dot(&w, &acts[t * row..][..row]);
                assert_eq!(got.to_bits(), want.to_bits(), "{ty} n {n} token {t}");
            }
        }
    }
}

/// The 256-bit kernels are chosen by each type's largest weight byte: over random blocks
/// (every grid entry, every scale), the panel's bytes reach that bound and never pass it.
#[test]
fn every_panel_byte_is_within_its_types_bound() {
    for &ty in DOT_TYPES {
        let k = crate::kernels::kernels(ty, Isa::Scalar);
        let Some(form) = k.portable_panel else {
            continue;
        };
        let cols = ty.block_elems().max(256) * 8;
        let rows = 64;
        let w = random_weights(ty, 1234 + ty.id() as u64, rows * cols / ty.block_elems());
        let groups = cols / form.group;
        let (mut q, mut sd, mut m) = (vec![0u8; cols], vec![0f32; groups], vec![0f32; groups]);
        let mut most = 0;
        for row in w.chunks_exact(w.len() / rows) {
            (form.unpack)(row, &mut q, &mut sd, &mut m);
            most = most.max(
                q.iter()
                    .map(|&v| (v as i8 as i32).unsigned_abs())
                    .max()
                    .unwrap(),
            );
        }
        assert_eq!(most, k.weight_bound, "{ty}");
    }
}
