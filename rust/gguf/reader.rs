//! GGUF reader: parses and validates the header of a memory-mapped file, then hands out
//! zero-copy views of tensor data.
//!
//! Layout (GGUF v2/v3, little-endian): magic "GGUF", u32 version, u64 tensor count, u64 metadata
//! count, metadata key/values, tensor infos, padding to `general.alignment`, data section.
//! Nothing read from the header is trusted: every count and length is bounded by the bytes left
//! in the file before anything is allocated, so a lying header costs an error, not memory.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::ops::Deref;
use std::path::Path;

use memmap2::Mmap;

use super::types::GgmlType;
use super::value::{Value, ValueType};
use crate::error::{Error, Result};

pub const GGUF_MAGIC: &[u8; 4] = b"GGUF";
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions (GGML_MAX_DIMS).
pub const MAX_DIMS: u32 = 4;
/// Arrays of arrays are legal; deeper nesting than this is not something real files do.
const MAX_ARRAY_DEPTH: u32 = 8;

/// One tensor's description from the header, validated against the file.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// Dimensions in ggml order: `dims[0]` is the row length (fastest varying).
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Offset relative to the start of the data section.
    pub offset: u64,
    pub nbytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// The bytes behind a parsed file: a read-only map of the file, or a buffer (tests, fuzzing).
pub enum Storage {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Deref for Storage {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

pub struct GgufFile {
    storage: Storage,
    pub version: u32,
    /// Key/value pairs in file order.
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    key_index: HashMap<String, usize>,
    tensor_index: HashMap<String, usize>,
}

impl GgufFile {
    /// Memory-maps and validates `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        let path = path.as_ref();
        let io_err = |source| Error::Io {
            path: path.display().to_string(),
            source,
        };
        let file = File::open(path).map_err(io_err)?;
        let len = file.metadata().map_err(io_err)?.len();
        if len < 24 {
            // Also avoids mapping an empty file, which mmap refuses.
            return Err(Error::gguf(
                0,
                format!("file is {len} bytes, too small for a GGUF header (24 bytes)"),
            ));
        }
        // SAFETY: the map is read-only. Another process truncating the file while it is mapped
        // would fault on access; that is the accepted contract of every mmap-based loader.
        let map = unsafe { Mmap::map(&file) }.map_err(io_err)?;
        Self::parse(Storage::Mapped(map))
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile> {
        Self::parse(Storage::Owned(bytes))
    }

    fn parse(storage: Storage) -> Result<GgufFile> {
        let header = parse_header(&storage)?;
        let key_index = header
            .metadata
            .iter()
            .enumerate()
            .map(|(i, (k, _))| (k.clone(), i))
            .collect();
        let tensor_index = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(GgufFile {
            storage,
            version: header.version,
            metadata: header.metadata,
            tensors: header.tensors,
            alignment: header.alignment,
            data_offset: header.data_offset,
            key_index,
            tensor_index,
        })
    }

    pub fn file_size(&self) -> u64 {
        self.storage.len() as u64
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.key_index.get(key).map(|&i| &self.metadata[i].1)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// The bytes of a tensor, a view into the map (validated in bounds at parse time).
    pub fn tensor_data(&self, info: &TensorInfo) -> &[u8] {
        let start = (self.data_offset + info.offset) as usize;
        &self.storage[start..start + info.nbytes as usize]
    }

    pub fn bytes(&self) -> &[u8] {
        &self.storage
    }
}

struct Header {
    version: u32,
    metadata: Vec<(String, Value)>,
    tensors: Vec<TensorInfo>,
    alignment: u64,
    data_offset: u64,
}

/// Bounds-checked little-endian reader over the file bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(Error::gguf(
                self.pos as u64,
                format!(
                    "{}: needs {n} bytes but the file ends {} bytes later",
                    what(),
                    self.remaining()
                ),
            ));
        }
        let start = self.pos;
        self.pos += n as usize;
        Ok(&self.buf[start..self.pos])
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N]> {
        Ok(self
            .take(N as u64, what)?
            .try_into()
            .expect("take returned N bytes"))
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// A count of items each at least `min_item_bytes` long: rejected if they cannot fit in
    /// what is left of the file, so callers may allocate `count` slots safely.
    fn count(&mut self, min_item_bytes: u64, what: &dyn Fn() -> String) -> Result<u64> {
        let at = self.pos as u64;
        let n = self.u64(what)?;
        if n.saturating_mul(min_item_bytes) > self.remaining() {
            return Err(Error::gguf(
                at,
                format!(
                    "{}: count {n} cannot fit in the {} bytes left in the file",
                    what(),
                    self.remaining()
                ),
            ));
        }
        Ok(n)
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let at = self.pos as u64;
        let len = self.u64(&|| format!("{} (string length)", what()))?;
        if len > self.remaining() {
            return Err(Error::gguf(
                at,
                format!(
                    "{}: string length {len} exceeds the {} bytes left in the file",
                    what(),
                    self.remaining()
                ),
            ));
        }
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| {
            Error::gguf(
                at + 8,
                format!("{}: string is not valid UTF-8 ({e})", what()),
            )
        })
    }

    fn value_type(&mut self, what: &dyn Fn() -> String) -> Result<ValueType> {
        let at = self.pos as u64;
        let id = self.u32(what)?;
        ValueType::from_id(id)
            .ok_or_else(|| Error::gguf(at, format!("{}: unknown value type {id}", what())))
    }

    fn value(&mut self, ty: ValueType, depth: u32, what: &dyn Fn() -> String) -> Result<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(self.array::<1>(what)?[0]),
            ValueType::I8 => Value::I8(self.array::<1>(what)?[0] as i8),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            ValueType::U32 => Value::U32(self.u32(what)?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            ValueType::U64 => Value::U64(self.u64(what)?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            ValueType::Bool => {
                let at = self.pos as u64;
                match self.array::<1>(what)?[0] {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    b => {
                        return Err(Error::gguf(
                            at,
                            format!("{}: bool byte is {b}, not 0 or 1", what()),
                        ));
                    }
                }
            }
            ValueType::String => Value::String(self.string(what)?),
            ValueType::Array => {
                let at = self.pos as u64;
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(Error::gguf(
                        at,
                        format!("{}: arrays nested deeper than {MAX_ARRAY_DEPTH}", what()),
                    ));
                }
                let elem = self.value_type(&|| format!("{} (array element type)", what()))?;
                let n = self.count(elem.min_encoded_size(), &|| {
                    format!("{} (array length)", what())
                })?;
                let mut values = Vec::with_capacity(n as usize);
                for i in 0..n {
                    values.push(self.value(elem, depth + 1, &|| format!("{}[{i}]", what()))?);
                }
                Value::Array(elem, values)
            }
        })
    }
}

fn parse_header(buf: &[u8]) -> Result<Header> {
    let mut c = Cursor { buf, pos: 0 };
    let magic = c.array::<4>(&|| "magic".into())?;
    if &magic != GGUF_MAGIC {
        return Err(Error::gguf(
            0,
            format!("bad magic {magic:02x?}, expected \"GGUF\"; not a GGUF file"),
        ));
    }
    let version = c.u32(&|| "version".into())?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(Error::gguf(
                4,
                "GGUF version 1 is not supported (32-bit counts); convert the file again",
            ));
        }
        v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
            return Err(Error::gguf(4, "big-endian GGUF files are not supported"));
        }
        v => {
            return Err(Error::gguf(
                4,
                format!("unsupported GGUF version {v} (supported: 2, 3)"),
            ));
        }
    }
    // Smallest tensor info: name length (8) + n_dims (4) + one dim (8) + type (4) + offset (8).
    let n_tensors = c.count(32, &|| "tensor count".into())?;
    // Smallest key/value: key length (8) + value type (4) + one byte of value.
    let n_kv = c.count(13, &|| "metadata count".into())?;

    let mut metadata: Vec<(String, Value)> = Vec::with_capacity(n_kv as usize);
    let mut keys = HashSet::with_capacity(n_kv as usize);
    for i in 0..n_kv {
        let key_at = c.pos as u64;
        let key = c.string(&|| format!("metadata key #{i}"))?;
        if !keys.insert(key.clone()) {
            return Err(Error::gguf(
                key_at,
                format!("metadata key #{i} '{key}' is duplicated"),
            ));
        }
        let what = || format!("metadata '{key}'");
        let ty = c.value_type(&what)?;
        let value = c.value(ty, 0, &what)?;
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some((_, Value::U32(a))) if a.is_power_of_two() => *a as u64,
        Some((_, v)) => {
            return Err(Error::gguf(
                c.pos as u64,
                format!(
                    "metadata 'general.alignment' must be a u32 power of two, found {} {v}",
                    v.type_name()
                ),
            ));
        }
    };

    let mut infos = Vec::with_capacity(n_tensors as usize);
    let mut at_of_info = Vec::with_capacity(n_tensors as usize);
    let mut names = HashSet::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let at = c.pos as u64;
        let name = c.string(&|| format!("tensor #{i} name"))?;
        if !names.insert(name.clone()) {
            return Err(Error::gguf(
                at,
                format!("tensor #{i} name '{name}' is duplicated"),
            ));
        }
        let what = |field: &str| format!("tensor '{name}' {field}");
        let dims_at = c.pos as u64;
        let n_dims = c.u32(&|| what("n_dims"))?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(Error::gguf(
                dims_at,
                format!("{} is {n_dims}, must be 1..={MAX_DIMS}", what("n_dims")),
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        let mut n_elements: u64 = 1;
        for d in 0..n_dims {
            let dim_at = c.pos as u64;
            let dim = c.u64(&|| what(&format!("dim {d}")))?;
            if dim == 0 {
                return Err(Error::gguf(
                    dim_at,
                    format!("{} is 0", what(&format!("dim {d}"))),
                ));
            }
            n_elements = n_elements
                .checked_mul(dim)
                .filter(|&n| n <= i64::MAX as u64)
                .ok_or_else(|| {
                    Error::gguf(
                        dim_at,
                        format!("{}: product of dimensions overflows 63 bits", what("dims")),
                    )
                })?;
            dims.push(dim);
        }
        let type_at = c.pos as u64;
        let type_id = c.u32(&|| what("type"))?;
        let ty = GgmlType::from_id(type_id).ok_or_else(|| {
            Error::gguf(
                type_at,
                format!("{} {type_id} is not a known ggml type", what("type")),
            )
        })?;
        if dims[0] % ty.block_elems() as u64 != 0 {
            return Err(Error::gguf(
                dims_at + 4,
                format!(
                    "{}: row length {} is not a multiple of the {ty} block size {}",
                    what("dims"),
                    dims[0],
                    ty.block_elems()
                ),
            ));
        }
        let nbytes = ty
            .row_bytes(dims[0])
            .and_then(|row| row.checked_mul(n_elements / dims[0]))
            .ok_or_else(|| {
                Error::gguf(
                    dims_at,
                    format!("{}: byte size overflows 64 bits", what("dims")),
                )
            })?;
        let offset_at = c.pos as u64;
        let offset = c.u64(&|| what("offset"))?;
        if offset % alignment != 0 {
            return Err(Error::gguf(
                offset_at,
                format!(
                    "{} {offset} is not a multiple of the alignment {alignment}",
                    what("offset")
                ),
            ));
        }
        infos.push(TensorInfo {
            name,
            dims,
            ty,
            offset,
            nbytes,
        });
        at_of_info.push(offset_at);
    }

    let header_end = c.pos as u64;
    let data_offset = header_end.div_ceil(alignment) * alignment;
    let file_len = buf.len() as u64;
    if !infos.is_empty() && data_offset > file_len {
        return Err(Error::gguf(
            header_end,
            format!(
                "data section starts at {data_offset}, past the end of the {file_len}-byte file"
            ),
        ));
    }
    let data_len = file_len.saturating_sub(data_offset);
    for (info, &at) in infos.iter().zip(&at_of_info) {
        if info
            .offset
            .checked_add(info.nbytes)
            .is_none_or(|end| end > data_len)
        {
            return Err(Error::gguf(
                at,
                format!(
                    "tensor '{}' data [{}, +{}) lies outside the {data_len}-byte data section (file truncated?)",
                    info.name, info.offset, info.nbytes
                ),
            ));
        }
    }
    // Tensors must not share bytes: a writer that overlaps them is broken, and a reader that
    // trusted it would alias weights.
    let mut order: Vec<usize> = (0..infos.len()).collect();
    order.sort_by_key(|&i| infos[i].offset);
    for pair in order.windows(2) {
        let (a, b) = (&infos[pair[0]], &infos[pair[1]]);
        if a.offset + a.nbytes > b.offset {
            return Err(Error::gguf(
                at_of_info[pair[1]],
                format!(
                    "tensor '{}' at offset {} overlaps tensor '{}' [{}, +{})",
                    b.name, b.offset, a.name, a.offset, a.nbytes
                ),
            ));
        }
    }
    Ok(Header {
        version,
        metadata,
        tensors: infos,
        alignment,
        data_offset,
    })
}
