//! `POST /v1/search`: parse, pin one version, answer from the response cache (`cache`) or embed
//! a text query (its embedding cached too) and fan out to the planned shards
//! (searched here or by their ShardHost objects) within the deadline, merge exactly, resolve
//! passages. `run` is also the retrieval step of `/v1/rag` and `/v1/chat/completions`.
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use futures::future::{select, Either};
use futures::stream::{self, StreamExt};
use worker::Delay;

use super::cache::{Outcome, Which};
use super::{host, now_ms, observe, read_body, Ctx, Incoming, Mode, Timing};
use crate::api::{parse_search, ApiError, Match, Query, SearchRequest, SearchResponse, BODY_LIMIT};
use crate::cache_key::{embedding_key, normalise_text, search_key};
use crate::fanout::{self, Answer, Gather, Visit, MAX_IN_FLIGHT};
use crate::metrics::{EMBEDDING_DURATION, SEARCH_DURATION};
use crate::rag::{EmbeddingInput, EmbeddingsRequest, EmbeddingsResponse};
use crate::shard::{Filter, Hit, Metric, SearchParams};
use crate::store::{Got, LoadedShard, Pinned};

pub async fn handle(req: &Incoming, ctx: &mut Ctx) -> Result<SearchResponse, ApiError> {
    let (content_type, body) = read_body(req, ctx, BODY_LIMIT).await?;
    run(ctx, &parse_search(content_type.as_deref(), &body)?).await
}

/// Searches for a validated request, or answers from the response cache under the version the
/// request pinned (so a publish is never answered from the old version's entries). A text query
/// is embedded through the embeddings pool once the index is known to exist. Partial answers
/// are not cached: the next request should get the whole one.
pub async fn run(ctx: &mut Ctx, request: &SearchRequest) -> Result<SearchResponse, ApiError> {
    ctx.index = Some(request.index.clone());
    let pinned = Rc::new(ctx.pin(&request.index).await?);
    // A bad vector is refused before the cache is consulted (a text query's, once it is embedded).
    if let Query::Vector(vector) = &request.query {
        check_vector(vector, &pinned)?;
    }
    let key = search_key(request, &pinned.version, &ctx.config.embedding_model);
    if let Some(cached) = ctx.cache.get::<SearchResponse>(Which::Search, &key).await {
        ctx.cache_status.push(Outcome::Hit.member(Which::Search));
        return Ok(cached);
    }
    let found = search(ctx, request, pinned).await?;
    let outcome = if found.partial {
        ctx.cache.skip("partial")
    } else {
        ctx.cache.store(&key, &found)
    };
    ctx.cache_status.push(outcome.member(Which::Search));
    Ok(found)
}

/// Embeds a text query, fans out to the planned shards and merges: the answer without the cache.
async fn search(
    ctx: &mut Ctx,
    request: &SearchRequest,
    pinned: Rc<Pinned>,
) -> Result<SearchResponse, ApiError> {
    let vector = match &request.query {
        // Checked by `run` before the cache lookup.
        Query::Vector(vector) => vector.clone(),
        Query::Text(text) => {
            let vector = embed(ctx, text).await?;
            check_vector(&vector, &pinned)?;
            vector
        }
    };
    let started = now_ms();
    let home = ctx.home(&pinned.manifest.regions);
    let params = SearchParams {
        k: request.k,
        ef: request.effective_ef(),
        filter: request.filter.clone().map(|equals| Filter { equals }),
    };
    let planned = fanout::plan(&pinned.manifest, &vector, request.probe, &params);
    let deadline = ctx.config.deadline_ms;
    let matches_and_failures = match ctx.config.mode {
        Mode::Local => {
            let (store, source, vector, params, home) = (
                ctx.store.clone(),
                ctx.source.clone(),
                Rc::new(vector),
                Rc::new(params),
                home,
            );
            let pinned2 = pinned.clone();
            let run = move |visit: Visit| {
                let (store, source, vector, params, home, pinned) = (
                    store.clone(),
                    source.clone(),
                    vector.clone(),
                    params.clone(),
                    home.clone(),
                    pinned2.clone(),
                );
                async move {
                    let got = store
                        .shard(&source, &pinned, visit.shard, &home)
                        .await
                        .map_err(|e| e.to_string())?;
                    let params = SearchParams {
                        ef: visit.ef,
                        ..(*params).clone()
                    };
                    let (hits, timing) = search_loaded(&got, &vector, &params)?;
                    Ok((
                        Answer {
                            hits,
                            passages: got.value,
                        },
                        timing,
                    ))
                }
            };
            let gather = gather_within(planned, deadline, &mut ctx.timing, run).await;
            finish(
                &gather,
                &pinned,
                request.k,
                &mut ctx.timing,
                |hit, loaded: &Rc<LoadedShard>| {
                    let passage = loaded.shard.passage(hit.ord).map_err(|e| e.to_string())?;
                    Ok(Match::new(
                        passage,
                        pinned.manifest.metric.score(hit.distance),
                        &loaded.shard.meta().shard_name,
                    ))
                },
            )?
        }
        Mode::Durable => {
            let ns = ctx
                .env
                .durable_object(host::BINDING)
                .map_err(|e| ApiError::Misconfigured(e.to_string()))?;
            let query = Rc::new(host::HostQuery {
                index: pinned.index.clone(),
                version: pinned.version.clone(),
                shard: 0,
                region: home,
                vector,
                k: params.k,
                ef: params.ef,
                filter: request.filter.clone(),
            });
            let run = move |visit: Visit| {
                let (ns, query) = (ns.clone(), query.clone());
                async move {
                    let answer = host::ask(
                        &ns,
                        &host::HostQuery {
                            shard: visit.shard,
                            ef: visit.ef,
                            ..(*query).clone()
                        },
                    )
                    .await?;
                    let hits = answer
                        .matches
                        .iter()
                        .map(|m| Hit {
                            ord: m.ord,
                            distance: m.distance,
                        })
                        .collect();
                    let by_ord: HashMap<u32, Match> = answer
                        .matches
                        .into_iter()
                        .map(|m| (m.ord, m.found))
                        .collect();
                    Ok((
                        Answer {
                            hits,
                            passages: by_ord,
                        },
                        answer.timing,
                    ))
                }
            };
            let gather = gather_within(planned, deadline, &mut ctx.timing, run).await;
            finish(
                &gather,
                &pinned,
                request.k,
                &mut ctx.timing,
                |hit, by_ord: &HashMap<u32, Match>| {
                    by_ord
                        .get(&hit.ord)
                        .cloned()
                        .ok_or_else(|| format!("shard host did not send passage {}", hit.ord))
                },
            )?
        }
    };
    let (matches, failed_shards) = matches_and_failures;
    observe::record(|m| m.observe(&SEARCH_DURATION, &[], observe::seconds(now_ms() - started)));
    Ok(SearchResponse {
        matches,
        index: pinned.index.clone(),
        version: pinned.version.clone(),
        partial: !failed_shards.is_empty(),
        failed_shards,
    })
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

/// The query text's embedding from the `EMBEDDING_MODEL` pool, or from the response cache. The
/// text embedded is the normalised text the cache key names (see `cache_key::normalise_text`).
async fn embed(ctx: &mut Ctx, text: &str) -> Result<Vec<f32>, ApiError> {
    let text = normalise_text(text);
    let key = embedding_key(&ctx.config.embedding_model, &text);
    if let Some(vector) = ctx.cache.get::<Vec<f32>>(Which::Embedding, &key).await {
        ctx.cache_status.push(Outcome::Hit.member(Which::Embedding));
        return Ok(vector);
    }
    let request = EmbeddingsRequest {
        model: ctx.config.embedding_model.clone(),
        input: EmbeddingInput::One(text),
        extra: serde_json::Map::new(),
    };
    let home = ctx.home(&[]);
    let reply = ctx
        .origins()?
        .embeddings(&request, &home, &ctx.outbound)
        .await?;
    ctx.timing.embed += reply.origin_ms;
    observe::record(|m| m.observe(&EMBEDDING_DURATION, &[], observe::seconds(reply.origin_ms)));
    let answer: EmbeddingsResponse = serde_json::from_slice(&reply.answer).map_err(|e| {
        ApiError::BadGateway(format!(
            "the embeddings origin's answer is not an embeddings list: {e}"
        ))
    })?;
    let vector = answer
        .data
        .into_iter()
        .next()
        .map(|e| e.embedding)
        .ok_or_else(|| ApiError::BadGateway("the embeddings origin sent no vector".into()))?;
    ctx.cache_status
        .push(ctx.cache.store(&key, &vector).member(Which::Embedding));
    Ok(vector)
}

/// Runs `run` for every planned visit, at most [`MAX_IN_FLIGHT`] at a time, until all have
/// answered or the deadline passes; whatever has not answered by then counts as failed.
async fn gather_within<P, F, Fut>(
    planned: Vec<Visit>,
    deadline_ms: u64,
    timing: &mut Timing,
    run: F,
) -> Gather<P>
where
    F: Fn(Visit) -> Fut,
    Fut: Future<Output = Result<(Answer<P>, Timing), String>>,
{
    let mut gather = Gather::new(planned.iter().map(|visit| visit.shard).collect());
    let answers = stream::iter(planned).map(|visit| {
        let pending = run(visit);
        async move { (visit.shard, pending.await) }
    });
    let mut answers = std::pin::pin!(answers.buffer_unordered(MAX_IN_FLIGHT));
    let mut deadline = std::pin::pin!(Delay::from(Duration::from_millis(deadline_ms)));
    loop {
        match select(answers.next(), deadline.as_mut()).await {
            Either::Left((Some((i, outcome)), _)) => {
                let outcome = outcome.map(|(answer, spent)| {
                    timing.absorb(&spent);
                    answer
                });
                gather.record(i, outcome);
            }
            Either::Left((None, _)) | Either::Right(_) => return gather,
        }
    }
}

/// Exact merge, passage resolution, and the names of the shards that did not answer.
fn finish<P>(
    gather: &Gather<P>,
    pinned: &Pinned,
    k: usize,
    timing: &mut Timing,
    resolve: impl Fn(&crate::shard::ShardHit, &P) -> Result<Match, String>,
) -> Result<(Vec<Match>, Vec<String>), ApiError> {
    let started = now_ms();
    let name = |i: usize| {
        pinned
            .manifest
            .shards
            .get(i)
            .map_or_else(|| format!("#{i}"), |s| s.name.clone())
    };
    let merged = gather.merge(k).map_err(|all| {
        let why: Vec<String> = all
            .0
            .iter()
            .map(|(i, why)| format!("{}: {why}", name(*i)))
            .collect();
        ApiError::Unavailable(format!(
            "no shard of {} answered: {}",
            pinned.index,
            why.join("; ")
        ))
    })?;
    let matches = merged
        .top
        .iter()
        .map(|(hit, passages)| resolve(hit, passages))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ApiError::Unavailable)?;
    let failed = merged.failed.iter().map(|(i, why)| {
        worker::console_warn!(
            "{}/{} shard {}: {why}",
            pinned.index,
            pinned.version,
            name(*i)
        );
        name(*i)
    });
    let failed = failed.collect();
    timing.merge = now_ms() - started;
    Ok((matches, failed))
}

/// Searches a loaded shard; the fetch and validate costs count only for the request that
/// waited for the load.
pub(crate) fn search_loaded(
    got: &Got<LoadedShard>,
    vector: &[f32],
    params: &SearchParams,
) -> Result<(Vec<Hit>, Timing), String> {
    let started = now_ms();
    let hits = got
        .value
        .shard
        .search(vector, params)
        .map_err(|e| e.to_string())?;
    let mut timing = Timing {
        search: now_ms() - started,
        ..Timing::default()
    };
    if got.loaded_now {
        timing.fetch = got.value.fetch_ms;
        timing.validate = got.value.validate_ms;
    }
    Ok((hits, timing))
}
