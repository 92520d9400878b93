//! `POST /v1/embeddings`, `/v1/rag` and `/v1/chat/completions`: parse (`api`), retrieve
//! (`search::run`), build the prompt (`rag`), forward through the balanced pools (`origins`),
//! and pass streamed answers through chunk by chunk as they arrive.
use futures::stream::{self, StreamExt};
use serde_json::Map;
use worker::Response;

use super::origins::{Call, Lease, Reply, Streamed, CHAT_PATH};
use super::{read_body, search, to_json, Ctx, Incoming};
use crate::api::{
    interrupted_event, parse_chat, parse_embeddings, parse_rag, passages, with_sources, ApiError,
    ChatRequest, SearchRequest, INFERENCE_BODY_LIMIT,
};
use crate::balancer::{affinity_key, FailureKind, Kind};
use crate::rag::{self, ChatCompletionRequest, ChatMessage, Passage};

/// Passages retrieved for `/v1/chat/completions` with an index (the OpenAI request has no `k`).
const CHAT_K: usize = crate::api::RAG_K_DEFAULT;

pub async fn embeddings(req: &Incoming, ctx: &mut Ctx) -> Result<Response, ApiError> {
    let (content_type, body) = read_body(req, ctx, INFERENCE_BODY_LIMIT).await?;
    let request = parse_embeddings(content_type.as_deref(), &body)?;
    let home = ctx.home(&[]);
    let reply = ctx
        .origins()?
        .embeddings(&request, &home, &ctx.outbound)
        .await?;
    ctx.timing.origin += reply.origin_ms;
    json_bytes(reply.answer)
}

pub async fn rag(req: &Incoming, ctx: &mut Ctx) -> Result<Response, ApiError> {
    let (content_type, body) = read_body(req, ctx, INFERENCE_BODY_LIMIT).await?;
    let request = parse_rag(content_type.as_deref(), &body)?;
    // A bad model is refused before the embedding and the search are paid for.
    ctx.origins()?.check_model(Kind::Chat, &request.model)?;
    let found = search::run(ctx, &request.search()).await?;
    let completion = ChatCompletionRequest {
        model: request.model,
        messages: vec![ChatMessage::new("user", &request.query)],
        stream: Some(request.stream),
        max_tokens: request.max_tokens,
        extra: Map::new(),
    };
    answer(
        ctx,
        completion,
        Some(&passages(&found.matches)),
        SourcesEvent::Send,
    )
    .await
}

pub async fn chat(req: &Incoming, ctx: &mut Ctx) -> Result<Response, ApiError> {
    let (content_type, body) = read_body(req, ctx, INFERENCE_BODY_LIMIT).await?;
    let index_header = req.header("x-rag-index");
    let ChatRequest {
        completion,
        index,
        mode,
        rrf_k,
        rerank,
    } = parse_chat(content_type.as_deref(), &body, index_header.as_deref())?;
    ctx.origins()?.check_model(Kind::Chat, &completion.model)?;
    let Some(index) = index else {
        return answer(ctx, completion, None, SourcesEvent::Omit).await;
    };
    let query = completion.last_user_text().unwrap_or_default();
    let search = SearchRequest {
        mode,
        rrf_k,
        rerank,
        ..SearchRequest::text(&index, &query, CHAT_K)
    };
    let found = search::run(ctx, &search).await?;
    // OpenAI SDKs hand every SSE event to the caller as a chunk, so a `sources` event would break
    // them here; non-streamed answers still carry `sources` (an extra member the SDKs keep).
    answer(
        ctx,
        completion,
        Some(&passages(&found.matches)),
        SourcesEvent::Omit,
    )
    .await
}

/// Whether a streamed answer starts with the `sources` event.
#[derive(Clone, Copy, PartialEq)]
enum SourcesEvent {
    Send,
    Omit,
}

/// Augments the last user message with `passages` (when retrieval ran), forwards the request to
/// the chat pool, and shapes the answer: JSON with `sources`, or the origin's SSE stream.
async fn answer(
    ctx: &mut Ctx,
    mut completion: ChatCompletionRequest,
    passages: Option<&[Passage]>,
    sources_event: SourcesEvent,
) -> Result<Response, ApiError> {
    let sources = match passages {
        Some(passages) => {
            let augmented = rag::augment(
                &mut completion,
                &ctx.config.rag_system,
                passages,
                ctx.config.context_tokens,
            )?;
            Some(&passages[..augmented.included])
        }
        None => None,
    };
    let home = ctx.home(&[]);
    let call = Call {
        kind: Kind::Chat,
        model: &completion.model,
        path: CHAT_PATH,
        body: to_json(&completion)?,
        region: Some(&home),
        // Same passages in the same order → same origin, whose prefix cache holds the prompt.
        affinity_key: sources.map(|s| affinity_key(s.iter().map(|p| p.id.to_string()))),
        outbound: &ctx.outbound,
    };
    let origins = ctx.origins()?;
    if completion.stream == Some(true) {
        let (reply, lease) = origins.stream(&call).await?;
        ctx.timing.origin += reply.origin_ms;
        let prefix = sources
            .filter(|_| sources_event == SourcesEvent::Send)
            .map(rag::sources_event);
        return sse(prefix, reply, lease);
    }
    let reply = origins.whole(&call).await?;
    ctx.timing.origin += reply.origin_ms;
    match sources {
        Some(sources) => super::json(&with_sources(&reply.answer, sources)?),
        None => json_bytes(reply.answer),
    }
}

/// The origin's JSON answer, passed on unparsed.
fn json_bytes(bytes: Vec<u8>) -> Result<Response, ApiError> {
    let mut response =
        Response::from_bytes(bytes).map_err(|e| ApiError::BadGateway(e.to_string()))?;
    response
        .headers_mut()
        .set("content-type", "application/json")
        .map_err(|e| ApiError::BadGateway(e.to_string()))?;
    Ok(response)
}

/// The client's event stream: `prefix` (the sources event), the origin's first chunk, then each
/// origin chunk as it arrives: a pull-through stream, so nothing is buffered here. The lease
/// settles when the origin's stream ends; a break-off becomes a final error event.
fn sse(prefix: Option<String>, reply: Reply<Streamed>, lease: Lease) -> Result<Response, ApiError> {
    let Streamed { first, rest } = reply.answer;
    let head = stream::iter(
        prefix
            .map(String::into_bytes)
            .into_iter()
            .chain([first])
            .map(Ok::<_, worker::Error>),
    );
    let tail = stream::unfold((rest, Some(lease)), |(mut rest, lease)| async move {
        let lease = lease?;
        match rest.next().await {
            Some(Ok(chunk)) => Some((Ok(chunk), (rest, Some(lease)))),
            Some(Err(e)) => {
                lease.fail(FailureKind::Interrupted);
                Some((
                    Ok(interrupted_event(&e.to_string()).into_bytes()),
                    (rest, None),
                ))
            }
            None => {
                lease.succeed();
                None
            }
        }
    });
    let mut response =
        Response::from_stream(head.chain(tail)).map_err(|e| ApiError::BadGateway(e.to_string()))?;
    let headers = response.headers_mut();
    for (name, value) in [
        ("content-type", "text/event-stream"),
        ("cache-control", "no-cache"),
    ] {
        headers
            .set(name, value)
            .map_err(|e| ApiError::BadGateway(e.to_string()))?;
    }
    Ok(response)
}
