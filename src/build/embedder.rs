//! The [`Embedder`] trait `shardc ingest` embeds chunks through, the built-in one
//! ([`LocalEmbedder`]: all-MiniLM-L6-v2 on CPU, `crate::embed`), and [`embed_batches`], which
//! runs an embedder over many texts in batches, a bounded number at once, checking every answer.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;

use super::BuildError;
use crate::embed;

/// Turns texts into vectors.
pub trait Embedder: Sync {
    /// The model's name: part of the embedding cache's key.
    fn model(&self) -> &str;
    /// The name embeddings origins serve the model under, which the index's manifest records
    /// (the worker embeds the index's text queries and text upserts with it).
    fn served_name(&self) -> &str {
        self.model()
    }
    fn dims(&self) -> usize;
    /// One vector of [`Embedder::dims`] values per text, in order.
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, BuildError>;
    /// Texts per [`Embedder::embed`] call.
    fn batch_size(&self) -> usize {
        32
    }
    /// Calls of [`Embedder::embed`] running at once.
    fn concurrency(&self) -> usize {
        1
    }
}

/// Word-pieces the built-in embedder reads of each input by default, `[CLS]` and `[SEP]`
/// included: the model's own limit, so that no word of a chunk is cut off.
pub const LOCAL_MAX_TOKENS: usize = 256;

/// The built-in embedder's default batches at once: one per core, at most 4 (a batch of 32
/// inputs of 256 word-pieces holds about 50 MB of feed-forward activations at its peak).
pub fn local_concurrency() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
}

/// all-MiniLM-L6-v2 in this process, inputs truncated at a set number of word-pieces.
pub struct LocalEmbedder {
    inner: embed::Embedder,
    name: String,
    batch: usize,
    concurrency: usize,
}

impl LocalEmbedder {
    /// Loads the model from `dir` (see [`embed::default_model_dir`]); `concurrency` batches
    /// run at once (candle also spreads each batch's matrix products over the cores).
    pub fn load(
        dir: &std::path::Path,
        batch: usize,
        concurrency: usize,
        max_tokens: usize,
    ) -> Result<LocalEmbedder, BuildError> {
        let mut inner = embed::Embedder::load(dir).map_err(|e| BuildError::Embed(e.to_string()))?;
        inner
            .set_max_tokens(max_tokens)
            .map_err(|e| BuildError::Embed(e.to_string()))?;
        Ok(LocalEmbedder {
            inner,
            // The cache keys vectors by this name: a different truncation is another model.
            name: format!("{}@{max_tokens}", embed::MODEL_NAME),
            batch: batch.max(1),
            concurrency: concurrency.max(1),
        })
    }
}

impl Embedder for LocalEmbedder {
    fn model(&self) -> &str {
        &self.name
    }

    fn served_name(&self) -> &str {
        crate::embed::MODEL_NAME
    }

    fn dims(&self) -> usize {
        self.inner.dims()
    }

    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, BuildError> {
        self.inner
            .embed(texts)
            .map(|e| e.vectors)
            .map_err(|e| BuildError::Embed(e.to_string()))
    }

    fn batch_size(&self) -> usize {
        self.batch
    }

    fn concurrency(&self) -> usize {
        self.concurrency
    }
}

/// Embeds `texts` in batches of [`Embedder::batch_size`], [`Embedder::concurrency`] at once,
/// handing each checked batch (the indexes into `texts` it holds, and their vectors) to `done`
/// as it finishes. Batches group texts of similar length, longest first: an embedder that pads
/// a batch to its longest input (most services do) wastes less work, and the slowest batches
/// come first, so the progress rate only improves. On the first failure no new batch starts, and
/// the error is returned once the batches under way have ended (those that succeeded were
/// handed over).
pub fn embed_batches(
    embedder: &dyn Embedder,
    texts: &[&str],
    mut done: impl FnMut(&[usize], Vec<Vec<f32>>),
) -> Result<(), BuildError> {
    let batch = embedder.batch_size().max(1);
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(texts[i].len()));
    let batches: Vec<&[usize]> = order.chunks(batch).collect();
    let workers = embedder.concurrency().clamp(1, batches.len().max(1));
    let next = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let (sender, receiver) = mpsc::channel();
    let mut first_error = None;
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let sender = sender.clone();
            let (next, stop, batches) = (&next, &stop, &batches);
            scope.spawn(move || loop {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Some(&indices) = batches.get(next.fetch_add(1, Ordering::SeqCst)) else {
                    return;
                };
                let slice: Vec<&str> = indices.iter().map(|&i| texts[i]).collect();
                let result = embedder
                    .embed(&slice)
                    .and_then(|vectors| check_batch(embedder, slice.len(), vectors));
                if result.is_err() {
                    stop.store(true, Ordering::SeqCst);
                }
                if sender.send((indices, result)).is_err() {
                    return;
                }
            });
        }
        drop(sender);
        for (indices, result) in receiver {
            match result {
                Ok(vectors) => done(indices, vectors),
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
    });
    first_error.map_or(Ok(()), Err)
}

fn check_batch(
    embedder: &dyn Embedder,
    expected: usize,
    vectors: Vec<Vec<f32>>,
) -> Result<Vec<Vec<f32>>, BuildError> {
    if vectors.len() != expected {
        return Err(BuildError::Embed(format!(
            "{} returned {} vectors for {expected} texts",
            embedder.model(),
            vectors.len()
        )));
    }
    let dims = embedder.dims();
    if let Some((i, v)) = vectors.iter().enumerate().find(|(_, v)| v.len() != dims) {
        return Err(BuildError::Embed(format!(
            "{} returned a vector of {} dimensions (item {i}), expected {dims}",
            embedder.model(),
            v.len()
        )));
    }
    if vectors.iter().flatten().any(|x| !x.is_finite()) {
        return Err(BuildError::Embed(format!(
            "{} returned a vector with NaN or infinity",
            embedder.model()
        )));
    }
    Ok(vectors)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A deterministic embedder for tests: a vector from the text's hash, and a record of
    /// every text it was asked to embed.
    pub(crate) struct FakeEmbedder {
        pub dims: usize,
        pub batch: usize,
        pub concurrency: usize,
        pub seen: Mutex<Vec<String>>,
        /// Fail on any batch that holds this text.
        pub fail_on: Option<String>,
    }

    impl FakeEmbedder {
        pub(crate) fn new(dims: usize) -> FakeEmbedder {
            FakeEmbedder {
                dims,
                batch: 3,
                concurrency: 2,
                seen: Mutex::new(Vec::new()),
                fail_on: None,
            }
        }

        pub(crate) fn vector(text: &str, dims: usize) -> Vec<f32> {
            let mut h = xxhash_rust::xxh3::xxh3_64(text.as_bytes());
            (0..dims)
                .map(|_| {
                    h = h
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((h >> 40) as f32 / (1u64 << 24) as f32) - 0.5
                })
                .collect()
        }

        pub(crate) fn seen(&self) -> Vec<String> {
            let mut seen = self.seen.lock().unwrap().clone();
            seen.sort();
            seen
        }
    }

    impl Embedder for FakeEmbedder {
        fn model(&self) -> &str {
            "fake"
        }
        fn dims(&self) -> usize {
            self.dims
        }
        fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, BuildError> {
            if texts.iter().any(|t| Some(*t) == self.fail_on.as_deref()) {
                return Err(BuildError::Embed("injected failure".into()));
            }
            self.seen
                .lock()
                .unwrap()
                .extend(texts.iter().map(|t| t.to_string()));
            Ok(texts.iter().map(|t| Self::vector(t, self.dims)).collect())
        }
        fn batch_size(&self) -> usize {
            self.batch
        }
        fn concurrency(&self) -> usize {
            self.concurrency
        }
    }

    #[test]
    fn embed_batches_covers_every_text_once_in_order_of_index() {
        let embedder = FakeEmbedder::new(4);
        // Of mixed lengths, so that batches are not runs of neighbours.
        let texts: Vec<String> = (0..10)
            .map(|i| format!("t{}", "x".repeat(i * 7 % 10)))
            .collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let mut got = vec![None; texts.len()];
        embed_batches(&embedder, &refs, |indices, vectors| {
            for (&i, v) in indices.iter().zip(vectors) {
                assert!(got[i].replace(v).is_none());
            }
        })
        .unwrap();
        for (text, v) in texts.iter().zip(&got) {
            assert_eq!(v.as_deref(), Some(&FakeEmbedder::vector(text, 4)[..]));
        }
        assert_eq!(embedder.seen().len(), 10);
    }

    #[test]
    fn embed_batches_stops_on_the_first_failure_and_reports_it() {
        let mut embedder = FakeEmbedder::new(2);
        embedder.concurrency = 1;
        embedder.fail_on = Some("t04".into());
        // Of one length, so that batches keep the texts' order.
        let texts: Vec<String> = (0..12).map(|i| format!("t{i:02}")).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let mut handed = 0;
        let error = embed_batches(&embedder, &refs, |_, v| handed += v.len())
            .err()
            .unwrap();
        assert!(error.to_string().contains("injected"), "{error}");
        // Batch 0 (t00..t02) succeeded, batch 1 (t03..t05) failed, nothing after it started.
        assert_eq!(handed, 3);
    }

    /// The built-in embedder, through `embed_batches` with two batches at once, reproduces the
    /// shared pydocs vectors (passages short enough that the corpus' 128-token truncation and
    /// ingest's 256 agree), and reports its throughput.
    #[test]
    fn local_embedder_reproduces_the_shared_pydocs_vectors() {
        let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/pydocs");
        if !data.join("base.f32").is_file() {
            eprintln!("SKIPPED: {} is absent", data.display());
            return;
        }
        let dir = match embed::default_model_dir() {
            Ok(dir) => dir,
            Err(e) => {
                eprintln!("SKIPPED: {e}");
                return;
            }
        };
        let counter = crate::build::docs::chunk::TokenCounter::from_model_dir(&dir).unwrap();
        let embedder = LocalEmbedder::load(&dir, 16, 2, LOCAL_MAX_TOKENS).unwrap();
        let text = std::fs::read_to_string(data.join("passages.jsonl")).unwrap();
        let rows: Vec<(usize, String)> = text
            .lines()
            .take(400)
            .enumerate()
            .map(|(i, l)| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                (i, v["text"].as_str().unwrap().to_string())
            })
            .filter(|(_, t)| counter.count(t) <= 120)
            .take(96)
            .collect();
        assert_eq!(rows.len(), 96);
        let base = std::fs::read(data.join("base.f32")).unwrap();
        let want = |row: usize| -> Vec<f32> {
            base[row * 384 * 4..(row + 1) * 384 * 4]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        };
        let texts: Vec<&str> = rows.iter().map(|(_, t)| t.as_str()).collect();
        let mut got = vec![Vec::new(); texts.len()];
        let started = std::time::Instant::now();
        embed_batches(&embedder, &texts, |indices, vectors| {
            for (&i, v) in indices.iter().zip(vectors) {
                got[i] = v;
            }
        })
        .unwrap();
        let seconds = started.elapsed().as_secs_f64();
        eprintln!(
            "built-in embedder: {} chunks in {seconds:.2}s = {:.1} chunks/s",
            texts.len(),
            texts.len() as f64 / seconds
        );
        for ((row, text), vector) in rows.iter().zip(&got) {
            let w = want(*row);
            let cosine: f32 = vector.iter().zip(&w).map(|(a, b)| a * b).sum();
            assert!(cosine >= 0.999, "row {row}: cosine {cosine} for {text:?}");
        }
    }

    struct WrongDims;
    impl Embedder for WrongDims {
        fn model(&self) -> &str {
            "wrong"
        }
        fn dims(&self) -> usize {
            3
        }
        fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, BuildError> {
            Ok(texts.iter().map(|_| vec![1.0, 2.0]).collect())
        }
    }

    #[test]
    fn embed_batches_rejects_vectors_of_the_wrong_dimension() {
        let error = embed_batches(&WrongDims, &["a"], |_, _| {}).err().unwrap();
        assert!(error.to_string().contains("2 dimensions"), "{error}");
    }
}
