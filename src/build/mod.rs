//! Turns a corpus into an index directory: validated corpus → balanced k-means partition →
//! per-shard HNSW graph (instant-distance) → quantised shard blobs → manifest (written last).
//! `ingest` makes that corpus from a folder of documents first: [`docs`] (walk, extract,
//! chunk) → an [`embedder::Embedder`] (built in, or a remote one) through the
//! [`embedding_cache`] → the same build.

mod assemble;
pub mod compact;
pub mod corpus;
pub mod docs;
pub mod embed_file;
pub mod embedder;
pub mod embedding_cache;
pub mod error;
mod graph;
mod index_dir;
pub mod ingest;
pub mod output;
mod partition;
mod postings;
pub mod remote_embedder;
mod sizing;
pub mod sync;

use std::path::PathBuf;

pub use error::BuildError;
pub use index_dir::IndexDir;
pub use sizing::DEFAULT_MAX_SHARD_BYTES;

use crate::manifest::{
    checksum_hex, Manifest, Placement, Routing, ShardEntry, MANIFEST_FORMAT_VERSION,
};
use crate::shard::{format, Metric, Quant};

pub const DEFAULT_EF_CONSTRUCTION: usize = 200;
pub const DEFAULT_SEED: u64 = 42;
/// Layer-0 neighbours kept per node for search (see `graph`): M, half of what construction uses.
pub const DEFAULT_DEGREE: usize = 32;

/// How an index is laid out and built, whatever its passages come from (`shardc build` and
/// `shardc ingest` take the same options).
#[derive(Debug, Clone, clap::Args)]
pub struct IndexShape {
    #[arg(long, default_value = "cosine")]
    pub metric: Metric,
    #[arg(long, default_value = "f16")]
    pub quant: Quant,
    /// Shards to split the corpus into; overrides `--max-shard-bytes`.
    #[arg(long)]
    pub shards: Option<usize>,
    /// Without `--shards`: the fewest shards whose blobs are each estimated to fit this many
    /// bytes (default 36 MiB: half a shard host's default shard budget, so a host holds the
    /// shard it serves and loads the next version's beside it).
    #[arg(long, default_value_t = sizing::DEFAULT_MAX_SHARD_BYTES)]
    pub max_shard_bytes: u64,
    /// Comma-separated region names.
    #[arg(long, value_delimiter = ',', required = true)]
    pub regions: Vec<String>,
    /// `replicate`: every shard in every region (each region serves from its own bucket);
    /// `spread`: one region per shard, round-robin (one copy, for indexes too large to copy).
    #[arg(long, default_value = "replicate")]
    pub placement: Placement,
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// Comma-separated metadata fields search filters may name, listed in the manifest
    /// (default: every metadata field of the corpus). A filter on any other field is refused
    /// by the API. Every field stays stored in the shards either way (matches return it).
    #[arg(long, value_delimiter = ',')]
    pub filter_fields: Option<Vec<String>>,
    /// Boundary replication: also store each passage in the nearest other shard whose centroid
    /// is at most this much farther from it than its own shard's (the metric's distance;
    /// cosine: 1 − similarity), so that a query finds its neighbours in fewer shards. 0: off.
    /// The manifest's `routing` records it and the stored copies (README "Routing").
    #[arg(long, default_value_t = 0.0)]
    pub replicate_margin: f32,
    /// A query visits, nearest first, only the shards whose centroid is at most this much
    /// farther from it than the nearest one's (`probe` still caps it). Default: twice
    /// `--replicate-margin` when that is on, else every shard.
    #[arg(long)]
    pub probe_margin: Option<f32>,
    /// Graph-building threads (default: one per core); 1 gives the same bytes and version for
    /// the same input and seed (instant-distance inserts in parallel, so with more threads the
    /// graph and version vary).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Everything `shardc build` takes: its command-line arguments, parsed by clap in `shardc`.
#[derive(Debug, Clone, clap::Args)]
pub struct BuildConfig {
    #[arg(long)]
    pub passages: PathBuf,
    /// Raw little-endian f32 vectors, N × dims; otherwise each line carries a "vector" array.
    #[arg(long)]
    pub vectors: Option<PathBuf>,
    #[arg(long)]
    pub dims: usize,
    #[command(flatten)]
    pub shape: IndexShape,
    #[arg(long)]
    pub name: String,
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = DEFAULT_EF_CONSTRUCTION)]
    pub ef_construction: usize,
    /// Layer-0 neighbours kept per node (1 to 64): fewer make each step of a search cheaper
    /// and need a larger ef for the same recall.
    #[arg(long, default_value_t = DEFAULT_DEGREE)]
    pub degree: usize,
    /// The model that embedded the vectors (e.g. all-MiniLM-L6-v2), recorded in the manifest:
    /// the worker then embeds text queries and text upserts of this index with it, and refuses
    /// to if its embeddings pool serves another.
    #[arg(long)]
    pub embedding_model: Option<String>,
    /// Show progress bars on stderr (`shardc` turns them on; library callers choose).
    #[arg(skip)]
    pub progress: bool,
}

/// Builds the index described by `config` into `config.out` and returns its manifest.
pub fn build_index(config: &BuildConfig) -> Result<Manifest, BuildError> {
    check_config(config)?;
    let corpus = corpus::read_corpus(
        &config.passages,
        config.vectors.as_deref(),
        config.dims,
        config.shape.metric,
    )?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(config.shape.threads.unwrap_or(0))
        .build()
        .map_err(|e| BuildError::Invalid(format!("graph thread pool: {e}")))?;
    let filter_fields = filter_fields(&corpus, config.shape.filter_fields.as_deref())?;
    let corpus_terms = postings::corpus_terms(&corpus);
    let sizes =
        sizing::RowSizes::measure(&corpus, config.shape.quant, config.degree, &corpus_terms);
    let (partition, replicas) = pool.install(|| partition_within(&corpus, config, &sizes))?;
    let shards = partition.members.len();
    let routing = routing(&config.shape, replicas);
    let mut entries = Vec::with_capacity(shards);
    let mut blobs = Vec::with_capacity(shards);
    for (index, rows) in partition.members.iter().enumerate() {
        let shard_name = format!("shard-{index:03}");
        let vectors: Vec<f32> = rows
            .iter()
            .flat_map(|&row| corpus.vector(row).iter().copied())
            .collect();
        let bar = progress_bar(config.progress, rows.len(), &format!("graph {shard_name}"));
        let params = graph::GraphParams {
            ef_construction: config.ef_construction,
            seed: config.shape.seed.wrapping_add(index as u64),
            degree: config.degree,
        };
        let graph = pool.install(|| {
            graph::build_graph(
                &vectors,
                corpus.dims,
                config.shape.metric,
                &params,
                bar.clone(),
            )
        })?;
        bar.finish_and_clear();
        let names = assemble::ShardNames {
            index: &config.name,
            shard: &shard_name,
        };
        let data = assemble::assemble_shard(
            &corpus,
            rows,
            &graph,
            names,
            config.shape.metric,
            config.shape.quant,
            &corpus_terms,
        )?;
        let blob = format::encode_blob(&data).map_err(|source| BuildError::Shard {
            shard: shard_name.clone(),
            source,
        })?;
        let checksum = checksum_hex(&blob[format::HEADER_LEN..]);
        let file = format!("{shard_name}.{checksum}{}", output::SHARD_FILE_SUFFIX);
        entries.push(ShardEntry {
            name: shard_name,
            file: file.clone(),
            bytes: blob.len() as u64,
            count: rows.len() as u32,
            centroid: partition.centroids[index].clone(),
            checksum,
            regions: shard_regions(config.shape.placement, index, shards, &config.shape.regions),
        });
        blobs.push((file, blob));
    }
    let mut manifest = Manifest {
        format_version: MANIFEST_FORMAT_VERSION,
        name: config.name.clone(),
        version: String::new(),
        dims: corpus.dims,
        metric: config.shape.metric,
        quant: config.shape.quant,
        count: corpus.len() as u64,
        shards: entries,
        regions: config.shape.regions.clone(),
        placement: Some(config.shape.placement),
        embedding_model: config.embedding_model.clone(),
        filter_fields: Some(filter_fields),
        lexical: Some(corpus_terms.stats),
        routing,
    };
    manifest.version = manifest.content_version();
    manifest.validate().map_err(|source| BuildError::Manifest {
        path: config.out.clone(),
        source,
    })?;
    output::write_index(&config.out, &blobs, &manifest)?;
    Ok(manifest)
}

/// A new version of the index in `from` whose filterable fields are `fields`, written to `out`:
/// the same shard files (every metadata field is stored in them whatever the list), a manifest
/// with the new list and so a new version. No re-embedding, no graph build.
pub fn refilter_index(
    from: &std::path::Path,
    out: &std::path::Path,
    fields: &[String],
) -> Result<Manifest, BuildError> {
    let index = IndexDir::open(from)?;
    let mut manifest = index.manifest.clone();
    let blobs = manifest
        .shards
        .iter()
        .map(|entry| {
            let path = from.join(&entry.file);
            std::fs::read(&path)
                .map(|bytes| (entry.file.clone(), bytes))
                .map_err(BuildError::io(&path))
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Format 1 named each shard by the hash of its whole file; the current one by the payload
    // checksum its header records (the blobs passed `IndexDir::open`, so they have one).
    for (entry, (_, bytes)) in manifest.shards.iter_mut().zip(&blobs) {
        if let Some(checksum) = format::Header::declared_checksum(bytes) {
            entry.checksum = format!("{checksum:016x}");
        }
    }
    manifest.filter_fields = Some(declared_fields(fields)?);
    manifest.format_version = MANIFEST_FORMAT_VERSION;
    manifest.version = manifest.content_version();
    manifest.validate().map_err(|source| BuildError::Manifest {
        path: out.to_path_buf(),
        source,
    })?;
    output::write_index(out, &blobs, &manifest)?;
    Ok(manifest)
}

/// The fields filters may name, sorted: `declared` (`--filter-fields`), else every metadata
/// field some passage of the corpus has (but those starting with `$`, which a filter cannot
/// name: `$` starts its operators). A declared field no passage has is kept (passages written
/// later may have it).
fn filter_fields(
    corpus: &corpus::Corpus,
    declared: Option<&[String]>,
) -> Result<Vec<String>, BuildError> {
    let Some(declared) = declared else {
        let fields: std::collections::BTreeSet<&String> = corpus
            .metadata
            .iter()
            .flat_map(|m| m.keys())
            .filter(|f| !f.starts_with('$'))
            .collect();
        return Ok(fields.into_iter().cloned().collect());
    };
    declared_fields(declared)
}

/// `--filter-fields` as given: trimmed, sorted, distinct, none empty or starting with `$`.
fn declared_fields(declared: &[String]) -> Result<Vec<String>, BuildError> {
    let fields: std::collections::BTreeSet<String> =
        declared.iter().map(|f| f.trim().to_string()).collect();
    if let Some(field) = fields.iter().find(|f| f.is_empty() || f.starts_with('$')) {
        return Err(BuildError::Invalid(format!(
            "--filter-fields {field:?}: a field name is not empty and does not start with `$` (the filter operators)"
        )));
    }
    Ok(fields.into_iter().collect())
}

/// The partition (with its boundary replicas, and how many) into `--shards` shards, or else into
/// the fewest whose estimated blobs all fit `--max-shard-bytes`: starting from the even split's
/// count, grown in proportion to the largest shard's overshoot until every shard fits (k-means
/// shards are not all the same size in bytes, and replicas add to some more than others).
fn partition_within(
    corpus: &corpus::Corpus,
    config: &BuildConfig,
    sizes: &sizing::RowSizes,
) -> Result<(partition::Partition, u64), BuildError> {
    let shape = &config.shape;
    let max = shape.max_shard_bytes;
    let mut shards = shape.shards.unwrap_or_else(|| sizes.shards_for(max));
    loop {
        if corpus.len() < shards {
            return Err(BuildError::Invalid(format!(
                "{} passages cannot fill {shards} shards{}",
                corpus.len(),
                if shape.shards.is_some() {
                    String::new()
                } else {
                    format!(" of at most {max} bytes (--max-shard-bytes)")
                }
            )));
        }
        let mut partition = partition::balanced_kmeans(corpus, shards, shape.metric, shape.seed);
        let replicas = partition.replicate_boundaries(corpus, shape.metric, shape.replicate_margin);
        let largest = partition
            .members
            .iter()
            .map(|rows| sizes.shard_bytes(rows))
            .max()
            .unwrap_or(0);
        if shape.shards.is_some() || largest <= max {
            return Ok((partition, replicas));
        }
        let grown = (shards as f64 * largest as f64 / max as f64).ceil() as usize;
        shards = grown.max(shards + 1);
    }
}

/// The manifest's `routing` for a build with `replicas` stored copies: absent when neither
/// margin is set, as for builds before it existed.
fn routing(shape: &IndexShape, replicas: u64) -> Option<Routing> {
    let probe_margin = shape
        .probe_margin
        .or((shape.replicate_margin > 0.0).then_some(2.0 * shape.replicate_margin))?;
    Some(Routing {
        replicate_margin: shape.replicate_margin,
        replicas,
        probe_margin,
    })
}

fn check_config(config: &BuildConfig) -> Result<(), BuildError> {
    let margins = [
        ("--replicate-margin", Some(config.shape.replicate_margin)),
        ("--probe-margin", config.shape.probe_margin),
    ];
    if let Some((flag, margin)) = margins
        .iter()
        .find_map(|&(flag, m)| m.filter(|m| !m.is_finite() || *m < 0.0).map(|m| (flag, m)))
    {
        return Err(BuildError::Invalid(format!(
            "{flag} must be a finite distance of at least 0, not {margin}"
        )));
    }
    if config.shape.shards == Some(0) {
        return Err(BuildError::Invalid("--shards must be at least 1".into()));
    }
    if config.shape.max_shard_bytes == 0 {
        return Err(BuildError::Invalid(
            "--max-shard-bytes must be at least 1".into(),
        ));
    }
    if config.shape.regions.is_empty() || config.shape.regions.iter().any(|r| r.is_empty()) {
        return Err(BuildError::Invalid(
            "--regions needs at least one non-empty region name".into(),
        ));
    }
    if let Some((i, region)) = config
        .shape
        .regions
        .iter()
        .enumerate()
        .find(|(i, r)| config.shape.regions[..*i].contains(r))
    {
        return Err(BuildError::Invalid(format!(
            "--regions names {region:?} twice (at {i})"
        )));
    }
    if !crate::manifest::is_index_name(&config.name) {
        return Err(BuildError::Invalid(format!(
            "--name {:?}: 1 to {} bytes, no `/` or control characters, no leading `.`",
            config.name,
            crate::manifest::INDEX_NAME_MAX
        )));
    }
    if config.shape.threads == Some(0) {
        return Err(BuildError::Invalid("--threads must be at least 1".into()));
    }
    if !(1..=graph::CONSTRUCTION_DEGREE).contains(&config.degree) {
        return Err(BuildError::Invalid(format!(
            "--degree must be between 1 and {}",
            graph::CONSTRUCTION_DEGREE
        )));
    }
    if config.ef_construction == 0 {
        return Err(BuildError::Invalid(
            "--ef-construction must be at least 1".into(),
        ));
    }
    Ok(())
}

/// `replicate`: every region. `spread`: shard i is served in region i mod R, and region j serves
/// shard j mod S, so every shard has a region and every region has a shard.
fn shard_regions(
    placement: Placement,
    shard: usize,
    shards: usize,
    regions: &[String],
) -> Vec<String> {
    if placement == Placement::Replicate {
        return regions.to_vec();
    }
    regions
        .iter()
        .enumerate()
        .filter(|(j, _)| j % shards == shard || *j == shard % regions.len())
        .map(|(_, region)| region.clone())
        .collect()
}

fn progress_bar(enabled: bool, len: usize, message: &str) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(len as u64);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{msg:>20} [{bar:40}] {pos}/{len} {elapsed}")
    {
        bar.set_style(style);
    }
    bar.set_message(message.to_owned());
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_covers_every_shard_and_region() {
        let regions: Vec<String> = ["a", "b", "c"].iter().map(|r| r.to_string()).collect();
        let spread = |shard, shards| shard_regions(Placement::Spread, shard, shards, &regions);
        assert_eq!(spread(0, 1), regions);
        assert_eq!(spread(0, 4), vec!["a"]);
        assert_eq!(spread(3, 4), vec!["a"]);
        assert_eq!(spread(1, 2), vec!["b"]);
        assert_eq!(spread(0, 2), vec!["a", "c"]);
    }

    #[test]
    fn replicate_puts_every_shard_in_every_region() {
        let regions: Vec<String> = ["a", "b", "c"].iter().map(|r| r.to_string()).collect();
        for shard in 0..4 {
            assert_eq!(
                shard_regions(Placement::Replicate, shard, 4, &regions),
                regions
            );
        }
    }
}
