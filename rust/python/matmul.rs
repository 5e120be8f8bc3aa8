//! Quantized matrix products for Python: tests and benchmarks drive the kernels through these.

use std::sync::{Arc, OnceLock};

use numpy::{PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use super::quant::{parse_isa, parse_type};
use crate::matmul::{self as core_matmul, Pool, QMatrix};

/// A pool of worker threads for the matrix products, kept for as many calls as wanted.
#[pyclass(name = "ThreadPool", module = "ferrollm._core", frozen)]
pub struct PyThreadPool {
    pub pool: Arc<Pool>,
}

#[pymethods]
impl PyThreadPool {
    #[new]
    #[pyo3(signature = (n_threads = None))]
    fn new(n_threads: Option<usize>) -> PyResult<Self> {
        Ok(PyThreadPool {
            pool: Arc::new(Pool::new(n_threads)?),
        })
    }

    #[getter]
    fn n_threads(&self) -> usize {
        self.pool.threads()
    }
}

fn default_pool() -> PyResult<Arc<Pool>> {
    static DEFAULT: OnceLock<Arc<Pool>> = OnceLock::new();
    if let Some(p) = DEFAULT.get() {
        return Ok(p.clone());
    }
    let pool = Arc::new(Pool::new(None)?);
    Ok(DEFAULT.get_or_init(|| pool).clone())
}

fn pool_of(pool: Option<&PyThreadPool>) -> PyResult<Arc<Pool>> {
    match pool {
        Some(p) => Ok(p.pool.clone()),
        None => default_pool(),
    }
}

/// `x @ W.T` for a weight matrix of `rows` x `cols` raw blocks of `type_name` and float32
/// activations `x` (n x cols): the activations are quantized to the companion type and the
/// integer kernels of tier `isa` run on `pool`'s threads. Returns float32 (n x rows).
#[pyfunction]
#[pyo3(signature = (weights, type_name, rows, cols, x, isa = None, pool = None))]
#[allow(clippy::too_many_arguments)]
fn matmul<'py>(
    py: Python<'py>,
    weights: PyReadonlyArray1<'py, u8>,
    type_name: &str,
    rows: usize,
    cols: usize,
    x: PyReadonlyArray2<'py, f32>,
    isa: Option<&str>,
    pool: Option<PyRef<'py, PyThreadPool>>,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let ty = parse_type(type_name)?;
    let isa = parse_isa(isa)?;
    let pool = pool_of(pool.as_deref())?;
    let w = QMatrix::new(ty, rows, cols, weights.as_slice()?)?.with_isa(isa);
    let x = x.as_slice()?;
    let n = x.len() / cols;
    let y = py.detach(|| {
        let mut y = vec![0f32; n * rows];
        let mut scratch = Vec::new();
        core_matmul::matmul(&pool, &w, x, &mut y, &mut scratch).map(|_| y)
    })?;
    PyArray1::from_vec(py, y).reshape([n, rows])
}

/// Times matrix-vector products (the decode step) of float32 `x` with weights of `rows` x
/// `cols` raw blocks of `type_name`. `weights` may hold several such matrices back to back:
/// the calls cycle through them, so that with more bytes than the last-level cache each call
/// streams its weights from memory, as a model's decode does. Returns the median seconds per
/// call over `reps` calls after one warm-up pass over all matrices, and the last result; the
/// activation scratch is reused, as in a model.
#[pyfunction]
#[pyo3(signature = (weights, type_name, rows, cols, x, reps, isa = None, pool = None))]
#[allow(clippy::too_many_arguments)]
fn time_matvec<'py>(
    py: Python<'py>,
    weights: PyReadonlyArray1<'py, u8>,
    type_name: &str,
    rows: usize,
    cols: usize,
    x: PyReadonlyArray1<'py, f32>,
    reps: usize,
    isa: Option<&str>,
    pool: Option<PyRef<'py, PyThreadPool>>,
) -> PyResult<(f64, Bound<'py, PyArray1<f32>>)> {
    let ty = parse_type(type_name)?;
    let isa = parse_isa(isa)?;
    let pool = pool_of(pool.as_deref())?;
    let all = weights.as_slice()?;
    let size = rows * (cols / ty.block_elems()) * ty.block_bytes();
    if size == 0 || all.len() % size != 0 {
        return Err(PyValueError::new_err(format!(
            "{} weight bytes are not a whole number of {rows}x{cols} {ty} matrices",
            all.len()
        )));
    }
    let matrices = all
        .chunks_exact(size)
        .map(|m| QMatrix::new(ty, rows, cols, m).map(|m| m.with_isa(isa)))
        .collect::<crate::Result<Vec<_>>>()?;
    let x = x.as_slice()?;
    let (median, y) = py.detach(|| -> crate::Result<(f64, Vec<f32>)> {
        let mut y = vec![0f32; rows];
        let mut scratch = Vec::new();
        for m in &matrices {
            core_matmul::matvec(&pool, m, x, &mut y, &mut scratch)?;
        }
        let mut times = Vec::with_capacity(reps.max(1));
        for i in 0..reps.max(1) {
            let start = std::time::Instant::now();
            core_matmul::matvec(
                &pool,
                &matrices[i % matrices.len()],
                x,
                &mut y,
                &mut scratch,
            )?;
            times.push(start.elapsed().as_secs_f64());
        }
        times.sort_by(f64::total_cmp);
        Ok((times[times.len() / 2], y))
    })?;
    Ok((median, PyArray1::from_vec(py, y)))
}

/// The type activations are quantized to for weights of `type_name` (None: no product).
#[pyfunction]
fn activation_type(type_name: &str) -> PyResult<Option<&'static str>> {
    Ok(core_matmul::activation_type(parse_type(type_name)?).map(|t| t.name()))
}

/// The tier of the dot-product kernel used for `type_name` under `isa`.
#[pyfunction]
#[pyo3(signature = (type_name, isa = None))]
fn dot_isa(type_name: &str, isa: Option<&str>) -> PyResult<Option<&'static str>> {
    let ty = parse_type(type_name)?;
    Ok(core_matmul::dot_fn(ty, parse_isa(isa)?).map(|(_, tier)| tier.name()))
}

/// GB/s of a plain parallel read of a `n_bytes` buffer on `pool` (best of `reps`).
#[pyfunction]
#[pyo3(signature = (n_bytes, reps = 5, pool = None))]
fn read_bandwidth(
    py: Python<'_>,
    n_bytes: usize,
    reps: usize,
    pool: Option<PyRef<'_, PyThreadPool>>,
) -> PyResult<f64> {
    let pool = pool_of(pool.as_deref())?;
    Ok(py.detach(|| {
        let buf: Vec<u8> = (0..n_bytes).map(|i| i as u8).collect();
        core_matmul::read_bandwidth(&pool, &buf, reps)
    }))
}

#[pyfunction]
fn physical_cores() -> usize {
    core_matmul::physical_cores()
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyThreadPool>()?;
    m.add_function(wrap_pyfunction!(matmul, m)?)?;
    m.add_function(wrap_pyfunction!(time_matvec, m)?)?;
    m.add_function(wrap_pyfunction!(activation_type, m)?)?;
    m.add_function(wrap_pyfunction!(dot_isa, m)?)?;
    m.add_function(wrap_pyfunction!(read_bandwidth, m)?)?;
    m.add_function(wrap_pyfunction!(physical_cores, m)?)?;
    Ok(())
}
