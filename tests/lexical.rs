//! Lexical and hybrid search through the one retrieval engine, against a brute-force oracle:
//! BM25 computed straight from the corpus texts must equal the top k merged from the shards'
//! postings (index-wide document frequencies, every shard), and fusion must rank by both.

use std::path::Path;

use edgerag::build::{build_index, BuildConfig, IndexDir, IndexShape, DEFAULT_DEGREE};
use edgerag::lexical::{idf, term_counts, CorpusStats, QueryTerms};
use edgerag::manifest::Placement;
use edgerag::retrieve::{Match, Ranking, SearchMode, ShardQuery};
use edgerag::shard::{Filter, Metric, Quant};
use rand::{Rng, SeedableRng};

const WORDS: &[&str] = &[
    "file",
    "open",
    "read",
    "write",
    "socket",
    "thread",
    "lock",
    "queue",
    "path",
    "join",
    "list",
    "dict",
    "string",
    "bytes",
    "error",
    "raise",
    "import",
    "module",
    "class",
    "async",
    "await",
    "loop",
    "json",
    "parse",
    "format",
    "os.path.join",
    "sys.argv",
    "asyncio.run",
    "str.format",
];

struct Corpus {
    texts: Vec<String>,
    vectors: Vec<Vec<f32>>,
}

/// Passages of random words (identifiers among them), ids 0.., a `part` metadata field, and
/// random 8-d vectors; written as the JSONL + f32 files `shardc build` reads.
fn corpus(dir: &Path, rows: usize) -> Corpus {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut lines = String::new();
    let mut raw = Vec::new();
    let (mut texts, mut vectors) = (Vec::new(), Vec::new());
    for row in 0..rows {
        let length = rng.gen_range(3..40);
        // Zipf-like: early words are common, later ones rare.
        let text: Vec<&str> = (0..length)
            .map(|_| WORDS[(rng.gen_range(0.0f64..1.0).powi(2) * WORDS.len() as f64) as usize])
            .collect();
        let text = format!("Passage {row}: {}.", text.join(" "));
        let vector: Vec<f32> = (0..8).map(|_| rng.gen_range(-1.0f32..1.0)).collect();
        let line = serde_json::json!({"id": row, "text": text, "part": row % 4});
        lines.push_str(&format!("{line}\n"));
        raw.extend(vector.iter().flat_map(|x| x.to_le_bytes()));
        texts.push(text);
        vectors.push(vector);
    }
    std::fs::write(dir.join("passages.jsonl"), lines).unwrap();
    std::fs::write(dir.join("vectors.f32"), raw).unwrap();
    Corpus { texts, vectors }
}

fn build(dir: &Path, shards: usize) -> IndexDir {
    let out = dir.join("index");
    build_index(&BuildConfig {
        passages: dir.join("passages.jsonl"),
        vectors: Some(dir.join("vectors.f32")),
        dims: 8,
        shape: IndexShape {
            metric: Metric::Cosine,
            quant: Quant::F16,
            shards: Some(shards),
            max_shard_bytes: edgerag::build::DEFAULT_MAX_SHARD_BYTES,
            regions: vec!["weur".into()],
            placement: Placement::Replicate,
            seed: 3,
            threads: Some(1),
            filter_fields: None,
            replicate_margin: 0.0,
            probe_margin: None,
        },
        name: "lexical".into(),
        out: out.clone(),
        ef_construction: 100,
        degree: DEFAULT_DEGREE,
        embedding_model: None,
        progress: false,
    })
    .unwrap();
    IndexDir::open(&out).unwrap()
}

/// BM25 of every passage for `query`, straight from the texts: (score, id), best first.
fn oracle(texts: &[String], query: &QueryTerms, passes: impl Fn(usize) -> bool) -> Vec<(f32, i64)> {
    let counted: Vec<(Vec<(String, u32)>, u32)> = texts.iter().map(|t| term_counts(t)).collect();
    let stats = CorpusStats {
        docs: texts.len() as u64,
        tokens: counted.iter().map(|(_, n)| u64::from(*n)).sum(),
    };
    let tf = |doc: &[(String, u32)], term: &str| {
        doc.iter().find(|(t, _)| t == term).map_or(0, |(_, n)| *n)
    };
    let mut scored: Vec<(f32, i64)> = counted
        .iter()
        .enumerate()
        .filter(|(row, _)| passes(*row))
        .filter_map(|(row, (doc, length))| {
            let score: f32 = query
                .terms
                .iter()
                .map(|(term, weight)| {
                    let df = counted.iter().filter(|(d, _)| tf(d, term) > 0).count() as u64;
                    match tf(doc, term) {
                        0 => 0.0,
                        n => edgerag::lexical::term_score(
                            idf(stats.docs, df) * *weight as f32,
                            n,
                            *length,
                            stats.mean_length(),
                        ),
                    }
                })
                .sum();
            (score > 0.0).then_some((score, row as i64))
        })
        .collect();
    scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    scored
}

fn query(vector: Option<&[f32]>, text: &str, k: usize, filter: Option<Filter>) -> ShardQuery {
    ShardQuery {
        vector: vector.map(<[f32]>::to_vec),
        lexical: Some(QueryTerms::parse(text)),
        k,
        filter,
        exclude: None,
    }
}

fn ids(matches: &[Match]) -> Vec<i64> {
    matches.iter().map(|m| m.id.as_i64().unwrap()).collect()
}

fn lexical(k: usize) -> Ranking {
    Ranking::new(SearchMode::Lexical, k, 60)
}

#[test]
fn lexical_top_k_over_three_shards_equals_bm25_over_the_whole_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus(dir.path(), 600);
    let index = build(dir.path(), 3);
    let questions = [
        "how do I join a path",
        "os.path.join",
        "asyncio.run await loop",
        "json parse error",
        "sys argv",
        "thread lock queue socket",
    ];
    for text in questions {
        let terms = QueryTerms::parse(text);
        let expected = oracle(&corpus.texts, &terms, |_| true);
        let found = index
            .answer(&query(None, text, 10, None), 64, None, lexical(10))
            .unwrap();
        assert_eq!(found.len(), 10.min(expected.len()), "{text}");
        for (at, (m, (score, id))) in found.iter().zip(&expected).enumerate() {
            // Equal scores may come in either order; the score at each rank must agree.
            assert!(
                (m.score - score).abs() <= 1e-4 * score.max(1.0),
                "{text:?} rank {at}: found {} ({}), oracle {id} ({score})",
                m.id,
                m.score
            );
            let stage = m.stages.unwrap().lexical.unwrap();
            assert_eq!((stage.rank, stage.score), (at + 1, m.score));
        }
        let top_found: Vec<i64> = ids(&found);
        let distinct_scores = expected.windows(2).take(9).all(|w| w[0].0 != w[1].0);
        if distinct_scores {
            let top_expected: Vec<i64> = expected.iter().take(10).map(|(_, id)| *id).collect();
            assert_eq!(top_found, top_expected, "{text}");
        }
    }
}

#[test]
fn identifiers_are_found_whole_and_a_filter_restricts_lexical_hits() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus(dir.path(), 400);
    let index = build(dir.path(), 2);
    let whole = index
        .answer(&query(None, "str.format", 5, None), 64, None, lexical(5))
        .unwrap();
    assert!(!whole.is_empty());
    for m in &whole {
        assert!(m.text.contains("format"), "{}", m.text);
    }
    assert!(
        whole[0].text.contains("str.format"),
        "the identifier ranks first"
    );
    let part_one: Filter = serde_json::from_value(serde_json::json!({"part": 1})).unwrap();
    let filtered = index
        .answer(
            &query(None, "lock queue", 10, Some(part_one)),
            64,
            None,
            lexical(10),
        )
        .unwrap();
    let expected = oracle(&corpus.texts, &QueryTerms::parse("lock queue"), |row| {
        row % 4 == 1
    });
    assert_eq!(filtered.len(), 10);
    for (m, (score, _)) in filtered.iter().zip(&expected) {
        assert_eq!(m.id.as_i64().unwrap() % 4, 1);
        assert!((m.score - score).abs() <= 1e-4 * score.max(1.0));
    }
}

#[test]
fn hybrid_fuses_both_rankings_by_reciprocal_rank() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = corpus(dir.path(), 500);
    let index = build(dir.path(), 2);
    let vector = corpus.vectors[123].clone();
    let text = "socket thread";
    let k = 10;
    let ranked = |mode| {
        index
            .answer(
                &query(Some(&vector), text, k, None),
                256,
                None,
                Ranking {
                    depth: k,
                    ..Ranking::new(mode, k, 60)
                },
            )
            .unwrap()
    };
    let (by_vector, by_words, hybrid) = (
        ranked(SearchMode::Vector),
        ranked(SearchMode::Lexical),
        ranked(SearchMode::Hybrid),
    );
    assert_eq!(
        by_vector[0].id.as_i64(),
        Some(123),
        "its own vector is nearest"
    );
    let rrf = |rank: Option<usize>| rank.map_or(0.0, |r| 1.0 / (60.0 + r as f32));
    let position = |list: &[Match], id: &serde_json::Value| {
        list.iter().position(|m| &m.id == id).map(|p| p + 1)
    };
    assert_eq!(hybrid.len(), k);
    for pair in hybrid.windows(2) {
        assert!(pair[0].score >= pair[1].score);
    }
    for m in &hybrid {
        let stages = m.stages.unwrap();
        let (in_vector, in_words) = (position(&by_vector, &m.id), position(&by_words, &m.id));
        assert_eq!(stages.vector.map(|s| s.rank), in_vector, "{}", m.id);
        assert_eq!(stages.lexical.map(|s| s.rank), in_words, "{}", m.id);
        assert!((m.score - (rrf(in_vector) + rrf(in_words))).abs() < 1e-6);
    }
    // Whatever both rankings list beats whatever only one lists at the same or a worse rank.
    let both: Vec<i64> = ids(&by_vector)
        .into_iter()
        .filter(|id| ids(&by_words).contains(id))
        .collect();
    for id in both {
        assert!(ids(&hybrid).contains(&id), "{id} is in both rankings");
    }
}
