//! Reads and validates a corpus: JSONL passages (`id`, `text`, optional `vector`, other fields are
//! metadata) plus vectors from a raw little-endian f32 file or the `vector` fields.

use std::collections::HashSet;
use std::io::BufRead;
use std::path::Path;

use serde_json::{Map, Value};

use super::error::BuildError;
use crate::shard::{DocId, Metric};

/// A validated corpus; vectors are normalised when the metric is cosine.
pub struct Corpus {
    pub dims: usize,
    pub ids: Vec<DocId>,
    pub texts: Vec<String>,
    pub metadata: Vec<Map<String, Value>>,
    /// `len × dims`, row i = passage i.
    pub vectors: Vec<f32>,
}

impl Corpus {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn vector(&self, row: usize) -> &[f32] {
        &self.vectors[row * self.dims..(row + 1) * self.dims]
    }
}

/// Reads `passages` (and `vectors`, if given) and checks everything the build relies on.
pub fn read_corpus(
    passages: &Path,
    vectors: Option<&Path>,
    dims: usize,
    metric: Metric,
) -> Result<Corpus, BuildError> {
    if dims == 0 {
        return Err(BuildError::Invalid("--dims must be at least 1".into()));
    }
    let file = std::fs::File::open(passages).map_err(BuildError::io(passages))?;
    let corpus_error = |line: usize, message: String| BuildError::Corpus {
        path: passages.to_path_buf(),
        line,
        message,
    };
    let mut corpus = Corpus {
        dims,
        ids: Vec::new(),
        texts: Vec::new(),
        metadata: Vec::new(),
        vectors: Vec::new(),
    };
    let mut seen_ids = HashSet::new();
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line_number = index + 1;
        let line = line.map_err(BuildError::io(passages))?;
        if line.trim().is_empty() {
            continue;
        }
        let mut fields: Map<String, Value> = serde_json::from_str(&line)
            .map_err(|e| corpus_error(line_number, format!("not a JSON object: {e}")))?;
        let id = match fields.remove("id") {
            Some(Value::String(id)) => DocId::Str(id),
            Some(Value::Number(n)) => DocId::Int(n.as_i64().ok_or_else(|| {
                corpus_error(line_number, format!("id {n} is not a 64-bit integer"))
            })?),
            Some(other) => {
                return Err(corpus_error(
                    line_number,
                    format!("id must be an integer or a string, got {other}"),
                ))
            }
            None => return Err(corpus_error(line_number, "missing \"id\"".into())),
        };
        if let Some(first) = corpus.ids.first() {
            if std::mem::discriminant(first) != std::mem::discriminant(&id) {
                return Err(corpus_error(
                    line_number,
                    "ids must be all integers or all strings".into(),
                ));
            }
        }
        if !seen_ids.insert(id.clone()) {
            return Err(corpus_error(line_number, format!("duplicate id {id}")));
        }
        let text = match fields.remove("text") {
            Some(Value::String(text)) => text,
            _ => {
                return Err(corpus_error(
                    line_number,
                    "missing string field \"text\"".into(),
                ))
            }
        };
        match (fields.remove("vector"), vectors) {
            (Some(_), Some(_)) => {
                return Err(corpus_error(
                    line_number,
                    "has a \"vector\" field but --vectors was also given".into(),
                ));
            }
            (Some(Value::Array(values)), None) => {
                if values.len() != dims {
                    return Err(corpus_error(
                        line_number,
                        format!("vector has {} values, expected {dims}", values.len()),
                    ));
                }
                for value in &values {
                    let x = value.as_f64().ok_or_else(|| {
                        corpus_error(line_number, format!("vector value {value} is not a number"))
                    })?;
                    corpus.vectors.push(x as f32);
                }
            }
            (Some(_), None) => {
                return Err(corpus_error(
                    line_number,
                    "\"vector\" must be an array of numbers".into(),
                ))
            }
            (None, None) => {
                return Err(corpus_error(
                    line_number,
                    "no \"vector\" field and no --vectors file".into(),
                ))
            }
            (None, Some(_)) => {}
        }
        corpus.ids.push(id);
        corpus.texts.push(text);
        corpus.metadata.push(fields);
    }
    if corpus.is_empty() {
        return Err(BuildError::Invalid(format!(
            "{} has no passages",
            passages.display()
        )));
    }
    if let Some(path) = vectors {
        corpus.vectors = read_f32_matrix(path, corpus.len(), dims)?;
    }
    check_and_normalise(&mut corpus, metric)?;
    Ok(corpus)
}

/// Reads exactly `rows × dims` little-endian f32 values.
pub fn read_f32_matrix(path: &Path, rows: usize, dims: usize) -> Result<Vec<f32>, BuildError> {
    let bytes = std::fs::read(path).map_err(BuildError::io(path))?;
    let expected = rows * dims * 4;
    if bytes.len() != expected {
        return Err(BuildError::Vectors {
            path: path.to_path_buf(),
            message: format!(
                "{} bytes, expected {rows} rows × {dims} dims × 4 = {expected}",
                bytes.len()
            ),
        });
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

fn check_and_normalise(corpus: &mut Corpus, metric: Metric) -> Result<(), BuildError> {
    let dims = corpus.dims;
    for (row, vector) in corpus.vectors.chunks_exact_mut(dims).enumerate() {
        if vector.iter().any(|x| !x.is_finite()) {
            return Err(BuildError::Invalid(format!(
                "vector of passage {} contains NaN or infinity",
                corpus.ids[row]
            )));
        }
        if metric == Metric::Cosine {
            let norm = vector.iter().map(|x| x * x).sum::<f32>().sqrt();
            if norm == 0.0 {
                return Err(BuildError::Invalid(format!(
                    "vector of passage {} is all zeros; cosine is undefined",
                    corpus.ids[row]
                )));
            }
            vector.iter_mut().for_each(|x| *x /= norm);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus_from(lines: &str, dims: usize) -> Result<Corpus, BuildError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.jsonl");
        std::fs::write(&path, lines).unwrap();
        read_corpus(&path, None, dims, Metric::Cosine)
    }

    #[test]
    fn keeps_ids_as_given_and_other_fields_as_metadata() {
        let corpus = corpus_from("{\"id\":\"a\",\"text\":\"x\",\"vector\":[3,4],\"lang\":\"en\"}\n\n{\"id\":\"b\",\"text\":\"y\",\"vector\":[0,2]}\n", 2).unwrap();
        assert_eq!(
            corpus.ids,
            vec![DocId::Str("a".into()), DocId::Str("b".into())]
        );
        assert_eq!(corpus.metadata[0]["lang"], "en");
        assert_eq!(corpus.vector(0), &[0.6, 0.8]);
    }

    #[test]
    fn rejects_bad_input_with_line_numbers() {
        let cases = [
            ("{\"id\":1,\"text\":\"x\",\"vector\":[1]}", "expected 2"),
            ("{\"id\":1,\"text\":\"x\",\"vector\":[1,2]}\n{\"id\":1,\"text\":\"y\",\"vector\":[1,2]}", "duplicate id 1"),
            ("{\"id\":1,\"text\":\"x\",\"vector\":[1,2]}\n{\"id\":\"s\",\"text\":\"y\",\"vector\":[1,2]}", "all integers or all strings"),
            ("{\"id\":1,\"vector\":[1,2]}", "\"text\""),
            ("{\"text\":\"x\"}", "missing \"id\""),
            ("[1]", "not a JSON object"),
            ("{\"id\":1,\"text\":\"x\",\"vector\":[0,0]}", "all zeros"),
            ("", "no passages"),
        ];
        for (input, expected) in cases {
            let message = corpus_from(input, 2)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                message.contains(expected),
                "{input:?}: {message:?} lacks {expected:?}"
            );
        }
        let missing = read_corpus(Path::new("/nonexistent/p.jsonl"), None, 2, Metric::L2)
            .err()
            .unwrap();
        assert!(matches!(missing, BuildError::Io { .. }));
    }

    #[test]
    fn vectors_file_must_match_rows_and_dims() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.f32");
        std::fs::write(&path, [0u8; 12]).unwrap();
        assert!(read_f32_matrix(&path, 1, 3).is_ok());
        let message = read_f32_matrix(&path, 2, 3).err().unwrap().to_string();
        assert!(message.contains("expected 2 rows"), "{message}");
    }
}
