//! The rows of the type table, and their resolution against a tier and this CPU.
//!
//! SIMD kernels enter as safe pointers to wrappers compiled with the tier's target features
//! (the generic bodies are `#[inline(always)]` and take those features inside the wrapper);
//! `resolve` hands a tier's pointers out only where the CPU was found to have its features.

#[cfg(target_arch = "x86_64")]
use super::LanesFn;
use super::{
    DequantFn, GemmKernel, PanelForm, QuantizeFn, RowUnpackFn, TypeKernels, VecDotFn, VecDotManyFn,
};
use crate::gguf::GgmlType::{self, *};
use crate::matmul::panel::{unpack_row_32, unpack_row_k};
use crate::matmul::{GEMM_MIN_TOKENS, MANY_DOT_UP_TO, scalar};
use crate::quant::Isa;
use crate::quant::block::{F16Le, dequantize_blocks};
use crate::quant::float::{Bf16Le, F32Le};
use crate::quant::iquants::*;
use crate::quant::kquants::*;
use crate::quant::legacy::*;
use crate::quant::quantize::{quantize_blocks, quantize_codebook};
use crate::quant::quantize::{quantize_q4_0, quantize_q4_1, quantize_q5_0, quantize_q5_1};
use crate::quant::quantize::{quantize_q8_0, quantize_q8_k};
use crate::quant::quantize_k::*;

#[cfg(target_arch = "x86_64")]
use crate::matmul::avx2::{
    Avx2 as Avx2Madd, Bf16W, F16W, F32W, Vnni, dot_float, dot_q8_0, dot_q8_k,
};
#[cfg(target_arch = "x86_64")]
use crate::matmul::avx2_panel::{unpack_iq4_nl, unpack_iq4_xs};
#[cfg(target_arch = "x86_64")]
use crate::matmul::avx512::{
    codebook::{dot, dot_many, unpack_row},
    pairs::{dot_pairs, dot_q4_1, lanes_pairs, unpack_row_pairs},
    q6k::q6_k_row,
};
#[cfg(target_arch = "x86_64")]
use crate::quant::avx2 as deq;

/// A block type and its kernels at every tier.
pub(super) struct Row {
    pub ty: GgmlType,
    pub writable: bool,
    pub activation: Option<GgmlType>,
    pub dequantize: Option<DequantFn>,
    pub quantize: Option<QuantizeFn>,
    pub dot: Option<VecDotFn>,
    /// The portable panel form, compiled at the baseline ISA and for AVX2.
    pub panel: Option<Panels>,
    pub weight_bound: u32,
    #[cfg(target_arch = "x86_64")]
    pub avx2: Avx2Row,
    #[cfg(target_arch = "x86_64")]
    pub avx512: Avx512Row,
}

#[derive(Clone, Copy)]
pub(super) struct Panels {
    pub portable: PanelForm,
    #[cfg(target_arch = "x86_64")]
    pub avx2: PanelForm,
}

/// AVX2 kernels (dequantizers, dot products), the same dot products on AVX-512 VNNI's 256-bit
/// `vpdpbusd`, and a hand-written panel unpacker where the portable one does not vectorize.
#[cfg(target_arch = "x86_64")]
pub(super) struct Avx2Row {
    pub dequantize: Option<DequantFn>,
    pub dot: Option<VecDotFn>,
    pub vnni_dot: Option<VecDotFn>,
    pub panel: Option<RowUnpackFn>,
}

/// 512-bit kernels (`matmul::avx512`).
#[cfg(target_arch = "x86_64")]
pub(super) struct Avx512Row {
    pub dot: Option<VecDotFn>,
    pub dot_many: Option<VecDotManyFn>,
    pub panel: Option<RowUnpackFn>,
    pub lanes: Option<LanesFn>,
}

#[cfg(target_arch = "x86_64")]
const NO_AVX512: Avx512Row = Avx512Row {
    dot: None,
    dot_many: None,
    panel: None,
    lanes: None,
};

/// `$kernel` (an unsafe or safe fn) in a wrapper compiled with `$features`, as a safe pointer.
/// SAFETY (of the call in the pointer): `resolve` hands it out only where the features exist.
macro_rules! featured {
    ($features:literal, dot $kernel:path) => {{
        #[target_feature(enable = $features)]
        #[allow(unused_unsafe)]
        unsafe fn kernel(w: &[u8], a: &[u8]) -> f32 {
            unsafe { $kernel(w, a) }
        }
        Some((|w: &[u8], a: &[u8]| unsafe { kernel(w, a) }) as VecDotFn)
    }};
    ($features:literal, many $kernel:path) => {{
        #[target_feature(enable = $features)]
        #[allow(unused_unsafe)]
        unsafe fn kernel(w: &[u8], a: &[u8], out: &mut [f32]) {
            unsafe { $kernel(w, a, out) }
        }
        Some((|w: &[u8], a: &[u8], out: &mut [f32]| unsafe { kernel(w, a, out) }) as VecDotManyFn)
    }};
    ($features:literal, unpack $kernel:path) => {{
        #[target_feature(enable = $features)]
        #[allow(unused_unsafe)]
        unsafe fn kernel(row: &[u8], q: &mut [u8], sd: &mut [f32], m: &mut [f32]) {
            unsafe { $kernel(row, q, sd, m) }
        }
        (|row: &[u8], q: &mut [u8], sd: &mut [f32], m: &mut [f32]| unsafe { kernel(row, q, sd, m) })
            as RowUnpackFn
    }};
    ($features:literal, lanes $kernel:path) => {{
        #[target_feature(enable = $features)]
        unsafe fn kernel(
            rows: [&[u8]; 4],
            valid: usize,
            q: &mut [u8],
            sd: &mut [f32],
            m: &mut [f32],
        ) {
            unsafe { $kernel(rows, valid, q, sd, m) }
        }
        Some(
            (|rows: [&[u8]; 4], valid: usize, q: &mut [u8], sd: &mut [f32], m: &mut [f32]| unsafe {
                kernel(rows, valid, q, sd, m)
            }) as LanesFn,
        )
    }};
}

/// The 512-bit kernels' features (what `matmul::avx512::detected` checks).
macro_rules! avx512 {
    ($kind:ident $kernel:path) => {
        featured!(
            "avx512f,avx512bw,avx512vl,avx512vnni,avx512vbmi,avx512bitalg,avx2,fma,f16c",
            $kind $kernel
        )
    };
}

/// A portable row unpacker with its scale grain and offsets, also compiled for AVX2 (its lane
/// loops vectorize there; at the baseline ISA they ran 4-20x slower).
macro_rules! panel {
    ($unpack:path, $group:literal, $offset:literal) => {
        Some(Panels {
            portable: PanelForm {
                unpack: $unpack,
                group: $group,
                offset: $offset,
            },
            #[cfg(target_arch = "x86_64")]
            avx2: PanelForm {
                unpack: featured!("avx2,fma,f16c", unpack $unpack),
                group: $group,
                offset: $offset,
            },
        })
    };
}

/// The AVX2 dequantizer `$dequant` and the dot product body `$dot` for blocks `$block`, on
/// AVX2 and on 256-bit VNNI.
#[cfg(target_arch = "x86_64")]
macro_rules! avx2 {
    ($dequant:ident, $dot:ident::<$block:ty>) => {
        Avx2Row {
            dequantize: Some((|s: &[u8], d: &mut [f32]| unsafe { deq::$dequant(s, d) }) as DequantFn),
            dot: featured!("avx2,fma,f16c", dot $dot::<$block, Avx2Madd>),
            vnni_dot: featured!(
                "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
                dot $dot::<$block, Vnni>
            ),
            panel: None,
        }
    };
    ($dequant:ident, $dot:ident::<$block:ty>, panel $unpack:path) => {
        Avx2Row {
            panel: Some(featured!("avx2,fma,f16c", unpack $unpack)),
            ..avx2!($dequant, $dot::<$block>)
        }
    };
    (float $dequant:expr, $weights:ty) => {
        Avx2Row {
            dequantize: $dequant,
            dot: featured!("avx2,fma,f16c", dot dot_float::<$weights>),
            vnni_dot: featured!(
                "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni",
                dot dot_float::<$weights>
            ),
            panel: None,
        }
    };
}

/// The reference dequantizer of blocks `$block`.
macro_rules! reference {
    ($block:ty) => {
        Some(dequantize_blocks::<$block> as DequantFn)
    };
}

/// A weight quantizer of whole blocks (`quantize_blocks`).
macro_rules! blocks {
    ($quantize:expr) => {
        Some(
            (|x: &[f32], im: Option<&[f32]>, out: &mut Vec<u8>| {
                quantize_blocks(x, im, out, $quantize)
            }) as QuantizeFn,
        )
    };
}

/// A codebook type's importance-weighted search (`quantize_iq`).
macro_rules! codebook {
    ($ty:ident) => {
        Some(
            (|x: &[f32], im: Option<&[f32]>, out: &mut Vec<u8>| quantize_codebook($ty, x, im, out))
                as QuantizeFn,
        )
    };
}

/// A 32-element type against Q8_0 activations.
macro_rules! q8_0_row {
    ($ty:ident, $block:ty, $dequant:ident, $quantize:expr, $bound:literal, $offset:literal,
     $avx512:expr) => {
        Row {
            ty: $ty,
            writable: true,
            activation: Some(Q8_0),
            dequantize: reference!($block),
            quantize: blocks!($quantize),
            dot: Some(scalar::dot_q8_0::<$block> as VecDotFn),
            panel: panel!(unpack_row_32::<$block>, 32, $offset),
            weight_bound: $bound,
            #[cfg(target_arch = "x86_64")]
            avx2: avx2!($dequant, dot_q8_0::<$block>),
            #[cfg(target_arch = "x86_64")]
            avx512: $avx512,
        }
    };
}

/// A 256-element type against Q8_K activations, with groups of `$group` in the panel.
macro_rules! q8_k_row {
    ($ty:ident, $block:ty, $dequant:ident, $quantize:expr, $bound:literal, $group:literal,
     $offset:literal, $avx512:expr) => {
        Row {
            ty: $ty,
            writable: true,
            activation: Some(Q8_K),
            dequantize: reference!($block),
            quantize: $quantize,
            dot: Some(scalar::dot_q8_k::<$block> as VecDotFn),
            panel: panel!(unpack_row_k::<$block, $group>, $group, $offset),
            weight_bound: $bound,
            #[cfg(target_arch = "x86_64")]
            avx2: avx2!($dequant, dot_q8_k::<$block>),
            #[cfg(target_arch = "x86_64")]
            avx512: $avx512,
        }
    };
}

/// The 512-bit row kernels of a codebook type (dot, multi-token dot, panel).
#[cfg(target_arch = "x86_64")]
macro_rules! codebook_512 {
    ($block:ty, $group:literal) => {
        Avx512Row {
            dot: avx512!(dot dot::<$block>),
            dot_many: avx512!(many dot_many::<$block>),
            panel: Some(avx512!(unpack unpack_row::<$block, $group>)),
            lanes: None,
        }
    };
}

/// The 512-bit kernels of a type taken two blocks per vector.
#[cfg(target_arch = "x86_64")]
macro_rules! pairs_512 {
    ($block:ty) => {
        Avx512Row {
            dot: avx512!(dot dot_pairs::<$block>),
            dot_many: None,
            panel: Some(avx512!(unpack unpack_row_pairs::<$block>)),
            lanes: avx512!(lanes lanes_pairs::<$block>),
        }
    };
}

/// The portable unpacker of `$block`, compiled with the 512-bit features.
#[cfg(target_arch = "x86_64")]
macro_rules! k_512 {
    ($block:ty, $group:literal) => {
        Avx512Row {
            panel: Some(avx512!(unpack unpack_row_k::<$block, $group>)),
            ..NO_AVX512
        }
    };
}

/// A float type: its own dot product against F32 activations, no panel.
macro_rules! float_row {
    ($ty:ident, $writable:literal, $block:ty, $dot:path, $avx2_dequant:expr, $weights:ty) => {
        Row {
            ty: $ty,
            writable: $writable,
            activation: Some(F32),
            dequantize: reference!($block),
            quantize: None,
            dot: Some($dot as VecDotFn),
            panel: None,
            weight_bound: 128,
            #[cfg(target_arch = "x86_64")]
            avx2: avx2!(float $avx2_dequant, $weights),
            #[cfg(target_arch = "x86_64")]
            avx512: NO_AVX512,
        }
    };
}

/// Every block type with kernels, the writable ones in the order the quantizer lists them.
#[rustfmt::skip]
pub(super) static ROWS: [Row; 23] = [
    float_row!(F32, true, F32Le, scalar::dot_f32, None, F32W),
    float_row!(F16, true, F16Le, scalar::dot_f16,
               Some((|s: &[u8], d: &mut [f32]| unsafe { deq::f16(s, d) }) as DequantFn), F16W),
    q8_0_row!(Q4_0, BlockQ4_0, q4_0, quantize_q4_0, 8, false, pairs_512!(BlockQ4_0)),
    q8_0_row!(Q4_1, BlockQ4_1, q4_1, quantize_q4_1, 15, true,
              Avx512Row { dot: avx512!(dot dot_q4_1), ..NO_AVX512 }),
    q8_0_row!(Q5_0, BlockQ5_0, q5_0, quantize_q5_0, 16, false, NO_AVX512),
    q8_0_row!(Q5_1, BlockQ5_1, q5_1, quantize_q5_1, 31, true, NO_AVX512),
    q8_0_row!(Q8_0, BlockQ8_0, q8_0, quantize_q8_0, 128, false, pairs_512!(BlockQ8_0)),
    q8_k_row!(Q2_K, BlockQ2K, q2_k, blocks!(quantize_q2_k), 3, 16, true, k_512!(BlockQ2K, 16)),
    q8_k_row!(Q3_K, BlockQ3K, q3_k, blocks!(quantize_q3_k), 4, 16, false, k_512!(BlockQ3K, 16)),
    q8_k_row!(Q4_K, BlockQ4K, q4_k, blocks!(quantize_q4_k), 15, 32, true, k_512!(BlockQ4K, 32)),
    q8_k_row!(Q5_K, BlockQ5K, q5_k, blocks!(quantize_q5_k), 31, 32, true, k_512!(BlockQ5K, 32)),
    q8_k_row!(Q6_K, BlockQ6K, q6_k, blocks!(quantize_q6_k), 32, 16, false,
              Avx512Row { panel: Some(avx512!(unpack q6_k_row)), ..NO_AVX512 }),
    q8_k_row!(IQ1_S, BlockIq1S, iq1_s, codebook!(IQ1_S), 9, 32, false, codebook_512!(BlockIq1S, 32)),
    q8_k_row!(IQ1_M, BlockIq1M, iq1_m, codebook!(IQ1_M), 9, 16, false, codebook_512!(BlockIq1M, 16)),
    q8_k_row!(IQ2_XXS, BlockIq2Xxs, iq2_xxs, codebook!(IQ2_XXS), 43, 32, false,
              codebook_512!(BlockIq2Xxs, 32)),
    q8_k_row!(IQ2_XS, BlockIq2Xs, iq2_xs, codebook!(IQ2_XS), 43, 16, false,
              codebook_512!(BlockIq2Xs, 16)),
    q8_k_row!(IQ2_S, BlockIq2S, iq2_s, codebook!(IQ2_S), 43, 16, false, codebook_512!(BlockIq2S, 16)),
    q8_k_row!(IQ3_XXS, BlockIq3Xxs, iq3_xxs, codebook!(IQ3_XXS), 62, 32, false,
              codebook_512!(BlockIq3Xxs, 32)),
    q8_k_row!(IQ3_S, BlockIq3S, iq3_s, codebook!(IQ3_S), 15, 32, false, codebook_512!(BlockIq3S, 32)),
    Row {
        #[cfg(target_arch = "x86_64")]
        avx2: avx2!(iq4_nl, dot_q8_0::<BlockIq4Nl>, panel unpack_iq4_nl),
        ..q8_0_row!(IQ4_NL, BlockIq4Nl, iq4_nl, quantize_iq4_nl, 127, false, pairs_512!(BlockIq4Nl))
    },
    Row {
        #[cfg(target_arch = "x86_64")]
        avx2: avx2!(iq4_xs, dot_q8_k::<BlockIq4Xs>, panel unpack_iq4_xs),
        ..q8_k_row!(IQ4_XS, BlockIq4Xs, iq4_xs, blocks!(quantize_iq4_xs), 127, 32, false,
                    codebook_512!(BlockIq4Xs, 32))
    },
    float_row!(BF16, false, Bf16Le, scalar::dot_bf16,
               Some((|s: &[u8], d: &mut [f32]| unsafe { deq::bf16(s, d) }) as DequantFn), Bf16W),
    // Q8_K: the activations of the K- and IQ-types, not a weight type.
    Row {
        ty: Q8_K,
        writable: false,
        activation: None,
        dequantize: reference!(BlockQ8K),
        quantize: blocks!(|x, _| quantize_q8_k(x)),
        dot: None,
        panel: None,
        weight_bound: 128,
        #[cfg(target_arch = "x86_64")]
        avx2: Avx2Row { dequantize: None, dot: None, vnni_dot: None, panel: None },
        #[cfg(target_arch = "x86_64")]
        avx512: NO_AVX512,
    },
];

/// `ty`'s kernels at tier `asked` (capped at the detected one) on this CPU.
pub(super) fn resolve(ty: GgmlType, asked: Isa) -> TypeKernels {
    let isa = asked.min(Isa::detected());
    let mut k = TypeKernels {
        ty,
        isa,
        writable: false,
        activation: None,
        reference_dequantize: None,
        dequantize: None,
        quantize: None,
        reference_dot: None,
        dot: None,
        dot_many: None,
        gemm: None,
        panel: None,
        portable_panel: None,
        weight_bound: 128,
        lanes: None,
        exact_rows: usize::MAX,
    };
    let Some(row) = ROWS.iter().find(|r| r.ty == ty) else {
        return k;
    };
    k.writable = row.writable;
    k.activation = row.activation;
    k.reference_dequantize = row.dequantize;
    k.dequantize = row.dequantize.map(|f| (f, Isa::Scalar));
    k.quantize = row.quantize;
    k.reference_dot = row.dot;
    k.dot = row.dot.map(|f| (f, Isa::Scalar));
    k.portable_panel = row.panel.map(|p| p.portable);
    k.weight_bound = row.weight_bound;
    #[cfg(target_arch = "x86_64")]
    simd(row, isa, &mut k);
    k.exact_rows = exact_rows(&k);
    k
}

/// The SIMD kernels of `row` at or below `isa` that this CPU runs, over the reference ones.
#[cfg(target_arch = "x86_64")]
fn simd(row: &Row, isa: Isa, k: &mut TypeKernels) {
    let wide = crate::matmul::avx512::detected();
    let vnni256 = Isa::detected() >= Isa::Avx512 && is_x86_feature_detected!("avx512vnni");
    if isa >= Isa::Avx2
        && let Some(f) = row.avx2.dequantize
    {
        k.dequantize = Some((f, Isa::Avx2));
    }
    let dot = if isa >= Isa::Avx512 && wide && row.avx512.dot.is_some() {
        row.avx512.dot.map(|f| (f, Isa::Avx512))
    } else if isa >= Isa::Avx512 && vnni256 {
        row.avx2.vnni_dot.map(|f| (f, Isa::Avx512))
    } else if isa >= Isa::Avx2 {
        row.avx2.dot.map(|f| (f, Isa::Avx2))
    } else {
        None
    };
    if dot.is_some() {
        k.dot = dot;
    }
    if isa >= Isa::Avx512 && wide {
        k.dot_many = row.avx512.dot_many;
    }
    let Some(panels) = row.panel else {
        return;
    };
    let gemm_vnni = is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni");
    k.gemm = if isa >= Isa::Avx512 && gemm_vnni {
        Some(GemmKernel::Avx512Vnni)
    } else if isa >= Isa::AvxVnni && is_x86_feature_detected!("avxvnni") {
        Some(GemmKernel::AvxVnni)
    } else if isa >= Isa::Avx2 {
        Some(match row.weight_bound {
            0..=32 => GemmKernel::Avx2Pairs,
            33..=64 => GemmKernel::Avx2,
            _ => GemmKernel::Avx2Signed,
        })
    } else {
        None
    };
    k.panel = match k.gemm {
        None => None,
        Some(GemmKernel::Avx512Vnni) => {
            let wide_panel = row.avx512.panel.filter(|_| wide).map(|unpack| PanelForm {
                unpack,
                ..panels.portable
            });
            k.lanes = row.avx512.lanes.filter(|_| wide);
            wide_panel.or(Some(panels.portable))
        }
        Some(_) => Some(row.avx2.panel.map_or(panels.avx2, |unpack| PanelForm {
            unpack,
            ..panels.avx2
        })),
    };
}

/// See `TypeKernels::exact_rows`: the per-row and multi-token dot products give each row its
/// own bits; the narrow and batched products sum in another order.
fn exact_rows(k: &TypeKernels) -> usize {
    if k.dot_many.is_some() {
        return MANY_DOT_UP_TO.max(1);
    }
    match k.gemm {
        Some(GemmKernel::Avx512Vnni) => crate::matmul::narrow::first(k).min(GEMM_MIN_TOKENS) - 1,
        Some(_) => GEMM_MIN_TOKENS - 1,
        None => usize::MAX,
    }
}
