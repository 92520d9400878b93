//! Turns retrieved passages into an augmented OpenAI chat request, and speaks the wire formats
//! around it: OpenAI chat/embeddings types, the numbered-passage prompt within a token budget,
//! and server-sent events (an incremental parser and the formatter, including the `sources` event).
//! Pure: no I/O, compiles for wasm32.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The one error type of this layer.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RagError {
    #[error("messages: the request has no user message to augment")]
    NoUserMessage,
    #[error("messages[{index}].content: {reason}")]
    UnsupportedContent { index: usize, reason: String },
}

// ---------------------------------------------------------------------------------------------
// OpenAI wire types. Unknown request fields are kept (`extra`) so a proxied request loses nothing.

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    /// A string, or an array of content parts (`{"type":"text","text":...}`, images, ...);
    /// `null` for assistant tool-call messages.
    #[serde(default)]
    pub content: Value,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: Value::String(content.into()),
            extra: Map::new(),
        }
    }

    /// The message's text: the string content, or its text parts joined by newlines.
    pub fn text(&self) -> String {
        match &self.content {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts
                .iter()
                .filter(|p| p.get("type").and_then(Value::as_str) == Some("text"))
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n"),
            _ => String::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatCompletionRequest {
    /// Index of the last user message: the question that retrieval answers.
    pub fn last_user_index(&self) -> Option<usize> {
        self.messages.iter().rposition(|m| m.role == "user")
    }

    /// Text of the last user message, the retrieval query.
    pub fn last_user_text(&self) -> Option<String> {
        self.last_user_index().map(|i| self.messages[i].text())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatChoice {
    pub index: u32,
    pub message: ChatMessage,
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionResponse {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChatChoice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkChoice {
    pub index: u32,
    pub delta: Delta,
    pub finish_reason: Option<String>,
}

/// One `data:` payload of a streamed chat completion (`object: "chat.completion.chunk"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatCompletionChunk {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<ChunkChoice>,
}

/// `input` of an embeddings request: one string or many (token-id inputs are not supported).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum EmbeddingInput {
    One(String),
    Many(Vec<String>),
}

impl EmbeddingInput {
    pub fn texts(&self) -> Vec<&str> {
        match self {
            EmbeddingInput::One(s) => vec![s.as_str()],
            EmbeddingInput::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingsRequest {
    pub model: String,
    pub input: EmbeddingInput,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Embedding {
    pub object: String,
    pub index: u32,
    pub embedding: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingsUsage {
    pub prompt_tokens: u32,
    pub total_tokens: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingsResponse {
    pub object: String,
    pub data: Vec<Embedding>,
    pub model: String,
    pub usage: EmbeddingsUsage,
}

// ---------------------------------------------------------------------------------------------
// Prompt building.

/// A retrieved passage, best first in any list of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Passage {
    /// The corpus id (integer or string, as the index stores it).
    pub id: Value,
    pub source: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
    /// The shard that held the passage, when it came from a search.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<String>,
}

/// Default instruction placed before the passages.
pub const DEFAULT_SYSTEM: &str = "Answer the question using only the numbered sources below. \
Cite sources with their [n] markers. If the sources do not contain the answer, say so.";

/// Approximate token count: ceil(characters / 4). This is the usual rule of thumb for English
/// BPE vocabularies; it needs no tokenizer (none is available at the edge), it errs high for
/// prose (about 4.5 characters per token) and low for dense code, so budgets should keep margin.
pub fn approx_tokens(text: &str) -> usize {
    text.chars().count().div_ceil(4)
}

/// The context block: system text plus the passages that fit, numbered from 1 in rank order.
#[derive(Debug, Clone, PartialEq)]
pub struct Context {
    pub text: String,
    /// How many of the ranked passages made it in (the last of them possibly cut short).
    pub included: usize,
    pub tokens: usize,
}

/// A passage cut to fewer tokens than this is noise; it is dropped instead.
const MIN_PASSAGE_TOKENS: usize = 16;

/// Builds `system` followed by `[n] (source) text` lines within `budget` approximate tokens.
/// Lowest-ranked passages are dropped first; the last one that partly fits is cut at a word
/// boundary with an ellipsis.
pub fn build_context(system: &str, passages: &[Passage], budget: usize) -> Context {
    let mut text = system.trim().to_string();
    let mut tokens = approx_tokens(&text);
    let mut included = 0;
    for (i, p) in passages.iter().enumerate() {
        let body = one_line(&p.text);
        let line = format!("\n\n[{}] ({}) {}", i + 1, one_line(&p.source), body);
        let cost = approx_tokens(&line);
        if tokens + cost <= budget {
            text.push_str(&line);
            tokens += cost;
            included += 1;
            continue;
        }
        let head = format!("\n\n[{}] ({}) ", i + 1, one_line(&p.source));
        let room = budget.saturating_sub(tokens + approx_tokens(&head) + 1);
        if room >= MIN_PASSAGE_TOKENS {
            let cut = cut_at_word(&body, room * 4);
            text.push_str(&format!("{head}{cut}…"));
            included += 1;
        }
        break;
    }
    // The running sum of per-line ceilings is an upper bound; report the exact count of the text.
    let tokens = approx_tokens(&text);
    Context {
        text,
        included,
        tokens,
    }
}

/// Passages inside one prompt line: newlines would break the `[n]` numbering for readers
/// (and for `parse_numbered_passages`).
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn cut_at_word(s: &str, max_chars: usize) -> &str {
    let end = s.char_indices().nth(max_chars).map_or(s.len(), |(i, _)| i);
    let head = &s[..end];
    match head.rfind(' ') {
        Some(space) if end < s.len() && space > 0 => &head[..space],
        _ => head,
    }
}

/// What [`augment`] did, for the `sources` event and logs.
#[derive(Debug, Clone, PartialEq)]
pub struct Augmented {
    pub included: usize,
    pub context_tokens: usize,
}

/// Rewrites the last user message as the context block followed by the original question.
/// The question itself is never cut; the budget applies to system text plus passages.
pub fn augment(
    request: &mut ChatCompletionRequest,
    system: &str,
    passages: &[Passage],
    budget: usize,
) -> Result<Augmented, RagError> {
    let index = request.last_user_index().ok_or(RagError::NoUserMessage)?;
    let context = build_context(system, passages, budget);
    let prefix = format!("{}\n\nQuestion: ", context.text);
    let message = &mut request.messages[index];
    match &mut message.content {
        Value::String(question) => *question = format!("{prefix}{question}"),
        // Multimodal content: the context goes in as a leading text part, other parts stay.
        Value::Array(parts) => parts.insert(
            0,
            serde_json::json!({"type": "text", "text": prefix.trim_end()}),
        ),
        other => {
            return Err(RagError::UnsupportedContent {
                index,
                reason: format!("expected a string or an array of parts, got {other}"),
            });
        }
    }
    Ok(Augmented {
        included: context.included,
        context_tokens: context.tokens,
    })
}

/// The `[n] text` passages of a prompt built by [`build_context`], with their sources stripped:
/// how an origin (the dev origin) finds what to quote.
pub fn parse_numbered_passages(prompt: &str) -> Vec<(usize, String)> {
    prompt
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix('[')?;
            let (n, rest) = rest.split_once("] ")?;
            let n: usize = n.parse().ok()?;
            // Skip "(source) " when present: sources may contain spaces but not ") ".
            let text = match rest.strip_prefix('(') {
                Some(r) => r.split_once(") ").map_or(r, |(_, t)| t),
                None => rest,
            };
            Some((n, text.to_string()))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Server-sent events.

/// One dispatched SSE event. `event` is `None` for the default ("message") type.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SseEvent {
    pub event: Option<String>,
    pub data: String,
    pub id: Option<String>,
}

impl SseEvent {
    /// The OpenAI end-of-stream marker.
    pub fn is_done(&self) -> bool {
        self.data == "[DONE]"
    }
}

/// Incremental SSE parser (per the WHATWG spec's line rules): feed it bytes exactly as they
/// arrive, split anywhere (inside a line, a UTF-8 character or a CRLF), and it returns the
/// events completed so far.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    /// The previous chunk ended in CR: a leading LF in the next one belongs to that line end.
    after_cr: bool,
    current: SseEvent,
    has_data: bool,
}

impl SseParser {
    pub fn new() -> SseParser {
        SseParser::default()
    }

    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        for &b in chunk {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\r' | b'\n' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(event) = self.line_done(&line) {
                        events.push(event);
                    }
                }
                _ => self.line.push(b),
            }
        }
        events
    }

    fn line_done(&mut self, line: &[u8]) -> Option<SseEvent> {
        if line.is_empty() {
            // A blank line dispatches; an event without data lines is dropped, per spec.
            let event = std::mem::take(&mut self.current);
            let dispatch = std::mem::take(&mut self.has_data);
            return dispatch.then_some(event);
        }
        let line = String::from_utf8_lossy(line);
        if line.starts_with(':') {
            return None; // comment / keep-alive
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line.as_ref(), ""),
        };
        match field {
            "data" => {
                if self.has_data {
                    self.current.data.push('\n');
                }
                self.current.data.push_str(value);
                self.has_data = true;
            }
            "event" => self.current.event = Some(value.to_string()),
            "id" => self.current.id = Some(value.to_string()),
            _ => {} // "retry" and unknown fields do not matter to a proxy
        }
        None
    }
}

/// Formats one SSE event; multi-line data becomes several `data:` lines.
pub fn format_event(event: Option<&str>, data: &str) -> String {
    let mut out = String::with_capacity(data.len() + 16);
    if let Some(event) = event {
        out.push_str("event: ");
        out.push_str(event);
        out.push('\n');
    }
    for line in data.split('\n') {
        out.push_str("data: ");
        out.push_str(line.strip_suffix('\r').unwrap_or(line));
        out.push('\n');
    }
    out.push('\n');
    out
}

/// The OpenAI end-of-stream event.
pub const SSE_DONE: &str = "data: [DONE]\n\n";

/// The event sent before the model's first chunk: which passages the answer may cite, numbered
/// as in the prompt. A named event, so OpenAI clients that only read `data`-only (message)
/// events ignore it. Passage text is left out to keep it small.
pub fn sources_event(passages: &[Passage]) -> String {
    let sources: Vec<Value> = passages
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let mut s = serde_json::json!({"n": i + 1, "id": p.id, "source": p.source});
            if let Some(title) = &p.title {
                s["title"] = Value::String(title.clone());
            }
            if let Some(score) = p.score {
                s["score"] = serde_json::json!(score);
            }
            if let Some(shard) = &p.shard {
                s["shard"] = Value::String(shard.clone());
            }
            s
        })
        .collect();
    format_event(
        Some("sources"),
        &serde_json::json!({"object": "edgerag.sources", "sources": sources}).to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passage(id: u64, source: &str, text: &str) -> Passage {
        Passage {
            id: id.into(),
            source: source.into(),
            title: None,
            text: text.into(),
            score: Some(0.5),
            shard: None,
        }
    }

    fn words(n: usize, tag: &str) -> String {
        (0..n)
            .map(|i| format!("{tag}{i}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn context_numbers_passages_and_respects_the_budget() {
        let ps = vec![
            passage(7, "library/os.html", "Use os.walk.\nIt yields."),
            passage(9, "faq", "Second passage."),
        ];
        let c = build_context("Be brief.", &ps, 1000);
        assert_eq!(c.text, "Be brief.\n\n[1] (library/os.html) Use os.walk. It yields.\n\n[2] (faq) Second passage.");
        assert_eq!(c.included, 2);
        assert_eq!(c.tokens, approx_tokens(&c.text));
        assert_eq!(approx_tokens("abcd"), 1);
        assert_eq!(approx_tokens("abcde"), 2);
    }

    #[test]
    fn lowest_ranked_passages_go_first_and_the_boundary_one_is_cut() {
        let ps: Vec<Passage> = (0..5)
            .map(|i| passage(i, "s", &words(60, &format!("p{i}w"))))
            .collect();
        for budget in [50, 120, 200, 400, 10_000] {
            let c = build_context(DEFAULT_SYSTEM, &ps, budget);
            assert!(
                c.tokens <= budget.max(approx_tokens(DEFAULT_SYSTEM)),
                "budget {budget}: {} tokens",
                c.tokens
            );
            assert_eq!(
                c.tokens,
                approx_tokens(&c.text),
                "tokens are counted on the final text"
            );
            // A prefix of the ranking survives, in order.
            let kept: Vec<usize> = parse_numbered_passages(&c.text)
                .iter()
                .map(|(n, _)| *n)
                .collect();
            assert_eq!(kept, (1..=c.included).collect::<Vec<_>>());
            for (n, text) in parse_numbered_passages(&c.text) {
                assert!(text.starts_with(&format!("p{}w0", n - 1)), "{text}");
            }
        }
        let small = build_context(DEFAULT_SYSTEM, &ps, 120);
        assert!(small.included < 5 && small.text.ends_with('…'), "{small:?}");
        let none = build_context(DEFAULT_SYSTEM, &ps, 10);
        assert_eq!(none.included, 0);
    }

    #[test]
    fn augments_the_last_user_message_and_keeps_unknown_fields() {
        let json = r#"{"model":"m","temperature":0.2,"stream":true,"messages":[
            {"role":"system","content":"You are helpful."},
            {"role":"user","content":"first question"},
            {"role":"assistant","content":"ok"},
            {"role":"user","content":"How do I walk a directory?","name":"alice"}]}"#;
        let mut req: ChatCompletionRequest = serde_json::from_str(json).expect("valid request");
        assert_eq!(
            req.last_user_text().as_deref(),
            Some("How do I walk a directory?")
        );
        let a = augment(
            &mut req,
            "Use the sources.",
            &[passage(1, "os", "os.walk() generates file names.")],
            500,
        )
        .expect("augmented");
        assert_eq!(a.included, 1);
        let text = req.messages[3].text();
        assert!(text.starts_with("Use the sources.\n\n[1] (os) os.walk() generates file names.\n\nQuestion: How do I walk"), "{text}");
        assert_eq!(req.messages[1].text(), "first question");
        let back = serde_json::to_value(&req).expect("serialises");
        assert_eq!(back["temperature"], 0.2);
        assert_eq!(back["messages"][3]["name"], "alice");

        let mut parts: ChatCompletionRequest = serde_json::from_str(
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"Q?"},{"type":"image_url","image_url":{"url":"x"}}]}]}"#,
        )
        .expect("valid request");
        augment(&mut parts, "S", &[passage(1, "a", "b")], 100).expect("augmented");
        assert_eq!(parts.messages[0].text(), "S\n\n[1] (a) b\n\nQuestion:\nQ?");

        let mut no_user: ChatCompletionRequest =
            serde_json::from_str(r#"{"model":"m","messages":[{"role":"system","content":"x"}]}"#)
                .expect("valid");
        assert_eq!(
            augment(&mut no_user, "S", &[], 100),
            Err(RagError::NoUserMessage)
        );
    }

    #[test]
    fn embeddings_input_accepts_one_or_many() {
        let one: EmbeddingsRequest =
            serde_json::from_str(r#"{"model":"m","input":"hi"}"#).expect("one");
        assert_eq!(one.input.texts(), vec!["hi"]);
        let many: EmbeddingsRequest =
            serde_json::from_str(r#"{"model":"m","input":["a","b"],"encoding_format":"float"}"#)
                .expect("many");
        assert_eq!(many.input.texts(), vec!["a", "b"]);
        assert!(
            serde_json::from_str::<EmbeddingsRequest>(r#"{"model":"m","input":[[1,2]]}"#).is_err()
        );
    }

    const STREAM: &str = "event: sources\ndata: {\"a\":1}\n\n: keep-alive\n\ndata: line one\r\ndata: line two\r\n\r\nid: 7\ndata: é ✓\n\ndata: [DONE]\n\n";

    fn expected() -> Vec<SseEvent> {
        vec![
            SseEvent {
                event: Some("sources".into()),
                data: "{\"a\":1}".into(),
                id: None,
            },
            SseEvent {
                event: None,
                data: "line one\nline two".into(),
                id: None,
            },
            SseEvent {
                event: None,
                data: "é ✓".into(),
                id: Some("7".into()),
            },
            SseEvent {
                event: None,
                data: "[DONE]".into(),
                id: None,
            },
        ]
    }

    #[test]
    fn sse_parser_is_independent_of_chunk_boundaries() {
        let bytes = STREAM.as_bytes();
        // Every split point, including inside CRLF and inside multi-byte characters.
        for split in 0..=bytes.len() {
            let mut p = SseParser::new();
            let mut got = p.push(&bytes[..split]);
            got.extend(p.push(&bytes[split..]));
            assert_eq!(got, expected(), "split at {split}");
        }
        let mut p = SseParser::new();
        let got: Vec<SseEvent> = bytes
            .iter()
            .flat_map(|b| p.push(std::slice::from_ref(b)))
            .collect();
        assert_eq!(got, expected());
        assert!(got[3].is_done());
    }

    #[test]
    fn formatted_events_parse_back() {
        let ps = vec![Passage {
            title: Some("os.walk".into()),
            shard: Some("shard-001".into()),
            ..passage(3, "library/os.html", "t")
        }];
        let text = format!(
            "{}{}{}",
            sources_event(&ps),
            format_event(None, "multi\nline"),
            SSE_DONE
        );
        let events = SseParser::new().push(text.as_bytes());
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].event.as_deref(), Some("sources"));
        let sources: Value = serde_json::from_str(&events[0].data).expect("json");
        assert_eq!(
            sources["sources"][0],
            serde_json::json!({"n":1,"id":3,"source":"library/os.html","title":"os.walk","score":0.5,"shard":"shard-001"})
        );
        assert_eq!(events[1].data, "multi\nline");
        assert!(events[2].is_done());
    }
}
