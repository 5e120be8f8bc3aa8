//! The transformer for Python: one `eval` call per batch or decoded token, GIL released.

use numpy::{PyArray1, PyArray2, PyArrayMethods};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use super::quant::parse_type;
use crate::gguf::{GgufFile, Value};
use crate::model::{Config, Model, ModelParams, layer_positions};

/// A loaded model with its KV cache and thread pool.
#[pyclass(name = "Model", module = "ferrollm._core")]
pub struct PyModel {
    /// None once closed: the map, cache and threads are released then, and calls are errors.
    model: Option<Model>,
    logits: Vec<f32>,
}

impl PyModel {
    fn model(&self) -> PyResult<&Model> {
        self.model
            .as_ref()
            .ok_or_else(|| PyRuntimeError::new_err("the model is closed"))
    }
    fn model_mut(&mut self) -> PyResult<&mut Model> {
        self.model
            .as_mut()
            .ok_or_else(|| PyRuntimeError::new_err("the model is closed"))
    }
}

/// An override from Python: (full key, "int" | "float" | "bool" | "str", value).
fn override_value(key: &str, ty: &str, value: &Bound<'_, PyAny>) -> PyResult<Value> {
    let bad = |e: PyErr| PyValueError::new_err(format!("override {key}={ty}:...: {e}"));
    Ok(match ty {
        "int" => Value::I64(value.extract().map_err(bad)?),
        "float" => Value::F64(value.extract().map_err(bad)?),
        "bool" => Value::Bool(value.extract().map_err(bad)?),
        "str" => Value::String(value.extract().map_err(bad)?),
        _ => {
            return Err(PyValueError::new_err(format!(
                "override {key}: unknown type '{ty}' (int, float, bool, str)"
            )));
        }
    })
}

/// Token ids from Python, where a negative one would otherwise be a bare OverflowError: the
/// engine's own "outside the vocabulary" error instead (ids past it are the engine's to refuse).
fn token_ids(model: &Model, tokens: Vec<i64>) -> PyResult<Vec<u32>> {
    tokens
        .into_iter()
        .map(|t| u32::try_from(t).map_err(|_| model.out_of_vocabulary(t).into()))
        .collect()
}

#[pymethods]
impl PyModel {
    #[new]
    #[pyo3(signature = (path, n_ctx = 0, n_threads = None, n_batch = 512, type_k = "f16", type_v = "f16", overrides = Vec::new(), check_tensors = false, n_seq = 1))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: std::path::PathBuf,
        n_ctx: usize,
        n_threads: Option<usize>,
        n_batch: usize,
        type_k: &str,
        type_v: &str,
        overrides: Vec<(String, String, Bound<'_, PyAny>)>,
        check_tensors: bool,
        n_seq: usize,
    ) -> PyResult<Self> {
        let overrides = overrides
            .iter()
            .map(|(k, t, v)| Ok((k.clone(), override_value(k, t, v)?)))
            .collect::<PyResult<Vec<_>>>()?;
        let params = ModelParams {
            n_ctx,
            n_seq,
            n_threads,
            n_batch,
            type_k: parse_type(type_k)?,
            type_v: parse_type(type_v)?,
            overrides,
            check_tensors,
        };
        let model = py.detach(|| Model::load(path, params))?;
        Ok(PyModel {
            model: Some(model),
            logits: Vec::new(),
        })
    }

    /// Runs `tokens` after the cached positions; returns float32 logits, one row per token
    /// when `logits_all`, one row per token from index `logits_from` on when that is given,
    /// else one row for the last token.
    #[pyo3(signature = (tokens, logits_all = false, logits_from = None))]
    fn eval<'py>(
        &mut self,
        py: Python<'py>,
        tokens: Vec<i64>,
        logits_all: bool,
        logits_from: Option<usize>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let tokens = token_ids(self.model()?, tokens)?;
        let first = match logits_from {
            Some(first) => first,
            None if logits_all => 0,
            None => tokens.len().saturating_sub(1),
        };
        let model = self
            .model
            .as_mut()
            .ok_or_else(|| PyRuntimeError::new_err("the model is closed"))?;
        let logits = &mut self.logits;
        py.detach(|| model.eval_from(&tokens, first, logits))?;
        let n_vocab = model.n_vocab();
        PyArray1::from_slice(py, &self.logits).reshape([self.logits.len() / n_vocab, n_vocab])
    }

    /// Runs each (sequence, tokens) after that sequence's cached positions, all in one forward
    /// pass; returns the logits of each run's last token, float32 [len(runs), n_vocab].
    fn eval_batch<'py>(
        &mut self,
        py: Python<'py>,
        runs: Vec<(usize, Vec<i64>)>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let runs = runs
            .into_iter()
            .map(|(seq, tokens)| Ok((seq, token_ids(self.model()?, tokens)?)))
            .collect::<PyResult<Vec<_>>>()?;
        let model = self
            .model
            .as_mut()
            .ok_or_else(|| PyRuntimeError::new_err("the model is closed"))?;
        let logits = &mut self.logits;
        let runs: Vec<(usize, &[u32])> = runs.iter().map(|(s, t)| (*s, t.as_slice())).collect();
        py.detach(|| model.eval_batch(&runs, logits))?;
        let n_vocab = model.n_vocab();
        PyArray1::from_slice(py, &self.logits).reshape([runs.len(), n_vocab])
    }

    /// Sequence `seq`'s KV cache (its cached positions) as bytes, for `load_kv`.
    #[pyo3(signature = (seq = 0))]
    fn save_kv<'py>(
        &self,
        py: Python<'py>,
        seq: usize,
    ) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
        let data = self.model()?.save_kv(seq)?;
        Ok(pyo3::types::PyBytes::new(py, &data))
    }

    /// Restores sequence `seq`'s KV cache from `save_kv`'s bytes (same file and cache types);
    /// ValueError, with nothing changed, for a state of another shape.
    #[pyo3(signature = (data, seq = 0))]
    fn load_kv(&mut self, data: &[u8], seq: usize) -> PyResult<()> {
        Ok(self.model_mut()?.load_kv(seq, data)?)
    }

    /// The residual stream of each of `tokens` entering each layer, then after the output
    /// norm (Hugging Face's `output_hidden_states`): float32 [n_layer + 1, len(tokens), n_embd].
    /// The tokens are evaluated after sequence 0's cached positions and stay cached.
    fn hidden_states<'py>(
        &mut self,
        py: Python<'py>,
        tokens: Vec<i64>,
    ) -> PyResult<Bound<'py, numpy::PyArray3<f32>>> {
        let tokens = token_ids(self.model()?, tokens)?;
        let model = self.model_mut()?;
        let (n_layer, n_embd) = (model.config.n_layer, model.config.n_embd);
        let hidden = py.detach(|| model.hidden_states(&tokens))?;
        PyArray1::from_vec(py, hidden).reshape([n_layer + 1, tokens.len(), n_embd])
    }

    /// Each of `tokens`' state after the output norm (what llama.cpp pools into embeddings),
    /// float32 [len(tokens), n_embd], without the output head. The tokens are evaluated after
    /// sequence 0's cached positions and stay cached.
    fn embeddings<'py>(
        &mut self,
        py: Python<'py>,
        tokens: Vec<i64>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let tokens = token_ids(self.model()?, tokens)?;
        let model = self.model_mut()?;
        let n_embd = model.config.n_embd;
        let out = py.detach(|| model.embeddings(&tokens))?;
        PyArray1::from_vec(py, out).reshape([tokens.len(), n_embd])
    }

    /// The most tokens one `eval` may take for each token's logits to be the bits it gets
    /// evaluated alone (the products of the model's weight types that keep a row's sums in
    /// its single order); speculative decoding verifies that many guesses per call.
    #[getter]
    fn exact_batch_rows(&self) -> PyResult<usize> {
        Ok(self.model()?.exact_batch_rows())
    }

    /// Seconds per component of the forward pass (embed_norm, attention, router, experts,
    /// head) with the tokens and batches evaluated, since load or the previous call.
    fn take_profile<'py>(&mut self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let p = self.model_mut()?.take_profile();
        let d = PyDict::new(py);
        for (c, name) in crate::model::profile::COMPONENTS {
            d.set_item(name, p.seconds(c))?;
        }
        d.set_item("tokens", p.tokens)?;
        d.set_item("batches", p.batches)?;
        Ok(d)
    }

    /// Starts collecting input activation statistics (for an importance matrix) on every
    /// following `eval`, discarding any collected before.
    fn start_activation_stats(&mut self) -> PyResult<()> {
        self.model_mut()?.start_activation_stats();
        Ok(())
    }

    /// The statistics since `start_activation_stats` (which stops collecting): a list of
    /// (tensor names, columns, sums of squares float64[n_mat * columns], rows uint64[n_mat]).
    #[allow(clippy::type_complexity)]
    fn take_activation_stats<'py>(
        &mut self,
        py: Python<'py>,
    ) -> PyResult<
        Vec<(
            Vec<String>,
            usize,
            Bound<'py, PyArray1<f64>>,
            Bound<'py, PyArray1<u64>>,
        )>,
    > {
        let entries = self
            .model_mut()?
            .take_activation_stats()
            .ok_or_else(|| PyRuntimeError::new_err("start_activation_stats was not called"))?;
        Ok(entries
            .into_iter()
            .map(|e| {
                (
                    e.names,
                    e.cols,
                    PyArray1::from_vec(py, e.sums),
                    PyArray1::from_vec(py, e.counts),
                )
            })
            .collect())
    }

    /// Keeps the first `n` cached positions (of sequence `seq`) and forgets the rest; returns
    /// the positions kept: `n`, or 0 where the sliding-window layers no longer hold the window
    /// before `n` (the sequence starts over).
    #[pyo3(signature = (n, seq = 0))]
    fn truncate(&mut self, n: usize, seq: usize) -> PyResult<usize> {
        Ok(self.model_mut()?.truncate_seq(seq, n)?)
    }

    /// Positions cached for sequence `seq`.
    fn n_past_seq(&self, seq: usize) -> PyResult<usize> {
        Ok(self.model()?.n_past_seq(seq)?)
    }

    /// Releases the weights' map, the KV cache and the threads now; later calls are errors.
    fn close(&mut self) {
        self.model = None;
        self.logits = Vec::new();
    }

    #[getter]
    fn closed(&self) -> bool {
        self.model.is_none()
    }

    /// Reads every page of the weights (so that decoding does not fault them in), one tensor
    /// per call: returns the bytes read by call `index`, or None past the last tensor.
    fn prefetch(&self, py: Python<'_>, index: usize) -> PyResult<Option<usize>> {
        let model = self.model()?;
        let Some(&(start, len)) = model.weight_ranges().get(index) else {
            return Ok(None);
        };
        let bytes = &model.file().bytes()[start..start + len];
        py.detach(|| {
            let sum = bytes
                .iter()
                .step_by(4096)
                .fold(0u8, |a, &b| a.wrapping_add(b));
            std::hint::black_box(sum);
        });
        Ok(Some(len))
    }

    fn n_tensors(&self) -> PyResult<usize> {
        Ok(self.model()?.weight_ranges().len())
    }

    #[getter]
    fn n_past(&self) -> PyResult<usize> {
        Ok(self.model()?.n_past())
    }
    #[getter]
    fn n_seq(&self) -> PyResult<usize> {
        Ok(self.model()?.n_seq())
    }
    #[getter]
    fn n_ctx(&self) -> PyResult<usize> {
        Ok(self.model()?.n_ctx())
    }
    #[getter]
    fn n_vocab(&self) -> PyResult<usize> {
        Ok(self.model()?.n_vocab())
    }
    #[getter]
    fn n_threads(&self) -> PyResult<usize> {
        Ok(self.model()?.n_threads())
    }
    #[getter]
    fn kv_cache_bytes(&self) -> PyResult<usize> {
        Ok(self.model()?.kv_cache_bytes())
    }

    /// Hyper-parameters after overrides, and the KV cache types.
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let model = self.model()?;
        let c = &model.config;
        let d = PyDict::new(py);
        d.set_item("arch", c.arch.name)?;
        for (k, v) in [
            ("n_ctx_train", c.n_ctx_train),
            ("n_embd", c.n_embd),
            ("n_layer", c.n_layer),
            ("n_ff", c.n_ff),
            ("n_ff_exp", c.n_ff_exp),
            ("n_ctx_max", c.n_ctx_max),
            ("swa_window", c.swa_window),
            ("n_head", c.n_head),
            ("n_head_kv", c.n_head_kv),
            ("head_dim", c.head_dim),
            ("n_rot", c.n_rot),
            ("n_expert", c.n_expert),
            ("n_expert_used", c.n_expert_used),
        ] {
            d.set_item(k, v)?;
        }
        d.set_item("rms_eps", c.rms_eps)?;
        d.set_item("rope_freq_base", c.rope.base)?;
        d.set_item("rope_freq_scale", c.rope.freq_scale)?;
        d.set_item("swa_layers", c.swa_layers.clone())?;
        let (tk, tv) = model.kv_types();
        d.set_item("type_k", tk.name())?;
        d.set_item("type_v", tv.name())?;
        Ok(d)
    }
}

/// Positions of a sequence the KV cache holds per layer for a file and context (`plan`'s
/// arithmetic before loading): the context, or a sliding layer's ring.
#[pyfunction]
#[pyo3(signature = (path, n_ctx, n_batch = 512))]
fn kv_layer_positions(
    py: Python<'_>,
    path: std::path::PathBuf,
    n_ctx: usize,
    n_batch: usize,
) -> PyResult<Vec<usize>> {
    py.detach(|| {
        let file = GgufFile::open(&path)?;
        let c = Config::from_gguf(&file, &[])?;
        Ok(layer_positions(n_ctx, c.swa_window, &c.swa_layers, n_batch))
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyModel>()?;
    m.add_function(wrap_pyfunction!(kv_layer_positions, m)?)
}
