//! `POST /v1/search`: parse, pin one version and one view of its live writes (`writes`), answer
//! from the response cache (`cache`) or embed a text query (its embedding cached too) and run
//! the retrieval engine (`crate::retrieve`) over the shards this isolate loads or over their
//! ShardHost objects, then merge in the written passages; a `rerank` reorders the answer through
//! the reranker pool (`crate::rerank`). `run` is also the retrieval step of `/v1/rag` and
//! `/v1/chat/completions`.
use std::rc::Rc;

use futures::StreamExt;

use super::cache::{Outcome, Which};
use super::clock::WorkerClock;
use super::{host, now_ms, observe, read_body, writes, Ctx, Incoming, Mode};
use crate::api::{parse_search, ApiError, Query, SearchRequest, SearchResponse, BODY_LIMIT};
use crate::cache_key::{embedding_key, normalise_text, search_key};
use crate::lexical::QueryTerms;
use crate::metrics::{EMBEDDING_DURATION, SEARCH_DURATION};
use crate::rag::{EmbeddingInput, EmbeddingsRequest, EmbeddingsResponse};
use crate::rerank::{parse_scores, reorder, RerankOption, RerankRequest};
use crate::retrieve::{
    self, Gathered, Loaded, Ranking, Remote, Resolved, ShardQuery, Shards, Written, WRITES_SHARD,
};
use crate::shard::Metric;
use crate::store::Pinned;
use crate::write::Delta;

pub async fn handle(req: &Incoming, ctx: &mut Ctx) -> Result<SearchResponse, ApiError> {
    let (content_type, body) = read_body(req, ctx, BODY_LIMIT).await?;
    run(ctx, &parse_search(content_type.as_deref(), &body)?).await
}

/// Searches for a validated request (see [`found`]), then reorders the matches by the reranker
/// the request names, if any.
pub async fn run(ctx: &mut Ctx, request: &SearchRequest) -> Result<SearchResponse, ApiError> {
    let found = found(ctx, request).await?;
    Ok(match (&request.rerank, request.query.text()) {
        (Some(option), Some(text)) => rerank(ctx, option, text, found).await,
        _ => found,
    })
}

/// The matches reordered by the reranker pool, the first `top_n` kept. When no reranker gives a
/// usable answer (none serves the model, all failed, or the answer makes no sense) the search's
/// own order stands, cut to `top_n`: a rerank never fails a search. `x-rerank` says which.
async fn rerank(
    ctx: &mut Ctx,
    option: &RerankOption,
    text: &str,
    mut found: SearchResponse,
) -> SearchResponse {
    let keep = option.keep(found.matches.len());
    if found.matches.is_empty() {
        return found;
    }
    let matches = std::mem::take(&mut found.matches);
    match rerank_scores(ctx, option, text, &matches).await {
        Ok(scores) => {
            ctx.rerank_status = Some(format!("reranked; model={}", quoted(&option.model)));
            found.matches = reorder(matches, &scores, keep);
        }
        Err(why) => {
            ctx.rerank_status = Some(format!("skipped; reason={}", quoted(&why)));
            found.matches = matches.into_iter().take(keep).collect();
        }
    }
    found
}

/// One call to the reranker pool and its answer's scores, or why there are none.
async fn rerank_scores(
    ctx: &mut Ctx,
    option: &RerankOption,
    text: &str,
    matches: &[crate::api::Match],
) -> Result<Vec<(usize, f32)>, String> {
    let body =
        super::to_json(&RerankRequest::new(option, text, matches)).map_err(|e| e.to_string())?;
    let home = ctx.home(&[]);
    let reply = ctx
        .origins()
        .map_err(|e| e.to_string())?
        .rerank(&option.model, body, &home, &ctx.outbound)
        .await
        .map_err(|e| e.to_string())?;
    ctx.timing.rerank += reply.origin_ms;
    parse_scores(&reply.answer, matches.len()).map_err(|e| e.to_string())
}

/// A header parameter value (RFC 8941 string): printable ASCII, quotes and backslashes escaped.
fn quoted(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
    out
}

/// Searches for a validated request, or answers from the response cache under the version the
/// request pinned (so a publish is never answered from the old version's entries). A text query
/// is embedded through the embeddings pool once the index is known to exist. Partial answers
/// are not cached: the next request should get the whole one. A rerank is not part of the
/// cached answer: it runs on the answer, cached or not.
async fn found(ctx: &mut Ctx, request: &SearchRequest) -> Result<SearchResponse, ApiError> {
    ctx.index = Some(request.index.clone());
    let min_seq = request.min_seq.max(ctx.min_seq);
    let (pinned, writes) = writes::pin_with_writes(ctx, &request.index, min_seq).await?;
    // A bad vector is refused before the cache is consulted (a text query's, once it is embedded).
    if let Some(vector) = request.query.vector() {
        check_vector(vector, &pinned)?;
    }
    SearchRequest::check_filter_fields(
        request.filter.as_ref(),
        pinned.manifest.filter_fields.as_deref(),
    )?;
    // Answers are cached per version and per view of the writes.
    let view_name = match &writes {
        Some(w) => format!("{}+{}", pinned.version, w.seq),
        None => format!("{}+unseen", pinned.version),
    };
    // The model a text query of this index is embedded with names its cached answers too.
    let model = text_model(ctx, &pinned.manifest);
    let key = search_key(request, &view_name, &model);
    if let Some(cached) = ctx.cache.get::<SearchResponse>(Which::Search, &key).await {
        ctx.cache_status.push(Outcome::Hit.member(Which::Search));
        return Ok(cached);
    }
    let found = search(ctx, request, &model, pinned, writes).await?;
    let outcome = if found.partial {
        ctx.cache.skip("partial")
    } else {
        ctx.cache.store(&key, &found)
    };
    ctx.cache_status.push(outcome.member(Which::Search));
    Ok(found)
}

/// Embeds a text query (with `model`) and runs the retrieval engine over the pinned version's shards, loaded
/// here (local mode) or asked of their ShardHost objects (durable mode): the answer without the
/// cache. In local mode a shard load still running at the deadline goes on in the background,
/// so the next request finds it cached.
async fn search(
    ctx: &mut Ctx,
    request: &SearchRequest,
    model: &str,
    pinned: Rc<Pinned>,
    writes: Option<Rc<Delta>>,
) -> Result<SearchResponse, ApiError> {
    let vector = match (&request.query, request.mode.uses_vector()) {
        (_, false) => None,
        // Checked by `run` before the cache lookup.
        (Query::Vector(vector) | Query::VectorAndText(vector, _), true) => Some(vector.clone()),
        (Query::Text(text), true) => {
            let vector = embed(ctx, text, model).await?;
            check_vector(&vector, &pinned)?;
            Some(vector)
        }
    };
    let lexical = match request.query.text() {
        Some(text) if request.mode.uses_lexical() => Some(QueryTerms::parse(text)),
        _ => None,
    };
    let started = now_ms();
    let home = ctx.home(&pinned.manifest.regions);
    let ranking = Ranking::new(request.mode, request.k, request.rrf_k);
    let query = Rc::new(ShardQuery {
        vector,
        lexical,
        k: ranking.depth,
        filter: request.filter.clone(),
        exclude: writes.as_ref().and_then(|w| w.exclusions()),
    });
    let visits = retrieve::plan(
        &pinned.manifest,
        query.vector.as_deref().unwrap_or(&[]),
        request.probe,
        &query.params(request.effective_ef()),
    );
    let shards_searched = visits.len();
    let deadline = ctx.config.deadline_ms as f64;
    let resolved = match ctx.config.mode {
        Mode::Local => {
            let shards = Loaded {
                store: ctx.store.clone(),
                source: ctx.source.clone(),
                clock: WorkerClock,
                pinned: pinned.clone(),
                home,
            };
            let gathered = retrieve::gather(&shards, &WorkerClock, visits, &query, deadline).await;
            let resolved = finish(ctx, &gathered, &shards, &pinned, ranking.depth);
            if !gathered.unfinished.is_empty() {
                let unfinished = gathered.unfinished;
                ctx.request
                    .wait_until(async move { unfinished.for_each(|_| async {}).await });
            }
            resolved
        }
        Mode::Durable => {
            let shards = Remote {
                hosts: host::DurableHosts::new(&ctx.env)?,
                index: pinned.index.clone(),
                version: pinned.version.clone(),
                region: home,
            };
            let gathered = retrieve::gather(&shards, &WorkerClock, visits, &query, deadline).await;
            finish(ctx, &gathered, &shards, &pinned, ranking.depth)
        }
    }?;
    let mut resolved = resolved;
    let mut failed_shards: Vec<String> = std::mem::take(&mut resolved.failed)
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    let merging = now_ms();
    let written = match &writes {
        Some(w) => written(w, &query, &resolved.doc_freq, &pinned)?,
        None => {
            failed_shards.push(WRITES_SHARD.to_string());
            Written::default()
        }
    };
    let matches = retrieve::rank(resolved, written, pinned.manifest.metric, ranking);
    ctx.timing.merge += now_ms() - merging;
    observe::record(|m| m.observe(&SEARCH_DURATION, &[], observe::seconds(now_ms() - started)));
    Ok(SearchResponse {
        matches,
        index: pinned.index.clone(),
        version: pinned.version.clone(),
        partial: !failed_shards.is_empty(),
        failed_shards,
        shards_searched,
        seq: writes.as_ref().map_or(0, |w| w.seq),
        pending_writes: writes.as_ref().map_or(0, |w| w.pending_writes() as u64),
    })
}

/// The written passages' hits of each ranking `query` asks for; `doc_freq` are the compiled
/// shards' document frequencies of its terms.
fn written(
    writes: &Delta,
    query: &ShardQuery,
    doc_freq: &[u32],
    pinned: &Pinned,
) -> Result<Written, ApiError> {
    let filter = query.filter.as_ref();
    let vector = match &query.vector {
        Some(vector) => writes
            .search(vector, query.k, filter)
            .map_err(ApiError::Invalid)?,
        None => Vec::new(),
    };
    let lexical = match &query.lexical {
        Some(terms) => {
            let compiled = pinned.manifest.lexical.unwrap_or_default();
            writes.search_lexical(terms, query.k, filter, compiled, doc_freq)
        }
        None => Vec::new(),
    };
    Ok(Written { vector, lexical })
}

/// The exact merge and its passages; the shards that did not answer are logged with the reason.
fn finish<S: Shards>(
    ctx: &mut Ctx,
    gathered: &Gathered<S>,
    shards: &S,
    pinned: &Pinned,
    k: usize,
) -> Result<Resolved, ApiError> {
    let started = now_ms();
    ctx.timing.absorb(&gathered.timing);
    let resolved = gathered
        .resolve(shards, &pinned.manifest, k)
        .map_err(|all| {
            ApiError::Unavailable(format!("no shard of {} answered: {all}", pinned.index))
        })?;
    for (name, why) in &resolved.failed {
        worker::console_warn!("{}/{} shard {name}: {why}", pinned.index, pinned.version);
    }
    ctx.timing.merge = now_ms() - started;
    Ok(resolved)
}

fn check_vector(vector: &[f32], pinned: &Pinned) -> Result<(), ApiError> {
    SearchRequest::check_dims(vector, pinned.manifest.dims)?;
    if pinned.manifest.metric == Metric::Cosine && vector.iter().all(|&x| x == 0.0) {
        return Err(ApiError::Invalid(
            "a zero `vector` has no direction for cosine similarity".into(),
        ));
    }
    Ok(())
}

/// The model a text of `manifest`'s index is embedded with: the one its vectors came from,
/// else the worker's `EMBEDDING_MODEL`.
pub fn text_model(ctx: &Ctx, manifest: &crate::manifest::Manifest) -> String {
    manifest
        .embedding_model
        .clone()
        .unwrap_or_else(|| ctx.config.embedding_model.clone())
}

/// The query text's embedding by `model` from the embeddings pool, or from the response cache.
/// The text embedded is the normalised text the cache key names (see `cache_key::normalise_text`).
async fn embed(ctx: &mut Ctx, text: &str, model: &str) -> Result<Vec<f32>, ApiError> {
    let text = normalise_text(text);
    let key = embedding_key(model, &text);
    if let Some(vector) = ctx.cache.get::<Vec<f32>>(Which::Embedding, &key).await {
        ctx.cache_status.push(Outcome::Hit.member(Which::Embedding));
        return Ok(vector);
    }
    let vector = embeddings(ctx, model, EmbeddingInput::One(text))
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::BadGateway("the embeddings origin sent no vector".into()))?;
    ctx.cache_status
        .push(ctx.cache.store(&key, &vector).member(Which::Embedding));
    Ok(vector)
}

/// Texts an embeddings origin is sent at once: small enough that a CPU origin embeds a batch of
/// long passages within the try timeout.
const EMBED_BATCH: usize = 32;

/// The embeddings of `texts` by `model`, in order: one origin call per [`EMBED_BATCH`] texts.
pub async fn embed_texts(
    ctx: &mut Ctx,
    model: &str,
    texts: &[&str],
) -> Result<Vec<Vec<f32>>, ApiError> {
    let mut vectors = Vec::with_capacity(texts.len());
    for batch in texts.chunks(EMBED_BATCH) {
        let input = EmbeddingInput::Many(batch.iter().map(|t| t.to_string()).collect());
        let got = embeddings(ctx, model, input).await?;
        if got.len() != batch.len() {
            return Err(ApiError::BadGateway(format!(
                "the embeddings origin answered {} vectors for {} texts",
                got.len(),
                batch.len()
            )));
        }
        vectors.extend(got);
    }
    Ok(vectors)
}

/// One call to the embeddings pool; its vectors in input order.
async fn embeddings(
    ctx: &mut Ctx,
    model: &str,
    input: EmbeddingInput,
) -> Result<Vec<Vec<f32>>, ApiError> {
    let request = EmbeddingsRequest {
        model: model.to_string(),
        input,
        extra: serde_json::Map::new(),
    };
    let home = ctx.home(&[]);
    let reply = ctx
        .origins()?
        .embeddings(&request, &home, &ctx.outbound)
        .await
        .map_err(|e| match e {
            ApiError::UnknownModel(model) => ApiError::Invalid(format!(
                "the index's texts are embedded with {model}, which no embeddings origin serves: send vectors, or add an origin serving {model}"
            )),
            other => other,
        })?;
    ctx.timing.embed += reply.origin_ms;
    observe::record(|m| m.observe(&EMBEDDING_DURATION, &[], observe::seconds(reply.origin_ms)));
    let answer: EmbeddingsResponse = serde_json::from_slice(&reply.answer).map_err(|e| {
        ApiError::BadGateway(format!(
            "the embeddings origin's answer is not an embeddings list: {e}"
        ))
    })?;
    let mut data = answer.data;
    data.sort_by_key(|e| e.index);
    Ok(data.into_iter().map(|e| e.embedding).collect())
}
