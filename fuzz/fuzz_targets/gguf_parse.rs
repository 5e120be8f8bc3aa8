//! Any bytes as a GGUF file: the reader returns a file or an error, never panics, and every
//! tensor of an accepted file lies inside it.
#![no_main]
use ferrollm::gguf::GgufFile;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(file) = GgufFile::from_bytes(data.to_vec()) {
        let size = file.file_size();
        for t in &file.tensors {
            let bytes = file.tensor_data(t);
            assert_eq!(bytes.len() as u64, t.nbytes);
            assert!(file.data_offset + t.offset + t.nbytes <= size);
        }
        for (key, _) in &file.metadata {
            assert!(file.get(key).is_some());
        }
    }
});
