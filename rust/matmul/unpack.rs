//! The integer form of every weight block: what the dot products multiply. A 32-element block
//! is `w = d * q + m`; a 256-element super-block is `w = d * scale[i/16] * q + dmin * min[i/16]`
//! with small integers `q`, `scale`, `min`. The scalar reference dot product works on these
//! forms, and so states exactly the arithmetic every SIMD kernel must reproduce.
//!
//! Scale factors are folded so that all quants are integers: IQ2 scales `(0.5 + s) / 4` become
//! `(2 s + 1)` with `d / 8`, and IQ1's `+-1/8` shift becomes `q = 8 g +- 1` with `d / 8`.

use crate::gguf::QK_K;
use crate::quant::block::{u16_le, u32_le};
use crate::quant::grids::*;
use crate::quant::iquants::{nibble_scale, *};
use crate::quant::kquants::*;
use crate::quant::legacy::{nibble, *};

/// A 32-element block as integers: `w[j] = d * q[j] + m`.
#[derive(Clone, Copy, Debug)]
pub struct Int32Block {
    pub q: [i8; QK],
    pub d: f32,
    pub m: f32,
}

/// A 256-element super-block as integers: `w[i] = d * scales[i/16] * q[i] + dmin * mins[i/16]`.
#[derive(Clone, Copy, Debug)]
pub struct IntSuperBlock {
    pub q: [i8; QK_K],
    pub scales: [i16; QK_K / 16],
    pub mins: [i16; QK_K / 16],
    pub d: f32,
    pub dmin: f32,
}

impl Default for IntSuperBlock {
    fn default() -> Self {
        IntSuperBlock {
            q: [0; QK_K],
            scales: [0; QK_K / 16],
            mins: [0; QK_K / 16],
            d: 0.0,
            dmin: 0.0,
        }
    }
}

/// Blocks of 32 that pair with Q8_0 activations.
pub trait Unpack32 {
    fn unpack(&self) -> Int32Block;
}

/// Super-blocks of 256 that pair with Q8_K activations.
pub trait UnpackK {
    fn unpack(&self, out: &mut IntSuperBlock);
}

/// The 32 nibbles of a 4-bit block in element order (low nibbles, then high), branch-free so
/// that it vectorizes (the batched product unpacks every weight through here).
#[inline(always)]
fn nibbles(qs: &[u8; 16]) -> [u8; QK] {
    let mut out = [0u8; QK];
    for j in 0..16 {
        out[j] = qs[j] & 0x0F;
        out[j + 16] = qs[j] >> 4;
    }
    out
}

fn fifth_bit(qh: [u8; 4], j: usize) -> u8 {
    (((u32::from_le_bytes(qh) >> j) & 1) << 4) as u8
}

impl Unpack32 for BlockQ4_0 {
    fn unpack(&self) -> Int32Block {
        Int32Block {
            q: nibbles(&self.qs).map(|n| n as i8 - 8),
            d: self.d.to_f32(),
            m: 0.0,
        }
    }
}

impl Unpack32 for BlockQ4_1 {
    fn unpack(&self) -> Int32Block {
        Int32Block {
            q: nibbles(&self.qs).map(|n| n as i8),
            d: self.d.to_f32(),
            m: self.m.to_f32(),
        }
    }
}

impl Unpack32 for BlockQ5_0 {
    fn unpack(&self) -> Int32Block {
        Int32Block {
            q: {
                let n = nibbles(&self.qs);
                std::array::from_fn(|j| (n[j] | fifth_bit(self.qh, j)) as i8 - 16)
            },
            d: self.d.to_f32(),
            m: 0.0,
        }
    }
}

impl Unpack32 for BlockQ5_1 {
    fn unpack(&self) -> Int32Block {
        Int32Block {
            q: {
                let n = nibbles(&self.qs);
                std::array::from_fn(|j| (n[j] | fifth_bit(self.qh, j)) as i8)
            },
            d: self.d.to_f32(),
            m: self.m.to_f32(),
        }
    }
}

impl Unpack32 for BlockQ8_0 {
    fn unpack(&self) -> Int32Block {
        Int32Block {
            q: self.qs,
            d: self.d.to_f32(),
            m: 0.0,
        }
    }
}

impl Unpack32 for BlockIq4Nl {
    fn unpack(&self) -> Int32Block {
        Int32Block {
            q: nibbles(&self.qs).map(|n| KVALUES_IQ4NL[n as usize]),
            d: self.d.to_f32(),
            m: 0.0,
        }
    }
}

/// The 2-bit fields of `qs` (32 bytes per 128 values: value 32j + l of a half is bits 2j of
/// byte l) into `q`, as straight loops over 32 lanes so that they vectorize.
#[inline(always)]
fn crumbs(qs: &[u8; 64], mut each: impl FnMut(usize, usize, u8)) {
    for g in 0..2 {
        for j in 0..4 {
            for l in 0..32 {
                each(g, j * 32 + l, (qs[32 * g + l] >> (2 * j)) & 3);
            }
        }
    }
}

impl UnpackK for BlockQ2K {
    #[inline(always)]
    fn unpack(&self, out: &mut IntSuperBlock) {
        crumbs(&self.qs, |g, i, v| out.q[128 * g + i] = v as i8);
        for (s, &sc) in self.scales.iter().enumerate() {
            out.scales[s] = (sc & 0xF) as i16;
            out.mins[s] = (sc >> 4) as i16;
        }
        out.d = self.d.to_f32();
        out.dmin = -self.dmin.to_f32();
    }
}

impl UnpackK for BlockQ3K {
    #[inline(always)]
    fn unpack(&self, out: &mut IntSuperBlock) {
        // q = low 2 bits - 4 where the hmask bit (bit i/32 of byte i%32) is clear.
        crumbs(&self.qs, |g, i, v| {
            let high = (self.hmask[i % 32] >> (4 * g + i / 32)) & 1;
            out.q[128 * g + i] = (v + 4 * high) as i8 - 4;
        });
        for s in 0..16 {
            out.scales[s] = q3k_scale(&self.scales, s) as i16;
        }
        out.mins = [0; 16];
        out.d = self.d.to_f32();
        out.dmin = 0.0;
    }
}

#[inline(always)]
fn unpack_q45k(scales: &[u8; 12], qs: &[u8; 128], qh: Option<&[u8; 32]>, out: &mut IntSuperBlock) {
    // Sub-blocks 2p and 2p+1 share the bytes qs[32p..32p+32] (low and high nibbles); written
    // as straight loops over 32 lanes so that they vectorize.
    let qh = qh.unwrap_or(&[0; 32]);
    for p in 0..4 {
        let (lo, hi) = out.q[64 * p..64 * p + 64].split_at_mut(32);
        for l in 0..32 {
            let b = qs[32 * p + l];
            lo[l] = ((b & 0xF) | (((qh[l] >> (2 * p)) & 1) << 4)) as i8;
            hi[l] = ((b >> 4) | (((qh[l] >> (2 * p + 1)) & 1) << 4)) as i8;
        }
    }
    for sub in 0..8 {
        let (sc, m) = k4_scale_min(scales, sub);
        out.scales[2 * sub..2 * sub + 2].fill(sc as i16);
        out.mins[2 * sub..2 * sub + 2].fill(m as i16);
    }
}

impl UnpackK for BlockQ4K {
    #[inline(always)]
    fn unpack(&self, out: &mut IntSuperBlock) {
        unpack_q45k(&self.scales, &self.qs, None, out);
        out.d = self.d.to_f32();
        out.dmin = -self.dmin.to_f32();
    }
}

impl UnpackK for BlockQ5K {
    #[inline(always)]
    fn unpack(&self, out: &mut IntSuperBlock) {
        unpack_q45k(&self.scales, &self.qs, Some(&self.qh), out);
        out.d = self.d.to_f32();
        out.dmin = -self.dmin.to_f32();
    }
}

impl UnpackK for BlockQ6K {
    #[inline(always)]
    fn unpack(&self, out: &mut IntSuperBlock) {
        // Value 32j + l of half g: nibble j/2 of ql[64g + 32(j%2) + l], high bits 2j of
        // qh[32g + l]; straight loops over 32 lanes so that they vectorize.
        for g in 0..2 {
            for j in 0..4 {
                for l in 0..32 {
                    let low = (self.ql[64 * g + 32 * (j % 2) + l] >> (4 * (j / 2))) & 0xF;
                    let high = (self.qh[32 * g + l] >> (2 * j)) & 3;
                    out.q[128 * g + 32 * j + l] = (low | (high << 4)) as i8 - 32;
                }
            }
        }
        out.scales = self.scales.map(|s| s as i16);
        out.mins = [0; 16];
        out.d = self.d.to_f32();
        out.dmin = 0.0;
    }
}

/// The 8 bytes of a packed grid row times the 8 signs (bit k set: negative), on the whole
/// word at once (a select per byte made this a fifth of an AVX2 IQ2 prefill). The grids'
/// bytes are 1..=127, so `(g ^ 0xFF) + 1` negates a byte without a carry into the next.
#[inline(always)]
fn signed_row(q: &mut [i8], row: u64, signs: u8) {
    const LOW: u64 = 0x0101_0101_0101_0101;
    // Sign bit k to bit k of byte k, then to 1 in byte k.
    let bits = (signs as u64).wrapping_mul(LOW) & 0x8040_2010_0804_0201;
    let negative = ((bits + 0x7F7F_7F7F_7F7F_7F7F) >> 7) & LOW;
    let v = (row ^ (negative * 0xFF)).wrapping_add(negative);
    q[..8].copy_from_slice(&bytemuck::cast::<u64, [i8; 8]>(v.to_le()));
}

impl UnpackK for BlockIq2Xxs {
    #[inline(always)]
    fn unpack(&self, out: &mut IntSuperBlock) {
        for ib in 0..8 {
            let aux = u32_le(&self.qs[8 * ib + 4..]);
            for k in 0..4 {
                let signs = KSIGNS_IQ2XS[((aux >> (7 * k)) & 127) as usize];
                let row = IQ2XXS_GRID[self.qs[8 * ib + k] as usize];
                signed_row(&mut out.q[32 * ib + 8 * k..], row, signs);
            }
            out.scales[2 * ib..2 * ib + 2].fill(2 * (aux >> 28) as i16 + 1);
        }
        out.mins = [0; 16];
        out.d = self.d.to_f32() * 0.125;
        out.dmin = 0.0;
    }
}

impl UnpackK for BlockIq2Xs {
    #[inline(always)]
    fn unpack(&self, out: &mut IntSuperBlock) {
        for e in 0..32 {
            let q = u16_le(self.qs[e]);
            let row = IQ2XS_GRID[(q & 511) as usize];
            signed_row(&mut out.q[8 * e..], row, KSIGNS_IQ2XS[(q >> 9) as usize]);
        }
        for s in 0..16 {
            out.scales[s] = 2 * nibble_scale(&self.scales, s) as i16 + 1;
        }
        out.mins = [0; 16];
        out.d = self.d.to_f32() * 0.125;
        out.dmin = 0.0;
    }
}

impl UnpackK for BlockIq2S {
    #[inline(always)]
    fn unpack(&self, out: &mut IntSuperBlock) {
        for e in 0..32 {
            let high = ((self.qh[e / 4] >> (2 * (e % 4))) & 3) as usize;
            let row = IQ2S_GRID[self.qs[e] as usize | (high << 8)];
            signed_row(&mut out.q[8 * e..], row, self.signs[e]);
        }
        for s in 0..16 {
            out.scales[s] = 2 * nibble_scale(&self.scales, s) as i16 + 1;
        }
        out.mins = [0; 16];
        out.d = self.d.to_f32() * 0.125;
        out.dmin = 0.0;
    }
}

fn rows4x2(a: u32, b: u32) -> u64 {
    a as u64 | ((b as u64) << 32)
}

impl UnpackK for BlockIq3Xxs {
    #[inline(always)]
    fn unpack(&self, out: &mut IntSuperBlock) {
        for ib in 0..8 {
            let aux = u32_le(&self.scales_signs[4 * ib..]);
            for k in 0..4 {
                let signs = KSIGNS_IQ2XS[((aux >> (7 * k)) & 127) as usize];
                let q = &self.qs[8 * ib + 2 * k..];
                let row = rows4x2(IQ3XXS_GRID[q[0] as usize], IQ3XXS_GRID[q[1] as usize]);
                signed_row(&mut out.q[32 * ib + 8 * k..], row, signs);
            }
            out.scales[2 * ib..2 * ib + 2].fill(2 * (aux >> 28) as i16 + 1);
        }
        out.mins = [0; 16];
        out.d = self.d.to_f32() * 0.25;
        out.dmin = 0.0;
    }
}

impl UnpackK for BlockIq3S {
    #[inline(always)]
    fn unpack(&self, out: &mut IntSuperBlock) {
        let index =
            |g: usize| self.qs[g] as usize | ((((self.qh[g / 8] >> (g % 8)) & 1) as usize) << 8);
        for e in 0..32 {
            let row = rows4x2(IQ3S_GRID[index(2 * e)], IQ3S_GRID[index(2 * e + 1)]);
            signed_row(&mut out.q[8 * e..], row, self.signs[e]);
        }
        for s in 0..16 {
            out.scales[s] = 2 * nibble_scale(&self.scales, s / 2) as i16 + 1;
        }
        out.mins = [0; 16];
        out.d = self.d.to_f32();
        out.dmin = 0.0;
    }
}

/// IQ1 ternary grid row with the shift folded in: `8 g + 1` or `8 g - 1`.
fn iq1_row(q: &mut [i8], row: u64, negative_shift: bool) {
    let shift = if negative_shift { -1 } else { 1 };
    for (k, v) in q[..8].iter_mut().enumerate() {
        *v = 8 * ((row >> (8 * k)) & 0xFF) as u8 as i8 + shift;
    }
}

impl UnpackK for BlockIq1S {
    #[inline(always)]
    fn unpack(&self, out: &mut IntSuperBlock) {
        for ib in 0..8 {
            let qh = u16_le(self.qh[ib]);
            for k in 0..4 {
                let idx = self.qs[4 * ib + k] as usize | ((((qh >> (3 * k)) & 7) as usize) << 8);
                iq1_row(
                    &mut out.q[32 * ib + 8 * k..],
                    IQ1S_GRID[idx],
                    qh & 0x8000 != 0,
                );
            }
            out.scales[2 * ib..2 * ib + 2].fill(2 * ((qh >> 12) & 7) as i16 + 1);
        }
        out.mins = [0; 16];
        out.d = self.d.to_f32() * 0.125;
        out.dmin = 0.0;
    }
}

impl UnpackK for BlockIq1M {
    #[inline(always)]
    fn unpack(&self, out: &mut IntSuperBlock) {
        let sc = self.scales.map(u16_le);
        for e in 0..32 {
            let h = (self.qh[e / 2] >> (4 * (e % 2))) & 0xF;
            let idx = self.qs[e] as usize | (((h & 7) as usize) << 8);
            iq1_row(&mut out.q[8 * e..], IQ1S_GRID[idx], h & 8 != 0);
        }
        for s in 0..16 {
            out.scales[s] = 2 * ((sc[s / 4] >> (3 * (s % 4))) & 7) as i16 + 1;
        }
        out.mins = [0; 16];
        out.d = self.d() * 0.125;
        out.dmin = 0.0;
    }
}

impl UnpackK for BlockIq4Xs {
    #[inline(always)]
    fn unpack(&self, out: &mut IntSuperBlock) {
        for ib in 0..8 {
            let qs: &[u8; 16] = self.qs[16 * ib..16 * ib + 16].try_into().expect("16 bytes");
            for j in 0..32 {
                out.q[32 * ib + j] = KVALUES_IQ4NL[nibble(qs, j) as usize];
            }
            out.scales[2 * ib..2 * ib + 2].fill(self.scale(ib) as i16);
        }
        out.mins = [0; 16];
        out.d = self.d.to_f32();
        out.dmin = 0.0;
    }
}
