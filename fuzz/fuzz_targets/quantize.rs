//! Float rows (any bit patterns) through every reference quantizer: no panic, partial blocks
//! refused, and finite inputs within f16 range come back finite and bounded.
#![no_main]
use ferrollm::gguf::GgmlType;
use ferrollm::quant::{dequantize, quantize::quantize};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let x: Vec<f32> = data
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    for &ty in GgmlType::ALL {
        let mut out = Vec::new();
        if quantize(ty, &x, &mut out).is_err() {
            continue;
        }
        assert_eq!(
            out.len(),
            x.len() / ty.block_elems() * ty.block_bytes(),
            "{ty:?}"
        );
        let mut back = vec![0f32; x.len()];
        if dequantize(ty, &out, &mut back).is_err() {
            continue;
        }
        let max = x.iter().fold(0f32, |m, v| m.max(v.abs()));
        if x.iter().all(|v| v.is_finite()) && max < 30000.0 {
            for (i, v) in back.iter().enumerate() {
                assert!(
                    v.is_finite() && v.abs() <= 2.0 * max + 1e-3,
                    "{ty:?}[{i}]: {v} from max {max}"
                );
            }
        }
    }
});
