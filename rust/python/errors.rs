//! Each core error kind becomes its own Python exception, with the Display text as message.

use pyo3::exceptions::{PyFileNotFoundError, PyOSError, PyPermissionError, PyValueError};
use pyo3::prelude::*;

use crate::error::Error;

pyo3::create_exception!(
    ferrollm,
    GGUFError,
    PyValueError,
    "A GGUF file broke a rule of the format; the message names the field and its byte offset."
);
pyo3::create_exception!(
    ferrollm,
    UnsupportedTypeError,
    PyValueError,
    "A tensor type the operation does not support."
);

impl From<Error> for PyErr {
    fn from(err: Error) -> PyErr {
        let message = err.to_string();
        match err {
            Error::Gguf { .. } => GGUFError::new_err(message),
            Error::Unsupported(_) => UnsupportedTypeError::new_err(message),
            Error::Invalid(_) => PyValueError::new_err(message),
            Error::Io { source, .. } => match source.kind() {
                std::io::ErrorKind::NotFound => PyFileNotFoundError::new_err(message),
                std::io::ErrorKind::PermissionDenied => PyPermissionError::new_err(message),
                _ => PyOSError::new_err(message),
            },
        }
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("GGUFError", py.get_type::<GGUFError>())?;
    m.add(
        "UnsupportedTypeError",
        py.get_type::<UnsupportedTypeError>(),
    )?;
    Ok(())
}
