//! Block types of GGUF and their dequantization, with run-time selection of the SIMD kernels.
//!
//! Three tiers per type, as in ggml: the reference (`Block::dequantize`, plain scalar code), and
//! SIMD kernels per instruction set (`avx2`), all bit-identical to the reference; the type table
//! (`crate::kernels`) picks them. `Isa::active()`
//! is detected once; `FERROLLM_ISA=scalar` (or `avx2`, `avxvnni`) forces a lower tier.
//!
//! AVX-512 is detected (the matrix kernels will use it) but has no dequantization kernels:
//! 16-lane versions of F16, Q8_0, Q4_0, Q4_K and IQ4_XS were measured no faster than AVX2
//! (output-store bound; commit e1c60c1 holds them, removed in the commit after it).

pub mod block;
pub mod float;
pub mod grids;
pub mod iquants;
pub mod kquants;
pub mod legacy;
pub mod quantize;
pub mod quantize_iq;
pub mod quantize_k;

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;

use std::sync::OnceLock;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::gguf::{GgmlType, GgufFile};
pub use crate::kernels::DequantFn;
use crate::kernels::kernels;

/// Instruction-set tiers, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    Scalar,
    Avx2,
    /// AVX2 with AVX-VNNI's 256-bit `vpdpbusd` (Intel since Alder Lake, AMD since Zen 4):
    /// the batched product's integer kernel; everything else runs AVX2's kernels.
    AvxVnni,
    Avx512,
}

impl Isa {
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::AvxVnni => "avxvnni",
            Isa::Avx512 => "avx512",
        }
    }

    pub fn from_name(name: &str) -> Option<Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::AvxVnni, Isa::Avx512]
            .into_iter()
            .find(|i| i.name() == name.to_ascii_lowercase())
    }

    /// The best tier this CPU supports.
    pub fn detected() -> Isa {
        static DETECTED: OnceLock<Isa> = OnceLock::new();
        *DETECTED.get_or_init(|| {
            #[cfg(target_arch = "x86_64")]
            {
                let avx2 = is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("f16c")
                    && is_x86_feature_detected!("fma");
                let avx512 = avx2
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl");
                if avx512 {
                    return Isa::Avx512;
                }
                if avx2 && is_x86_feature_detected!("avxvnni") {
                    return Isa::AvxVnni;
                }
                if avx2 {
                    return Isa::Avx2;
                }
            }
            Isa::Scalar
        })
    }

    /// The tier in use: the detected one, lowered by `FERROLLM_ISA` if set (never raised).
    pub fn active() -> Isa {
        static ACTIVE: OnceLock<Isa> = OnceLock::new();
        *ACTIVE.get_or_init(|| {
            let detected = Isa::detected();
            match std::env::var("FERROLLM_ISA")
                .ok()
                .as_deref()
                .and_then(Isa::from_name)
            {
                Some(forced) => forced.min(detected),
                None => detected,
            }
        })
    }
}

/// The reference dequantizer of `ty`, or None for types without one (Q8_1, integer types...).
pub fn reference_fn(ty: GgmlType) -> Option<DequantFn> {
    kernels(ty, Isa::Scalar).reference_dequantize
}

/// The fastest dequantizer of `ty` at or below tier `isa`, with the tier it belongs to.
pub fn dequant_fn(ty: GgmlType, isa: Isa) -> Option<(DequantFn, Isa)> {
    kernels(ty, isa).dequantize
}

/// Below this many output elements one thread does the whole tensor.
const PARALLEL_MIN_ELEMS: usize = 1 << 18;
/// Elements per parallel task (a multiple of every block size).
const CHUNK_ELEMS: usize = 1 << 16;

/// Dequantizes `src` (whole blocks of `ty`) into `dst` with the given tier, splitting large
/// tensors over the rayon pool.
pub fn dequantize_with(ty: GgmlType, src: &[u8], dst: &mut [f32], isa: Isa) -> Result<()> {
    let (kernel, _) = dequant_fn(ty, isa)
        .ok_or_else(|| Error::Unsupported(format!("tensor type {ty}: no dequantization")))?;
    let (be, bb) = (ty.block_elems(), ty.block_bytes());
    if !src.len().is_multiple_of(bb) || src.len() / bb * be != dst.len() {
        return Err(Error::invalid(format!(
            "{ty}: {} bytes of input (blocks of {bb} bytes, {be} elements) do not match {} outputs",
            src.len(),
            dst.len()
        )));
    }
    if dst.len() < PARALLEL_MIN_ELEMS {
        kernel(src, dst);
    } else {
        let chunk_blocks = CHUNK_ELEMS / be;
        src.par_chunks(chunk_blocks * bb)
            .zip(dst.par_chunks_mut(chunk_blocks * be))
            .for_each(|(s, d)| kernel(s, d));
    }
    Ok(())
}

/// Scans every tensor's values for NaN or Inf (llama.cpp's `--check-tensors`): a corrupt or
/// hostile file is refused at load, with the tensor and byte offset of the first bad block,
/// instead of failing at the first evaluation that reaches it. Reads the whole file once.
pub fn check_tensor_values(file: &GgufFile) -> Result<()> {
    const CHUNK_BLOCKS: usize = 256;
    let mut values = Vec::new();
    for info in &file.tensors {
        let ty = info.ty;
        let Some((kernel, _)) = dequant_fn(ty, Isa::active()) else {
            continue; // integer and unsupported types hold no floats to check
        };
        let (be, bb) = (ty.block_elems(), ty.block_bytes());
        let data = file.tensor_data(info);
        for (i, chunk) in data.chunks(CHUNK_BLOCKS * bb).enumerate() {
            values.resize(chunk.len() / bb * be, 0.0);
            kernel(chunk, &mut values);
            if let Some(bad) = values.iter().position(|v| !v.is_finite()) {
                let block = i * CHUNK_BLOCKS + bad / be;
                return Err(Error::gguf(
                    file.data_offset + info.offset + (block * bb) as u64,
                    format!(
                        "tensor '{}' ({ty}) block {block} holds a non-finite value ({})",
                        info.name, values[bad]
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Dequantizes with the active tier.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    dequantize_with(ty, src, dst, Isa::active())
}

#[cfg(test)]
pub(crate) mod tests;
