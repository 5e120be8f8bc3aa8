//! A plain memory-read benchmark: the ceiling the decode kernels are compared against. Each
//! worker sums its share of the buffer with wide loads, as a matvec streams its weights; the
//! caller picks a buffer larger than the last-level cache to measure DRAM.

use std::time::Instant;

use super::Pool;

/// Sums `buf` as u64 words (wrapping) with four independent accumulators, so that the loop is
/// bound by loads alone: 32-byte loads where AVX2 is present (the kernels' load width).
fn read_all(buf: &[u8]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was just detected.
        return unsafe { read_all_avx2(buf) };
    }
    let mut acc = [0u64; 4];
    for chunk in buf.chunks_exact(32) {
        for (k, a) in acc.iter_mut().enumerate() {
            let w = u64::from_le_bytes(chunk[8 * k..8 * k + 8].try_into().expect("8 bytes"));
            *a = a.wrapping_add(w);
        }
    }
    acc.iter().fold(0, |s, &a| s.wrapping_add(a))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
#[allow(unsafe_op_in_unsafe_fn)]
unsafe fn read_all_avx2(buf: &[u8]) -> u64 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_si256(); 4];
    for chunk in buf.chunks_exact(128) {
        for (k, a) in acc.iter_mut().enumerate() {
            let v = _mm256_loadu_si256(chunk.as_ptr().add(32 * k) as *const __m256i);
            *a = _mm256_add_epi64(*a, v);
        }
    }
    let mut lanes = [0u64; 4];
    let total = _mm256_add_epi64(
        _mm256_add_epi64(acc[0], acc[1]),
        _mm256_add_epi64(acc[2], acc[3]),
    );
    _mm256_storeu_si256(lanes.as_mut_ptr() as *mut __m256i, total);
    lanes.iter().fold(0, |s, &a| s.wrapping_add(a))
}

/// GB/s (1e9 bytes per second) of reading `buf` split over all the pool's threads: the best of
/// `reps` passes.
pub fn read_bandwidth(pool: &Pool, buf: &[u8], reps: usize) -> f64 {
    let n = pool.threads();
    let part = buf.len().div_ceil(n).next_multiple_of(64);
    let mut best = f64::INFINITY;
    for _ in 0..reps.max(1) {
        let start = Instant::now();
        let sink = std::sync::atomic::AtomicU64::new(0);
        pool.run(n, |i| {
            let lo = (i * part).min(buf.len());
            let hi = ((i + 1) * part).min(buf.len());
            sink.fetch_add(read_all(&buf[lo..hi]), std::sync::atomic::Ordering::Relaxed);
        });
        std::hint::black_box(sink.into_inner());
        best = best.min(start.elapsed().as_secs_f64());
    }
    buf.len() as f64 / best / 1e9
}
