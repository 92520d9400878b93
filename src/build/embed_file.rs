//! `shardc embed`: the `text` of every line of a JSONL file → raw little-endian f32 rows in the
//! same order, through any [`Embedder`]. It embeds the shipped demo corpus's queries
//! (scripts/demo-corpus), and it is what scripts/bench-embed times against sentence-transformers
//! on the same texts.
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use super::embedder::{embed_batches, Embedder};
use super::output::write_atomic;
use super::BuildError;

/// What one run embedded, and how long the embedding (not the reading) took.
#[derive(Debug, Clone)]
pub struct EmbedReport {
    pub texts: usize,
    pub dims: usize,
    pub time: Duration,
}

impl EmbedReport {
    pub fn texts_per_second(&self) -> f64 {
        self.texts as f64 / self.time.as_secs_f64().max(1e-9)
    }
}

/// The `text` field of every line of `path`; a line that is not a JSON object with a string
/// `text` is an error naming the line (blank lines are skipped).
pub fn read_texts(path: &Path) -> Result<Vec<String>, BuildError> {
    let file = std::fs::File::open(path).map_err(BuildError::io(path))?;
    let mut texts = Vec::new();
    for (index, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(BuildError::io(path))?;
        if line.trim().is_empty() {
            continue;
        }
        let corpus_error = |message: String| BuildError::Corpus {
            path: path.to_path_buf(),
            line: index + 1,
            message,
        };
        let value: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| corpus_error(e.to_string()))?;
        let text = value
            .get("text")
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| corpus_error("no string field \"text\"".into()))?;
        texts.push(text.to_owned());
    }
    Ok(texts)
}

/// Embeds every text of `input` and writes the vectors to `output` (atomically: a failed run
/// leaves no file, or the previous one, behind).
pub fn embed_file(
    input: &Path,
    output: &Path,
    embedder: &dyn Embedder,
    progress: bool,
) -> Result<EmbedReport, BuildError> {
    let texts = read_texts(input)?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let dims = embedder.dims();
    let mut rows = vec![0f32; texts.len() * dims];
    let bar = super::progress_bar(progress, texts.len(), "embed");
    let started = Instant::now();
    embed_batches(embedder, &refs, |indices, vectors| {
        bar.inc(vectors.len() as u64);
        for (&i, vector) in indices.iter().zip(vectors) {
            rows[i * dims..(i + 1) * dims].copy_from_slice(&vector);
        }
    })?;
    let time = started.elapsed();
    bar.finish_and_clear();
    let name = output.file_name().ok_or_else(|| {
        BuildError::Invalid(format!("--out {}: not a file path", output.display()))
    })?;
    let dir = output
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    write_atomic(dir, &name.to_string_lossy(), |file| {
        let bytes: Vec<u8> = rows.iter().flat_map(|x| x.to_le_bytes()).collect();
        file.write_all(&bytes)
    })?;
    Ok(EmbedReport {
        texts: texts.len(),
        dims,
        time,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::embedder::tests::FakeEmbedder;

    #[test]
    fn embed_file_writes_one_row_per_line_in_line_order() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("texts.jsonl");
        let texts = ["a much longer text than the others", "b", "", "mid length"];
        let lines: Vec<String> = texts
            .iter()
            .map(|t| serde_json::json!({ "id": 1, "text": t }).to_string())
            .collect();
        std::fs::write(&input, lines.join("\n\n") + "\n").unwrap();
        let output = dir.path().join("out.f32");
        let report = embed_file(&input, &output, &FakeEmbedder::new(4), false).unwrap();
        assert_eq!((report.texts, report.dims), (4, 4));
        let bytes = std::fs::read(&output).unwrap();
        let rows: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let want: Vec<f32> = texts
            .iter()
            .flat_map(|t| FakeEmbedder::vector(t, 4))
            .collect();
        assert_eq!(rows, want);
    }

    #[test]
    fn embed_file_names_the_bad_line_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("texts.jsonl");
        std::fs::write(&input, "{\"text\": \"ok\"}\n{\"title\": \"no text\"}\n").unwrap();
        let output = dir.path().join("out.f32");
        let error = embed_file(&input, &output, &FakeEmbedder::new(4), false)
            .err()
            .unwrap()
            .to_string();
        assert!(
            error.contains("line 2") && error.contains("text"),
            "{error}"
        );
        assert!(!output.exists());
    }
}
