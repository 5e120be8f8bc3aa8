//! Softmax rows (attention's scores, the router's logits) whose weights are never subnormal:
//! each is 0 or a normal float. A subnormal weight makes every multiply-add it enters take a
//! microcode assist, so one sharp head (scores spanning more than 87 nats) slowed a long
//! prefill 7x; an exact 0 costs nothing and changes no sum by more than 1e-38.

use crate::quant::Isa;

/// The float vectors attention and the softmax run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    Scalar,
    Avx2,
    Avx512,
}

impl Tier {
    /// The tier of `Isa::active()` (its detection includes AVX2's FMA and F16C).
    pub fn active() -> Tier {
        match Isa::active() {
            #[cfg(target_arch = "x86_64")]
            isa if isa >= Isa::Avx512 => Tier::Avx512,
            #[cfg(target_arch = "x86_64")]
            isa if isa >= Isa::Avx2 => Tier::Avx2,
            _ => Tier::Scalar,
        }
    }
}

/// `exp(x)`, or an exact 0 where it would be subnormal (or within a hair of it); NaN stays
/// NaN (a corrupt model must show, not vanish).
pub fn exp_normal(x: f32) -> f32 {
    if x < EXP_CUT { 0.0 } else { x.exp() }
}

/// Below this argument `exp` gives an exact 0: `exp(-87.34)` is the smallest normal float
/// (the margin covers the SIMD polynomial's last ulp).
pub const EXP_CUT: f32 = -87.0;

/// A weight `w`, or 0 where it is subnormal (NaN stays NaN).
pub fn normal_or_zero(w: f32) -> f32 {
    if w < f32::MIN_POSITIVE { 0.0 } else { w }
}

/// Replaces a row of scores by their softmax weights.
pub fn softmax(tier: Tier, row: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the tier's features were detected (Isa::active).
    unsafe {
        match tier {
            Tier::Avx512 => return simd::softmax_512(row),
            Tier::Avx2 => return simd::softmax_256(row),
            Tier::Scalar => {}
        }
    }
    let _ = tier;
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0f32;
    for v in row.iter_mut() {
        *v = exp_normal(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v = normal_or_zero(*v * inv);
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    #![allow(unsafe_op_in_unsafe_fn)]

    use super::super::lanes::{Lanes, V256, V512, exp};
    use super::{exp_normal, normal_or_zero};

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub unsafe fn softmax_512(row: &mut [f32]) {
        softmax_lanes::<V512>(row)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn softmax_256(row: &mut [f32]) {
        softmax_lanes::<V256>(row)
    }

    #[inline(always)]
    unsafe fn softmax_lanes<L: Lanes>(row: &mut [f32]) {
        let n = L::N;
        let chunks = row.len() / n;
        let p = row.as_mut_ptr();
        let mut vmax = L::splat(f32::NEG_INFINITY);
        for i in 0..chunks {
            vmax = vmax.max(L::load(p.add(n * i)));
        }
        let mut lanes = [0f32; 16];
        vmax.store(lanes.as_mut_ptr());
        let max = lanes[..n]
            .iter()
            .chain(&row[n * chunks..])
            .fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let mut sum = L::zero();
        for i in 0..chunks {
            let e = exp(L::load(p.add(n * i)).sub(L::splat(max)));
            e.store(p.add(n * i));
            sum = sum.add(e);
        }
        let mut total = sum.reduce_add();
        for v in &mut row[n * chunks..] {
            *v = exp_normal(*v - max);
            total += *v;
        }
        let inv = L::splat(1.0 / total);
        for i in 0..chunks {
            let w = L::load(p.add(n * i)).mul(inv);
            w.zero_below(w, f32::MIN_POSITIVE).store(p.add(n * i));
        }
        let inv = 1.0 / total;
        for v in &mut row[n * chunks..] {
            *v = normal_or_zero(*v * inv);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiers() -> Vec<Tier> {
        let mut tiers = vec![Tier::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if Isa::detected() >= Isa::Avx2 {
                tiers.push(Tier::Avx2);
            }
            if Isa::detected() >= Isa::Avx512 {
                tiers.push(Tier::Avx512);
            }
        }
        tiers
    }

    /// Scores spanning 200 nats (a sharp head, an attention sink): no weight may be subnormal,
    /// and the weights match an f64 softmax.
    #[test]
    fn no_softmax_weight_is_subnormal() {
        for tier in tiers() {
            for len in [1, 7, 8, 16, 33, 100, 4097] {
                let mut row: Vec<f32> = (0..len)
                    .map(|i| {
                        20.0 - 200.0 * ((i * 7919) % len) as f32 / len as f32
                            - (i % 3) as f32 * 1e-3
                    })
                    .collect();
                // The f32 differences to the max, as the softmax rounds them.
                let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let z: f64 = row.iter().map(|&v| ((v - max) as f64).exp()).sum();
                let want: Vec<f64> = row.iter().map(|&v| ((v - max) as f64).exp() / z).collect();
                softmax(tier, &mut row);
                for (i, (&w, &want)) in row.iter().zip(&want).enumerate() {
                    assert!(
                        w == 0.0 || w.is_normal(),
                        "{tier:?} len {len}: weight {i} is subnormal ({w:e})"
                    );
                    assert!(
                        (w as f64 - want).abs() <= 5e-7 * want + 2.0 * f32::MIN_POSITIVE as f64,
                        "{tier:?} len {len}: weight {i} {w:e}, want {want:e}"
                    );
                }
            }
        }
    }

    #[test]
    fn nan_scores_give_nan_weights() {
        for tier in tiers() {
            for len in [3, 16, 40] {
                let mut row: Vec<f32> = (0..len).map(|i| i as f32).collect();
                row[1] = f32::NAN;
                softmax(tier, &mut row);
                assert!(
                    row.iter().any(|w| w.is_nan()),
                    "{tier:?} len {len}: {row:?}"
                );
            }
        }
    }

    #[test]
    fn the_exponential_is_within_two_ulp_and_never_subnormal() {
        #[cfg(target_arch = "x86_64")]
        for tier in tiers() {
            let x: Vec<f32> = (0..4000)
                .map(|i| -(i as f32) * 0.025 - 1e-3 * (i % 7) as f32)
                .collect();
            let got: Vec<f32> = x
                .chunks(16)
                .flat_map(|c| {
                    let mut v = [f32::NEG_INFINITY; 16];
                    v[..c.len()].copy_from_slice(c);
                    // SAFETY: the tier was detected.
                    let out = unsafe { simd_exp(tier, v) };
                    out[..c.len()].to_vec()
                })
                .collect();
            for (&x, &got) in x.iter().zip(&got) {
                let want = x.exp();
                assert!(
                    got == 0.0 || got.is_normal(),
                    "{tier:?}: exp({x}) = {got:e}"
                );
                if x >= EXP_CUT {
                    assert!(
                        (got - want).abs() <= 2.5 * f32::EPSILON * want,
                        "{tier:?}: exp({x}) = {got}, want {want}"
                    );
                } else {
                    assert_eq!(got, 0.0);
                }
            }
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_op_in_unsafe_fn)]
    unsafe fn simd_exp(tier: Tier, v: [f32; 16]) -> [f32; 16] {
        use super::super::lanes::{Lanes, V256, V512, exp};
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
        unsafe fn e512(v: [f32; 16], out: &mut [f32; 16]) {
            exp(V512::load(v.as_ptr())).store(out.as_mut_ptr())
        }
        #[target_feature(enable = "avx2,fma,f16c")]
        unsafe fn e256(v: [f32; 16], out: &mut [f32; 16]) {
            for h in 0..2 {
                exp(V256::load(v.as_ptr().add(8 * h))).store(out.as_mut_ptr().add(8 * h))
            }
        }
        let mut out = [0f32; 16];
        match tier {
            Tier::Avx512 => e512(v, &mut out),
            Tier::Avx2 => e256(v, &mut out),
            Tier::Scalar => {
                for (o, x) in out.iter_mut().zip(v) {
                    *o = exp_normal(x);
                }
            }
        }
        out
    }
}
