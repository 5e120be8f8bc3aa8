//! GGUF reading and writing for Python: `GGUFFile` (a validated, memory-mapped file) and
//! `write_gguf`.

use std::fs::File;
use std::io::BufWriter;
use std::sync::Arc;

use numpy::ndarray::ArrayView1;
use numpy::{PyArray1, PyArrayMethods, PyReadonlyArray1};
use pyo3::exceptions::{PyKeyError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use super::quant::parse_type;
use crate::error::Error;
use crate::gguf::{GgufFile, GgufWriter, TensorSpec, Value, ValueType};
use crate::quant;

#[pyclass(name = "GGUFFile", module = "ferrollm._core", frozen)]
pub struct PyGgufFile {
    file: Arc<GgufFile>,
    path: String,
}

fn value_to_py<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::U8(x) => x.into_pyobject(py)?.into_any(),
        Value::I8(x) => x.into_pyobject(py)?.into_any(),
        Value::U16(x) => x.into_pyobject(py)?.into_any(),
        Value::I16(x) => x.into_pyobject(py)?.into_any(),
        Value::U32(x) => x.into_pyobject(py)?.into_any(),
        Value::I32(x) => x.into_pyobject(py)?.into_any(),
        Value::U64(x) => x.into_pyobject(py)?.into_any(),
        Value::I64(x) => x.into_pyobject(py)?.into_any(),
        Value::F32(x) => x.into_pyobject(py)?.into_any(),
        Value::F64(x) => x.into_pyobject(py)?.into_any(),
        Value::Bool(x) => x.into_pyobject(py)?.to_owned().into_any(),
        Value::String(s) => s.into_pyobject(py)?.into_any(),
        Value::Array(_, values) => {
            let items = values
                .iter()
                .map(|item| value_to_py(py, item))
                .collect::<PyResult<Vec<_>>>()?;
            PyList::new(py, items)?.into_any()
        }
    })
}

/// Builds a value of the named type ("u32", "str", "array[f32]", "array[array[u8]]", ...).
fn value_from_py(obj: &Bound<'_, PyAny>, type_name: &str, key: &str) -> PyResult<Value> {
    if let Some(inner) = type_name
        .strip_prefix("array[")
        .and_then(|s| s.strip_suffix(']'))
    {
        let elem =
            ValueType::from_name(inner.split('[').next().unwrap_or(inner)).ok_or_else(|| {
                PyValueError::new_err(format!("metadata '{key}': unknown type '{type_name}'"))
            })?;
        let items = obj
            .try_iter()
            .map_err(|_| {
                PyTypeError::new_err(format!("metadata '{key}': {type_name} needs a sequence"))
            })?
            .map(|item| value_from_py(&item?, inner, key))
            .collect::<PyResult<Vec<_>>>()?;
        return Ok(Value::Array(elem, items));
    }
    let ty = ValueType::from_name(type_name)
        .filter(|t| *t != ValueType::Array)
        .ok_or_else(|| {
            PyValueError::new_err(format!("metadata '{key}': unknown type '{type_name}'"))
        })?;
    let bad =
        |e: PyErr| PyValueError::new_err(format!("metadata '{key}': not a valid {type_name}: {e}"));
    Ok(match ty {
        ValueType::U8 => Value::U8(obj.extract().map_err(bad)?),
        ValueType::I8 => Value::I8(obj.extract().map_err(bad)?),
        ValueType::U16 => Value::U16(obj.extract().map_err(bad)?),
        ValueType::I16 => Value::I16(obj.extract().map_err(bad)?),
        ValueType::U32 => Value::U32(obj.extract().map_err(bad)?),
        ValueType::I32 => Value::I32(obj.extract().map_err(bad)?),
        ValueType::U64 => Value::U64(obj.extract().map_err(bad)?),
        ValueType::I64 => Value::I64(obj.extract().map_err(bad)?),
        ValueType::F32 => Value::F32(obj.extract().map_err(bad)?),
        ValueType::F64 => Value::F64(obj.extract().map_err(bad)?),
        ValueType::Bool => Value::Bool(obj.extract().map_err(bad)?),
        ValueType::String => Value::String(obj.extract().map_err(bad)?),
        ValueType::Array => unreachable!("handled above"),
    })
}

impl PyGgufFile {
    fn info(&self, name: &str) -> PyResult<&crate::gguf::TensorInfo> {
        self.file.tensor(name).ok_or_else(|| {
            PyKeyError::new_err(format!("no tensor named '{name}' in {}", self.path))
        })
    }
}

#[pymethods]
impl PyGgufFile {
    #[new]
    fn open(py: Python<'_>, path: std::path::PathBuf) -> PyResult<Self> {
        let display = path.display().to_string();
        let file = py.detach(|| GgufFile::open(&path))?;
        Ok(PyGgufFile {
            file: Arc::new(file),
            path: display,
        })
    }

    #[getter]
    fn path(&self) -> &str {
        &self.path
    }

    #[getter]
    fn version(&self) -> u32 {
        self.file.version
    }

    #[getter]
    fn alignment(&self) -> u64 {
        self.file.alignment
    }

    #[getter]
    fn data_offset(&self) -> u64 {
        self.file.data_offset
    }

    #[getter]
    fn file_size(&self) -> u64 {
        self.file.file_size()
    }

    /// Metadata as a dict of plain Python values, in file order.
    fn metadata<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (k, v) in &self.file.metadata {
            dict.set_item(k, value_to_py(py, v)?)?;
        }
        Ok(dict)
    }

    /// The GGUF type of each metadata value ("u32", "array[str]", ...).
    fn metadata_types<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let dict = PyDict::new(py);
        for (k, v) in &self.file.metadata {
            dict.set_item(k, v.type_name())?;
        }
        Ok(dict)
    }

    /// (name, dims in ggml order, type name, offset in the data section, nbytes) per tensor.
    fn tensor_infos(&self) -> Vec<(String, Vec<u64>, &'static str, u64, u64)> {
        self.file
            .tensors
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    t.dims.clone(),
                    t.ty.name(),
                    t.offset,
                    t.nbytes,
                )
            })
            .collect()
    }

    /// The tensor's raw bytes: a read-only numpy view into the memory map (no copy). The view
    /// keeps this file object, and so the map, alive.
    fn tensor_bytes<'py>(slf: &Bound<'py, Self>, name: &str) -> PyResult<Bound<'py, PyArray1<u8>>> {
        let this = slf.get();
        let info = this.info(name)?;
        let bytes = this.file.tensor_data(info);
        let view = ArrayView1::from(bytes);
        // SAFETY: `bytes` lives in the map owned by `this.file`, which `slf` (set as the array's
        // base) keeps alive and never remaps; the array is made read-only before it is returned,
        // so the read-only mapping is never written.
        let array = unsafe { PyArray1::borrow_from_array(&view, slf.clone().into_any()) };
        array.call_method1("setflags", (false,))?;
        Ok(array)
    }

    /// The tensor dequantized to float32, shaped as numpy orders it (reversed ggml dims).
    fn dequantize<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        let info = self.info(name)?.clone();
        let shape: Vec<usize> = info.dims.iter().rev().map(|&d| d as usize).collect();
        let file = Arc::clone(&self.file);
        let out = py.detach(move || -> Result<Vec<f32>, Error> {
            let mut out = vec![0f32; info.n_elements() as usize];
            quant::dequantize(info.ty, file.tensor_data(&info), &mut out)?;
            Ok(out)
        })?;
        PyArray1::from_vec(py, out)
            .reshape(shape)
            .map(|a| a.into_any())
    }

    fn __repr__(&self) -> String {
        format!(
            "GGUFFile('{}', version={}, tensors={}, metadata={})",
            self.path,
            self.file.version,
            self.file.tensors.len(),
            self.file.metadata.len()
        )
    }
}

/// A tensor to write: name, dims (ggml order), type name, bytes, sample seed.
type TensorArg<'py> = (
    String,
    Vec<u64>,
    String,
    PyReadonlyArray1<'py, u8>,
    Option<u64>,
);

/// Writes a GGUF v3 file. `metadata`: (key, type name, value) triples; `tensors`: (name, dims
/// in ggml order, type name, raw bytes as a uint8 array, sample seed) in file order. With a
/// seed, the bytes are a pool of whole blocks that the tensor is filled from at random.
#[pyfunction]
fn write_gguf(
    py: Python<'_>,
    path: std::path::PathBuf,
    metadata: Vec<(String, String, Bound<'_, PyAny>)>,
    tensors: Vec<TensorArg<'_>>,
) -> PyResult<()> {
    let kv = metadata
        .iter()
        .map(|(k, t, v)| Ok((k.clone(), value_from_py(v, t, k)?)))
        .collect::<PyResult<Vec<_>>>()?;
    let specs = tensors
        .iter()
        .map(|(name, dims, ty, _, _)| {
            Ok(TensorSpec {
                name: name.clone(),
                dims: dims.clone(),
                ty: parse_type(ty)?,
            })
        })
        .collect::<PyResult<Vec<_>>>()?;
    let data = tensors
        .iter()
        .map(|t| Ok((t.3.as_slice()?, t.4)))
        .collect::<PyResult<Vec<_>>>()?;
    py.detach(|| {
        // Written beside the target and renamed into place: a failure never leaves a
        // half-written file under the requested name (or destroys an existing one).
        let tmp = path.with_extension(format!("tmp-{}", std::process::id()));
        let io = |source| Error::Io {
            path: tmp.display().to_string(),
            source,
        };
        let result = (|| -> Result<(), Error> {
            let file = File::create(&tmp).map_err(io)?;
            let mut writer = GgufWriter::new(BufWriter::new(file), &kv, specs)?;
            for (bytes, sample_seed) in data {
                match sample_seed {
                    None => writer.write_tensor(bytes)?,
                    Some(seed) => writer.write_tensor_sampled(bytes, seed)?,
                }
            }
            writer.finish()?;
            std::fs::rename(&tmp, &path).map_err(|source| Error::Io {
                path: path.display().to_string(),
                source,
            })
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    })?;
    Ok(())
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyGgufFile>()?;
    m.add_function(wrap_pyfunction!(write_gguf, m)?)?;
    Ok(())
}
