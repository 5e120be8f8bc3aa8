//! Block types and dequantization for Python.

use numpy::{PyArray1, PyArrayMethods, PyReadonlyArray1};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::gguf::GgmlType;
use crate::quant::{self, Isa};

pub fn parse_type(name: &str) -> PyResult<GgmlType> {
    GgmlType::from_name(name)
        .ok_or_else(|| PyValueError::new_err(format!("unknown tensor type '{name}'")))
}

pub fn parse_isa(name: Option<&str>) -> PyResult<Isa> {
    match name {
        None => Ok(Isa::active()),
        Some(n) => Isa::from_name(n).ok_or_else(|| {
            PyValueError::new_err(format!(
                "unknown instruction set '{n}' (scalar, avx2, avx512)"
            ))
        }),
    }
}

/// Dequantizes raw blocks of `type_name` into a float32 array (one dimension): a new one, or
/// `out` when given (no allocation; its length must match). `isa` picks a lower kernel tier
/// ("scalar", "avx2") for tests and benchmarks.
#[pyfunction]
#[pyo3(signature = (data, type_name, isa = None, out = None))]
fn dequantize<'py>(
    py: Python<'py>,
    data: PyReadonlyArray1<'py, u8>,
    type_name: &str,
    isa: Option<&str>,
    out: Option<Bound<'py, PyArray1<f32>>>,
) -> PyResult<Bound<'py, PyArray1<f32>>> {
    let ty = parse_type(type_name)?;
    let isa = parse_isa(isa)?;
    let src = data.as_slice()?;
    let bb = ty.block_bytes();
    if src.len() % bb != 0 {
        return Err(PyValueError::new_err(format!(
            "{ty}: {} bytes is not a whole number of {bb}-byte blocks",
            src.len()
        )));
    }
    let n = src.len() / bb * ty.block_elems();
    match out {
        Some(out) => {
            {
                let mut guard = out.try_readwrite()?;
                let dst = guard.as_slice_mut()?;
                if dst.len() != n {
                    return Err(PyValueError::new_err(format!(
                        "out has {} elements, the data holds {n}",
                        dst.len()
                    )));
                }
                py.detach(|| quant::dequantize_with(ty, src, dst, isa))?;
            }
            Ok(out)
        }
        None => {
            let out = py.detach(|| {
                let mut out = vec![0f32; n];
                quant::dequantize_with(ty, src, &mut out, isa).map(|_| out)
            })?;
            Ok(PyArray1::from_vec(py, out))
        }
    }
}

/// Quantizes float32 values (whole blocks) to raw blocks of `type_name`. Without `imatrix`
/// the K and legacy types use the reference quantizers; with it (one mean squared activation
/// per column of rows of `n_per_row` values) every type runs its importance-weighted search.
#[pyfunction]
#[pyo3(signature = (x, type_name, n_per_row = None, imatrix = None, threads = 1))]
fn quantize<'py>(
    py: Python<'py>,
    x: PyReadonlyArray1<'py, f32>,
    type_name: &str,
    n_per_row: Option<usize>,
    imatrix: Option<PyReadonlyArray1<'py, f32>>,
    threads: usize,
) -> PyResult<Bound<'py, PyArray1<u8>>> {
    let ty = parse_type(type_name)?;
    let values = x.as_slice()?;
    let im = imatrix.as_ref().map(|a| a.as_slice()).transpose()?;
    let n_per_row = n_per_row
        .or(im.map(<[f32]>::len))
        .unwrap_or(ty.block_elems());
    let out = py.detach(|| quant::quantize::quantize_rows(ty, values, n_per_row, im, threads))?;
    Ok(PyArray1::from_vec(py, out))
}

/// The kernel tier `dequantize` uses for `type_name` under `isa` (default: the active one).
#[pyfunction]
#[pyo3(signature = (type_name, isa = None))]
fn kernel_isa(type_name: &str, isa: Option<&str>) -> PyResult<Option<&'static str>> {
    let ty = parse_type(type_name)?;
    Ok(quant::dequant_fn(ty, parse_isa(isa)?).map(|(_, tier)| tier.name()))
}

/// (name, id, block elements, block bytes, can dequantize) of every known type.
#[pyfunction]
fn type_table() -> Vec<(&'static str, u32, usize, usize, bool)> {
    GgmlType::ALL
        .iter()
        .map(|&t| {
            (
                t.name(),
                t.id(),
                t.block_elems(),
                t.block_bytes(),
                quant::reference_fn(t).is_some(),
            )
        })
        .collect()
}

/// The tensor types the quantizers write (F32 and F16 by plain conversion), in the type
/// table's order.
#[pyfunction]
fn writable_types() -> Vec<&'static str> {
    crate::kernels::writable_types().map(|t| t.name()).collect()
}

#[pyfunction]
fn isa_detected() -> &'static str {
    Isa::detected().name()
}

#[pyfunction]
fn isa_active() -> &'static str {
    Isa::active().name()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(dequantize, m)?)?;
    m.add_function(wrap_pyfunction!(kernel_isa, m)?)?;
    m.add_function(wrap_pyfunction!(quantize, m)?)?;
    m.add_function(wrap_pyfunction!(type_table, m)?)?;
    m.add_function(wrap_pyfunction!(writable_types, m)?)?;
    m.add_function(wrap_pyfunction!(isa_detected, m)?)?;
    m.add_function(wrap_pyfunction!(isa_active, m)?)?;
    Ok(())
}
