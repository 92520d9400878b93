//! `shardc compact`'s local half: an index's export (a header line, then one put per live
//! passage; see `crate::write::export`) written out as a corpus the builder reads, and the
//! build that turns it into the index's next version.
use std::io::{BufRead, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::{
    BuildConfig, BuildError, IndexShape, DEFAULT_DEGREE, DEFAULT_EF_CONSTRUCTION,
    DEFAULT_MAX_SHARD_BYTES, DEFAULT_SEED,
};
use crate::write::export::ExportHeader;
use crate::write::Change;

/// Passages per shard a compaction aims at when the index has outgrown its shard count.
pub const PASSAGES_PER_SHARD: usize = 20_000;

/// The corpus written from an export.
pub struct ExportedCorpus {
    pub header: ExportHeader,
    pub passages: PathBuf,
    pub vectors: PathBuf,
    pub count: usize,
}

/// Writes the export read from `export` into `dir` as `passages.jsonl` and `vectors.f32`. A
/// line that is not a passage (an export cut short by a failure in the worker) is an error:
/// a compaction never publishes part of an index.
pub fn corpus_from_export(
    export: impl BufRead,
    dir: &Path,
    progress: &indicatif::ProgressBar,
) -> Result<ExportedCorpus, BuildError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BuildError::Io {
            path: path.clone(),
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let (passages, vectors) = (dir.join("passages.jsonl"), dir.join("vectors.f32"));
    let mut text = BufWriter::new(std::fs::File::create(&passages).map_err(io(&passages))?);
    let mut raw = BufWriter::new(std::fs::File::create(&vectors).map_err(io(&vectors))?);
    let mut lines = export.lines();
    let bad = |line: usize, message: String| BuildError::Corpus {
        path: PathBuf::from("<export>"),
        line,
        message,
    };
    let first = lines
        .next()
        .ok_or_else(|| bad(1, "the export is empty".into()))?
        .map_err(|e| bad(1, e.to_string()))?;
    let header: ExportHeader =
        serde_json::from_str(&first).map_err(|e| bad(1, format!("not an export header: {e}")))?;
    let mut count = 0;
    let mut exported = std::collections::HashSet::new();
    for (n, line) in lines.enumerate() {
        let line = line.map_err(|e| bad(n + 2, format!("the export was cut short: {e}")))?;
        let change: Change = serde_json::from_str(&line).map_err(|e| {
            bad(
                n + 2,
                format!("not a passage (the export was cut short?): {e}"),
            )
        })?;
        let put = change
            .put
            .ok_or_else(|| bad(n + 2, "a deletion in an export".into()))?;
        // A passage with a boundary replica is exported from each shard that stores it.
        if !exported.insert(change.id.clone()) {
            progress.inc(1);
            continue;
        }
        if put.vector.len() != header.dims {
            return Err(bad(
                n + 2,
                format!(
                    "{} dimensions, the index has {}",
                    put.vector.len(),
                    header.dims
                ),
            ));
        }
        let mut row = Map::new();
        row.insert(
            "id".into(),
            serde_json::to_value(&change.id).unwrap_or(Value::Null),
        );
        row.insert("text".into(), Value::String(put.text));
        row.extend(put.metadata);
        writeln!(text, "{}", Value::Object(row)).map_err(io(&passages))?;
        for x in &put.vector {
            raw.write_all(&x.to_le_bytes()).map_err(io(&vectors))?;
        }
        count += 1;
        progress.inc(1);
    }
    text.flush().map_err(io(&passages))?;
    raw.flush().map_err(io(&vectors))?;
    Ok(ExportedCorpus {
        header,
        passages,
        vectors,
        count,
    })
}

impl ExportedCorpus {
    /// The build of the index's next version: its shape and regions kept, as many shards as
    /// before (more when it outgrew them, fewer when it has fewer passages than shards).
    pub fn build_config(&self, out: &Path, shards: Option<usize>, progress: bool) -> BuildConfig {
        let grown = self.count.div_ceil(PASSAGES_PER_SHARD);
        let shards = shards
            .unwrap_or(self.header.shards.max(grown))
            .clamp(1, self.count.max(1));
        BuildConfig {
            passages: self.passages.clone(),
            vectors: Some(self.vectors.clone()),
            dims: self.header.dims,
            shape: IndexShape {
                metric: self.header.metric,
                quant: self.header.quant,
                shards: Some(shards),
                max_shard_bytes: DEFAULT_MAX_SHARD_BYTES,
                regions: self.header.regions.clone(),
                placement: self.header.placement,
                seed: DEFAULT_SEED,
                threads: None,
                filter_fields: self.header.filter_fields.clone(),
                replicate_margin: self.header.routing.map_or(0.0, |r| r.replicate_margin),
                probe_margin: self.header.routing.map(|r| r.probe_margin),
            },
            name: self.header.index.clone(),
            out: out.to_path_buf(),
            ef_construction: DEFAULT_EF_CONSTRUCTION,
            degree: DEFAULT_DEGREE,
            embedding_model: self.header.embedding_model.clone(),
            progress,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Placement;
    use crate::shard::{DocId, Metric, Quant};
    use crate::write::Put;

    fn header() -> ExportHeader {
        ExportHeader {
            index: "docs".into(),
            version: "v1".into(),
            seq: 7,
            dims: 2,
            metric: Metric::Cosine,
            quant: Quant::F16,
            regions: vec!["weur".into()],
            placement: Placement::Replicate,
            shards: 3,
            embedding_model: Some("m".into()),
            filter_fields: None,
            routing: None,
        }
    }

    fn line(id: DocId, vector: Vec<f32>) -> String {
        let change = Change {
            id,
            put: Some(Put {
                vector,
                text: "t".into(),
                metadata: serde_json::json!({"source": "a"})
                    .as_object()
                    .unwrap()
                    .clone(),
            }),
        };
        serde_json::to_string(&change).unwrap()
    }

    #[test]
    fn an_export_becomes_a_corpus_and_a_build_of_the_same_shape() {
        let dir = tempfile::tempdir().unwrap();
        let export = format!(
            "{}{}\n{}\n",
            header().line(),
            line(DocId::Int(1), vec![0.6, 0.8]),
            line(DocId::Int(2), vec![1.0, 0.0])
        );
        let bar = indicatif::ProgressBar::hidden();
        let corpus = corpus_from_export(export.as_bytes(), dir.path(), &bar).unwrap();
        assert_eq!((corpus.count, corpus.header.seq), (2, 7));
        let text = std::fs::read_to_string(&corpus.passages).unwrap();
        let first: Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(
            first,
            serde_json::json!({"id": 1, "text": "t", "source": "a"})
        );
        assert_eq!(std::fs::read(&corpus.vectors).unwrap().len(), 2 * 2 * 4);
        let config = corpus.build_config(dir.path(), None, false);
        assert_eq!(
            (config.shape.shards, config.dims, config.name.as_str()),
            (Some(2), 2, "docs")
        );
    }

    #[test]
    fn an_export_cut_short_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let bar = indicatif::ProgressBar::hidden();
        let cut = format!(
            "{}{}\n{{\"id\":3,\"pu",
            header().line(),
            line(DocId::Int(1), vec![0.6, 0.8])
        );
        let error = corpus_from_export(cut.as_bytes(), dir.path(), &bar)
            .err()
            .unwrap();
        assert!(error.to_string().contains("cut short"), "{error}");
        let wrong = format!("{}{}\n", header().line(), line(DocId::Int(1), vec![1.0]));
        assert!(corpus_from_export(wrong.as_bytes(), dir.path(), &bar).is_err());
        assert!(corpus_from_export(&b""[..], dir.path(), &bar).is_err());
    }

    #[test]
    fn a_replicated_passage_exported_twice_is_one_passage_and_the_rebuild_keeps_the_routing() {
        let dir = tempfile::tempdir().unwrap();
        let routing = crate::manifest::Routing {
            replicate_margin: 0.05,
            replicas: 1,
            probe_margin: 0.1,
        };
        let header = ExportHeader {
            routing: Some(routing),
            ..header()
        };
        let export = format!(
            "{}{}\n{}\n{}\n",
            header.line(),
            line(DocId::Int(1), vec![0.6, 0.8]),
            line(DocId::Int(2), vec![1.0, 0.0]),
            line(DocId::Int(1), vec![0.6, 0.8])
        );
        let bar = indicatif::ProgressBar::hidden();
        let corpus = corpus_from_export(export.as_bytes(), dir.path(), &bar).unwrap();
        assert_eq!(corpus.count, 2);
        let text = std::fs::read_to_string(&corpus.passages).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert_eq!(std::fs::read(&corpus.vectors).unwrap().len(), 2 * 2 * 4);
        let config = corpus.build_config(dir.path(), None, false);
        assert_eq!(config.shape.replicate_margin, 0.05);
        assert_eq!(config.shape.probe_margin, Some(0.1));
    }
}
