//! Every SIMD kernel against the reference, bit for bit, on random blocks (any bits: NaN and
//! infinite scales included, where only "both NaN" is required).

use super::*;

/// xorshift64*: deterministic test bytes without a dependency.
pub(crate) fn random_bytes(seed: u64, n: usize) -> Vec<u8> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            (s.wrapping_mul(0x2545F4914F6CDD1D) >> 56) as u8
        })
        .collect()
}

fn same(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

fn check_tier(ty: GgmlType, isa: Isa) {
    let (kernel, tier) = dequant_fn(ty, isa).unwrap();
    if tier == Isa::Scalar && isa != Isa::Scalar {
        return; // no kernel of this tier for this type
    }
    let reference = reference_fn(ty).unwrap();
    for (seed, n_blocks) in [(1u64, 1usize), (2, 3), (3, 17), (4, 64)] {
        let src = random_bytes(seed * 1000 + ty.id() as u64, n_blocks * ty.block_bytes());
        let n = n_blocks * ty.block_elems();
        let (mut want, mut got) = (vec![0f32; n], vec![0f32; n]);
        reference(&src, &mut want);
        kernel(&src, &mut got);
        for i in 0..n {
            assert!(
                same(want[i], got[i]),
                "{ty} {isa:?} element {i}: reference {} kernel {}",
                want[i],
                got[i]
            );
        }
    }
}

#[test]
fn every_kernel_matches_the_reference() {
    for &ty in GgmlType::ALL {
        if reference_fn(ty).is_some() {
            for isa in [Isa::Avx2, Isa::Avx512] {
                if isa <= Isa::detected() {
                    check_tier(ty, isa);
                }
            }
        }
    }
}

#[test]
fn parallel_path_matches_single_thread() {
    for ty in [GgmlType::Q4_K, GgmlType::IQ2_XS, GgmlType::Q8_0] {
        let n = PARALLEL_MIN_ELEMS * 2 + 3 * ty.block_elems().max(CHUNK_ELEMS / 4);
        let n = n / ty.block_elems() * ty.block_elems();
        let src = random_bytes(7, n / ty.block_elems() * ty.block_bytes());
        let mut want = vec![0f32; n];
        reference_fn(ty).unwrap()(&src, &mut want);
        let mut got = vec![0f32; n];
        dequantize(ty, &src, &mut got).unwrap();
        assert!(want.iter().zip(&got).all(|(a, b)| same(*a, *b)), "{ty}");
    }
}

#[test]
fn length_mismatch_is_an_error_not_a_panic() {
    let mut out = vec![0f32; 32];
    assert!(dequantize(GgmlType::Q4_0, &[0u8; 17], &mut out).is_err());
    assert!(dequantize(GgmlType::Q4_0, &[0u8; 36], &mut out).is_err());
    assert!(dequantize(GgmlType::Q8_1, &[0u8; 40], &mut out).is_err());
}

#[test]
fn known_values() {
    // Q4_0 block with d = 1.0 and nibbles 0..15 twice: x = q - 8.
    let mut src = vec![0x00, 0x3C];
    src.extend((0..16u8).map(|j| j | (15 - j) << 4));
    let mut out = vec![0f32; 32];
    dequantize(GgmlType::Q4_0, &src, &mut out).unwrap();
    for j in 0..16 {
        assert_eq!(out[j], j as f32 - 8.0);
        assert_eq!(out[16 + j], (15 - j) as f32 - 8.0);
    }
}
