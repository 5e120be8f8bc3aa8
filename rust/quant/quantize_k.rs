//! Reference quantizers F32 -> Q2_K..Q6_K, IQ4_NL and IQ4_XS: the search-based round-to-nearest
//! schemes of ggml's `quantize_row_*_ref` (no importance matrix), step for step: per group a
//! scale (and min) is searched that minimises the weighted squared error, then the group scales
//! are themselves quantized to 4, 6 or 8 bits under one f16 super-block scale.

use super::block::F16Le;
use super::grids::KVALUES_IQ4NL;
use super::iquants::BlockIq4Xs;
use super::kquants::*;
use super::legacy::{BlockIq4Nl, QK};
use super::quantize::signed_absmax;
use super::quantize_iq::element_weights;
use crate::gguf::QK_K;

/// Groups whose largest magnitude is below this are all-zero (ggml's GROUP_MAX_EPS).
const GROUP_MAX_EPS: f32 = 1e-15;

/// Round to nearest, ties to even (ggml's `nearest_int` trick, for |x| < 2^22).
fn nearest_int(x: f32) -> i32 {
    x.round_ties_even() as i32
}

/// The element with the largest magnitude (first on ties), and that magnitude.
fn signed_max(x: &[f32]) -> (f32, f32) {
    let max = signed_absmax(x);
    (max, max.abs())
}

/// Symmetric quants in -nmax..nmax-1 (stored + nmax) with a scale searched over 19 candidates
/// around nmax/max, weighting errors by `weights` (x^2 in ggml's `make_qx_quants`, rmse_type 1).
/// Always inlined, so that a caller's constant `nmax` specializes the search (most of Q6_K's
/// time): since the type table calls the block quantizers through pointers, the compiler no
/// longer chooses to.
#[inline(always)]
pub(super) fn make_qx_quants(x: &[f32], weights: &[f32], nmax: i32, l_out: &mut [u8]) -> f32 {
    let (max, amax) = signed_max(x);
    if amax < GROUP_MAX_EPS {
        l_out.fill(0);
        return 0.0;
    }
    let sums = |iscale: f32| {
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for (&v, &w) in x.iter().zip(weights) {
            let l = nearest_int(iscale * v).clamp(-nmax, nmax - 1) as f32;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        (sumlx, suml2)
    };
    let fill = |iscale: f32, l_out: &mut [u8]| {
        for (q, &v) in l_out.iter_mut().zip(x) {
            *q = (nmax + nearest_int(iscale * v).clamp(-nmax, nmax - 1)) as u8;
        }
    };
    let iscale = -(nmax as f32) / max;
    fill(iscale, l_out);
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in (-9..=9).filter(|&is| is != 0) {
        let iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            fill(iscale, l_out);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Symmetric quants in -nmax..nmax-1 (stored + nmax), refined by coordinate descent on the
/// x^2-weighted error (ggml's `make_q3_quants` with do_rmse).
fn make_q3_quants(x: &[f32], nmax: i32, l_out: &mut [u8]) -> f32 {
    let (max, amax) = signed_max(x);
    if amax < GROUP_MAX_EPS {
        l_out.fill(0);
        return 0.0;
    }
    let iscale = -(nmax as f32) / max;
    let mut l = [0i32; 16];
    let (mut sumlx, mut suml2) = (0f32, 0f32);
    for (i, &v) in x.iter().enumerate() {
        l[i] = nearest_int(iscale * v).clamp(-nmax, nmax - 1);
        let w = v * v;
        sumlx += w * v * l[i] as f32;
        suml2 += w * (l[i] * l[i]) as f32;
    }
    for _ in 0..5 {
        let mut changed = false;
        for (i, &v) in x.iter().enumerate() {
            let w = v * v;
            let mut slx = sumlx - w * v * l[i] as f32;
            if slx > 0.0 {
                let mut sl2 = suml2 - w * (l[i] * l[i]) as f32;
                let new_l = nearest_int(v * sl2 / slx).clamp(-nmax, nmax - 1);
                if new_l != l[i] {
                    slx += w * v * new_l as f32;
                    sl2 += w * (new_l * new_l) as f32;
                    if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                        l[i] = new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        changed = true;
                    }
                }
            }
        }
        if !changed {
            break;
        }
    }
    for (q, &li) in l_out.iter_mut().zip(&l) {
        *q = (li + nmax) as u8;
    }
    sumlx / suml2
}

/// Affine quants 0..=nmax: `x ~ scale * l - min`, scale and min fitted by weighted least
/// squares over nstep + 1 candidate grids (ggml's `make_qkx2_quants`). Returns (scale, min).
#[allow(clippy::too_many_arguments)]
pub(super) fn make_qkx2_quants(
    x: &[f32],
    weights: &[f32],
    nmax: i32,
    l_out: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
    use_mad: bool,
) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let (mut sum_w, mut sum_x) = (weights[0], weights[0] * x[0]);
    for i in 1..n {
        min = min.min(x[i]);
        max = max.max(x[i]);
        sum_w += weights[i];
        sum_x += weights[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l_out.fill(0);
        return (0.0, -min);
    }
    let error = |d: f32| if use_mad { d.abs() } else { d * d };
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        l_out[i] = l as u8;
        best_error += weights[i] * error(scale * l as f32 + min - x[i]);
    }
    let mut laux = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            laux[i] = l as u8;
            let (w, l) = (weights[i], l as f32);
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let cur_error: f32 = (0..n)
                .map(|i| weights[i] * error(this_scale * laux[i] as f32 + this_min - x[i]))
                .sum();
            if cur_error < best_error {
                l_out[..n].copy_from_slice(&laux[..n]);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// Per-element weights of the searches: `reference` (ggml's choice without an importance matrix)
/// or, given importance-matrix columns, llama.cpp's `im * sqrt(sigma^2 + x^2)`.
fn weights_or<const N: usize>(
    x: &[f32],
    im: Option<&[f32]>,
    reference: impl Fn(usize) -> f32,
) -> [f32; N] {
    match im {
        Some(_) => {
            let w = element_weights(x, im);
            std::array::from_fn(|i| w[i])
        }
        None => std::array::from_fn(reference),
    }
}

/// Weighted squared error of `x ~ dl * l - ml`, l the nearest of 0..=nmax.
fn affine_error(x: &[f32], w: &[f32], dl: f32, ml: f32, nmax: i32) -> f32 {
    if dl == 0.0 {
        return x
            .iter()
            .zip(w)
            .map(|(&v, &w)| w * (v + ml) * (v + ml))
            .sum();
    }
    x.iter()
        .zip(w)
        .map(|(&v, &w)| {
            let l = nearest_int((v + ml) / dl).clamp(0, nmax) as f32;
            w * (dl * l - ml - v).powi(2)
        })
        .sum()
}

/// For each group of 16, tries the integer scales next to the rounded one (quants re-chosen in
/// -nmax..nmax-1 for each) and keeps the one with the lowest weighted error.
fn refine_symmetric_scales(
    x: &[f32],
    w: &[f32],
    d: f32,
    q: &mut [i32; 16],
    range: (i32, i32),
    nmax: i32,
) {
    let err = |j: usize, sc: i32| -> f32 {
        let dl = d * sc as f32;
        (16 * j..16 * j + 16)
            .map(|i| {
                let l = if dl == 0.0 {
                    0.0
                } else {
                    nearest_int(x[i] / dl).clamp(-nmax, nmax - 1) as f32
                };
                w[i] * (x[i] - dl * l).powi(2)
            })
            .sum()
    };
    for (j, qj) in q.iter_mut().enumerate() {
        let mut best = (err(j, *qj), *qj);
        for sc in [*qj - 1, *qj + 1] {
            if (range.0..=range.1).contains(&sc) {
                let e = err(j, sc);
                if e < best.0 {
                    best = (e, sc);
                }
            }
        }
        *qj = best.1;
    }
}

/// Packs 2-bit values: byte `32 g + l` of the result holds elements 128g + 32j + l, j = 0..4.
fn pack_2bit(l: &[u8; QK_K]) -> [u8; QK_K / 4] {
    std::array::from_fn(|i| {
        let (g, l0) = (i / 32, i % 32);
        (0..4).fold(0, |b, j| b | (l[128 * g + 32 * j + l0] << (2 * j)))
    })
}

/// Packs 4-bit values: byte `32 g + l` holds elements 64g + l (low) and 64g + 32 + l (high).
fn pack_4bit(l: &[u8; QK_K]) -> [u8; QK_K / 2] {
    std::array::from_fn(|i| {
        let (g, l0) = (i / 32, i % 32);
        (l[64 * g + l0] & 0xF) | ((l[64 * g + 32 + l0] & 0xF) << 4)
    })
}

pub fn quantize_q2_k(x: &[f32; QK_K], im: Option<&[f32]>) -> BlockQ2K {
    const Q4SCALE: f32 = 15.0;
    let mut l = [0u8; QK_K];
    let (mut scales, mut mins) = ([0f32; 16], [0f32; 16]);
    let weights: [f32; QK_K] = weights_or(x, im, |i| x[i].abs());
    for j in 0..16 {
        let (xs, ws) = (&x[16 * j..16 * j + 16], &weights[16 * j..16 * j + 16]);
        let lj = &mut l[16 * j..];
        (scales[j], mins[j]) = match im {
            None => make_qkx2_quants(xs, ws, 3, lj, -0.5, 0.1, 15, true),
            Some(_) => make_qkx2_quants(xs, ws, 3, lj, -0.9, 0.05, 36, false),
        };
    }
    let max_scale = scales.iter().fold(0f32, |m, &s| if s > m { s } else { m });
    let max_min = mins.iter().fold(0f32, |m, &s| if s > m { s } else { m });
    let mut packed = [0u8; 16];
    let mut d = F16Le::from_f32(0.0);
    let mut dmin = F16Le::from_f32(0.0);
    if max_scale > 0.0 {
        let iscale = Q4SCALE / max_scale;
        for j in 0..16 {
            packed[j] = nearest_int(iscale * scales[j]) as u8;
        }
        d = F16Le::from_f32(max_scale / Q4SCALE);
    }
    if max_min > 0.0 {
        let iscale = Q4SCALE / max_min;
        for j in 0..16 {
            packed[j] |= (nearest_int(iscale * mins[j]) as u8) << 4;
        }
        dmin = F16Le::from_f32(max_min / Q4SCALE);
    }
    for (j, &sc) in packed.iter().enumerate() {
        let dl = d.to_f32() * (sc & 0xF) as f32;
        if dl == 0.0 {
            continue;
        }
        let ml = dmin.to_f32() * (sc >> 4) as f32;
        for i in 16 * j..16 * j + 16 {
            l[i] = nearest_int((x[i] + ml) / dl).clamp(0, 3) as u8;
        }
    }
    BlockQ2K {
        scales: packed,
        qs: pack_2bit(&l),
        d,
        dmin,
    }
}

pub fn quantize_q3_k(x: &[f32; QK_K], im: Option<&[f32]>) -> BlockQ3K {
    let mut l = [0u8; QK_K];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut amax) = (0f32, 0f32);
    let weights: [f32; QK_K] = weights_or(x, im, |_| 0.0);
    for j in 0..16 {
        let (xs, lj) = (&x[16 * j..16 * j + 16], &mut l[16 * j..16 * j + 16]);
        scales[j] = match im {
            None => make_q3_quants(xs, 4, lj),
            Some(_) => make_qx_quants(xs, &weights[16 * j..16 * j + 16], 4, lj),
        };
        if scales[j].abs() > amax {
            amax = scales[j].abs();
            max_scale = scales[j];
        }
    }
    let mut packed = [0u8; 12];
    let mut d = F16Le::from_f32(0.0);
    if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        d = F16Le::from_f32(1.0 / iscale);
        let mut q: [i32; 16] =
            std::array::from_fn(|j| nearest_int(iscale * scales[j]).clamp(-32, 31));
        if im.is_some() {
            refine_symmetric_scales(x, &weights, d.to_f32(), &mut q, (-32, 31), 4);
        }
        for (j, &q) in q.iter().enumerate() {
            let v = (q + 32) as u8;
            packed[j % 8] |= (v & 0xF) << (4 * (j / 8));
            packed[8 + j % 4] |= (v >> 4) << (2 * (j / 4));
        }
    }
    for j in 0..16 {
        let dl = d.to_f32() * q3k_scale(&packed, j) as f32;
        if dl == 0.0 {
            continue;
        }
        for i in 16 * j..16 * j + 16 {
            l[i] = (nearest_int(x[i] / dl).clamp(-4, 3) + 4) as u8;
        }
    }
    // Bit 2 of element i goes to hmask[i % 32] bit i / 32; the low two bits to qs.
    let mut hmask = [0u8; 32];
    for (i, q) in l.iter_mut().enumerate() {
        if *q > 3 {
            hmask[i % 32] |= 1 << (i / 32);
            *q -= 4;
        }
    }
    BlockQ3K {
        hmask,
        qs: pack_2bit(&l),
        scales: packed,
        d,
    }
}

/// Q4_K and Q5_K: per 32 a (scale, min) fit weighted by rms + |x|, both quantized to 6 bits.
fn quantize_q45_k(
    x: &[f32; QK_K],
    im: Option<&[f32]>,
    nmax: i32,
    (rmin, rdelta, nstep): (f32, f32, i32),
) -> ([u8; QK_K], [u8; 12], F16Le, F16Le) {
    let mut l = [0u8; QK_K];
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    let imw: Option<[f32; QK_K]> = im.map(|_| weights_or(x, im, |_| 0.0));
    for j in 0..8 {
        let xs = &x[32 * j..32 * j + 32];
        let sum_x2: f32 = xs.iter().map(|v| v * v).sum();
        let av_x = (sum_x2 / 32.0).sqrt();
        let weights: [f32; 32] = match &imw {
            Some(w) => std::array::from_fn(|i| w[32 * j + i]),
            None => std::array::from_fn(|i| av_x + xs[i].abs()),
        };
        (scales[j], mins[j]) = make_qkx2_quants(
            xs,
            &weights,
            nmax,
            &mut l[32 * j..],
            rmin,
            rdelta,
            nstep,
            false,
        );
    }
    let max_scale = scales.iter().fold(0f32, |m, &s| if s > m { s } else { m });
    let max_min = mins.iter().fold(0f32, |m, &s| if s > m { s } else { m });
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut ls: [u8; 8] =
        std::array::from_fn(|j| (nearest_int(inv_scale * scales[j]) as u8).min(63));
    let mut lm: [u8; 8] = std::array::from_fn(|j| (nearest_int(inv_min * mins[j]) as u8).min(63));
    let d = F16Le::from_f32(max_scale / 63.0);
    let dmin = F16Le::from_f32(max_min / 63.0);
    if let Some(w) = &imw {
        // The rounded 6-bit scale and min of each group need not be the best pair: try their
        // neighbours, quants re-chosen for each (llama.cpp searches these with make_qp_quants).
        let (d, dmin) = (d.to_f32(), dmin.to_f32());
        for j in 0..8 {
            let r = 32 * j..32 * j + 32;
            let err = |sc: u8, m: u8| {
                affine_error(
                    &x[r.clone()],
                    &w[r.clone()],
                    d * sc as f32,
                    dmin * m as f32,
                    nmax,
                )
            };
            let mut best = (err(ls[j], lm[j]), ls[j], lm[j]);
            for sc in ls[j].saturating_sub(1)..=(ls[j] + 1).min(63) {
                for m in lm[j].saturating_sub(1)..=(lm[j] + 1).min(63) {
                    let e = err(sc, m);
                    if e < best.0 {
                        best = (e, sc, m);
                    }
                }
            }
            (ls[j], lm[j]) = (best.1, best.2);
        }
    }
    let mut packed = [0u8; 12];
    for j in 0..8 {
        let (ls, lm) = (ls[j], lm[j]);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    for j in 0..8 {
        let (sc, m) = k4_scale_min(&packed, j);
        let dl = d.to_f32() * sc as f32;
        if dl == 0.0 {
            continue;
        }
        let ml = dmin.to_f32() * m as f32;
        for i in 32 * j..32 * j + 32 {
            l[i] = nearest_int((x[i] + ml) / dl).clamp(0, nmax) as u8;
        }
    }
    (l, packed, d, dmin)
}

/// The (rmin, rdelta, nstep) scale search of Q4_K/Q5_K: ggml's without an importance matrix,
/// llama.cpp's wider one with.
fn q45_search(im: Option<&[f32]>, reference: (f32, f32, i32)) -> (f32, f32, i32) {
    if im.is_some() {
        (-0.9, 0.05, 36)
    } else {
        reference
    }
}

pub fn quantize_q4_k(x: &[f32; QK_K], im: Option<&[f32]>) -> BlockQ4K {
    let (l, scales, d, dmin) = quantize_q45_k(x, im, 15, q45_search(im, (-1.0, 0.1, 20)));
    BlockQ4K {
        d,
        dmin,
        scales,
        qs: pack_4bit(&l),
    }
}

pub fn quantize_q5_k(x: &[f32; QK_K], im: Option<&[f32]>) -> BlockQ5K {
    let (l, scales, d, dmin) = quantize_q45_k(x, im, 31, q45_search(im, (-0.5, 0.1, 15)));
    // The fifth bit of element 32 sub + l goes to bit `sub` of qh[l].
    let mut qh = [0u8; 32];
    for (i, &q) in l.iter().enumerate() {
        qh[i % 32] |= (q >> 4) << (i / 32);
    }
    BlockQ5K {
        d,
        dmin,
        scales,
        qh,
        qs: pack_4bit(&l.map(|q| q & 0xF)),
    }
}

pub fn quantize_q6_k(x: &[f32; QK_K], im: Option<&[f32]>) -> BlockQ6K {
    let mut l = [0u8; QK_K];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut max_abs) = (0f32, 0f32);
    let weights: [f32; QK_K] = weights_or(x, im, |i| x[i] * x[i]);
    for (j, scale) in scales.iter_mut().enumerate() {
        let r = 16 * j..16 * j + 16;
        *scale = make_qx_quants(&x[r.clone()], &weights[r.clone()], 32, &mut l[r]);
        if scale.abs() > max_abs {
            max_abs = scale.abs();
            max_scale = *scale;
        }
    }
    if max_abs < GROUP_MAX_EPS {
        return BlockQ6K {
            ql: [0; 128],
            qh: [0; 64],
            scales: [0; 16],
            d: F16Le::from_f32(0.0),
        };
    }
    let iscale = -128.0 / max_scale;
    let d = F16Le::from_f32(1.0 / iscale);
    let mut q: [i32; 16] = std::array::from_fn(|j| nearest_int(iscale * scales[j]).min(127));
    if im.is_some() {
        refine_symmetric_scales(x, &weights, d.to_f32(), &mut q, (-128, 127), 32);
    }
    let packed: [i8; 16] = q.map(|q| q as i8);
    for (j, &sc) in packed.iter().enumerate() {
        let dl = d.to_f32() * sc as f32;
        if dl == 0.0 {
            continue;
        }
        for i in 16 * j..16 * j + 16 {
            l[i] = (nearest_int(x[i] / dl).clamp(-32, 31) + 32) as u8;
        }
    }
    // Element 128g + 32j + l: nibble j / 2 of ql[64g + 32 (j % 2) + l], bits 2j of qh[32g + l].
    let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
    for (i, &q) in l.iter().enumerate() {
        let (g, j, l0) = (i / 128, (i / 32) % 4, i % 32);
        ql[64 * g + 32 * (j % 2) + l0] |= (q & 0xF) << (4 * (j / 2));
        qh[32 * g + l0] |= (q >> 4) << (2 * j);
    }
    BlockQ6K {
        ql,
        qh,
        scales: packed,
        d,
    }
}

/// Index of the codebook value nearest to `x` (ggml's `best_index_int8`).
fn best_index(values: &[i8; 16], x: f32) -> u8 {
    if x <= values[0] as f32 {
        return 0;
    }
    if x >= values[15] as f32 {
        return 15;
    }
    let (mut lo, mut hi) = (0usize, 15usize);
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if x < values[mid] as f32 {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    if x - (values[hi - 1] as f32) < values[hi] as f32 - x {
        (hi - 1) as u8
    } else {
        hi as u8
    }
}

const NTRY: i32 = 7;

/// The best scale for one 32-element group against the IQ4_NL codebook (x^2-weighted), or 0.
fn iq4_group_scale(xb: &[f32], weights: &[f32]) -> f32 {
    let values = &KVALUES_IQ4NL;
    let (max, amax) = signed_max(xb);
    if amax < GROUP_MAX_EPS {
        return 0.0;
    }
    let sums = |id: f32| {
        let (mut sumqx, mut sumq2) = (0f32, 0f32);
        for (&v, &w) in xb.iter().zip(weights) {
            let q = values[best_index(values, id * v) as usize] as f32;
            sumqx += w * q * v;
            sumq2 += w * q * q;
        }
        (sumqx, sumq2)
    };
    let d = -max / values[0] as f32;
    let (sumqx, sumq2) = sums(1.0 / d);
    let mut d = sumqx / sumq2;
    let mut best = d * sumqx;
    for itry in -NTRY..=NTRY {
        let (sumqx, sumq2) = sums((itry + values[0] as i32) as f32 / max);
        if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    d
}

/// Packs 32 codebook indices as IQ4_NL does: j and j + 16 share byte j.
fn pack_iq4(l: &[u8]) -> [u8; 16] {
    std::array::from_fn(|j| l[j] | (l[j + 16] << 4))
}

pub fn quantize_iq4_nl(x: &[f32; QK], im: Option<&[f32]>) -> BlockIq4Nl {
    let weights: [f32; QK] = weights_or(x, im, |i| x[i] * x[i]);
    let scale = iq4_group_scale(x, &weights);
    let id = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    let l: [u8; QK] = std::array::from_fn(|j| best_index(&KVALUES_IQ4NL, id * x[j]));
    BlockIq4Nl {
        d: F16Le::from_f32(scale),
        qs: pack_iq4(&l),
    }
}

pub fn quantize_iq4_xs(x: &[f32; QK_K], im: Option<&[f32]>) -> BlockIq4Xs {
    let weights: [f32; QK_K] = weights_or(x, im, |i| x[i] * x[i]);
    let scales: [f32; 8] = std::array::from_fn(|ib| {
        let r = 32 * ib..32 * ib + 32;
        iq4_group_scale(&x[r.clone()], &weights[r])
    });
    let (mut max_scale, mut amax) = (0f32, 0f32);
    for &s in &scales {
        if s.abs() > amax {
            amax = s.abs();
            max_scale = s;
        }
    }
    let d = -max_scale / 32.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let (mut scales_h, mut scales_l) = (0u16, [0u8; 4]);
    let mut qs = [0u8; 128];
    for ib in 0..8 {
        let ls = nearest_int(id * scales[ib]).clamp(-32, 31);
        let dl = d * ls as f32;
        let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
        let xb = &x[32 * ib..32 * ib + 32];
        let l: [u8; 32] = std::array::from_fn(|j| best_index(&KVALUES_IQ4NL, idl * xb[j]));
        qs[16 * ib..16 * ib + 16].copy_from_slice(&pack_iq4(&l));
        let biased = (ls + 32) as u8;
        scales_l[ib / 2] |= (biased & 0xF) << (4 * (ib % 2));
        scales_h |= ((biased >> 4) as u16) << (2 * ib);
    }
    BlockIq4Xs {
        d: F16Le::from_f32(d),
        scales_h: scales_h.to_le_bytes(),
        scales_l,
        qs,
    }
}
