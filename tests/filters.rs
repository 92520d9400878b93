//! The filter language on built shards and on live writes, against a brute-force oracle over the
//! original JSON; selective filters filling `k`; and (ignored, run by hand) the measurement that
//! chose the selectivity at which a shard search switches from the graph to an exact scan.

use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use edgerag::build::{build_index, BuildConfig, IndexDir, IndexShape, DEFAULT_DEGREE};
use edgerag::manifest::Placement;
use edgerag::shard::{DocId, Filter, Metric, Quant, SearchParams, Shard};
use edgerag::write::delta::Delta;
use edgerag::write::{Change, Put, Row, Since};
use serde_json::{json, Map, Value};

/// A small deterministic generator (xorshift64*), so failures reproduce.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}

fn config(passages: &Path, vectors: &Path, dims: usize, shards: usize, out: &Path) -> BuildConfig {
    BuildConfig {
        passages: passages.to_path_buf(),
        vectors: Some(vectors.to_path_buf()),
        dims,
        shape: IndexShape {
            metric: Metric::Cosine,
            quant: Quant::F16,
            shards: Some(shards),
            max_shard_bytes: edgerag::build::DEFAULT_MAX_SHARD_BYTES,
            regions: vec!["weur".into()],
            placement: Placement::Replicate,
            seed: 42,
            threads: None,
            filter_fields: None,
            replicate_margin: 0.0,
            probe_margin: None,
        },
        name: "filters".into(),
        out: out.to_path_buf(),
        ef_construction: 100,
        degree: DEFAULT_DEGREE,
        embedding_model: None,
        progress: false,
    }
}

/// Writes `metadata[i]` (plus id and text) and `vectors` as a corpus under `dir`.
fn write_corpus(
    dir: &Path,
    metadata: &[Map<String, Value>],
    vectors: &[Vec<f32>],
) -> (PathBuf, PathBuf) {
    let mut lines = String::new();
    for (id, fields) in metadata.iter().enumerate() {
        let mut line = fields.clone();
        line.insert("id".into(), json!(id));
        line.insert("text".into(), json!(format!("passage {id}")));
        lines.push_str(&Value::Object(line).to_string());
        lines.push('\n');
    }
    let (passages, raw) = (dir.join("passages.jsonl"), dir.join("vectors.f32"));
    std::fs::write(&passages, lines).unwrap();
    let bytes: Vec<u8> = vectors
        .iter()
        .flatten()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    std::fs::write(&raw, bytes).unwrap();
    (passages, raw)
}

// ---- The oracle: the filter language read straight from its JSON, written from the README. ----

fn oracle(filter: &Map<String, Value>, doc: &Map<String, Value>) -> bool {
    filter.iter().all(|(key, operand)| match key.as_str() {
        "$and" => operand
            .as_array()
            .unwrap()
            .iter()
            .all(|f| oracle(f.as_object().unwrap(), doc)),
        "$or" => operand
            .as_array()
            .unwrap()
            .iter()
            .any(|f| oracle(f.as_object().unwrap(), doc)),
        "$not" => !oracle(operand.as_object().unwrap(), doc),
        field => {
            let stored = doc.get(field);
            match operand {
                Value::Object(ops) if ops.keys().any(|k| k.starts_with('$')) => ops
                    .iter()
                    .all(|(op, operand)| oracle_operator(op, operand, stored)),
                value => oracle_operator("$eq", value, stored),
            }
        }
    })
}

fn oracle_operator(op: &str, operand: &Value, stored: Option<&Value>) -> bool {
    let same = |v: &Value| match (stored, v) {
        (Some(Value::Number(a)), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Some(s), v) => s == v,
        (None, _) => false,
    };
    let order = || match (stored, operand) {
        (Some(Value::Number(a)), Value::Number(b)) => {
            a.as_f64().unwrap().partial_cmp(&b.as_f64().unwrap())
        }
        (Some(Value::String(a)), Value::String(b)) => Some(a.cmp(b)),
        _ => None,
    };
    match op {
        "$eq" => same(operand),
        "$ne" => !same(operand),
        "$lt" => order() == Some(Ordering::Less),
        "$lte" => matches!(order(), Some(Ordering::Less | Ordering::Equal)),
        "$gt" => order() == Some(Ordering::Greater),
        "$gte" => matches!(order(), Some(Ordering::Greater | Ordering::Equal)),
        "$in" => operand.as_array().unwrap().iter().any(same),
        "$nin" => !operand.as_array().unwrap().iter().any(same),
        "$exists" => stored.is_some() == operand.as_bool().unwrap(),
        other => panic!("the generator made operator {other}"),
    }
}

// ---- Random metadata and random filters over it. ----

const FIELDS: [&str; 6] = ["s", "i", "f", "b", "mixed", "rare"];

fn random_value(rng: &mut Random, field: &str) -> Value {
    let strings = ["", "a", "ab", "b", "en", "de", "Zed", "é", "10", "9"];
    match field {
        "s" => json!(strings[rng.below(strings.len())]),
        "i" => json!(rng.below(11) as i64 - 5),
        // Floats, some of them whole (2.0 must equal 2).
        "f" => json!([-2.5, -1.0, 0.0, 0.5, 1.5, 2.0, 3.25][rng.below(7)]),
        "b" => json!(rng.chance(2)),
        _ => match rng.below(5) {
            0 => json!(strings[rng.below(strings.len())]),
            1 => json!(rng.below(7) as i64 - 3),
            2 => json!(rng.below(4) as f64 - 1.5),
            3 => json!(rng.chance(2)),
            _ => Value::Null,
        },
    }
}

fn random_metadata(rng: &mut Random) -> Map<String, Value> {
    let mut metadata = Map::new();
    for field in FIELDS {
        let present = if field == "rare" {
            rng.chance(40)
        } else {
            !rng.chance(5)
        };
        if present {
            metadata.insert(field.into(), random_value(rng, field));
        }
    }
    metadata
}

/// An operand of the kind `field` holds most of the time, sometimes of another field's kind.
fn random_operand(rng: &mut Random, field: &str) -> Value {
    let kind = if rng.chance(4) {
        FIELDS[rng.below(FIELDS.len())]
    } else {
        field
    };
    random_value(rng, kind)
}

fn random_leaf(rng: &mut Random) -> (String, Value) {
    // "absent" is a field no passage has: no shard has a column for it.
    let field = if rng.chance(12) {
        "absent"
    } else {
        FIELDS[rng.below(FIELDS.len())]
    };
    let mut operators = Map::new();
    for _ in 0..1 + rng.below(2) {
        let (op, operand) = match rng.below(9) {
            0 => ("$eq", random_operand(rng, field)),
            1 => ("$ne", random_operand(rng, field)),
            2..=5 => {
                let op = ["$lt", "$lte", "$gt", "$gte"][rng.below(4)];
                let operand = loop {
                    let v = random_operand(rng, field);
                    if v.is_number() || v.is_string() {
                        break v;
                    }
                };
                (op, operand)
            }
            6 => (
                "$in",
                Value::Array(
                    (0..rng.below(4))
                        .map(|_| random_operand(rng, field))
                        .collect(),
                ),
            ),
            7 => (
                "$nin",
                Value::Array(
                    (0..rng.below(4))
                        .map(|_| random_operand(rng, field))
                        .collect(),
                ),
            ),
            _ => ("$exists", json!(rng.chance(2))),
        };
        operators.insert(op.into(), operand);
    }
    if operators.len() == 1 && operators.contains_key("$eq") && rng.chance(2) {
        // The equality shorthand.
        return (field.into(), operators.remove("$eq").unwrap_or(Value::Null));
    }
    (field.into(), Value::Object(operators))
}

fn random_filter(rng: &mut Random, depth: usize) -> Map<String, Value> {
    let mut filter = Map::new();
    let kind = if depth == 0 { 0 } else { rng.below(5) };
    match kind {
        0 | 1 => {
            for _ in 0..1 + rng.below(2) {
                let (field, test) = random_leaf(rng);
                filter.insert(field, test);
            }
        }
        2 | 3 => {
            let members = (0..1 + rng.below(3))
                .map(|_| Value::Object(random_filter(rng, depth - 1)))
                .collect();
            filter.insert(
                if kind == 2 { "$and" } else { "$or" }.into(),
                Value::Array(members),
            );
        }
        _ => {
            filter.insert("$not".into(), Value::Object(random_filter(rng, depth - 1)));
        }
    }
    filter
}

fn ids_passing(metadata: &[Map<String, Value>], filter: &Map<String, Value>) -> BTreeSet<i64> {
    (0..metadata.len())
        .filter(|&i| oracle(filter, &metadata[i]))
        .map(|i| i as i64)
        .collect()
}

fn int_id(id: &DocId) -> i64 {
    match id {
        DocId::Int(id) => *id,
        DocId::Str(id) => panic!("integer ids expected, got {id}"),
    }
}

#[test]
fn random_filters_pass_the_same_passages_on_shards_live_writes_and_the_oracle() {
    let mut rng = Random(0x9e37_79b9_7f4a_7c15);
    const ROWS: usize = 400;
    const DIMS: usize = 8;
    let metadata: Vec<Map<String, Value>> = (0..ROWS).map(|_| random_metadata(&mut rng)).collect();
    let vectors: Vec<Vec<f32>> = (0..ROWS)
        .map(|_| (0..DIMS).map(|_| rng.unit() + 0.01).collect())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let (passages, raw) = write_corpus(dir.path(), &metadata, &vectors);
    let out = dir.path().join("index");
    // Three shards: a rare field has a column in some and not in others.
    build_index(&config(&passages, &raw, DIMS, 3, &out)).unwrap();
    let index = IndexDir::open(&out).unwrap();
    let rows: Vec<Row> = metadata
        .iter()
        .zip(&vectors)
        .enumerate()
        .map(|(id, (fields, vector))| Row {
            seq: id as u64 + 1,
            change: Change {
                id: DocId::Int(id as i64),
                put: Some(Put {
                    vector: vector.clone(),
                    text: format!("passage {id}"),
                    metadata: fields.clone(),
                }),
            },
        })
        .collect();
    let written = Delta::empty("filters", DIMS, Metric::Cosine)
        .apply(&Since {
            rows,
            upto: ROWS as u64,
            last_seq: ROWS as u64,
            ..Since::default()
        })
        .unwrap();
    let query = vec![0.3f32; DIMS];
    let mut nonempty = 0;
    for case in 0..600 {
        let json = random_filter(&mut rng, 3);
        let filter = Filter::parse(json.clone()).unwrap_or_else(|e| panic!("{e}: {json:?}"));
        let expected = ids_passing(&metadata, &json);
        nonempty += usize::from(!expected.is_empty() && expected.len() < ROWS);
        let params = SearchParams {
            k: ROWS,
            ef: ROWS,
            filter: Some(filter.clone()),
            exclude: None,
        };
        let on_shards: BTreeSet<i64> = index
            .search_exact(&query, &params)
            .unwrap()
            .iter()
            .map(|hit| int_id(&index.shards[hit.shard].id(hit.ord).unwrap()))
            .collect();
        assert_eq!(
            on_shards,
            expected,
            "case {case}, shards: {}",
            Value::Object(json.clone())
        );
        let in_writes: BTreeSet<i64> = written
            .search(&query, ROWS, Some(&filter))
            .unwrap()
            .iter()
            .map(|hit| int_id(&hit.id))
            .collect();
        assert_eq!(
            in_writes,
            expected,
            "case {case}, writes: {}",
            Value::Object(json)
        );
    }
    // The generator must exercise filters that split the corpus (a third at least), not only
    // all-or-nothing ones.
    assert!(
        nonempty >= 200,
        "only {nonempty} of 600 filters split the corpus"
    );
}

/// A clustered corpus of `rows` vectors with a `bucket` field (0..1000, by a hash of the row,
/// so unrelated to where a vector lies) and `tenant` (`row % 100`).
fn clustered(
    rng: &mut Random,
    rows: usize,
    dims: usize,
) -> (Vec<Map<String, Value>>, Vec<Vec<f32>>) {
    let centres: Vec<Vec<f32>> = (0..32)
        .map(|_| (0..dims).map(|_| rng.unit()).collect())
        .collect();
    let vectors = (0..rows)
        .map(|row| {
            centres[row % 32]
                .iter()
                .map(|c| c + 0.3 * rng.unit())
                .collect()
        })
        .collect();
    let metadata = (0..rows)
        .map(|row| {
            let bucket = (row as u64).wrapping_mul(2_654_435_761) % 1000;
            json!({"bucket": bucket, "tenant": format!("t{:02}", row % 100)})
                .as_object()
                .cloned()
                .unwrap_or_default()
        })
        .collect();
    (metadata, vectors)
}

fn recall(found: &[edgerag::shard::Hit], exact: &[edgerag::shard::Hit]) -> f64 {
    if exact.is_empty() {
        return 1.0;
    }
    let truth: BTreeSet<u32> = exact.iter().map(|h| h.ord).collect();
    found.iter().filter(|h| truth.contains(&h.ord)).count() as f64 / exact.len() as f64
}

#[test]
fn a_filter_passing_one_percent_fills_k_with_recall_over_0_95() {
    let mut rng = Random(77);
    const ROWS: usize = 10_000;
    const DIMS: usize = 24;
    let (metadata, vectors) = clustered(&mut rng, ROWS, DIMS);
    let dir = tempfile::tempdir().unwrap();
    let (passages, raw) = write_corpus(dir.path(), &metadata, &vectors);
    let out = dir.path().join("index");
    build_index(&config(&passages, &raw, DIMS, 1, &out)).unwrap();
    let index = IndexDir::open(&out).unwrap();
    let shard: &Shard = &index.shards[0];
    let one_percent = [json!({"tenant": "t07"}), json!({"bucket": {"$lt": 10}})];
    for filter in one_percent {
        let filter: Filter = serde_json::from_value(filter).unwrap();
        let passing = ids_passing(&metadata, filter.as_json()).len();
        assert!((80..=120).contains(&passing), "{passing} pass");
        let params = SearchParams {
            k: 10,
            ef: 64,
            filter: Some(filter.clone()),
            exclude: None,
        };
        let mut total = 0.0;
        for q in 0..50 {
            let query: Vec<f32> = vectors[q * 97]
                .iter()
                .map(|x| x + 0.05 * rng.unit())
                .collect();
            let found = shard.search(&query, &params).unwrap();
            let exact = shard.search_exact(&query, &params).unwrap();
            assert_eq!(found.len(), 10, "query {q} got {} results", found.len());
            total += recall(&found, &exact);
        }
        let mean = total / 50.0;
        assert!(mean >= 0.95, "{:?}: recall {mean}", filter.as_json());
    }
}

/// Mean recall@10 of the graph search and of `Shard::search` (which switches to a scan) against
/// the exact filtered top 10, results returned and time per query, per passing fraction. On
/// pydocs when present (`../shared/data/pydocs`), else a synthetic corpus:
/// `cargo test --test filters -- --ignored --nocapture selectivity`.
#[test]
#[ignore]
fn selectivity_table() {
    let pydocs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/pydocs");
    let mut rng = Random(5);
    let dir = tempfile::tempdir().unwrap();
    let (rows, dims, vectors, queries, corpus) = if pydocs.join("base.f32").exists() {
        let read = |name: &str| -> Vec<f32> {
            std::fs::read(pydocs.join(name))
                .unwrap()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        };
        let base = read("base.f32");
        let dims = 384;
        let vectors: Vec<Vec<f32>> = base.chunks_exact(dims).map(<[f32]>::to_vec).collect();
        let queries: Vec<Vec<f32>> = read("queries_public.f32")
            .chunks_exact(dims)
            .take(200)
            .map(<[f32]>::to_vec)
            .collect();
        let rows = vectors.len();
        let metadata: Vec<Map<String, Value>> = (0..rows)
            .map(|row| {
                let bucket = (row as u64).wrapping_mul(2_654_435_761) % 1000;
                json!({"bucket": bucket})
                    .as_object()
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
        (rows, dims, vectors, queries, ("pydocs", metadata))
    } else {
        let (metadata, vectors) = clustered(&mut rng, 20_000, 32);
        let queries: Vec<Vec<f32>> = (0..200)
            .map(|q| {
                vectors[q * 89]
                    .iter()
                    .map(|x| x + 0.05 * rng.unit())
                    .collect()
            })
            .collect();
        (20_000, 32, vectors, queries, ("synthetic", metadata))
    };
    let (passages, raw) = write_corpus(dir.path(), &corpus.1, &vectors);
    let out = dir.path().join("index");
    let mut build = config(&passages, &raw, dims, 1, &out);
    build.ef_construction = edgerag::build::DEFAULT_EF_CONSTRUCTION;
    build_index(&build).unwrap();
    let index = IndexDir::open(&out).unwrap();
    let shard = &index.shards[0];
    println!(
        "{} corpus, {rows} passages, {dims} dims, k = 10, ef = 64, {} queries",
        corpus.0,
        queries.len()
    );
    println!("| passing | docs | graph recall@10 | graph results | graph µs | scan µs | search recall@10 |");
    println!("|---|---|---|---|---|---|---|");
    for per_mille in [1000, 500, 250, 125, 100, 75, 62, 50, 30, 20, 10, 5, 2] {
        let filter: Filter = serde_json::from_value(json!({"bucket": {"$lt": per_mille}})).unwrap();
        let docs = ids_passing(&corpus.1, filter.as_json()).len();
        let params = SearchParams {
            k: 10,
            ef: 64,
            filter: Some(filter),
            exclude: None,
        };
        let (mut graph_recall, mut graph_results, mut search_recall) = (0.0, 0, 0.0);
        let (mut graph_time, mut scan_time) = (0.0, 0.0);
        for query in &queries {
            let started = Instant::now();
            let graph = shard.search_graph(query, &params).unwrap();
            graph_time += started.elapsed().as_secs_f64();
            let started = Instant::now();
            let exact = shard.search_exact(query, &params).unwrap();
            scan_time += started.elapsed().as_secs_f64();
            graph_recall += recall(&graph, &exact);
            graph_results += graph.len();
            search_recall += recall(&shard.search(query, &params).unwrap(), &exact);
        }
        let n = queries.len() as f64;
        println!(
            "| {:.1}% | {docs} | {:.3} | {:.1} | {:.0} | {:.0} | {:.3} |",
            per_mille as f64 / 10.0,
            graph_recall / n,
            graph_results as f64 / n,
            graph_time / n * 1e6,
            scan_time / n * 1e6,
            search_recall / n
        );
    }
}

#[test]
fn build_lists_every_metadata_field_and_refilter_changes_the_list_over_the_same_shards() {
    let mut rng = Random(3);
    let metadata: Vec<Map<String, Value>> = (0..60).map(|_| random_metadata(&mut rng)).collect();
    let vectors: Vec<Vec<f32>> = (0..60)
        .map(|_| (0..4).map(|_| rng.unit() + 0.01).collect())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let (passages, raw) = write_corpus(dir.path(), &metadata, &vectors);
    let out = dir.path().join("index");
    let built = build_index(&config(&passages, &raw, 4, 2, &out)).unwrap();
    let present: BTreeSet<String> = metadata.iter().flat_map(|m| m.keys().cloned()).collect();
    assert_eq!(built.filter_fields, Some(present.into_iter().collect()));

    let narrowed = dir.path().join("narrowed");
    let fields = ["s".to_string(), " b".to_string(), "s".to_string()];
    let manifest = edgerag::build::refilter_index(&out, &narrowed, &fields).unwrap();
    assert_eq!(
        manifest.filter_fields,
        Some(vec!["b".to_string(), "s".to_string()])
    );
    assert_ne!(manifest.version, built.version);
    let files = |m: &edgerag::manifest::Manifest| {
        m.shards.iter().map(|s| s.file.clone()).collect::<Vec<_>>()
    };
    assert_eq!(files(&manifest), files(&built), "the same shard files");
    let reopened = IndexDir::open(&narrowed).unwrap();
    assert_eq!(reopened.manifest, manifest);
    // Every field is still stored: matches return what filters may no longer name.
    let stored: BTreeSet<String> = (0..reopened.shards.len())
        .flat_map(|s| {
            let shard = &reopened.shards[s];
            (0..shard.meta().count)
                .flat_map(|ord| {
                    shard
                        .passage(ord)
                        .unwrap()
                        .metadata
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(stored.contains("i") && stored.contains("f"), "{stored:?}");
    assert!(edgerag::build::refilter_index(&out, &narrowed, &["$x".to_string()]).is_err());
}
