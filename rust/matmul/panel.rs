//! The integer panel form that the batched (`gemm`) and narrow products share: the portable
//! row unpackers (every type as signed bytes, group scales and offsets), the sizes a product
//! walks, and the blocks of a quantized activation row.

use super::unpack::{IntSuperBlock, Unpack32, UnpackK};
use crate::gguf::{GgmlType, QK_K};
use crate::quant::block::F16Le;
use crate::quant::kquants::BlockQ8K;

/// Weight rows per tile (one task).
pub const TILE_ROWS: usize = 16;

#[inline(always)]
pub(crate) fn unpack_row_32<B: Unpack32 + bytemuck::Pod>(
    row: &[u8],
    q: &mut [u8],
    sd: &mut [f32],
    m: &mut [f32],
) {
    let blocks: &[B] = bytemuck::cast_slice(row);
    for (b, block) in blocks.iter().enumerate() {
        let u = block.unpack();
        for (d, &v) in q[32 * b..32 * b + 32].iter_mut().zip(&u.q) {
            *d = v as u8;
        }
        sd[b] = u.d;
        m[b] = u.m;
    }
}

/// Super-blocks through their integer form, with groups of `G` elements (for G = 32, the two
/// 16-element halves of a group share their scale and min).
#[inline(always)]
pub(crate) fn unpack_row_k<B: UnpackK + bytemuck::Pod, const G: usize>(
    row: &[u8],
    q: &mut [u8],
    sd: &mut [f32],
    m: &mut [f32],
) {
    let blocks: &[B] = bytemuck::cast_slice(row);
    let mut u = IntSuperBlock::default();
    let per_block = QK_K / G;
    // Chunked (no index arithmetic) so that the stores vectorize: for Q2_K the group terms
    // were 40% of the unpacking.
    let groups = sd
        .chunks_exact_mut(per_block)
        .zip(m.chunks_exact_mut(per_block));
    for ((block, q), (sd, m)) in blocks.iter().zip(q.chunks_exact_mut(QK_K)).zip(groups) {
        block.unpack(&mut u);
        for (d, &v) in q.iter_mut().zip(&u.q) {
            *d = v as u8;
        }
        for (g, (sd, m)) in sd.iter_mut().zip(m.iter_mut()).enumerate() {
            let half = g * G / 16;
            *sd = u.d * u.scales[half] as f32;
            *m = u.dmin * u.mins[half] as f32;
        }
    }
}

/// The blocks of one quantized activation row (Q8_0 or Q8_K): each block's scale and its
/// quants (signed bytes).
pub(crate) fn act_blocks(act_ty: GgmlType, row: &[u8]) -> impl Iterator<Item = (f32, &[u8])> {
    let (block_elems, block_bytes) = (act_ty.block_elems(), act_ty.block_bytes());
    row.chunks_exact(block_bytes).map(move |block| {
        if act_ty == GgmlType::Q8_0 {
            (
                F16Le([block[0], block[1]]).to_f32(),
                &block[2..2 + block_elems],
            )
        } else {
            let b: &BlockQ8K = bytemuck::from_bytes(block);
            (f32::from_le_bytes(b.d), bytemuck::cast_slice(&b.qs))
        }
    })
}

/// The sizes the kernel walks.
pub(crate) struct Shape {
    pub n: usize,
    pub cols: usize,
    pub rows: usize,
    pub group: usize,
    pub per_block: usize,
    pub offset: bool,
}
