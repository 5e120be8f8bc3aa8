//! Python bindings: the private extension module `ferrollm._core`. One file per concern;
//! arguments are extracted with the GIL held, heavy work runs with it released.

mod errors;
mod gguf;
mod matmul;
mod model;
mod quant;

use pyo3::prelude::*;

#[pymodule]
#[pyo3(name = "_core")]
fn core_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    gguf::register(m)?;
    quant::register(m)?;
    matmul::register(m)?;
    model::register(m)?;
    Ok(())
}
