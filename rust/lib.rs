//! ferrollm's core: GGUF files, quantized block types and their kernels.

pub mod error;
pub mod gguf;
pub mod kernels;
pub mod matmul;
pub mod model;
pub mod quant;

#[cfg(feature = "python")]
mod python;

pub use error::{Error, Result};
