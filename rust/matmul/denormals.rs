//! Flush-to-zero and denormals-are-zero (MXCSR bits 15 and 6) while ferrollm computes: a
//! subnormal float operand or result makes an SSE/AVX instruction take a microcode assist
//! (tens to hundreds of cycles), so a model whose activations or attention weights drift into
//! that range would slow down several times with no visible cause. The softmax already
//! keeps its weights normal; this covers everything else (products of tiny weights, norms of
//! tiny activations). Results change only where a value would have been below 1.2e-38.
//!
//! The pool's workers set the mode for their lifetime; a calling thread (Python's) gets it
//! for the duration of a guard and back as it was, so numpy code on that thread is unaffected.

/// While alive, the thread flushes subnormals to zero; the previous mode comes back on drop.
pub struct FlushDenormals {
    #[cfg(target_arch = "x86_64")]
    saved: u32,
}

#[cfg(target_arch = "x86_64")]
const FTZ_DAZ: u32 = (1 << 15) | (1 << 6);

impl FlushDenormals {
    pub fn on() -> FlushDenormals {
        #[cfg(target_arch = "x86_64")]
        {
            let saved = read_mxcsr();
            if saved & FTZ_DAZ != FTZ_DAZ {
                write_mxcsr(saved | FTZ_DAZ);
            }
            FlushDenormals { saved }
        }
        #[cfg(not(target_arch = "x86_64"))]
        FlushDenormals {}
    }
}

impl Drop for FlushDenormals {
    fn drop(&mut self) {
        #[cfg(target_arch = "x86_64")]
        if read_mxcsr() != self.saved {
            write_mxcsr(self.saved);
        }
    }
}

/// Whether this thread flushes subnormals now (for tests).
pub fn flushing() -> bool {
    #[cfg(target_arch = "x86_64")]
    return read_mxcsr() & FTZ_DAZ == FTZ_DAZ;
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[cfg(target_arch = "x86_64")]
fn read_mxcsr() -> u32 {
    let mut v = 0u32;
    // SAFETY: stmxcsr stores the 4-byte control register into `v`.
    unsafe { std::arch::asm!("stmxcsr [{}]", in(reg) &mut v, options(nostack, preserves_flags)) };
    v
}

#[cfg(target_arch = "x86_64")]
fn write_mxcsr(v: u32) {
    // SAFETY: ldmxcsr loads a valid control word (only FTZ/DAZ differ from the current one).
    unsafe { std::arch::asm!("ldmxcsr [{}]", in(reg) &v, options(nostack, preserves_flags)) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_flushes_and_restores() {
        let before = flushing();
        let tiny = std::hint::black_box(f32::MIN_POSITIVE);
        {
            let _g = FlushDenormals::on();
            assert!(flushing());
            #[cfg(target_arch = "x86_64")]
            assert_eq!(
                std::hint::black_box(tiny) / std::hint::black_box(4.0f32),
                0.0
            );
        }
        assert_eq!(flushing(), before);
        if !before {
            assert!((tiny / std::hint::black_box(4.0f32)) > 0.0);
        }
    }
}
