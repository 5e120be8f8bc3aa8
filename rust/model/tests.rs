//! The engine on tiny F32 models built in memory (no files, so these also run under Miri).

use super::*;
use crate::gguf::{GgufWriter, TensorSpec};

const VOCAB: usize = 8;
const EMBD: usize = 32;
const FF: usize = 32;

/// A one-layer dense llama model of F32 weights from a simple deterministic pattern;
/// `poison` names a tensor whose first value becomes NaN.
fn tiny_model(poison: Option<&str>) -> Vec<u8> {
    let u32v = |v: usize| Value::U32(v as u32);
    let metadata = vec![
        (
            "general.architecture".to_string(),
            Value::String("llama".into()),
        ),
        ("llama.context_length".into(), u32v(16)),
        ("llama.embedding_length".into(), u32v(EMBD)),
        ("llama.block_count".into(), u32v(1)),
        ("llama.feed_forward_length".into(), u32v(FF)),
        ("llama.attention.head_count".into(), u32v(1)),
        ("llama.attention.head_count_kv".into(), u32v(1)),
    ];
    let shapes: Vec<(&str, Vec<u64>)> = vec![
        ("token_embd.weight", vec![EMBD as u64, VOCAB as u64]),
        ("blk.0.attn_norm.weight", vec![EMBD as u64]),
        ("blk.0.attn_q.weight", vec![EMBD as u64, EMBD as u64]),
        ("blk.0.attn_k.weight", vec![EMBD as u64, EMBD as u64]),
        ("blk.0.attn_v.weight", vec![EMBD as u64, EMBD as u64]),
        ("blk.0.attn_output.weight", vec![EMBD as u64, EMBD as u64]),
        ("blk.0.ffn_norm.weight", vec![EMBD as u64]),
        ("blk.0.ffn_gate.weight", vec![EMBD as u64, FF as u64]),
        ("blk.0.ffn_up.weight", vec![EMBD as u64, FF as u64]),
        ("blk.0.ffn_down.weight", vec![FF as u64, EMBD as u64]),
        ("output_norm.weight", vec![EMBD as u64]),
        ("output.weight", vec![EMBD as u64, VOCAB as u64]),
    ];
    let specs = shapes
        .iter()
        .map(|(name, dims)| TensorSpec {
            name: name.to_string(),
            dims: dims.clone(),
            ty: GgmlType::F32,
        })
        .collect();
    let mut w = GgufWriter::new(Vec::new(), &metadata, specs).unwrap();
    for (i, (name, dims)) in shapes.iter().enumerate() {
        let n: u64 = dims.iter().product();
        let mut values: Vec<f32> = (0..n)
            .map(|j| {
                if dims.len() == 1 {
                    1.0
                } else {
                    (((j as usize * 7 + i * 13) % 17) as f32 - 8.0) / 40.0
                }
            })
            .collect();
        if poison == Some(*name) {
            values[0] = f32::NAN;
        }
        w.write_tensor(bytemuck::cast_slice(&values)).unwrap();
    }
    w.finish().unwrap()
}

fn load(bytes: Vec<u8>) -> Model {
    let params = ModelParams {
        n_ctx: 8,
        n_threads: Some(1),
        ..ModelParams::default()
    };
    Model::from_file(GgufFile::from_bytes(bytes).unwrap(), params).unwrap()
}

#[test]
fn tiny_model_evaluates_and_decodes_like_a_batch() {
    let mut model = load(tiny_model(None));
    let (mut batch, mut step) = (Vec::new(), Vec::new());
    model.eval(&[1, 2, 3], true, &mut batch).unwrap();
    model.truncate(0).unwrap();
    for t in [1, 2, 3] {
        model.eval(&[t], false, &mut step).unwrap();
    }
    assert!(batch.iter().all(|x| x.is_finite()));
    for (a, b) in batch[2 * VOCAB..].iter().zip(&step) {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
    assert_eq!(model.n_past(), 3);
}

/// Regression (found by the mutated-file fuzz of tests/test_hostile_inputs.py): NaN weights
/// made attention panic on quantizing its query. Each poisoned tensor must give an error and
/// leave the cache as it was.
#[test]
fn nan_weights_are_an_error_not_a_panic() {
    for name in [
        "token_embd.weight",
        "blk.0.attn_q.weight",
        "blk.0.attn_k.weight",
        "blk.0.ffn_up.weight",
        "output.weight",
    ] {
        let mut model = load(tiny_model(Some(name)));
        let mut logits = Vec::new();
        let err = model.eval(&[0, 1, 2], true, &mut logits).unwrap_err();
        assert!(err.to_string().contains("NaN or Inf"), "{name}: {err}");
        assert_eq!(model.n_past(), 0, "{name}");
    }
}

#[test]
fn logits_from_a_position_equal_those_rows_of_all_logits() {
    let params = ModelParams {
        n_ctx: 8,
        n_threads: Some(1),
        n_batch: 2, // rows split over batches
        ..ModelParams::default()
    };
    let mut model =
        Model::from_file(GgufFile::from_bytes(tiny_model(None)).unwrap(), params).unwrap();
    let tokens = [1, 2, 3, 4, 5];
    let (mut all, mut from) = (Vec::new(), Vec::new());
    model.eval(&tokens, true, &mut all).unwrap();
    for first in 0..tokens.len() {
        model.truncate(0).unwrap();
        model.eval_from(&tokens, first, &mut from).unwrap();
        assert_eq!(from, all[first * VOCAB..], "first {first}");
    }
    model.truncate(0).unwrap();
    assert!(model.eval_from(&tokens, 5, &mut from).is_err());
    assert_eq!(model.n_past(), 0);
}

#[test]
fn check_tensors_refuses_nan_weights_at_load() {
    let params = ModelParams {
        n_ctx: 8,
        check_tensors: true,
        ..ModelParams::default()
    };
    let file = GgufFile::from_bytes(tiny_model(Some("blk.0.ffn_up.weight"))).unwrap();
    let Err(err) = Model::from_file(file, params.clone()) else {
        panic!("a NaN weight passed the check");
    };
    assert!(
        err.to_string()
            .contains("tensor 'blk.0.ffn_up.weight' (F32) block 0"),
        "{err}"
    );
    let clean = GgufFile::from_bytes(tiny_model(None)).unwrap();
    assert!(Model::from_file(clean, params).is_ok());
}

/// Continuous batching: sequences evaluated together, each at its own position (a prompt
/// chunk of one beside decoded tokens of others), give the logits each gives alone.
#[test]
fn sequences_in_one_batch_equal_each_alone() {
    let params = ModelParams {
        n_ctx: 8,
        n_seq: 3,
        n_threads: Some(1),
        ..ModelParams::default()
    };
    let file = || GgufFile::from_bytes(tiny_model(None)).unwrap();
    let mut batched = Model::from_file(file(), params.clone()).unwrap();
    let prompts: [&[u32]; 3] = [&[1, 2, 3], &[4], &[5, 6]];
    let mut logits = Vec::new();
    // Sequence 1 starts alone; 0 and 2 join, then all three decode together.
    batched.eval_batch(&[(1, prompts[1])], &mut logits).unwrap();
    batched
        .eval_batch(&[(0, prompts[0]), (2, prompts[2])], &mut logits)
        .unwrap();
    batched
        .eval_batch(&[(2, &[7]), (0, &[1]), (1, &[2])], &mut logits)
        .unwrap();
    for (row, (seq, next)) in [(2usize, 7u32), (0, 1), (1, 2)].into_iter().enumerate() {
        let mut alone = Model::from_file(file(), params.clone()).unwrap();
        let mut want = Vec::new();
        alone.eval(prompts[seq], false, &mut want).unwrap();
        alone.eval(&[next], false, &mut want).unwrap();
        let got = &logits[row * VOCAB..][..VOCAB];
        for (a, b) in got.iter().zip(&want) {
            assert!((a - b).abs() < 1e-4, "sequence {seq}: {a} vs {b}");
        }
        assert_eq!(batched.n_past_seq(seq).unwrap(), prompts[seq].len() + 1);
    }
    // Bad batches change nothing.
    for bad in [
        vec![(3usize, &[1u32][..])],
        vec![(0, &[1][..]), (0, &[2][..])],
        vec![(1, &[][..])],
        vec![(1, &[9][..])],
        vec![(0, &[1, 1, 1, 1, 1][..])],
    ] {
        assert!(batched.eval_batch(&bad, &mut logits).is_err(), "{bad:?}");
    }
    assert_eq!(batched.n_past_seq(0).unwrap(), 4);
    batched.truncate_seq(0, 1).unwrap();
    assert_eq!(batched.n_past_seq(0).unwrap(), 1);
    assert!(batched.truncate_seq(0, 2).is_err());
}

#[test]
fn hidden_states_start_at_the_embeddings_and_end_at_the_normed_output() {
    let mut model = load(tiny_model(None));
    let tokens = [1u32, 2, 3];
    let hidden = model.hidden_states(&tokens).unwrap();
    assert_eq!(hidden.len(), 2 * tokens.len() * EMBD); // one layer + the output
    let embd = model.weights.token_embd;
    let bytes = model.file.bytes();
    for (t, &tok) in tokens.iter().enumerate() {
        let start = embd.start + tok as usize * embd.row_bytes();
        let row: &[f32] = bytemuck::cast_slice(&bytes[start..start + embd.row_bytes()]);
        assert_eq!(&hidden[t * EMBD..][..EMBD], row);
    }
    // The normed output has unit RMS (norm weights are 1).
    let last = &hidden[(tokens.len() + 2) * EMBD..][..EMBD];
    let rms = (last.iter().map(|v| v * v).sum::<f32>() / EMBD as f32).sqrt();
    assert!((rms - 1.0).abs() < 1e-3, "{rms}");
    assert_eq!(model.n_past(), 3);
    assert!(model.hidden_states(&[]).is_err());
}

#[test]
fn a_saved_kv_state_continues_exactly_and_a_foreign_one_is_refused() {
    let mut model = load(tiny_model(None));
    let mut logits = Vec::new();
    model.eval(&[1, 2, 3], false, &mut logits).unwrap();
    let state = model.save_kv(0).unwrap();
    model.eval(&[4], false, &mut logits).unwrap();
    let want = logits.clone();
    model.truncate(0).unwrap();
    model.eval(&[7, 7, 7, 7, 7], false, &mut logits).unwrap();
    model.load_kv(0, &state).unwrap();
    assert_eq!(model.n_past(), 3);
    model.eval(&[4], false, &mut logits).unwrap();
    assert_eq!(logits, want);

    model.truncate(0).unwrap();
    let empty = model.save_kv(0).unwrap();
    model.eval(&[1, 2], false, &mut logits).unwrap();
    model.load_kv(0, &empty).unwrap();
    assert_eq!(model.n_past(), 0);
    model.load_kv(0, &state).unwrap();

    let before = model.n_past();
    assert!(model.load_kv(0, &state[..state.len() - 1]).is_err());
    assert!(model.load_kv(0, b"not a state at all, not at all").is_err());
    let mut other = state.clone();
    other[8] ^= 1; // another layer count
    assert!(model.load_kv(0, &other).is_err());
    assert_eq!(model.n_past(), before);
}

#[test]
fn embeddings_are_the_last_hidden_states_without_the_head() {
    let mut model = load(tiny_model(None));
    let hidden = model.hidden_states(&[1, 2, 3]).unwrap();
    model.truncate(0).unwrap();
    let embd = model.embeddings(&[1, 2, 3]).unwrap();
    assert_eq!(embd.len(), 3 * EMBD);
    assert_eq!(embd[..], hidden[hidden.len() - 3 * EMBD..]);
    assert_eq!(model.n_past(), 3);
}
