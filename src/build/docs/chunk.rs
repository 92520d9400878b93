//! Cuts sections into passages that fit the embedding model: each section on its own, in
//! windows of at most `window` word-pieces (counted with the model's `tokenizer.json`, or
//! estimated without one) that overlap by up to `overlap` word-pieces, cut between words.
//!
//! A chunk's **text** is its heading path joined by `" > "`, a blank line, then the window of
//! the section's body (the path is shortened to the last heading, or left out, when it would
//! take more than a quarter of the window); the window limit counts the whole text, without
//! the `[CLS]`/`[SEP]` the embedder adds. Its **title** is the heading path joined by `" > "`,
//! or the file's name for text before the first heading. Its **id** is
//! `{relative path}#{section}.{window}`: the section's position among the file's sections and
//! the window's within the section, both from 0 — the same for the same file on every run,
//! whatever happens to other files.

use std::path::Path;

use super::Section;
use crate::build::BuildError;

/// Default window: well inside all-MiniLM-L6-v2's 256 word-pieces.
pub const DEFAULT_CHUNK_TOKENS: usize = 200;
pub const DEFAULT_CHUNK_OVERLAP: usize = 40;

/// One passage to embed and index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub id: String,
    pub text: String,
    pub title: String,
    /// The document's relative path.
    pub source: String,
    /// Word-pieces in `text` (as the counter counts them).
    pub tokens: usize,
}

/// Counts word-pieces: the model's tokenizer, or an estimate when there is none.
pub enum TokenCounter {
    WordPiece(Box<tokenizers::Tokenizer>),
    /// Every punctuation character one token, every run of letters and digits one per four
    /// characters (rounded up): above what WordPiece gives for English, so windows stay
    /// within the model's limit.
    Estimate,
}

impl TokenCounter {
    /// The tokenizer in `model_dir/tokenizer.json`, without its truncation and padding.
    pub fn from_model_dir(model_dir: &Path) -> Result<TokenCounter, BuildError> {
        let path = model_dir.join("tokenizer.json");
        let mut tokenizer = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| BuildError::Invalid(format!("{}: {e}", path.display())))?;
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|e| BuildError::Invalid(format!("{}: {e}", path.display())))?;
        Ok(TokenCounter::WordPiece(Box::new(tokenizer)))
    }

    /// Word-pieces in `text`, without special tokens.
    pub fn count(&self, text: &str) -> usize {
        match self {
            TokenCounter::WordPiece(tokenizer) => tokenizer
                .encode(text, false)
                .map(|e| e.len())
                .unwrap_or_else(|_| estimate(text)),
            TokenCounter::Estimate => estimate(text),
        }
    }

    /// Word-pieces of each word (`words` are byte spans of `text`, in order), from one
    /// encoding of the whole text.
    fn per_word(&self, text: &str, words: &[(usize, usize)]) -> Vec<usize> {
        let encoding = match self {
            TokenCounter::WordPiece(tokenizer) => tokenizer.encode(text, false).ok(),
            TokenCounter::Estimate => None,
        };
        let Some(encoding) = encoding else {
            return words.iter().map(|&(s, e)| estimate(&text[s..e])).collect();
        };
        let mut counts = vec![0; words.len()];
        for &(start, _) in encoding.get_offsets() {
            let word = words.partition_point(|&(s, _)| s <= start);
            if word > 0 {
                counts[word - 1] += 1;
            }
        }
        counts
    }
}

fn estimate(text: &str) -> usize {
    let mut tokens = 0usize;
    let mut run = 0usize;
    for c in text.chars() {
        if c.is_alphanumeric() {
            run += 1;
            continue;
        }
        tokens += run.div_ceil(4);
        run = 0;
        if !c.is_whitespace() {
            tokens += 1;
        }
    }
    tokens + run.div_ceil(4)
}

/// Window sizes, checked.
#[derive(Debug, Clone, Copy)]
pub struct ChunkParams {
    pub window: usize,
    pub overlap: usize,
}

impl ChunkParams {
    pub fn new(window: usize, overlap: usize) -> Result<ChunkParams, BuildError> {
        if window < 8 {
            return Err(BuildError::Invalid(
                "--chunk-tokens must be at least 8".into(),
            ));
        }
        if overlap >= window / 2 {
            return Err(BuildError::Invalid(format!(
                "--chunk-overlap {overlap} must be less than half of --chunk-tokens {window}"
            )));
        }
        Ok(ChunkParams { window, overlap })
    }
}

/// The chunks of one document (`rel` is its relative path), in order.
pub fn chunk_document(
    rel: &str,
    sections: &[Section],
    counter: &TokenCounter,
    params: ChunkParams,
) -> Vec<Chunk> {
    let file_name = rel.rsplit('/').next().unwrap_or(rel);
    let mut chunks = Vec::new();
    for (s, section) in sections.iter().enumerate() {
        let title = if section.headings.is_empty() {
            file_name.to_string()
        } else {
            section.headings.join(" > ")
        };
        let (prefix, prefix_tokens) = heading_prefix(&section.headings, counter, params.window);
        let budget = params.window - prefix_tokens;
        let windows = windows(&section.body, counter, budget, params.overlap);
        for (w, body) in windows.into_iter().enumerate() {
            let text = if prefix.is_empty() {
                body.to_string()
            } else {
                format!("{prefix}\n\n{body}")
            };
            chunks.push(Chunk {
                id: format!("{rel}#{s}.{w}"),
                tokens: counter.count(&text),
                text,
                title: title.clone(),
                source: rel.to_string(),
            });
        }
    }
    chunks
}

/// The heading path as the chunk's first line, at most a quarter of the window.
fn heading_prefix(headings: &[String], counter: &TokenCounter, window: usize) -> (String, usize) {
    let full = headings.join(" > ");
    let candidates = [full, headings.last().cloned().unwrap_or_default()];
    for prefix in candidates {
        let tokens = counter.count(&prefix);
        if !prefix.is_empty() && tokens <= window / 4 {
            return (prefix, tokens);
        }
    }
    (String::new(), 0)
}

/// Windows of `body` of at most `budget` word-pieces, each starting up to `overlap`
/// word-pieces before the previous one ended.
fn windows<'a>(
    body: &'a str,
    counter: &TokenCounter,
    budget: usize,
    overlap: usize,
) -> Vec<&'a str> {
    let mut words: Vec<(usize, usize)> = Vec::new();
    let mut start = None;
    for (i, c) in body.char_indices() {
        match (c.is_whitespace(), start) {
            (true, Some(s)) => {
                words.push((s, i));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        words.push((s, body.len()));
    }
    let mut counts = counter.per_word(body, &words);
    split_long_words(body, counter, budget, &mut words, &mut counts);

    let mut out = Vec::new();
    let mut start = 0;
    while start < words.len() {
        let mut end = start;
        let mut total = 0;
        while end < words.len() && total + counts[end] <= budget {
            total += counts[end];
            end += 1;
        }
        if end == start {
            // Cannot happen after `split_long_words`, but never loop forever.
            end = start + 1;
        }
        out.push(&body[words[start].0..words[end - 1].1]);
        if end == words.len() {
            break;
        }
        let mut next = end;
        let mut overlapped = 0;
        while next > start + 1 && overlapped + counts[next - 1] <= overlap {
            overlapped += counts[next - 1];
            next -= 1;
        }
        start = next;
    }
    out
}

/// Splits any word of more than `budget` word-pieces (a long URL, a base64 blob) into pieces
/// that fit, at character boundaries.
fn split_long_words(
    body: &str,
    counter: &TokenCounter,
    budget: usize,
    words: &mut Vec<(usize, usize)>,
    counts: &mut Vec<usize>,
) {
    if counts.iter().all(|&c| c <= budget) {
        return;
    }
    let mut new_words = Vec::with_capacity(words.len());
    let mut new_counts = Vec::with_capacity(words.len());
    for (&(start, end), &count) in words.iter().zip(counts.iter()) {
        if count <= budget {
            new_words.push((start, end));
            new_counts.push(count);
            continue;
        }
        let mut pending = vec![(start, end)];
        while let Some((s, e)) = pending.pop() {
            let tokens = counter.count(&body[s..e]);
            let chars: Vec<usize> = body[s..e].char_indices().map(|(i, _)| s + i).collect();
            if tokens <= budget || chars.len() < 2 {
                new_words.push((s, e));
                new_counts.push(tokens);
                continue;
            }
            let middle = chars[chars.len() / 2];
            // Depth first, the second half pushed first so pieces come out in order.
            pending.push((middle, e));
            pending.push((s, middle));
        }
    }
    *words = new_words;
    *counts = new_counts;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counter() -> TokenCounter {
        crate::embed::default_model_dir()
            .ok()
            .and_then(|dir| TokenCounter::from_model_dir(&dir).ok())
            .unwrap_or_else(|| {
                eprintln!("model tokenizer not installed: chunk tests use the estimate");
                TokenCounter::Estimate
            })
    }

    fn section(headings: &[&str], body: &str) -> Section {
        Section {
            headings: headings.iter().map(|h| h.to_string()).collect(),
            body: body.into(),
        }
    }

    fn long_body(words: usize, seed: &str) -> String {
        (0..words)
            .map(|i| format!("{seed}{i} word, tokenization"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn chunk_windows_fit_the_token_limit_and_overlap() {
        let counter = counter();
        let params = ChunkParams::new(64, 16).unwrap();
        let body = format!("{} {}", long_body(120, "alpha"), "x".repeat(900));
        let sections = [section(&["Library", "os", "Files"], &body)];
        let chunks = chunk_document("lib/os.md", &sections, &counter, params);
        assert!(chunks.len() > 5, "{} chunks", chunks.len());
        for (i, chunk) in chunks.iter().enumerate() {
            assert_eq!(chunk.id, format!("lib/os.md#0.{i}"));
            assert_eq!(chunk.title, "Library > os > Files");
            assert_eq!(chunk.source, "lib/os.md");
            assert!(chunk.text.starts_with("Library > os > Files\n\n"));
            let tokens = counter.count(&chunk.text);
            assert!(tokens <= params.window, "chunk {i}: {tokens} tokens");
            assert_eq!(tokens, chunk.tokens);
        }
        // Consecutive windows share their boundary words, at most `overlap` tokens of them.
        for pair in chunks.windows(2).take(4) {
            let body = |c: &Chunk| c.text.split_once("\n\n").unwrap().1.to_string();
            let (a, b) = (body(&pair[0]), body(&pair[1]));
            let first_word = b.split_whitespace().next().unwrap();
            let at = a
                .rfind(&format!(" {first_word} "))
                .expect("overlap present");
            let shared = &a[at + 1..];
            assert!(b.starts_with(shared), "{shared:?} does not start {b:?}");
            assert!(counter.count(shared) <= params.overlap);
            assert!(counter.count(shared) > 0);
        }
        // All words survive: the last window ends where the body ends.
        assert!(chunks.last().unwrap().text.ends_with('x'));
    }

    #[test]
    fn chunk_ids_are_stable_and_text_before_headings_is_titled_by_file_name() {
        let counter = counter();
        let params = ChunkParams::new(DEFAULT_CHUNK_TOKENS, DEFAULT_CHUNK_OVERLAP).unwrap();
        let sections = [
            section(&[], "Preamble."),
            section(&["Guide"], &long_body(200, "beta")),
        ];
        let first = chunk_document("docs/guide.md", &sections, &counter, params);
        let again = chunk_document("docs/guide.md", &sections, &counter, params);
        assert_eq!(first, again);
        assert_eq!(first[0].id, "docs/guide.md#0.0");
        assert_eq!(
            (first[0].title.as_str(), first[0].text.as_str()),
            ("guide.md", "Preamble.")
        );
        assert_eq!(first[1].id, "docs/guide.md#1.0");
        assert_eq!(first[2].id, "docs/guide.md#1.1");
        assert!(ChunkParams::new(100, 50).is_err());
        assert!(ChunkParams::new(4, 0).is_err());
    }

    #[test]
    fn estimate_counts_punctuation_and_long_runs() {
        assert_eq!(estimate("hello, world"), 2 + 1 + 2);
        assert_eq!(estimate(""), 0);
        assert_eq!(TokenCounter::Estimate.count("a.b"), 3);
    }
}
