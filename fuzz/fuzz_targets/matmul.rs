//! A one-row matrix of any type with any block bytes times activations from the input: every
//! kernel tier agrees with the scalar reference up to float rounding, and bad shapes are errors.
#![no_main]
use ferrollm::gguf::GgmlType;
use ferrollm::matmul::{Pool, QMatrix, activation_type, matvec};
use ferrollm::quant::{Isa, dequantize_with};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool::new(Some(1)).unwrap())
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let ty = GgmlType::ALL[selector as usize % GgmlType::ALL.len()];
    if activation_type(ty).is_none() {
        return;
    }
    let n_blocks = (rest.len() / (ty.block_bytes() + ty.block_elems())).min(4);
    let cols = n_blocks * ty.block_elems();
    let (weights, acts) = rest.split_at(n_blocks * ty.block_bytes());
    // Activations in [-8, 8): finite and of the magnitude a model feeds.
    let x: Vec<f32> = acts[..cols]
        .iter()
        .map(|&b| (b as f32 - 128.0) / 16.0)
        .collect();
    let Ok(w) = QMatrix::new(ty, 1, cols, weights) else {
        assert_eq!(cols, 0);
        return;
    };
    let mut deq = vec![0f32; cols];
    dequantize_with(ty, weights, &mut deq, Isa::Scalar).unwrap();
    let scale: f32 = deq.iter().zip(&x).map(|(a, b)| (a * b).abs()).sum();
    let (mut reference, mut scratch) = ([0f32], Vec::new());
    matvec(pool(), &w, &x, &mut reference, &mut scratch, Isa::Scalar).unwrap();
    for isa in [Isa::Avx2, Isa::Avx512] {
        if isa > Isa::detected() {
            continue;
        }
        let mut y = [0f32];
        matvec(pool(), &w, &x, &mut y, &mut scratch, isa).unwrap();
        if reference[0].is_finite() && scale.is_finite() {
            let tol = 1e-4 * scale + 1e-5;
            assert!(
                (y[0] - reference[0]).abs() <= tol,
                "{ty:?} {isa:?}: {} vs {}",
                y[0],
                reference[0]
            );
        }
    }
    // Wrong lengths are refused.
    assert!(
        matvec(
            pool(),
            &w,
            &x[..cols.saturating_sub(1)],
            &mut reference,
            &mut scratch,
            Isa::Scalar
        )
        .is_err()
            || cols == 0
    );
});
