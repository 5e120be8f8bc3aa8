//! Error kinds of the core. Each becomes its own Python exception in `python/` (Display text,
//! never Debug), so a message must stand on its own: what was wrong and where.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    /// A GGUF file broke a rule of the format. `offset` is the byte position of the field.
    #[error("GGUF error at byte {offset}: {message}")]
    Gguf { offset: u64, message: String },

    /// Something the format allows but this engine does not run (a tensor type, an
    /// architecture); the message names it after "unsupported ".
    #[error("unsupported {0}")]
    Unsupported(String),

    /// Bad arguments from the caller (wrong lengths, shapes, names).
    #[error("{0}")]
    Invalid(String),

    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub fn gguf(offset: u64, message: impl Into<String>) -> Self {
        Error::Gguf {
            offset,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Error::Invalid(message.into())
    }
}
