//! A fixed, single-threaded workload for comparing kernel dispatch by instruction count
//! (`perf stat -e instructions:u`), where the machine is too busy for timings: one-thread
//! products of several weight types at the batch sizes that pick each product (dot, dot-many,
//! narrow, gemm), then a small model's prefill and decode. Deterministic inputs.

use ferrollm::gguf::{GgmlType, GgufFile, GgufWriter, TensorSpec, Value};
use ferrollm::matmul::{Pool, QMatrix, matmul};
use ferrollm::model::{Model, ModelParams};
use ferrollm::quant::quantize::quantize;

/// A deterministic pseudo-random value in [-1, 1).
fn value(i: usize, seed: usize) -> f32 {
    let h =
        (i as u64 ^ (seed as u64).wrapping_mul(0x9E37_79B9)).wrapping_mul(0x2545_F491_4F6C_DD1D);
    ((h >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
}

fn values(n: usize, seed: usize) -> Vec<f32> {
    (0..n).map(|i| value(i, seed)).collect()
}

fn quantized(ty: GgmlType, n: usize, seed: usize) -> Vec<u8> {
    let mut out = Vec::new();
    quantize(ty, &values(n, seed), &mut out).expect("quantizable type");
    out
}

fn products(pool: &Pool) {
    use GgmlType::*;
    let (rows, cols) = (256, 1024);
    let mut scratch = Vec::new();
    for (seed, ty) in [Q4_0, Q8_0, Q4_K, Q6_K, IQ2_XS, IQ4_XS]
        .into_iter()
        .enumerate()
    {
        let data = quantized(ty, rows * cols, seed);
        let w = QMatrix::new(ty, rows, cols, &data).unwrap();
        for n in [1, 2, 3, 4, 8, 32] {
            let x = values(n * cols, 100 + n);
            let mut y = vec![0f32; n * rows];
            for _ in 0..4 {
                matmul(pool, &w, &x, &mut y, &mut scratch).unwrap();
            }
            std::hint::black_box(&y);
        }
    }
}

fn model_file() -> Vec<u8> {
    let (vocab, embd, ff) = (64u64, 256u64, 512u64);
    let u32v = |v: u64| Value::U32(v as u32);
    let metadata = vec![
        (
            "general.architecture".to_string(),
            Value::String("llama".into()),
        ),
        ("llama.context_length".into(), u32v(64)),
        ("llama.embedding_length".into(), u32v(embd)),
        ("llama.block_count".into(), u32v(2)),
        ("llama.feed_forward_length".into(), u32v(ff)),
        ("llama.attention.head_count".into(), u32v(4)),
        ("llama.attention.head_count_kv".into(), u32v(2)),
    ];
    let mut shapes = vec![(
        "token_embd.weight".to_string(),
        vec![embd, vocab],
        GgmlType::Q8_0,
    )];
    for l in 0..2 {
        let t = |s: &str| format!("blk.{l}.{s}.weight");
        shapes.extend([
            (t("attn_norm"), vec![embd], GgmlType::F32),
            (t("attn_q"), vec![embd, embd], GgmlType::Q4_K),
            (t("attn_k"), vec![embd, embd / 2], GgmlType::Q4_K),
            (t("attn_v"), vec![embd, embd / 2], GgmlType::Q4_K),
            (t("attn_output"), vec![embd, embd], GgmlType::IQ4_XS),
            (t("ffn_norm"), vec![embd], GgmlType::F32),
            (t("ffn_gate"), vec![embd, ff], GgmlType::Q4_0),
            (t("ffn_up"), vec![embd, ff], GgmlType::Q4_0),
            (t("ffn_down"), vec![ff, embd], GgmlType::Q6_K),
        ]);
    }
    shapes.push(("output_norm.weight".into(), vec![embd], GgmlType::F32));
    shapes.push(("output.weight".into(), vec![embd, vocab], GgmlType::Q8_0));
    let specs = shapes
        .iter()
        .map(|(name, dims, ty)| TensorSpec {
            name: name.clone(),
            dims: dims.clone(),
            ty: *ty,
        })
        .collect();
    let mut w = GgufWriter::new(Vec::new(), &metadata, specs).unwrap();
    for (i, (_, dims, ty)) in shapes.iter().enumerate() {
        let n = dims.iter().product::<u64>() as usize;
        if *ty == GgmlType::F32 {
            w.write_tensor(bytemuck::cast_slice(&vec![1f32; n]))
                .unwrap();
        } else {
            let scaled: Vec<f32> = values(n, 1000 + i).iter().map(|v| v * 0.2).collect();
            let mut out = Vec::new();
            quantize(*ty, &scaled, &mut out).unwrap();
            w.write_tensor(&out).unwrap();
        }
    }
    w.finish().unwrap()
}

fn model() {
    let params = ModelParams {
        n_ctx: 64,
        n_threads: Some(1),
        ..ModelParams::default()
    };
    let file = GgufFile::from_bytes(model_file()).unwrap();
    let mut model = Model::from_file(file, params).unwrap();
    let prompt: Vec<u32> = (0..40).map(|i| (i * 7 % 64) as u32).collect();
    let mut logits = Vec::new();
    model.eval(&prompt, false, &mut logits).unwrap();
    for step in 0..8 {
        let next = (step * 5 % 64) as u32;
        model.eval(&[next], false, &mut logits).unwrap();
    }
    println!("logit[0] = {}", logits[0]);
}

fn main() {
    let pool = Pool::new(Some(1)).unwrap();
    products(&pool);
    model();
}
