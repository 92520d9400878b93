//! The write routes: `POST /v1/indexes` (an empty index, published like a compiled one with no
//! shards), `/v1/indexes/{name}/upsert` and `/delete` (checked here, made durable by the index's
//! writer, answered with the write's seq), and the view of an index's writes that every read
//! of it serves beside the shards.
use std::rc::Rc;

use rkyv::util::AlignedVec;
use serde_json::{json, Value};

use super::clock::WorkerClock;
use super::config::views;
use super::publish::Buckets;
use super::r2::R2;
use super::writer::{IndexWriterStub, Rebase, Writers};
use super::{read_body, search, Ctx, Incoming};
use crate::api::write::{parse_create, parse_delete, parse_upsert, WRITE_BODY_LIMIT};
use crate::api::ApiError;
use crate::manifest::Manifest;
use crate::store::{Pinned, Source};
use crate::write::export::{shard_lines, written_chunks, ExportHeader, EXPORT_CHUNK};
use crate::write::{Applied, Change, Delta, Sealed, Since, ViewError, Wanted, WriteBatch, Writer};

/// `POST /v1/indexes`: publishes an empty version of a new index in its regions and points the
/// index's writer at it. An index that exists already is a 409.
pub async fn create(req: &Incoming, ctx: &mut Ctx) -> Result<Value, ApiError> {
    let (content_type, body) = read_body(req, ctx, 64 * 1024).await?;
    let create = parse_create(content_type.as_deref(), &body)?;
    ctx.index = Some(create.name.clone());
    ctx.grant.check_write(&create.name)?;
    match ctx.pin(&create.name).await {
        Ok(_) => {
            return Err(ApiError::Conflict(format!(
                "an index named {} exists; upsert into it, or delete it first",
                create.name
            )))
        }
        Err(ApiError::UnknownIndex(_)) => {}
        Err(other) => return Err(other),
    }
    let buckets = Buckets::new(&ctx.env, 0);
    let regions = match create.regions {
        Some(regions) => regions,
        None => buckets.regions(),
    };
    let manifest = Manifest::empty(
        &create.name,
        create.dims,
        create.metric,
        create.quant,
        regions,
        create.embedding_model,
    )
    .map_err(|e| ApiError::Invalid(e.to_string()))?;
    buckets.publish_empty(&manifest).await?;
    let writes = Writers::new(&ctx.env)?
        .of(&manifest.name)
        .rebase(&Rebase {
            version: manifest.version.clone(),
            compacted_seq: None,
        })
        .await?;
    Ok(json!({
        "name": manifest.name,
        "version": manifest.version,
        "dims": manifest.dims,
        "metric": manifest.metric.as_str(),
        "quant": manifest.quant.as_str(),
        "regions": manifest.regions,
        "embedding_model": manifest.embedding_model,
        "writes": writes,
    }))
}

/// `POST /v1/indexes/{name}/upsert`: items sent with text and no values are embedded first,
/// with the index's model.
pub async fn upsert(name: &str, req: &Incoming, ctx: &mut Ctx) -> Result<Applied, ApiError> {
    let (pinned, content_type, body) = writable(name, req, ctx).await?;
    let dims = pinned.manifest.dims;
    let upsert = parse_upsert(
        content_type.as_deref(),
        &body,
        dims,
        ctx.config.write_batch_max,
    )?;
    let changes = if upsert.to_embed.is_empty() {
        upsert.changes
    } else {
        let model = search::text_model(ctx, &pinned.manifest);
        let vectors = search::embed_texts(ctx, &model, &upsert.texts_to_embed()).await?;
        upsert.embedded(vectors, &model, dims)?
    };
    commit(name, ctx, changes).await
}

/// `POST /v1/indexes/{name}/delete`.
pub async fn delete(name: &str, req: &Incoming, ctx: &mut Ctx) -> Result<Applied, ApiError> {
    let (_, content_type, body) = writable(name, req, ctx).await?;
    let changes = parse_delete(content_type.as_deref(), &body, ctx.config.write_batch_max)?;
    commit(name, ctx, changes).await
}

/// A write's start: the key's grant, the index (its dims), the body.
async fn writable(
    name: &str,
    req: &Incoming,
    ctx: &mut Ctx,
) -> Result<(Pinned, Option<String>, Vec<u8>), ApiError> {
    ctx.index = Some(name.to_string());
    ctx.grant.check_write(name)?;
    let pinned = ctx.pin(name).await?;
    let (content_type, body) = read_body(req, ctx, WRITE_BODY_LIMIT).await?;
    Ok((pinned, content_type, body))
}

/// The whole batch, checked, to the writer: its answer once durable.
async fn commit(name: &str, ctx: &Ctx, changes: Vec<Change>) -> Result<Applied, ApiError> {
    let batch = WriteBatch {
        changes,
        max_rows: ctx.config.write_backlog_max,
    };
    Writers::new(&ctx.env)?.of(name).write(&batch).await
}

/// The view of `manifest`'s index's writes that includes `min_seq`. Without a `min_seq`, a
/// writer that cannot be asked (or views over their budget) leave the read to the shards alone:
/// `None`, which the answer reports as partial.
pub async fn view(
    ctx: &Ctx,
    manifest: &Manifest,
    min_seq: Option<u64>,
) -> Result<Option<Rc<Delta>>, ApiError> {
    let wanted = Wanted {
        dims: manifest.dims,
        metric: manifest.metric,
        min_seq,
        ttl_ms: ctx.config.current_ttl_ms,
        wait_ms: ctx.config.min_seq_wait_ms as f64,
    };
    let mut regions = ctx.source.regions();
    let home = ctx.home(&regions);
    regions.sort_by_key(|r| *r != home);
    let log = LogReader {
        writer: Writers::new(&ctx.env)?.of(&manifest.name),
        source: &ctx.source,
        regions,
    };
    match views(&ctx.env)?
        .view(&manifest.name, &log, &WorkerClock, wanted)
        .await
    {
        Ok(view) => Ok(Some(view)),
        Err(ViewError::NotYetVisible { min_seq, seq }) => Err(ApiError::NotYetVisible {
            min_seq,
            seq,
            retry_after_s: 1,
        }),
        Err(other) if min_seq.is_some() => Err(ApiError::WritesUnavailable(other.to_string())),
        Err(other) => {
            worker::console_warn!("{}: serving without live writes: {other}", manifest.name);
            Ok(None)
        }
    }
}

/// How an isolate reads an index's log: the list and the unsealed tail from its writer, the
/// sealed segments from R2 (the home region's bucket first).
struct LogReader<'a> {
    writer: IndexWriterStub,
    source: &'a R2,
    regions: Vec<String>,
}

impl Writer for LogReader<'_> {
    async fn since(
        &self,
        after: u64,
        base: Option<&str>,
        rows_only: bool,
    ) -> Result<Since, String> {
        self.writer.since(after, base, rows_only).await
    }

    async fn segment(&self, sealed: &Sealed, max_len: usize) -> Result<Option<Vec<u8>>, String> {
        let mut failed = Vec::new();
        for region in &self.regions {
            match self
                .source
                .get(region, &sealed.key, max_len, AlignedVec::new())
                .await
            {
                Ok(Some(blob)) => return Ok(Some(blob.to_vec())),
                Ok(None) => {}
                Err(e) => failed.push(format!("{region}: {e}")),
            }
        }
        match failed.is_empty() {
            true => Ok(None),
            false => Err(format!("reading {}: {}", sealed.key, failed.join("; "))),
        }
    }
}

/// The index's version to serve and the view of its writes (`min_seq`: see [`view`]). Writes
/// apply on top of the version their writer names (a compaction's, or the last one published),
/// which `current` may not show yet within its TTL: then that version is pinned instead.
pub async fn pin_with_writes(
    ctx: &Ctx,
    index: &str,
    min_seq: Option<u64>,
) -> Result<(Rc<Pinned>, Option<Rc<Delta>>), ApiError> {
    let current = ctx.pin(index).await?;
    let writes = view(ctx, &current.manifest, min_seq).await?;
    let pinned = match writes.as_ref().and_then(|w| w.base_version.as_deref()) {
        Some(base) if base != current.version => Rc::new(ctx.pin_version(index, base).await?),
        _ => Rc::new(current),
    };
    Ok((pinned, writes))
}

/// `GET /v1/admin/indexes/{name}/export` (an admin key that manages the index): the header
/// line of the view the export is of (every write the writer has acknowledged), then every live
/// passage, read shard by shard through the store (so within `CACHE_BYTES`) and streamed.
pub async fn export(index: &str, ctx: &Ctx) -> Result<worker::Response, ApiError> {
    let last = Writers::new(&ctx.env)?.of(index).state().await?.seq;
    let (pinned, writes) = pin_with_writes(ctx, index, Some(last)).await?;
    let writes =
        writes.ok_or_else(|| ApiError::WritesUnavailable(format!("the writes of {index}")))?;
    let header = ExportHeader::new(&pinned.manifest, writes.seq);
    let (store, source, home) = (ctx.store.clone(), ctx.source.clone(), ctx.home(&[]));
    // (shard, next ordinal); past the last shard, the written passages.
    let start = (
        0usize,
        0u32,
        Some(header.line()),
        None::<std::vec::IntoIter<String>>,
    );
    let body = futures::stream::unfold(start, move |(shard, ord, header, written)| {
        let (store, source, home) = (store.clone(), source.clone(), home.clone());
        let (pinned, writes) = (pinned.clone(), writes.clone());
        async move {
            if let Some(line) = header {
                return Some((Ok(line.into_bytes()), (shard, ord, None, written)));
            }
            if shard < pinned.manifest.shards.len() {
                let count = pinned.manifest.shards[shard].count;
                let got = store
                    .shard(&source, &WorkerClock, &pinned, shard, &home)
                    .await;
                let lines = got.map_err(|e| e.to_string()).and_then(|got| {
                    let end = (ord + EXPORT_CHUNK as u32).min(count);
                    shard_lines(&got.value.shard, ord..end, &writes)
                        .map(|lines| (lines, end))
                        .map_err(|e| e.to_string())
                });
                return Some(match lines {
                    Ok((lines, end)) if end < count => {
                        (Ok(lines.into_bytes()), (shard, end, None, None))
                    }
                    Ok((lines, _)) => (Ok(lines.into_bytes()), (shard + 1, 0, None, None)),
                    // The body has begun: a failure can only cut it short, which the reader sees
                    // as a last line that is not a passage.
                    Err(why) => (
                        Err(worker::Error::RustError(format!(
                            "export of shard {shard}: {why}"
                        ))),
                        (usize::MAX, 0, None, None),
                    ),
                });
            }
            if shard == usize::MAX {
                return None;
            }
            let mut written = written.unwrap_or_else(|| written_chunks(&writes).into_iter());
            let chunk = written.next()?;
            Some((Ok(chunk.into_bytes()), (shard, ord, None, Some(written))))
        }
    });
    let mut response = worker::Response::from_stream(body)
        .map_err(|e| ApiError::Misconfigured(format!("streaming the export: {e}")))?;
    response
        .headers_mut()
        .set("content-type", crate::api::write::NDJSON)
        .map_err(|e| ApiError::Misconfigured(format!("streaming the export: {e}")))?;
    Ok(response)
}
