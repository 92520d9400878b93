//! `shardc`: the shard compiler CLI — build an index (from a JSONL corpus, or ingest a folder
//! of documents), query it, measure its recall and latency,
//! inspect blobs for corruption, measure load time against a serde baseline, publish an index
//! through a worker's admin routes and manage its versions.

use std::error::Error;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use edgerag::build::ingest::{self, EmbedArgs, IngestConfig, SourceArgs};
use edgerag::build::sync::{self, SyncTarget};
use edgerag::build::{build_index, compact, BuildConfig, IndexDir};
use edgerag::manifest::{Manifest, MANIFEST_FILE};
use edgerag::publish::client::{self, AdminClient};
use edgerag::shard::format::{self, ShardData};
use edgerag::shard::{DocId, Filter, SearchParams, Shard};
use rkyv::util::AlignedVec;
use serde_json::json;

type CliResult = Result<(), Box<dyn Error>>;

#[derive(Parser)]
#[command(
    name = "shardc",
    about = "Build, query, evaluate and inspect edgerag shard indexes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build an index directory from a JSONL corpus.
    Build(BuildConfig),
    /// Build an index directory from a folder of documents (Markdown, reStructuredText, HTML,
    /// plain text): chunk them, embed the chunks (cached in DIR/.embed-cache, so a rebuild
    /// embeds only changed chunks), write DIR/passages.jsonl and DIR/vectors.f32, and build
    /// the index from them as `shardc build` does.
    Ingest {
        #[command(flatten)]
        config: IngestConfig,
        #[command(flatten)]
        embed: EmbedArgs,
    },
    /// Embed the `text` of every line of a JSONL file (built-in all-MiniLM-L6-v2, or
    /// --embed-url) and write the vectors as raw little-endian f32 rows in line order, the
    /// `--vectors` file `shardc build` reads. Prints texts/s.
    Embed {
        /// A JSONL file whose lines have a string field `text`.
        #[arg(long)]
        passages: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        embed: EmbedArgs,
    },
    /// Keep a live index equal to a folder of documents through the worker's write routes
    /// (admin key in $EDGERAG_ADMIN_KEY): chunk and embed as `ingest` does, upsert new and
    /// changed chunks, delete those of removed or shortened files. A state folder remembers
    /// what was synced (and holds the embedding cache).
    Sync {
        #[command(flatten)]
        source: SourceArgs,
        /// The worker's base URL, e.g. http://127.0.0.1:8787.
        #[arg(long)]
        url: String,
        /// The live index to write to.
        #[arg(long)]
        index: String,
        /// The state folder (default: .edgerag-sync/INDEX in the current directory).
        #[arg(long)]
        state: Option<PathBuf>,
        #[command(flatten)]
        embed: EmbedArgs,
    },
    /// Search every shard of an index with one query vector and print the matches.
    Query {
        #[arg(long)]
        index: PathBuf,
        /// Raw little-endian f32 rows of the index's dimension.
        #[arg(long, required_unless_present = "text")]
        vector_file: Option<PathBuf>,
        /// Query text, for a lexical search (or, with `--vector-file`, a hybrid one).
        #[arg(long)]
        text: Option<String>,
        /// vector, lexical or hybrid (default: what the query gives: vector for a vector,
        /// lexical for text, hybrid for both).
        #[arg(long)]
        mode: Option<String>,
        #[arg(long, default_value_t = edgerag::lexical::RRF_K_DEFAULT)]
        rrf_k: u32,
        #[arg(long, default_value_t = 0)]
        row: usize,
        /// Search with every row of the file in turn, one answer each (with `--json`, a line
        /// `{"row", "matches"}` per row): a question set in one process, the index opened once.
        #[arg(long, conflicts_with = "row")]
        all_rows: bool,
        #[arg(long, default_value_t = 10)]
        k: usize,
        #[arg(long, default_value_t = 64)]
        ef: usize,
        /// Search only the N shards whose centroids are nearest the query (default: all).
        #[arg(long)]
        probe: Option<usize>,
        /// Metadata filter as a JSON object (the README's filter language), e.g.
        /// '{"source":"library/os.html"}' or '{"year":{"$gte":2020}}'.
        #[arg(long)]
        filter: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Recall@k against exact ground truth and latency, per ef.
    Eval(EvalArgs),
    /// Write a new version of an index directory whose filterable metadata fields are
    /// `--filter-fields`: the same shard files, a new manifest (no re-embedding, no graph build).
    Refilter {
        #[arg(long)]
        index: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Comma-separated metadata fields search filters may name.
        #[arg(long, value_delimiter = ',', required = true)]
        filter_fields: Vec<String>,
    },
    /// Section questions answered by each ranking (vector, lexical, hybrid): how often a top-k
    /// passage comes from the question's own section (same `source` and `title` metadata).
    EvalSections(EvalSectionsArgs),
    /// Verify a shard blob or an index directory (payload checksums, archive, structure) and describe it.
    Inspect { path: PathBuf },
    /// Upload an index directory through a worker's admin routes (admin key in
    /// $EDGERAG_ADMIN_KEY) and make it live once every blob is verified in every region its
    /// placement names; a re-run resumes. Exits non-zero naming what is missing otherwise.
    Publish {
        dir: PathBuf,
        /// The worker's base URL, e.g. http://127.0.0.1:8787.
        #[arg(long)]
        url: String,
    },
    /// Fold an index's live writes into its shards: export every live passage from the worker
    /// (admin key in $EDGERAG_ADMIN_KEY), rebuild, publish the new version and let the index's
    /// write log drop the writes it now holds. Writes made meanwhile stay in the log, on top.
    Compact {
        index: String,
        /// The worker's base URL, e.g. http://127.0.0.1:8787.
        #[arg(long)]
        url: String,
        /// Where the export and the build go (default: a temporary directory, removed after).
        #[arg(long)]
        work: Option<PathBuf>,
        /// Shards of the new version (default: as many as before, more once it outgrows them).
        #[arg(long)]
        shards: Option<usize>,
    },
    /// List, roll back, delete and garbage-collect an index's published versions.
    Index {
        /// The worker's base URL, e.g. http://127.0.0.1:8787.
        #[arg(long, global = true, default_value = "http://127.0.0.1:8787")]
        url: String,
        #[command(subcommand)]
        action: IndexAction,
    },
    /// Time from blob bytes in memory to a first answer, against a serde+bincode deserialisation:
    /// medians of `open_first_query_us` (bytes whose checksum was verified on arrival → first
    /// answered query; `of_which_open_us` without the query; `same_query_again_us`, the query
    /// repeated on warm memory), `checksum_us` (that verification,
    /// once per transfer), `verify_open_first_query_us` (both, as `Shard::from_aligned`),
    /// `serde_bincode_deserialise_us`, and their ratio `serde_over_open_first_query`.
    BenchLoad {
        #[arg(long)]
        index: PathBuf,
        /// Raw little-endian f32 query rows of the index's dimension; run `i` asks row `i`.
        #[arg(long)]
        queries: PathBuf,
        #[arg(long, default_value_t = 20)]
        repeat: usize,
        /// One JSON object instead of `key: value` lines.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum IndexAction {
    /// The index's versions, newest first: which is live, when published, bytes.
    Versions {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Point `current` at a version already published (back or forward).
    Rollback { name: String, version: String },
    /// Delete a version that is not live.
    DeleteVersion { name: String, version: String },
    /// Delete the whole index: every version and `current`.
    Delete { name: String },
    /// Delete every version but the newest N (and the live one).
    Gc {
        name: String,
        #[arg(long)]
        keep: usize,
    },
}

#[derive(clap::Args)]
struct EvalArgs {
    #[arg(long)]
    index: PathBuf,
    #[arg(long)]
    queries: PathBuf,
    /// Rows of 100 little-endian i32 corpus ids (best first), one per query.
    #[arg(long)]
    gt: PathBuf,
    #[arg(long, default_value_t = 10)]
    k: usize,
    #[arg(long, value_delimiter = ',', default_value = "16,32,64,128,256")]
    ef: Vec<usize>,
    /// Use only the first N queries.
    #[arg(long)]
    limit: Option<usize>,
    /// Search only the N shards whose centroids are nearest each query (default: all).
    #[arg(long)]
    probe: Option<usize>,
    /// Add a brute-force row over the stored (quantised) vectors.
    #[arg(long)]
    exact: bool,
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
struct EvalSectionsArgs {
    #[arg(long)]
    index: PathBuf,
    /// JSONL questions, each with `text`, `source` and `title`.
    #[arg(long)]
    queries: PathBuf,
    /// The questions' embeddings, one little-endian f32 row each (without them only the
    /// lexical ranking is measured).
    #[arg(long)]
    vectors: Option<PathBuf>,
    #[arg(long, default_value_t = 5)]
    k: usize,
    #[arg(long, default_value_t = 64)]
    ef: usize,
    #[arg(long, default_value_t = edgerag::lexical::RRF_K_DEFAULT)]
    rrf_k: u32,
    /// How many of each ranking's best a hybrid search fuses (default: the worker's).
    #[arg(long)]
    depth: Option<usize>,
    /// Use only the first N questions.
    #[arg(long)]
    limit: Option<usize>,
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Build(config) => run_build(&BuildConfig {
            progress: true,
            ..config
        }),
        Command::Ingest { config, embed } => run_ingest(
            &IngestConfig {
                progress: std::io::stderr().is_terminal(),
                ..config
            },
            &embed,
        ),
        Command::Embed {
            passages,
            out,
            embed,
        } => run_embed(&passages, &out, &embed),
        Command::Sync {
            source,
            url,
            index,
            state,
            embed,
        } => run_sync(&source, &url, &index, state, &embed),
        Command::Query {
            index,
            vector_file,
            text,
            mode,
            rrf_k,
            row,
            all_rows,
            k,
            ef,
            probe,
            filter,
            json,
        } => {
            let params = QueryParams {
                rows: if all_rows { None } else { Some(row) },
                text,
                mode,
                rrf_k,
                k,
                ef,
                probe,
                filter,
            };
            run_query(&index, vector_file.as_deref(), &params, json)
        }
        Command::Eval(args) => run_eval(&args),
        Command::EvalSections(args) => run_eval_sections(&args),
        Command::Inspect { path } => run_inspect(&path),
        Command::Refilter {
            index,
            out,
            filter_fields,
        } => run_refilter(&index, &out, &filter_fields),
        Command::BenchLoad {
            index,
            queries,
            repeat,
            json,
        } => run_bench_load(&index, &queries, repeat, json),
        Command::Publish { dir, url } => run_publish(&dir, &url),
        Command::Compact {
            index,
            url,
            work,
            shards,
        } => run_compact(&index, &url, work.as_deref(), shards),
        Command::Index { url, action } => run_index(&url, action),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("shardc: error: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run_build(config: &BuildConfig) -> CliResult {
    let started = Instant::now();
    let manifest = build_index(config)?;
    say_built(&manifest, started);
    Ok(())
}

fn run_refilter(index: &Path, out: &Path, filter_fields: &[String]) -> CliResult {
    let started = Instant::now();
    let manifest = edgerag::build::refilter_index(index, out, filter_fields)?;
    say_built(&manifest, started);
    Ok(())
}

/// One line on stderr: the index version a build made, and how long it took.
fn say_built(manifest: &Manifest, started: Instant) {
    let bytes: u64 = manifest.shards.iter().map(|s| s.bytes).sum();
    eprintln!(
        "built {} version {}: {} passages in {} shards, {bytes} bytes, {:.1}s",
        manifest.name,
        manifest.version,
        manifest.count,
        manifest.shards.len(),
        started.elapsed().as_secs_f64()
    );
}

fn run_embed(passages: &Path, out: &Path, embed: &EmbedArgs) -> CliResult {
    // No chunking here: the texts are taken whole, so only the embedder's own limit applies.
    let (embedder, _) = embed.open(0)?;
    let report = edgerag::build::embed_file::embed_file(
        passages,
        out,
        embedder.as_ref(),
        std::io::stderr().is_terminal(),
    )?;
    eprintln!(
        "embedded {} texts with {} in {:.1}s ({:.1} texts/s) -> {}",
        report.texts,
        embedder.model(),
        report.time.as_secs_f64(),
        report.texts_per_second(),
        out.display()
    );
    println!(
        "{}",
        json!({
            "texts": report.texts,
            "dims": report.dims,
            "model": embedder.model(),
            "seconds": report.time.as_secs_f64(),
            "texts_per_second": report.texts_per_second(),
        })
    );
    Ok(())
}

fn run_ingest(config: &IngestConfig, embed: &EmbedArgs) -> CliResult {
    let started = Instant::now();
    let (embedder, counter) = embed.open(config.source.chunk_tokens)?;
    if matches!(counter, edgerag::build::docs::chunk::TokenCounter::Estimate) {
        eprintln!("shardc: no tokenizer.json found: chunk sizes are estimated");
    }
    let report = ingest::ingest(config, embedder.as_ref(), &counter)?;
    let m = &report.manifest;
    let seconds = report.embed_time.as_secs_f64();
    let rate = if seconds > 0.0 {
        report.embedded as f64 / seconds
    } else {
        0.0
    };
    eprintln!(
        "read {} files ({} without text; skipped {}: {}) into {} chunks",
        report.files,
        report.no_text,
        report.skipped.total(),
        report.skipped,
        report.chunks
    );
    eprintln!(
        "embedded {} chunks with {} in {seconds:.1}s ({rate:.1} chunks/s), reused {} from the cache",
        report.embedded,
        embedder.model(),
        report.reused
    );
    say_built(m, started);
    let summary = json!({
        "name": m.name,
        "version": m.version,
        "files": report.files,
        "no_text": report.no_text,
        "skipped": {
            "unreadable": report.skipped.unreadable,
            "binary": report.skipped.binary,
            "empty": report.skipped.empty,
            "not_utf8": report.skipped.not_utf8,
        },
        "chunks": report.chunks,
        "embedded": report.embedded,
        "reused": report.reused,
        "embed_s": seconds,
        "chunks_per_s": rate,
        "model": embedder.model(),
        "dims": m.dims,
    });
    println!("{summary}");
    Ok(())
}

fn run_sync(
    source: &SourceArgs,
    url: &str,
    index: &str,
    state: Option<PathBuf>,
    embed: &EmbedArgs,
) -> CliResult {
    let key = std::env::var(client::ADMIN_KEY_VAR).map_err(|_| {
        format!(
            "set {} to an admin API key of the worker",
            client::ADMIN_KEY_VAR
        )
    })?;
    let (embedder, counter) = embed.open(source.chunk_tokens)?;
    let target = SyncTarget {
        url: url.to_string(),
        index: index.to_string(),
        key,
        state_dir: state.unwrap_or_else(|| Path::new(".edgerag-sync").join(index)),
    };
    let started = Instant::now();
    let report = sync::sync(
        source,
        &target,
        embedder.as_ref(),
        &counter,
        std::io::stderr().is_terminal(),
    )?;
    eprintln!(
        "synced {index}: {} chunks ({} embedded, {} from the cache): {} upserted, {} deleted, {} unchanged, {:.1}s",
        report.chunks,
        report.embedded,
        report.reused,
        report.upserted,
        report.deleted,
        report.unchanged,
        started.elapsed().as_secs_f64()
    );
    println!(
        "{}",
        json!({
            "index": index,
            "chunks": report.chunks,
            "embedded": report.embedded,
            "reused": report.reused,
            "upserted": report.upserted,
            "deleted": report.deleted,
            "unchanged": report.unchanged,
        })
    );
    Ok(())
}

fn run_publish(dir: &Path, url: &str) -> CliResult {
    let admin = AdminClient::from_env(url)?;
    let started = Instant::now();
    let published = client::publish(&admin, dir, std::io::stderr().is_terminal(), None)?;
    eprintln!(
        "published {}@{} ({}): {} blobs uploaded, {} already there, {:.1}s",
        published.index,
        published.version,
        published.placement,
        published.uploaded.len(),
        published.skipped.len(),
        started.elapsed().as_secs_f64()
    );
    println!("{}", serde_json::to_string(&published)?);
    Ok(())
}

fn run_compact(index: &str, url: &str, work: Option<&Path>, shards: Option<usize>) -> CliResult {
    let admin = AdminClient::from_env(url)?;
    let started = Instant::now();
    let progress = std::io::stderr().is_terminal();
    let temporary = match work {
        Some(_) => None,
        None => Some(
            tempfile::Builder::new()
                .prefix("shardc-compact-")
                .tempdir()?,
        ),
    };
    let work = work.unwrap_or_else(|| temporary.as_ref().map_or(Path::new("."), |t| t.path()));
    let bar = if progress {
        indicatif::ProgressBar::new_spinner().with_message("exporting passages")
    } else {
        indicatif::ProgressBar::hidden()
    };
    let corpus = compact::corpus_from_export(admin.export(index)?, &work.join("export"), &bar)?;
    bar.finish_and_clear();
    let exported = started.elapsed().as_secs_f64();
    eprintln!(
        "exported {} passages of {}@{} with every write up to seq {} in {exported:.1}s",
        corpus.count, corpus.header.index, corpus.header.version, corpus.header.seq
    );
    if corpus.count == 0 {
        return Err(format!("{index} has no live passage to compact into shards").into());
    }
    let out = work.join("index");
    let manifest = build_index(&corpus.build_config(&out, shards, progress))?;
    let built = started.elapsed().as_secs_f64();
    let published = client::publish(&admin, &out, progress, Some(corpus.header.seq))?;
    eprintln!(
        "compacted {index} into {}@{} ({} passages, {} shards): export {exported:.1}s, build {:.1}s, publish {:.1}s",
        published.index,
        published.version,
        manifest.count,
        manifest.shards.len(),
        built - exported,
        started.elapsed().as_secs_f64() - built
    );
    let summary = serde_json::json!({
        "index": published.index,
        "version": published.version,
        "previous": published.previous,
        "compacted_seq": corpus.header.seq,
        "passages": manifest.count,
        "shards": manifest.shards.len(),
        "export_s": exported,
        "build_s": built - exported,
        "publish_s": started.elapsed().as_secs_f64() - built,
    });
    println!("{summary}");
    Ok(())
}

fn run_index(url: &str, action: IndexAction) -> CliResult {
    let admin = AdminClient::from_env(url)?;
    let answer = match action {
        IndexAction::Versions { name, json } => {
            let answer = admin.versions(&name)?;
            if !json {
                print_versions(&answer);
                return Ok(());
            }
            answer
        }
        IndexAction::Rollback { name, version } => admin.set_current(&name, &version, None)?,
        IndexAction::DeleteVersion { name, version } => admin.delete_version(&name, &version)?,
        IndexAction::Delete { name } => admin.delete_index(&name)?,
        IndexAction::Gc { name, keep } => admin.gc(&name, keep)?,
    };
    println!("{answer}");
    Ok(())
}

fn print_versions(answer: &serde_json::Value) {
    println!(
        "{:<18} {:<5} {:<24} {:>12}  regions",
        "version", "live", "published", "bytes"
    );
    let empty = Vec::new();
    for v in answer["versions"].as_array().unwrap_or(&empty) {
        let published = v["published_at_ms"]
            .as_f64()
            .map(|ms| format!("{:.0} s ago", (now_ms() - ms) / 1000.0))
            .unwrap_or_else(|| "never".into());
        let regions: Vec<&str> = v["regions"]
            .as_array()
            .unwrap_or(&empty)
            .iter()
            .filter_map(|r| r.as_str())
            .collect();
        println!(
            "{:<18} {:<5} {:<24} {:>12}  {}",
            v["version"].as_str().unwrap_or(""),
            if v["live"].as_bool() == Some(true) {
                "yes"
            } else {
                ""
            },
            published,
            v["bytes"].as_u64().unwrap_or(0),
            regions.join(",")
        );
    }
}

fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// Rows of `dims` little-endian values from a raw file, decoded by `decode`.
fn read_rows<T>(
    path: &Path,
    dims: usize,
    decode: fn([u8; 4]) -> T,
) -> Result<Vec<Vec<T>>, Box<dyn Error>> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let row_bytes = dims * 4;
    if bytes.is_empty() || bytes.len() % row_bytes != 0 {
        return Err(format!(
            "{}: {} bytes is not a whole number of {dims}-value rows",
            path.display(),
            bytes.len()
        )
        .into());
    }
    Ok(bytes
        .chunks_exact(row_bytes)
        .map(|row| {
            row.chunks_exact(4)
                .map(|b| decode([b[0], b[1], b[2], b[3]]))
                .collect()
        })
        .collect())
}

struct QueryParams {
    /// One row of the vector file, or (None) every row.
    rows: Option<usize>,
    text: Option<String>,
    mode: Option<String>,
    rrf_k: u32,
    k: usize,
    ef: usize,
    probe: Option<usize>,
    filter: Option<String>,
}

fn run_query(
    index: &Path,
    vector_file: Option<&Path>,
    params: &QueryParams,
    as_json: bool,
) -> CliResult {
    use edgerag::lexical::QueryTerms;
    use edgerag::retrieve::{Ranking, SearchMode, ShardQuery};
    let index = IndexDir::open(index)?;
    let rows = match vector_file {
        Some(file) => read_rows(file, index.manifest.dims, f32::from_le_bytes)?,
        None => Vec::new(),
    };
    let asked = match (vector_file, params.rows) {
        (None, _) => 0..1,
        (Some(file), Some(row)) if row >= rows.len() => {
            return Err(format!("{} has {} rows, no row {row}", file.display(), rows.len()).into())
        }
        (Some(_), Some(row)) => row..row + 1,
        (Some(_), None) => 0..rows.len(),
    };
    let mode = match (&params.mode, vector_file, &params.text) {
        (Some(mode), _, _) => serde_json::from_value::<SearchMode>(json!(mode))
            .map_err(|_| format!("--mode must be vector, lexical or hybrid, not {mode:?}"))?,
        (None, Some(_), None) => SearchMode::Vector,
        (None, Some(_), Some(_)) => SearchMode::Hybrid,
        (None, None, _) => SearchMode::Lexical,
    };
    if mode.uses_vector() && vector_file.is_none() {
        return Err(format!("--mode {mode:?} needs --vector-file").into());
    }
    if mode.uses_lexical() && params.text.is_none() {
        return Err(format!("--mode {mode:?} needs --text").into());
    }
    let filter = params
        .filter
        .as_deref()
        .map(serde_json::from_str::<Filter>)
        .transpose()
        .map_err(|e| format!("--filter must be a JSON object: {e}"))?;
    let ranking = Ranking::new(mode, params.k, params.rrf_k);
    for row in asked {
        let query = ShardQuery {
            vector: mode.uses_vector().then(|| rows[row].clone()),
            lexical: mode
                .uses_lexical()
                .then(|| QueryTerms::parse(params.text.as_deref().unwrap_or(""))),
            k: ranking.depth,
            filter: filter.clone(),
            exclude: None,
        };
        let matches = index.answer(&query, params.ef, params.probe, ranking)?;
        match (as_json, params.rows) {
            (true, Some(_)) => println!("{}", json!({ "matches": matches })),
            (true, None) => println!("{}", json!({ "row": row, "matches": matches })),
            (false, _) => {
                if params.rows.is_none() {
                    println!("row {row}");
                }
                for m in &matches {
                    println!(
                        "{:>8.4}  {:<10} {:<10} {}",
                        m.score,
                        m.id,
                        m.shard,
                        m.text.chars().take(80).collect::<String>()
                    );
                }
            }
        }
    }
    Ok(())
}

/// One row of `shardc eval`: the graph search at some ef, or brute force.
enum EvalRun {
    Graph { ef: usize },
    Exact,
}

fn run_eval(args: &EvalArgs) -> CliResult {
    const GT_WIDTH: usize = 100;
    let k = args.k;
    let index = IndexDir::open(&args.index)?;
    let mut queries = read_rows(&args.queries, index.manifest.dims, f32::from_le_bytes)?;
    let mut truth = read_rows(&args.gt, GT_WIDTH, i32::from_le_bytes)?;
    if queries.len() != truth.len() {
        return Err(format!(
            "{} queries but {} ground-truth rows",
            queries.len(),
            truth.len()
        )
        .into());
    }
    if k > GT_WIDTH {
        return Err(format!("k = {k} exceeds the ground truth's {GT_WIDTH} ids per query").into());
    }
    let limit = args.limit.unwrap_or(queries.len());
    queries.truncate(limit);
    truth.truncate(limit);
    let mut runs: Vec<EvalRun> = args.ef.iter().map(|&ef| EvalRun::Graph { ef }).collect();
    if args.exact {
        runs.push(EvalRun::Exact);
    }
    for run in &runs {
        let label = match *run {
            EvalRun::Graph { ef } => json!(ef),
            EvalRun::Exact => json!("exact"),
        };
        let mut latencies_us = Vec::with_capacity(queries.len());
        let mut found = 0usize;
        let mut visited = 0usize;
        let started = Instant::now();
        let graph = |ef| SearchParams {
            k,
            ef,
            filter: None,
            exclude: None,
        };
        for (query, expected) in queries.iter().zip(&truth) {
            // The plan is counted outside the timed search (which makes it again).
            if let EvalRun::Graph { ef } = *run {
                visited +=
                    edgerag::retrieve::plan(&index.manifest, query, args.probe, &graph(ef)).len();
            }
            let t = Instant::now();
            let hits = match *run {
                EvalRun::Graph { ef } => index.search_shards(query, &graph(ef), args.probe)?,
                EvalRun::Exact => index.search_exact(
                    query,
                    &SearchParams {
                        k,
                        ef: k,
                        filter: None,
                        exclude: None,
                    },
                )?,
            };
            latencies_us.push(t.elapsed().as_secs_f64() * 1e6);
            for hit in &hits {
                let id = match index.shards[hit.shard].id(hit.ord)? {
                    DocId::Int(id) => id,
                    DocId::Str(id) => {
                        return Err(format!("eval needs integer ids, found {id:?}").into())
                    }
                };
                found += usize::from(expected[..k].iter().any(|&e| i64::from(e) == id));
            }
        }
        let seconds = started.elapsed().as_secs_f64();
        // The timed search calls alone (`qps` also counts resolving the hits to ids).
        let search_mean_us = latencies_us.iter().sum::<f64>() / latencies_us.len() as f64;
        latencies_us.sort_by(f64::total_cmp);
        let percentile =
            |p: f64| latencies_us[((latencies_us.len() - 1) as f64 * p).round() as usize];
        let shards_visited = match *run {
            EvalRun::Graph { .. } => visited as f64 / queries.len().max(1) as f64,
            EvalRun::Exact => index.shards.len() as f64,
        };
        let recall = found as f64 / (k * queries.len()) as f64;
        let qps = queries.len() as f64 / seconds;
        if args.json {
            let mut row = serde_json::Map::new();
            row.insert("ef".into(), label.clone());
            row.insert(format!("recall_at_{k}"), json!(recall));
            row.insert("search_mean_us".into(), json!(search_mean_us));
            row.insert("p50_us".into(), json!(percentile(0.5)));
            row.insert("p99_us".into(), json!(percentile(0.99)));
            row.insert("qps".into(), json!(qps));
            row.insert("shards_visited".into(), json!(shards_visited));
            println!("{}", serde_json::Value::Object(row));
        } else {
            println!(
                "ef={label:<6} recall@{k}={recall:.4} p50={:.1}us p99={:.1}us qps={qps:.0} shards={shards_visited:.2}",
                percentile(0.5),
                percentile(0.99)
            );
        }
    }
    Ok(())
}

fn run_eval_sections(args: &EvalSectionsArgs) -> CliResult {
    use edgerag::lexical::QueryTerms;
    use edgerag::retrieve::{Ranking, SearchMode, ShardQuery};
    let index = IndexDir::open(&args.index)?;
    let text = std::fs::read_to_string(&args.queries)
        .map_err(|e| format!("{}: {e}", args.queries.display()))?;
    let mut questions = Vec::new();
    for (line, raw) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let value: serde_json::Value = serde_json::from_str(raw)
            .map_err(|e| format!("{} line {}: {e}", args.queries.display(), line + 1))?;
        let field = |name: &str| {
            value[name].as_str().map(str::to_owned).ok_or_else(|| {
                format!(
                    "{} line {}: no string `{name}`",
                    args.queries.display(),
                    line + 1
                )
            })
        };
        questions.push((field("text")?, field("source")?, field("title")?));
    }
    let vectors = match &args.vectors {
        Some(path) => Some(read_rows(path, index.manifest.dims, f32::from_le_bytes)?),
        None => None,
    };
    if let Some(vectors) = &vectors {
        if vectors.len() != questions.len() {
            return Err(format!(
                "{} questions but {} vectors",
                questions.len(),
                vectors.len()
            )
            .into());
        }
    }
    questions.truncate(args.limit.unwrap_or(questions.len()));
    let mut modes = vec![SearchMode::Lexical];
    if vectors.is_some() {
        modes.splice(0..0, [SearchMode::Vector]);
        modes.push(SearchMode::Hybrid);
    }
    for mode in modes {
        let mut ranking = Ranking::new(mode, args.k, args.rrf_k);
        if let Some(depth) = args.depth.filter(|_| mode == SearchMode::Hybrid) {
            ranking.depth = depth.max(args.k);
        }
        let (mut hits, mut micros) = (0usize, 0f64);
        for (i, (text, source, title)) in questions.iter().enumerate() {
            let query = ShardQuery {
                vector: match (&vectors, mode.uses_vector()) {
                    (Some(vectors), true) => Some(vectors[i].clone()),
                    _ => None,
                },
                lexical: mode.uses_lexical().then(|| QueryTerms::parse(text)),
                k: ranking.depth,
                filter: None,
                exclude: None,
            };
            let started = Instant::now();
            let found = index.answer(&query, args.ef, None, ranking)?;
            micros += started.elapsed().as_secs_f64() * 1e6;
            let own_section = |m: &edgerag::retrieve::Match| {
                m.metadata.get("source").and_then(|v| v.as_str()) == Some(source.as_str())
                    && m.metadata.get("title").and_then(|v| v.as_str()) == Some(title.as_str())
            };
            hits += usize::from(found.iter().any(own_section));
        }
        let n = questions.len().max(1) as f64;
        let (hit_rate, mean_us) = (hits as f64 / n, micros / n);
        let name = serde_json::to_value(mode)?;
        if args.json {
            println!(
                "{}",
                json!({"mode": name, "k": args.k, "questions": questions.len(), "hit_rate": hit_rate, "mean_us": mean_us})
            );
        } else {
            println!(
                "{:<8} hit@{}={hit_rate:.4} mean={mean_us:.1}us ({} questions)",
                name.as_str().unwrap_or(""),
                args.k,
                questions.len()
            );
        }
    }
    Ok(())
}

fn run_inspect(path: &Path) -> CliResult {
    if path.is_dir() {
        let index = IndexDir::open(path)?;
        let m = &index.manifest;
        println!(
            "index {} version {} format {}: {} passages, dims {}, {} {}, regions {:?}",
            m.name,
            m.version,
            m.format_version,
            m.count,
            m.dims,
            m.metric.as_str(),
            m.quant.as_str(),
            m.regions
        );
        for (entry, shard) in m.shards.iter().zip(&index.shards) {
            println!(
                "  {} {} {} bytes, {} passages, payload checksum {} ok, regions {:?}",
                entry.name,
                entry.file,
                shard.byte_len(),
                entry.count,
                entry.checksum,
                entry.regions
            );
        }
        println!("{}: ok", path.join(MANIFEST_FILE).display());
        return Ok(());
    }
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let header = format::Header::parse(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    println!(
        "header: format version {}, flags {:#x}, payload {} bytes, xxh3 {:016x}",
        header.format_version, header.flags, header.payload_len, header.checksum
    );
    let shard = Shard::from_bytes(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let meta = shard.meta();
    println!(
        "shard {} of {}: {} passages, dims {}, {} {}, layer-0 degree {}, {} bytes: ok",
        meta.shard_name,
        meta.index_name,
        meta.count,
        meta.dims,
        meta.metric.as_str(),
        meta.quant.as_str(),
        meta.degree,
        shard.byte_len()
    );
    Ok(())
}

fn run_bench_load(index_path: &Path, queries: &Path, repeat: usize, as_json: bool) -> CliResult {
    let manifest_path = index_path.join(MANIFEST_FILE);
    let manifest = Manifest::from_json(
        &std::fs::read(&manifest_path).map_err(|e| format!("{}: {e}", manifest_path.display()))?,
    )?;
    let entry = manifest.shards.first().ok_or("index has no shards")?;
    let blob = std::fs::read(index_path.join(&entry.file))?;
    // Real queries, a different one per run: the centroid or a constant vector would walk more
    // of the graph than a typical query does.
    let queries = read_rows(queries, manifest.dims, f32::from_le_bytes)?;
    let params = SearchParams {
        k: 10,
        ef: 64,
        filter: None,
        exclude: None,
    };
    let repeat = repeat.max(1);

    let micros = |started: Instant| started.elapsed().as_secs_f64() * 1e6;
    // The bytes as the worker holds them once a fetch has landed in aligned memory and its
    // payload checksum was verified on arrival. Copying them is not timed, nor is dropping a shard
    // (unmapping 30 MB is not part of opening it).
    format::verify_payload(&blob)?;
    let arrived = || {
        let mut aligned = AlignedVec::<16>::with_capacity(blob.len());
        aligned.extend_from_slice(&blob);
        aligned
    };
    let (mut open_first_query, mut open_only, mut verify_open_first_query) = (
        Vec::with_capacity(repeat),
        Vec::with_capacity(repeat),
        Vec::with_capacity(repeat),
    );
    let mut warm_query = Vec::with_capacity(repeat);
    for run in 0..repeat {
        let query = &queries[run % queries.len()];
        // Verified bytes → first answered query: header, bytecheck, structure, one search.
        let bytes = arrived();
        let t = Instant::now();
        let shard = Shard::open(bytes)?;
        std::hint::black_box(shard.search(query, &params)?);
        open_first_query.push(micros(t));
        // The same query again: what the first one costs once the memory it reads is cached.
        let t = Instant::now();
        std::hint::black_box(shard.search(query, &params)?);
        warm_query.push(micros(t));
        drop(shard);

        let bytes = arrived();
        let t = Instant::now();
        let shard = std::hint::black_box(Shard::open(bytes)?);
        open_only.push(micros(t));
        drop(shard);

        // The same with the payload checksum at open, as `Shard::from_aligned` (shardc) does it.
        let bytes = arrived();
        let t = Instant::now();
        let shard = Shard::from_aligned(bytes)?;
        std::hint::black_box(shard.search(query, &params)?);
        verify_open_first_query.push(micros(t));
        drop(shard);
    }
    // The payload checksum alone: transport integrity, paid once per transfer.
    let mut checksum_times = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        let t = Instant::now();
        std::hint::black_box(format::verify_payload(std::hint::black_box(&blob))?);
        checksum_times.push(micros(t));
    }

    // Baseline: the same content as a plain owned struct, serde + bincode (deserialisation only).
    let archived = rkyv::access::<format::ArchivedShardData, rkyv::rancor::Error>(
        &blob[format::HEADER_LEN..],
    )?;
    let owned: ShardData = rkyv::deserialize::<ShardData, rkyv::rancor::Error>(archived)?;
    let encoded = bincode::serialize(&owned)?;
    let mut serde_times = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        let t = Instant::now();
        let decoded: ShardData = bincode::deserialize(&encoded)?;
        serde_times.push(micros(t));
        std::hint::black_box(decoded);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let count = f64::from(entry.count);
    let vector_bytes = match &owned.vectors {
        format::StoredVectors::F16 { bits } => bits.len() * 2,
        format::StoredVectors::I8 { codes, scales } => codes.len() + scales.len() * 4,
    };
    let graph_bytes =
        (owned.layer0.len() + owned.upper_layers.iter().map(Vec::len).sum::<usize>()) * 4;
    let open_first_query = median(open_first_query);
    let serde = median(serde_times);
    let report = json!({
            "shard": entry.name,
            "count": entry.count,
            "blob_bytes": blob.len(),
            "repeat": repeat,
            "open_first_query_us": open_first_query,
            "of_which_open_us": median(open_only),
            "same_query_again_us": median(warm_query),
            "checksum_us": median(checksum_times),
            "verify_open_first_query_us": median(verify_open_first_query),
            "bincode_bytes": encoded.len(),
            "serde_bincode_deserialise_us": serde,
            "serde_over_open_first_query": serde / open_first_query,
            "blob_bytes_per_vector": blob.len() as f64 / count,
            "vector_bytes_per_vector": vector_bytes as f64 / count,
            "graph_bytes_per_vector": graph_bytes as f64 / count,
            "text_bytes_per_vector": owned.texts.bytes.len() as f64 / count,
            "raw_f32_bytes_per_vector": manifest.dims as f64 * 4.0,
    });
    match report.as_object() {
        Some(fields) if !as_json => fields
            .iter()
            .for_each(|(key, value)| println!("{key}: {value}")),
        _ => println!("{report}"),
    }
    Ok(())
}
