//! Blocks of any type with any bytes (NaN/Inf scales included): every kernel tier returns the
//! same values as the scalar reference, bit for bit, or the same error.
#![no_main]
use ferrollm::gguf::GgmlType;
use ferrollm::quant::{Isa, dequantize_with};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, blocks)) = data.split_first() else {
        return;
    };
    let ty = GgmlType::ALL[selector as usize % GgmlType::ALL.len()];
    let n_blocks = blocks.len() / ty.block_bytes().max(1);
    // Also feed lengths that are not whole blocks: they must be refused, not read past.
    let src = if selector & 0x80 != 0 {
        blocks
    } else {
        &blocks[..n_blocks * ty.block_bytes()]
    };
    let n = n_blocks * ty.block_elems();
    let mut reference = vec![0f32; n];
    let expected = dequantize_with(ty, src, &mut reference, Isa::Scalar);
    for isa in [Isa::Avx2, Isa::Avx512] {
        if isa > Isa::detected() {
            continue;
        }
        let mut out = vec![0f32; n];
        let got = dequantize_with(ty, src, &mut out, isa);
        assert_eq!(got.is_ok(), expected.is_ok(), "{ty:?} {isa:?}");
        for (a, b) in reference.iter().zip(&out) {
            assert!(
                a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
                "{ty:?} {isa:?}: {a} vs {b}"
            );
        }
    }
});
