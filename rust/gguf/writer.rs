//! GGUF v3 writer. The header is written from the tensor descriptions first, then each tensor's
//! bytes in order, padded to the alignment, so a multi-gigabyte file can be streamed without
//! holding it in memory.

use std::io::Write;

use super::reader::DEFAULT_ALIGNMENT;
use super::types::GgmlType;
use super::value::Value;
use crate::error::{Error, Result};

/// What the header says about a tensor; the data comes later, in the same order.
#[derive(Clone, Debug)]
pub struct TensorSpec {
    pub name: String,
    /// ggml order: `dims[0]` is the row length.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
}

impl TensorSpec {
    pub fn nbytes(&self) -> Result<u64> {
        let bad = || {
            Error::invalid(format!(
                "tensor '{}': bad shape {:?} for {}",
                self.name, self.dims, self.ty
            ))
        };
        let (&row, rest) = self.dims.split_first().ok_or_else(bad)?;
        if self.dims.len() > 4 || self.dims.contains(&0) {
            return Err(bad());
        }
        let rows = rest
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(bad)?;
        self.ty
            .row_bytes(row)
            .and_then(|b| b.checked_mul(rows))
            .ok_or_else(bad)
    }
}

pub struct GgufWriter<W: Write> {
    out: W,
    alignment: u64,
    specs: Vec<TensorSpec>,
    sizes: Vec<u64>,
    next: usize,
    written: u64,
}

fn write_string(out: &mut impl Write, s: &str) -> std::io::Result<u64> {
    out.write_all(&(s.len() as u64).to_le_bytes())?;
    out.write_all(s.as_bytes())?;
    Ok(8 + s.len() as u64)
}

fn write_value(out: &mut impl Write, v: &Value) -> std::io::Result<u64> {
    Ok(match v {
        Value::U8(x) => out.write_all(&[*x]).map(|_| 1)?,
        Value::I8(x) => out.write_all(&x.to_le_bytes()).map(|_| 1)?,
        Value::U16(x) => out.write_all(&x.to_le_bytes()).map(|_| 2)?,
        Value::I16(x) => out.write_all(&x.to_le_bytes()).map(|_| 2)?,
        Value::U32(x) => out.write_all(&x.to_le_bytes()).map(|_| 4)?,
        Value::I32(x) => out.write_all(&x.to_le_bytes()).map(|_| 4)?,
        Value::F32(x) => out.write_all(&x.to_le_bytes()).map(|_| 4)?,
        Value::U64(x) => out.write_all(&x.to_le_bytes()).map(|_| 8)?,
        Value::I64(x) => out.write_all(&x.to_le_bytes()).map(|_| 8)?,
        Value::F64(x) => out.write_all(&x.to_le_bytes()).map(|_| 8)?,
        Value::Bool(x) => out.write_all(&[*x as u8]).map(|_| 1)?,
        Value::String(s) => write_string(out, s)?,
        Value::Array(elem, values) => {
            out.write_all(&(*elem as u32).to_le_bytes())?;
            out.write_all(&(values.len() as u64).to_le_bytes())?;
            let mut n = 12;
            for item in values {
                n += write_value(out, item)?;
            }
            n
        }
    })
}

fn check_array_types(key: &str, v: &Value) -> Result<()> {
    if let Value::Array(elem, values) = v {
        for item in values {
            if item.value_type() != *elem {
                return Err(Error::invalid(format!(
                    "metadata '{key}': array of {} holds a {}",
                    elem.name(),
                    item.type_name()
                )));
            }
            check_array_types(key, item)?;
        }
    }
    Ok(())
}

impl<W: Write> GgufWriter<W> {
    /// Writes the header. `general.alignment`, when present in `metadata`, sets the alignment
    /// (a u32 power of two), otherwise it is 32.
    pub fn new(mut out: W, metadata: &[(String, Value)], specs: Vec<TensorSpec>) -> Result<Self> {
        let io = |e: std::io::Error| Error::invalid(format!("writing GGUF header: {e}"));
        let mut alignment = DEFAULT_ALIGNMENT;
        let mut seen = std::collections::HashSet::new();
        for (key, value) in metadata {
            if !seen.insert(key.as_str()) {
                return Err(Error::invalid(format!("metadata key '{key}' given twice")));
            }
            check_array_types(key, value)?;
            if key == "general.alignment" {
                match value {
                    Value::U32(a) if a.is_power_of_two() => alignment = *a as u64,
                    _ => {
                        return Err(Error::invalid(
                            "general.alignment must be a u32 power of two",
                        ));
                    }
                }
            }
        }
        let mut names = std::collections::HashSet::new();
        let mut sizes = Vec::with_capacity(specs.len());
        for spec in &specs {
            if !names.insert(spec.name.as_str()) {
                return Err(Error::invalid(format!(
                    "tensor '{}' given twice",
                    spec.name
                )));
            }
            sizes.push(spec.nbytes()?);
        }

        let mut pos = 0u64;
        out.write_all(b"GGUF").map_err(io)?;
        out.write_all(&3u32.to_le_bytes()).map_err(io)?;
        out.write_all(&(specs.len() as u64).to_le_bytes())
            .map_err(io)?;
        out.write_all(&(metadata.len() as u64).to_le_bytes())
            .map_err(io)?;
        pos += 24;
        for (key, value) in metadata {
            pos += write_string(&mut out, key).map_err(io)?;
            out.write_all(&(value.value_type() as u32).to_le_bytes())
                .map_err(io)?;
            pos += 4 + write_value(&mut out, value).map_err(io)?;
        }
        let mut offset = 0u64;
        for (spec, &size) in specs.iter().zip(&sizes) {
            pos += write_string(&mut out, &spec.name).map_err(io)?;
            out.write_all(&(spec.dims.len() as u32).to_le_bytes())
                .map_err(io)?;
            for d in &spec.dims {
                out.write_all(&d.to_le_bytes()).map_err(io)?;
            }
            out.write_all(&spec.ty.id().to_le_bytes()).map_err(io)?;
            out.write_all(&offset.to_le_bytes()).map_err(io)?;
            pos += 4 + 8 * spec.dims.len() as u64 + 4 + 8;
            offset = (offset + size).div_ceil(alignment) * alignment;
        }
        let mut writer = GgufWriter {
            out,
            alignment,
            specs,
            sizes,
            next: 0,
            written: pos,
        };
        writer.pad()?;
        Ok(writer)
    }

    fn pad(&mut self) -> Result<()> {
        let target = self.written.div_ceil(self.alignment) * self.alignment;
        let zeros = vec![0u8; (target - self.written) as usize];
        self.out
            .write_all(&zeros)
            .map_err(|e| Error::invalid(format!("writing GGUF padding: {e}")))?;
        self.written = target;
        Ok(())
    }

    /// Writes the next tensor's bytes (tensors go in the order of the specs).
    pub fn write_tensor(&mut self, data: &[u8]) -> Result<()> {
        let spec = self.next_spec()?;
        if data.len() as u64 != self.sizes[self.next] {
            return Err(Error::invalid(format!(
                "tensor '{}' ({} {:?}) needs {} bytes, got {}",
                spec.name,
                spec.ty,
                spec.dims,
                self.sizes[self.next],
                data.len()
            )));
        }
        let name = &self.specs[self.next].name;
        self.out
            .write_all(data)
            .map_err(|e| Error::invalid(format!("writing tensor '{name}': {e}")))?;
        self.written += data.len() as u64;
        self.next += 1;
        self.pad()
    }

    fn next_spec(&self) -> Result<&TensorSpec> {
        self.specs
            .get(self.next)
            .ok_or_else(|| Error::invalid("all tensors were already written"))
    }

    /// Writes the next tensor as blocks drawn at random (xorshift from `seed`) from `pool`,
    /// which holds whole valid blocks of the tensor's type: a multi-gigabyte tensor of random
    /// valid blocks at memcpy speed (benchmark models; no gigabytes generated in Python).
    pub fn write_tensor_sampled(&mut self, pool: &[u8], seed: u64) -> Result<()> {
        let spec = self.next_spec()?;
        let block = spec.ty.block_bytes();
        let size = self.sizes[self.next] as usize;
        if pool.is_empty() || !pool.len().is_multiple_of(block) {
            return Err(Error::invalid(format!(
                "tensor '{}': a pool of {} bytes is not whole {} blocks of {block} bytes",
                spec.name,
                pool.len(),
                spec.ty
            )));
        }
        let n_pool = (pool.len() / block) as u64;
        let mut state = seed | 1;
        let mut chunk = Vec::with_capacity((1 << 22) / block * block + block);
        let mut left = size;
        while left > 0 {
            chunk.clear();
            while chunk.len() < (1 << 22) && chunk.len() < left {
                // xorshift64*: fast and plenty random for picking blocks.
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                let pick = (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) % n_pool;
                let at = pick as usize * block;
                chunk.extend_from_slice(&pool[at..at + block]);
            }
            self.out.write_all(&chunk).map_err(|e| {
                Error::invalid(format!(
                    "writing tensor '{}': {e}",
                    self.specs[self.next].name
                ))
            })?;
            left -= chunk.len();
        }
        self.written += size as u64;
        self.next += 1;
        self.pad()
    }

    /// Checks that every tensor was written and flushes.
    pub fn finish(mut self) -> Result<W> {
        if self.next != self.specs.len() {
            return Err(Error::invalid(format!(
                "only {} of {} tensors were written (next: '{}')",
                self.next,
                self.specs.len(),
                self.specs[self.next].name
            )));
        }
        self.out
            .flush()
            .map_err(|e| Error::invalid(format!("flushing GGUF file: {e}")))?;
        Ok(self.out)
    }
}
