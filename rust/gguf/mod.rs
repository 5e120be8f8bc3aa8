//! The GGUF container: types, metadata values, a validating reader and a streaming writer.

pub mod reader;
pub mod types;
pub mod value;
pub mod writer;

pub use reader::{GgufFile, TensorInfo};
pub use types::{GgmlType, QK_K};
pub use value::{Value, ValueType};
pub use writer::{GgufWriter, TensorSpec};

#[cfg(test)]
mod tests;
