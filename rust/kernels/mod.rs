//! The type table: every block type with its kernels, and the record of one type's kernels at
//! one instruction-set tier.
//!
//! `table::ROWS` holds one row per block type: its activation type, reference kernels,
//! quantizer, panel form and, per SIMD tier, the compiled kernels. `kernels(ty, isa)` resolves
//! a row against the tier and this CPU once, into a `TypeKernels` that a tensor keeps from
//! load on: the products read their kernels from it (one fn pointer per product call, per
//! row or per panel, as before) instead of matching over types per call.
//!
//! Adding a block type: its block struct (with `Block` and the unpack traits), one row in
//! `table.rs`, and its kernels.

mod table;

use std::sync::OnceLock;

use crate::gguf::GgmlType;
use crate::matmul::gemm::Kernel as GemmKernel;
use crate::quant::Isa;

/// Dequantizes whole blocks: `src` holds n blocks, `dst` n * block_elems floats.
pub type DequantFn = fn(src: &[u8], dst: &mut [f32]);

/// Quantizes `x` (whole blocks) appending the blocks to `out`; `im` is the importance matrix
/// of rows `im.len()` long (checked by the caller), or None.
pub type QuantizeFn = fn(x: &[f32], im: Option<&[f32]>, out: &mut Vec<u8>);

/// One weight row (whole blocks) against one activation row of the companion type.
pub type VecDotFn = fn(w: &[u8], a: &[u8]) -> f32;

/// `out[t] = dot(w, a_t)` for `out.len()` activation rows back to back in `a` (at most
/// `matmul::MAX_DOT_TOKENS`), each equal to the type's `VecDotFn` result bit for bit.
pub type VecDotManyFn = fn(w: &[u8], a: &[u8], out: &mut [f32]);

/// One weight row in the batched product's panel form: `q` (cols signed bytes), and per group
/// `sd` and `m`.
pub type RowUnpackFn = fn(row: &[u8], q: &mut [u8], sd: &mut [f32], m: &mut [f32]);

/// Four rows (`valid` of them real, the others any row) straight into the narrow product's
/// lane form: `q` (4 x cols bytes), `sd` and `m` (4 per group; `m` only for types with offsets).
pub type LanesFn = fn(rows: [&[u8]; 4], valid: usize, q: &mut [u8], sd: &mut [f32], m: &mut [f32]);

/// How a type enters the batched product.
#[derive(Clone, Copy, Debug)]
pub struct PanelForm {
    pub unpack: RowUnpackFn,
    /// Elements per scale group: 16 or 32.
    pub group: usize,
    /// Whether groups have an offset `m` besides the scale.
    pub offset: bool,
}

/// One block type's kernels at one tier on this CPU (None: the type has no such kernel).
#[derive(Clone, Copy, Debug)]
pub struct TypeKernels {
    pub ty: GgmlType,
    /// The tier asked for, capped at the detected one.
    pub isa: Isa,
    /// Whether the quantizers write files of this type (F32 and F16 by plain conversion).
    pub writable: bool,
    /// The type activations are converted to before a dot product with these weights.
    pub activation: Option<GgmlType>,
    pub reference_dequantize: Option<DequantFn>,
    /// The fastest dequantizer at or below `isa`, with the tier it belongs to.
    pub dequantize: Option<(DequantFn, Isa)>,
    pub quantize: Option<QuantizeFn>,
    pub reference_dot: Option<VecDotFn>,
    /// The fastest dot product at or below `isa`, with the tier it belongs to.
    pub dot: Option<(VecDotFn, Isa)>,
    /// The multi-token dot product (the codebook types on 512-bit vectors).
    pub dot_many: Option<VecDotManyFn>,
    /// The batched product's integer kernel, and the panel form it unpacks with.
    pub gemm: Option<GemmKernel>,
    pub panel: Option<PanelForm>,
    /// The portable panel form (what `panel` must equal), at the baseline ISA.
    pub portable_panel: Option<PanelForm>,
    /// The largest magnitude of the type's panel bytes (picks the 256-bit kernel).
    pub weight_bound: u32,
    /// The narrow product's unpacker straight into lanes, where it runs and has one.
    pub lanes: Option<LanesFn>,
    /// The most activation rows for which a product gives each row the bits it gets alone.
    pub exact_rows: usize,
}

const TIERS: [Isa; 4] = [Isa::Scalar, Isa::Avx2, Isa::AvxVnni, Isa::Avx512];
/// Type ids are below this (ggml's enum, with gaps).
const MAX_ID: usize = 40;

/// The kernels of `ty` at tier `isa` (capped at the detected one) on this CPU; resolved for
/// every type and tier on first use.
pub fn kernels(ty: GgmlType, isa: Isa) -> &'static TypeKernels {
    static RESOLVED: OnceLock<Vec<TypeKernels>> = OnceLock::new();
    let all = RESOLVED.get_or_init(|| {
        (0..MAX_ID)
            .flat_map(|id| TIERS.map(|isa| (id, isa)))
            .map(|(id, isa)| {
                let ty = GgmlType::from_id(id as u32).unwrap_or(GgmlType::I8);
                table::resolve(ty, isa)
            })
            .collect()
    });
    &all[ty.id() as usize * TIERS.len() + isa as usize]
}

/// The types the quantizers write, in the table's order.
pub fn writable_types() -> impl Iterator<Item = GgmlType> {
    table::ROWS.iter().filter(|r| r.writable).map(|r| r.ty)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_writable_types_are_those_the_quantizer_lists() {
        let names: Vec<&str> = writable_types().map(|t| t.name()).collect();
        let want = "F32 F16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K Q3_K Q4_K Q5_K Q6_K IQ1_S IQ1_M \
                    IQ2_XXS IQ2_XS IQ2_S IQ3_XXS IQ3_S IQ4_NL IQ4_XS";
        assert_eq!(names.join(" "), want);
    }

    #[test]
    fn every_weight_type_has_its_reference_kernels() {
        for &ty in GgmlType::ALL {
            let k = kernels(ty, Isa::active());
            assert_eq!(k.activation.is_some(), k.reference_dot.is_some(), "{ty}");
            assert!(
                k.activation.is_none() || k.reference_dequantize.is_some(),
                "{ty}"
            );
            assert!(k.isa <= Isa::detected());
        }
    }
}
