//! Writer -> reader round trip, and a reader that turns every truncation into an error.

use super::*;

fn sample() -> Vec<u8> {
    let metadata = vec![
        (
            "general.architecture".to_string(),
            Value::String("llama".into()),
        ),
        ("general.alignment".to_string(), Value::U32(64)),
        ("llama.block_count".to_string(), Value::U32(2)),
        (
            "scores".to_string(),
            Value::Array(ValueType::F32, vec![Value::F32(0.5), Value::F32(-1.0)]),
        ),
        (
            "nested".to_string(),
            Value::Array(
                ValueType::Array,
                vec![Value::Array(ValueType::I8, vec![Value::I8(-3)])],
            ),
        ),
    ];
    let specs = vec![
        TensorSpec {
            name: "w".into(),
            dims: vec![256, 2],
            ty: GgmlType::Q4_K,
        },
        TensorSpec {
            name: "b".into(),
            dims: vec![3],
            ty: GgmlType::F32,
        },
    ];
    let mut w = GgufWriter::new(Vec::new(), &metadata, specs).unwrap();
    w.write_tensor(&[7u8; 288]).unwrap();
    w.write_tensor(&[1u8; 12]).unwrap();
    w.finish().unwrap()
}

#[test]
fn roundtrip() {
    let f = GgufFile::from_bytes(sample()).unwrap();
    assert_eq!(f.version, 3);
    assert_eq!(f.alignment, 64);
    assert_eq!(f.data_offset % 64, 0);
    assert_eq!(f.get("llama.block_count"), Some(&Value::U32(2)));
    assert_eq!(f.get("nested").unwrap().type_name(), "array[array[i8]]");
    let w = f.tensor("w").unwrap();
    assert_eq!(
        (w.dims.as_slice(), w.ty, w.nbytes),
        (&[256u64, 2][..], GgmlType::Q4_K, 288)
    );
    assert!(f.tensor_data(w).iter().all(|&b| b == 7));
    let b = f.tensor("b").unwrap();
    assert_eq!(b.offset, 320); // 288 rounded up to the 64-byte alignment
    assert_eq!(f.tensor_data(b), &[1u8; 12]);
}

#[test]
fn every_truncation_is_an_error() {
    let bytes = sample();
    // The last 52 bytes are padding after tensor 'b' (ends at 332 of 384 data bytes); any cut
    // before that removes a field or tensor bytes.
    for n in 0..bytes.len() - 52 {
        let cut = bytes[..n].to_vec();
        assert!(
            matches!(GgufFile::from_bytes(cut), Err(crate::Error::Gguf { .. })),
            "cut at {n}"
        );
    }
    assert!(GgufFile::from_bytes(bytes[..bytes.len() - 52].to_vec()).is_ok());
}

#[test]
fn writer_checks_sizes_and_order() {
    let specs = vec![TensorSpec {
        name: "w".into(),
        dims: vec![32],
        ty: GgmlType::Q8_0,
    }];
    let mut w = GgufWriter::new(Vec::new(), &[], specs.clone()).unwrap();
    assert!(w.write_tensor(&[0u8; 33]).is_err());
    let w = GgufWriter::new(Vec::new(), &[], specs).unwrap();
    assert!(w.finish().is_err(), "a missing tensor must be reported");
    let bad = vec![TensorSpec {
        name: "x".into(),
        dims: vec![31],
        ty: GgmlType::Q8_0,
    }];
    assert!(GgufWriter::new(Vec::new(), &[], bad).is_err());
}
