//! Any bytes as a model file: loading returns a model or an error, and an accepted model
//! evaluates two tokens (or refuses them) without panicking.
#![no_main]
use ferrollm::gguf::GgufFile;
use ferrollm::model::{Model, ModelParams};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes(data.to_vec()) else {
        return;
    };
    let params = ModelParams {
        n_ctx: 8,
        n_threads: Some(1),
        n_batch: 4,
        ..ModelParams::default()
    };
    let Ok(mut model) = Model::from_file(file, params) else {
        return;
    };
    let mut logits = Vec::new();
    let n_vocab = model.n_vocab() as u32;
    let _ = model.eval(&[1 % n_vocab.max(1), 0], true, &mut logits);
    let _ = model.eval(&[n_vocab], false, &mut logits); // out of vocabulary: an error
    let _ = model.truncate(1);
});
