//! Importance-weighted quantizers for the lattice-codebook types: IQ1_S, IQ1_M, IQ2_XXS,
//! IQ2_XS, IQ2_S, IQ3_XXS and IQ3_S.
//!
//! All seven store a 256-element block the same way: an f16 scale `d`; per sub-block of 16 or
//! 32 elements a small integer `ls` giving the scale `d * c * (2 ls + 1)`; per codeword of 8
//! (IQ1, IQ2) or 4 (IQ3) elements an index into a fixed grid of patterns; and either sign bits
//! (free, or 7 of every 8 with the 8th fixed by even parity) or, for the ternary IQ1 grid, a
//! shift of +-1/8 instead of signs. So one search serves them all, minimising
//! `sum w (x - xhat)^2` with `w` the importance of each element:
//!
//! 1. signs come from `x`; where parity forbids the pattern, the element that costs least
//!    (smallest `w x^2`) gets the wrong sign and a negative target magnitude;
//! 2. per sub-block a float scale is searched over candidates around `max / top level`: each
//!    codeword takes the nearest lattice point when the grid holds it, else the best of that
//!    point's precomputed grid neighbours, and the least-squares scale of the assignment is kept
//!    when it lowers the error (then refined twice: re-assign, re-fit);
//! 3. the sub-block scales are rounded to their integers under several candidate `d`, the
//!    codewords chosen again for the scale actually stored, and the `d` with the lowest block
//!    error wins (llama.cpp rounds the scales without choosing the codewords again);
//! 4. `d` is raised to undo half of the shrinkage least squares leaves (see there).

use std::sync::OnceLock;

use super::block::F16Le;
use super::grids::*;
use super::iquants::*;
use crate::gguf::{GgmlType, QK_K};

/// A grid of patterns whose coordinates take a few levels: every pattern is a point of the
/// lattice `levels^dim`, and the grid holds only some of those points.
pub(crate) struct Codebook {
    dim: usize,
    levels: Vec<f32>,
    /// Midpoints between consecutive levels: the nearest level of `u` is how many are below it.
    mids: Vec<f32>,
    values: Vec<[f32; 8]>,
    /// Lattice code -> grid index, or -1 where the grid lacks that point.
    on_grid: Vec<i32>,
    /// Lattice code -> grid indices to try when the point is off the grid.
    neighbours: Vec<Vec<u16>>,
}

impl Codebook {
    fn new(dim: usize, rows: Vec<[f32; 8]>) -> Codebook {
        let mut levels: Vec<f32> = rows.iter().flat_map(|r| r[..dim].to_vec()).collect();
        levels.sort_by(f32::total_cmp);
        levels.dedup();
        let mids = levels.windows(2).map(|p| 0.5 * (p[0] + p[1])).collect();
        let n = levels.len();
        let level_of = |v: f32| levels.iter().position(|&l| l == v).expect("a level");
        let points: Vec<Vec<usize>> = rows
            .iter()
            .map(|r| r[..dim].iter().map(|&v| level_of(v)).collect())
            .collect();
        let code_of = |idx: &[usize]| idx.iter().rev().fold(0, |c, &i| c * n + i);
        let lattice_size = n.pow(dim as u32);
        let mut on_grid = vec![-1i32; lattice_size];
        for (g, p) in points.iter().enumerate() {
            on_grid[code_of(p)] = g as i32;
        }
        // Neighbours of an off-grid point: the grid points within one step (in squared level
        // index distance) of the nearest ones, so a weighted choice has some room.
        let neighbours = (0..lattice_size)
            .map(|code| {
                if on_grid[code] >= 0 {
                    return Vec::new();
                }
                let idx: Vec<usize> = (0..dim).map(|k| code / n.pow(k as u32) % n).collect();
                let dist: Vec<usize> = points
                    .iter()
                    .map(|p| {
                        p.iter()
                            .zip(&idx)
                            .map(|(&a, &b)| a.abs_diff(b).pow(2))
                            .sum()
                    })
                    .collect();
                let nearest = *dist.iter().min().expect("a non-empty grid");
                (0..points.len())
                    .filter(|&g| dist[g] <= nearest + 1)
                    .map(|g| g as u16)
                    .collect()
            })
            .collect();
        Codebook {
            dim,
            levels,
            mids,
            values: rows,
            on_grid,
            neighbours,
        }
    }

    fn from_u64_grid(grid: &[u64], signed: bool) -> Codebook {
        let rows = grid
            .iter()
            .map(|&r| {
                std::array::from_fn(|k| {
                    let b = (r >> (8 * k)) as u8;
                    if signed { b as i8 as f32 } else { b as f32 }
                })
            })
            .collect();
        Codebook::new(8, rows)
    }

    fn from_u32_grid(grid: &[u32]) -> Codebook {
        let rows = grid
            .iter()
            .map(|&r| {
                std::array::from_fn(|k| {
                    if k < 4 {
                        (r >> (8 * k)) as u8 as f32
                    } else {
                        0.0
                    }
                })
            })
            .collect();
        Codebook::new(4, rows)
    }

    fn top(&self) -> f32 {
        *self.levels.last().expect("levels")
    }

    /// The grid index nearest to `u` under weights `w` (both `dim` long).
    #[inline]
    fn best(&self, u: &[f32], w: &[f32]) -> usize {
        let n = self.levels.len();
        let mut code = 0;
        for &v in u[..self.dim].iter().rev() {
            code = code * n + self.mids.iter().filter(|&&m| v > m).count();
        }
        let g = self.on_grid[code];
        if g >= 0 {
            return g as usize;
        }
        let err = |g: u16| -> f32 {
            let p = &self.values[g as usize];
            (0..self.dim).map(|k| w[k] * (u[k] - p[k]).powi(2)).sum()
        };
        let candidates = &self.neighbours[code];
        let mut best = (candidates[0], err(candidates[0]));
        for &g in &candidates[1..] {
            let e = err(g);
            if e < best.1 {
                best = (g, e);
            }
        }
        best.0 as usize
    }
}

fn book(ty: GgmlType) -> &'static Codebook {
    static BOOKS: [OnceLock<Codebook>; 6] = [const { OnceLock::new() }; 6];
    let (slot, make): (usize, fn() -> Codebook) = match ty {
        GgmlType::IQ2_XXS => (0, || Codebook::from_u64_grid(&IQ2XXS_GRID, false)),
        GgmlType::IQ2_XS => (1, || Codebook::from_u64_grid(&IQ2XS_GRID, false)),
        GgmlType::IQ2_S => (2, || Codebook::from_u64_grid(&IQ2S_GRID, false)),
        GgmlType::IQ3_XXS => (3, || Codebook::from_u32_grid(&IQ3XXS_GRID)),
        GgmlType::IQ3_S => (4, || Codebook::from_u32_grid(&IQ3S_GRID)),
        _ => (5, || Codebook::from_u64_grid(&IQ1S_GRID, true)),
    };
    BOOKS[slot].get_or_init(make)
}

#[derive(Clone, Copy, PartialEq)]
enum Signs {
    /// One sign bit per element.
    Free,
    /// Seven sign bits per 8 elements; the eighth makes the count of negatives even.
    EvenParity,
    /// No signs: a ternary grid shifted by +-1/8, the shift's sign shared by `shift_len`.
    Shift,
}

/// How one type lays a block out, as far as the search cares.
struct Spec {
    book: &'static Codebook,
    /// Elements per sub-block scale.
    sub: usize,
    max_ls: u8,
    /// Sub-block scale = d * c * (2 ls + 1).
    c: f32,
    signs: Signs,
    /// Elements sharing one shift sign (Shift only).
    shift_len: usize,
}

fn spec(ty: GgmlType) -> Spec {
    let (sub, max_ls, c, signs, shift_len) = match ty {
        GgmlType::IQ2_XXS => (32, 15, 0.125, Signs::EvenParity, 0),
        GgmlType::IQ2_XS => (16, 15, 0.125, Signs::EvenParity, 0),
        GgmlType::IQ2_S => (16, 15, 0.125, Signs::Free, 0),
        GgmlType::IQ3_XXS => (32, 15, 0.25, Signs::EvenParity, 0),
        GgmlType::IQ3_S => (32, 15, 1.0, Signs::Free, 0),
        GgmlType::IQ1_S => (32, 7, 1.0, Signs::Shift, 32),
        GgmlType::IQ1_M => (16, 7, 1.0, Signs::Shift, 8),
        _ => unreachable!("not a codebook type: {ty}"),
    };
    Spec {
        book: book(ty),
        sub,
        max_ls,
        c,
        signs,
        shift_len,
    }
}

pub(crate) const IQ1_SHIFT: f32 = IQ1S_DELTA;

/// What the search chose for one block, before packing.
#[derive(Clone, Copy)]
struct Codes {
    d: f32,
    ls: [u8; 16],
    /// Grid index per codeword (32 of 8 elements, or 64 of 4).
    index: [u16; 64],
    /// Bit k of byte g: element 8 g + k is negative.
    signs: [u8; 32],
    /// Per 8 elements: the IQ1 shift is -1/8.
    shift_neg: [bool; 32],
}

/// The codewords of one sub-block at scale `s`, with the error they leave and the sums
/// `sum w t v` and `sum w v^2` for the least-squares scale of that assignment.
struct Assignment {
    index: [u16; 8],
    shift_neg: [bool; 4],
    err: f32,
    sum_tv: f32,
    sum_vv: f32,
}

fn assign(spec: &Spec, t: &[f32], w: &[f32], s: f32) -> Assignment {
    let dim = spec.book.dim;
    let mut a = Assignment {
        index: [0; 8],
        shift_neg: [false; 4],
        err: 0.0,
        sum_tv: 0.0,
        sum_vv: 0.0,
    };
    let inv = 1.0 / s;
    let shift_len = if spec.signs == Signs::Shift {
        spec.shift_len.min(t.len())
    } else {
        t.len()
    };
    for (r, (tr, wr)) in t.chunks(shift_len).zip(w.chunks(shift_len)).enumerate() {
        let shifts: &[f32] = if spec.signs == Signs::Shift {
            &[IQ1_SHIFT, -IQ1_SHIFT]
        } else {
            &[0.0]
        };
        let mut best: Option<([u16; 8], f32, f32, f32, bool)> = None;
        for &delta in shifts {
            let (mut idx, mut err, mut tv, mut vv) = ([0u16; 8], 0f32, 0f32, 0f32);
            for (c, (tc, wc)) in tr.chunks(dim).zip(wr.chunks(dim)).enumerate() {
                let mut u = [0f32; 8];
                for k in 0..dim {
                    u[k] = tc[k] * inv - delta;
                }
                let g = spec.book.best(&u, wc);
                idx[c] = g as u16;
                let p = &spec.book.values[g];
                for k in 0..dim {
                    let v = p[k] + delta;
                    err += wc[k] * (tc[k] - s * v).powi(2);
                    tv += wc[k] * tc[k] * v;
                    vv += wc[k] * v * v;
                }
            }
            if best.as_ref().is_none_or(|b| err < b.1) {
                best = Some((idx, err, tv, vv, delta < 0.0));
            }
        }
        let (idx, err, tv, vv, neg) = best.expect("one shift at least");
        let per = shift_len / dim;
        a.index[r * per..(r + 1) * per].copy_from_slice(&idx[..per]);
        a.shift_neg[r] = neg;
        a.err += err;
        a.sum_tv += tv;
        a.sum_vv += vv;
    }
    a
}

/// The float scale of one sub-block that minimises its error (0 for an empty one).
fn best_sub_scale(spec: &Spec, t: &[f32], w: &[f32]) -> f32 {
    let tmax = t.iter().fold(0f32, |m, v| m.max(v.abs()));
    if tmax < 1e-15 {
        return 0.0;
    }
    let top = spec.book.top()
        + if spec.signs == Signs::Shift {
            IQ1_SHIFT
        } else {
            0.0
        };
    // Lowest error = largest sum_tv^2 / sum_vv over the least-squares scales.
    let fit = |s: f32| {
        let a = assign(spec, t, w, s);
        if a.sum_vv > 0.0 && a.sum_tv > 0.0 {
            Some((a.sum_tv / a.sum_vv, a.sum_tv * a.sum_tv / a.sum_vv))
        } else {
            None
        }
    };
    let mut best = (0f32, 0f32);
    for k in -8..=8 {
        if let Some((s, score)) = fit(tmax / top * (1.0 + 0.04 * k as f32))
            && score > best.1
        {
            best = (s, score);
        }
    }
    for _ in 0..2 {
        match fit(best.0) {
            Some((s, score)) if score > best.1 => best = (s, score),
            _ => break,
        }
    }
    best.0
}

/// Importance of each element of a block: the importance-matrix column (1 without one) times
/// sqrt(sigma^2 + x^2), sigma^2 twice the block's mean square (as llama.cpp weighs IQ types).
pub(crate) fn element_weights(x: &[f32], im: Option<&[f32]>) -> Vec<f32> {
    let sigma2 = 2.0 * x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let base = |i: usize| (sigma2 + x[i] * x[i]).sqrt();
    match im {
        Some(im) if im.iter().any(|&v| v > 0.0) => {
            (0..x.len()).map(|i| im[i].max(0.0) * base(i)).collect()
        }
        _ => (0..x.len()).map(base).collect(),
    }
}

fn search_block(spec: &Spec, x: &[f32], w: &[f32]) -> Codes {
    let mut codes = Codes {
        d: 0.0,
        ls: [0; 16],
        index: [0; 64],
        signs: [0; 32],
        shift_neg: [false; 32],
    };
    // 1. Signs and target magnitudes.
    let mut t = [0f32; QK_K];
    if spec.signs == Signs::Shift {
        t.copy_from_slice(x);
    } else {
        for g in 0..QK_K / 8 {
            let mut neg = 0u8;
            for k in 0..8 {
                let v = x[8 * g + k];
                t[8 * g + k] = v.abs();
                if v < 0.0 {
                    neg |= 1 << k;
                }
            }
            if spec.signs == Signs::EvenParity && neg.count_ones() % 2 == 1 {
                let cost = |k: usize| w[8 * g + k] * x[8 * g + k] * x[8 * g + k];
                let k = (0..8)
                    .min_by(|&a, &b| cost(a).total_cmp(&cost(b)))
                    .expect("8");
                neg ^= 1 << k;
                t[8 * g + k] = -t[8 * g + k];
            }
            codes.signs[g] = neg;
        }
    }
    // 2. Float scale per sub-block.
    let nsub = QK_K / spec.sub;
    let scales: Vec<f32> = (0..nsub)
        .map(|b| {
            let r = b * spec.sub..(b + 1) * spec.sub;
            best_sub_scale(spec, &t[r.clone()], &w[r])
        })
        .collect();
    let smax = scales.iter().fold(0f32, |m, &s| m.max(s));
    if smax == 0.0 {
        return codes;
    }
    // 3. Candidate d: the largest scale maps to 2 ls + 1 = top - k/2.
    let top = (2 * spec.max_ls + 1) as f32;
    let per_sub = spec.sub / spec.book.dim;
    let shifts_per_sub = if spec.signs == Signs::Shift {
        spec.sub / spec.shift_len
    } else {
        0
    };
    let mut best_err = f32::INFINITY;
    let mut trial = codes;
    for k in 0..6 {
        let d = half::f16::from_f32(smax / (spec.c * (top - 0.5 * k as f32))).to_f32();
        if d == 0.0 {
            continue;
        }
        let mut err = 0f32;
        for (b, &s) in scales.iter().enumerate() {
            let ls = ((s / (d * spec.c) - 1.0) * 0.5)
                .round()
                .clamp(0.0, spec.max_ls as f32);
            trial.ls[b] = ls as u8;
            let r = b * spec.sub..(b + 1) * spec.sub;
            let a = assign(spec, &t[r.clone()], &w[r], d * spec.c * (2.0 * ls + 1.0));
            trial.index[b * per_sub..(b + 1) * per_sub].copy_from_slice(&a.index[..per_sub]);
            for j in 0..shifts_per_sub {
                // shift_neg is kept per 8 elements; a shift shared by 32 fills 4 of them.
                let per8 = spec.shift_len / 8;
                let first = (b * spec.sub + j * spec.shift_len) / 8;
                trial.shift_neg[first..first + per8].fill(a.shift_neg[j]);
            }
            err += a.err;
        }
        if err < best_err {
            best_err = err;
            trial.d = d;
            codes = trial;
        }
    }
    // 4. Undo half of the least-squares shrinkage. The error-optimal scale leaves the block with
    // less energy than the weights (gain sum w t xhat / sum w t^2 of 0.85 at IQ1_S), and layer
    // after layer that costs more than the error it saves: scaling d by gain^-1/2 measured
    // mean KLD 0.970 -> 0.872 (IQ1_S), 0.2275 -> 0.2250 (IQ2_XS), unchanged at IQ3_XXS on the
    // demo model; the full gain^-1 was no better.
    let (tx, tt) = gain_sums(spec, &codes, &t, w);
    if tx > 0.0 {
        codes.d = half::f16::from_f32(codes.d * (tt / tx).sqrt()).to_f32();
    }
    codes
}

/// (sum w t xhat, sum w t^2) of a block's reconstruction, xhat in the targets' sign convention.
fn gain_sums(spec: &Spec, c: &Codes, t: &[f32], w: &[f32]) -> (f32, f32) {
    let dim = spec.book.dim;
    let (mut tx, mut tt) = (0f32, 0f32);
    for (i, (&ti, &wi)) in t.iter().zip(w).enumerate() {
        let s = c.d * spec.c * (2 * c.ls[i / spec.sub] + 1) as f32;
        let mut v = spec.book.values[c.index[i / dim] as usize][i % dim];
        if spec.signs == Signs::Shift {
            v += if c.shift_neg[i / 8] {
                -IQ1_SHIFT
            } else {
                IQ1_SHIFT
            };
        }
        tx += wi * ti * s * v;
        tt += wi * ti * ti;
    }
    (tx, tt)
}

/// The u32 of 32-element group `ib` in IQ2_XXS and IQ3_XXS: four 7-bit sign patterns (the
/// eighth bit is their parity) and the 4-bit scale on top.
fn scale_signs_word(c: &Codes, ib: usize) -> [u8; 4] {
    let signs = (0..4).fold(0u32, |w, k| {
        w | ((c.signs[4 * ib + k] & 127) as u32) << (7 * k)
    });
    (signs | (c.ls[ib] as u32) << 28).to_le_bytes()
}

fn pack_iq2_xxs(c: &Codes) -> BlockIq2Xxs {
    let mut qs = [0u8; QK_K / 4];
    for ib in 0..8 {
        for k in 0..4 {
            qs[8 * ib + k] = c.index[4 * ib + k] as u8;
        }
        qs[8 * ib + 4..8 * ib + 8].copy_from_slice(&scale_signs_word(c, ib));
    }
    BlockIq2Xxs {
        d: F16Le::from_f32(c.d),
        qs,
    }
}

/// Two 4-bit scales per byte, low nibble first.
fn pack_nibble_scales<const N: usize>(ls: &[u8]) -> [u8; N] {
    std::array::from_fn(|i| ls[2 * i] | (ls[2 * i + 1] << 4))
}

fn pack_iq2_xs(c: &Codes) -> BlockIq2Xs {
    BlockIq2Xs {
        d: F16Le::from_f32(c.d),
        qs: std::array::from_fn(|e| (c.index[e] | ((c.signs[e] & 127) as u16) << 9).to_le_bytes()),
        scales: pack_nibble_scales(&c.ls),
    }
}

fn pack_iq2_s(c: &Codes) -> BlockIq2S {
    let mut qh = [0u8; QK_K / 32];
    for e in 0..QK_K / 8 {
        qh[e / 4] |= ((c.index[e] >> 8) as u8) << (2 * (e % 4));
    }
    BlockIq2S {
        d: F16Le::from_f32(c.d),
        qs: std::array::from_fn(|e| c.index[e] as u8),
        signs: c.signs,
        qh,
        scales: pack_nibble_scales(&c.ls),
    }
}

fn pack_iq3_xxs(c: &Codes) -> BlockIq3Xxs {
    let mut scales_signs = [0u8; QK_K / 8];
    for ib in 0..8 {
        scales_signs[4 * ib..4 * ib + 4].copy_from_slice(&scale_signs_word(c, ib));
    }
    BlockIq3Xxs {
        d: F16Le::from_f32(c.d),
        qs: std::array::from_fn(|g| c.index[g] as u8),
        scales_signs,
    }
}

fn pack_iq3_s(c: &Codes) -> BlockIq3S {
    let mut qh = [0u8; QK_K / 32];
    for g in 0..QK_K / 4 {
        qh[g / 8] |= ((c.index[g] >> 8) as u8 & 1) << (g % 8);
    }
    BlockIq3S {
        d: F16Le::from_f32(c.d),
        qs: std::array::from_fn(|g| c.index[g] as u8),
        qh,
        signs: c.signs,
        scales: pack_nibble_scales(&c.ls),
    }
}

fn pack_iq1_s(c: &Codes) -> BlockIq1S {
    let qh = std::array::from_fn(|ib| {
        let mut h = (c.ls[ib] as u16) << 12;
        for k in 0..4 {
            h |= (c.index[4 * ib + k] >> 8) << (3 * k);
        }
        if c.shift_neg[4 * ib] {
            h |= 0x8000;
        }
        h.to_le_bytes()
    });
    BlockIq1S {
        d: F16Le::from_f32(c.d),
        qs: std::array::from_fn(|e| c.index[e] as u8),
        qh,
    }
}

fn pack_iq1_m(c: &Codes) -> BlockIq1M {
    let mut qh = [0u8; QK_K / 16];
    for e in 0..QK_K / 8 {
        let h = (c.index[e] >> 8) as u8 | if c.shift_neg[e] { 8 } else { 0 };
        qh[e / 2] |= h << (4 * (e % 2));
    }
    // Four 3-bit scales per u16; the f16 d is spread over the four top nibbles.
    let d_bits = half::f16::from_f32(c.d).to_bits();
    let scales = std::array::from_fn(|i| {
        let mut sc = ((d_bits >> (4 * i)) & 0xF) << 12;
        for j in 0..4 {
            sc |= (c.ls[4 * i + j] as u16) << (3 * j);
        }
        sc.to_le_bytes()
    });
    BlockIq1M {
        qs: std::array::from_fn(|e| c.index[e] as u8),
        qh,
        scales,
    }
}

/// The codebook types this module quantizes.
pub fn is_codebook_type(ty: GgmlType) -> bool {
    matches!(
        ty,
        GgmlType::IQ1_S
            | GgmlType::IQ1_M
            | GgmlType::IQ2_XXS
            | GgmlType::IQ2_XS
            | GgmlType::IQ2_S
            | GgmlType::IQ3_XXS
            | GgmlType::IQ3_S
    )
}

/// Quantizes one 256-element block of a codebook type, `im` its importance-matrix columns.
pub fn quantize_block(ty: GgmlType, x: &[f32], im: Option<&[f32]>, out: &mut Vec<u8>) {
    let spec = spec(ty);
    let w = element_weights(x, im);
    let c = search_block(&spec, x, &w);
    match ty {
        GgmlType::IQ2_XXS => out.extend_from_slice(bytemuck::bytes_of(&pack_iq2_xxs(&c))),
        GgmlType::IQ2_XS => out.extend_from_slice(bytemuck::bytes_of(&pack_iq2_xs(&c))),
        GgmlType::IQ2_S => out.extend_from_slice(bytemuck::bytes_of(&pack_iq2_s(&c))),
        GgmlType::IQ3_XXS => out.extend_from_slice(bytemuck::bytes_of(&pack_iq3_xxs(&c))),
        GgmlType::IQ3_S => out.extend_from_slice(bytemuck::bytes_of(&pack_iq3_s(&c))),
        GgmlType::IQ1_S => out.extend_from_slice(bytemuck::bytes_of(&pack_iq1_s(&c))),
        _ => out.extend_from_slice(bytemuck::bytes_of(&pack_iq1_m(&c))),
    }
}
