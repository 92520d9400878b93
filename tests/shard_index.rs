//! End-to-end tests of the shard compiler: build real indexes, measure recall against exact ground
//! truth, filters, string ids, atomic rebuilds, and corruption handling by the library and `shardc`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use edgerag::build::{build_index, BuildConfig, BuildError, IndexDir, IndexShape, DEFAULT_DEGREE};
use edgerag::manifest::{checksum_hex, Manifest, Placement, MANIFEST_FILE};
use edgerag::shard::format::{encode_blob, Header, ShardData, HEADER_LEN};
use edgerag::shard::{DocId, Exclusions, Filter, Metric, Quant, SearchParams, Shard, ShardError};
use rand::{Rng, SeedableRng};

fn pydocs_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/pydocs")
}

fn config(
    passages: &Path,
    vectors: Option<&Path>,
    dims: usize,
    quant: Quant,
    shards: usize,
    out: &Path,
) -> BuildConfig {
    BuildConfig {
        passages: passages.to_path_buf(),
        vectors: vectors.map(Path::to_path_buf),
        dims,
        shape: IndexShape {
            metric: Metric::Cosine,
            quant,
            shards: Some(shards),
            max_shard_bytes: edgerag::build::DEFAULT_MAX_SHARD_BYTES,
            regions: vec!["weur".into(), "enam".into()],
            placement: Placement::Replicate,
            seed: 42,
            threads: None,
            filter_fields: None,
            replicate_margin: 0.0,
            probe_margin: None,
        },
        name: "test".into(),
        out: out.to_path_buf(),
        ef_construction: 200,
        degree: DEFAULT_DEGREE,
        embedding_model: None,
        progress: false,
    }
}

fn read_le<T>(path: &Path, decode: fn([u8; 4]) -> T) -> Vec<T> {
    std::fs::read(path)
        .unwrap()
        .chunks_exact(4)
        .map(|b| decode([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// A clustered synthetic corpus with integer or string ids and two metadata fields;
/// vectors are written to a separate raw f32 file. Returns (passages, vectors, raw rows).
fn synthetic_corpus(
    dir: &Path,
    rows: usize,
    dims: usize,
    string_ids: bool,
) -> (PathBuf, PathBuf, Vec<Vec<f32>>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let centres: Vec<Vec<f32>> = (0..16)
        .map(|_| (0..dims).map(|_| rng.gen_range(-1.0f32..1.0)).collect())
        .collect();
    let mut lines = String::new();
    let mut vectors = Vec::new();
    for row in 0..rows {
        let cluster = row % centres.len();
        let vector: Vec<f32> = centres[cluster]
            .iter()
            .map(|c| c + rng.gen_range(-0.4f32..0.4))
            .collect();
        let id = if string_ids {
            serde_json::json!(format!("doc-{row}"))
        } else {
            serde_json::json!(row)
        };
        let line = serde_json::json!({"id": id, "text": format!("passage {row} ünïcode"), "group": cluster % 3, "lang": if row % 2 == 0 { "en" } else { "de" }});
        lines.push_str(&line.to_string());
        lines.push('\n');
        vectors.push(vector);
    }
    let passages = dir.join("passages.jsonl");
    let raw = dir.join("base.f32");
    std::fs::write(&passages, lines).unwrap();
    std::fs::write(
        &raw,
        vectors
            .iter()
            .flatten()
            .flat_map(|x| x.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .unwrap();
    (passages, raw, vectors)
}

/// Exact top-k row indices by cosine over raw f32 vectors.
fn exact_top_k(vectors: &[Vec<f32>], query: &[f32], k: usize) -> Vec<i32> {
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let mut scored: Vec<(f32, i32)> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            (
                -v.iter().zip(query).map(|(a, b)| a * b).sum::<f32>() / (norm(v) * norm(query)),
                i as i32,
            )
        })
        .collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    scored.into_iter().take(k).map(|(_, i)| i).collect()
}

/// Mean recall@10 of the graph search at `ef`; `truth` rows start with the exact top 10 ids.
fn recall_at_10(index: &IndexDir, queries: &[Vec<f32>], truth: &[Vec<i32>], ef: usize) -> f64 {
    let mut found = 0;
    for (query, expected) in queries.iter().zip(truth) {
        for hit in index
            .search(
                query,
                &SearchParams {
                    k: 10,
                    ef,
                    filter: None,
                    exclude: None,
                },
            )
            .unwrap()
        {
            let DocId::Int(id) = index.shards[hit.shard].passage(hit.ord).unwrap().id else {
                panic!("integer ids expected")
            };
            found += usize::from(expected[..10].contains(&(id as i32)));
        }
    }
    found as f64 / (10 * queries.len()) as f64
}

/// Best recall over ef ∈ {32, …, 256}, stopping at the first ef that reaches `target`.
fn reaches_recall(
    index: &IndexDir,
    queries: &[Vec<f32>],
    truth: &[Vec<i32>],
    target: f64,
) -> (usize, f64) {
    let mut last = (0, 0.0);
    for ef in [32, 64, 128, 256] {
        last = (ef, recall_at_10(index, queries, truth, ef));
        if last.1 >= target {
            break;
        }
    }
    last
}

/// A corpus with queries and their exact top-10 ids (rows of at least 10).
struct RecallCorpus {
    passages: PathBuf,
    vectors: PathBuf,
    dims: usize,
    queries: Vec<Vec<f32>>,
    truth: Vec<Vec<i32>>,
}

/// pydocs' first 500 public queries and their ground truth (`pydocs`), else a synthetic
/// clustered corpus of 3,000 rows whose queries are shifted copies of every 15th row.
fn recall_corpus(work: &Path, pydocs: bool) -> RecallCorpus {
    let data = pydocs_dir();
    if pydocs {
        const QUERIES: usize = 500;
        let queries: Vec<Vec<f32>> = read_le(&data.join("queries_public.f32"), f32::from_le_bytes)
            .chunks(384)
            .take(QUERIES)
            .map(<[f32]>::to_vec)
            .collect();
        let truth: Vec<Vec<i32>> = read_le(&data.join("gt_public.i32"), i32::from_le_bytes)
            .chunks(100)
            .take(QUERIES)
            .map(<[i32]>::to_vec)
            .collect();
        return RecallCorpus {
            passages: data.join("passages.jsonl"),
            vectors: data.join("base.f32"),
            dims: 384,
            queries,
            truth,
        };
    }
    eprintln!("measuring recall on a synthetic clustered corpus (../shared/data/pydocs absent or not asked for)");
    let (passages, vectors, rows) = synthetic_corpus(work, 3000, 48, false);
    let queries: Vec<Vec<f32>> = rows
        .iter()
        .step_by(15)
        .map(|v| v.iter().map(|x| x * 1.01 + 0.01).collect())
        .collect();
    let truth = queries.iter().map(|q| exact_top_k(&rows, q, 10)).collect();
    RecallCorpus {
        passages,
        vectors,
        dims: 48,
        queries,
        truth,
    }
}

#[test]
fn recall_against_exact_ground_truth_for_1_and_4_shards_f16_and_i8() {
    let work = tempfile::tempdir().unwrap();
    let RecallCorpus {
        passages,
        vectors,
        dims,
        queries,
        truth,
        ..
    } = recall_corpus(work.path(), pydocs_dir().join("passages.jsonl").exists());
    for (quant, target) in [(Quant::F16, 0.97), (Quant::I8, 0.95)] {
        for shards in [1, 4] {
            let out = work.path().join(format!("{quant:?}-{shards}"));
            build_index(&config(
                &passages,
                Some(&vectors),
                dims,
                quant,
                shards,
                &out,
            ))
            .unwrap();
            let index = IndexDir::open(&out).unwrap();
            let (ef, recall) = reaches_recall(&index, &queries, &truth, target);
            eprintln!("{quant:?} shards={shards}: recall@10 {recall:.4} at ef {ef}");
            assert!(
                recall >= target,
                "{quant:?} with {shards} shards: recall@10 {recall} < {target} even at ef {ef}"
            );
        }
    }
}

/// Boundary replication (`--replicate-margin`) with the adaptive plan: every answer has 10
/// distinct passages though copies sit in two shards, graph and exact search alike; the manifest
/// counts the copies; queries visit fewer shards. On pydocs (4 shards, margin 0.04, probe margin
/// 0.08) recall@10 at ef 64 is at least 0.95 while visiting at most 2 shards on average (0.89 at
/// probe 2 without replication); on the synthetic corpus, every passage copied (margin 2, the
/// widest cosine distance) and a probe margin of 0.1, at least 0.9 visiting fewer than all 4.
#[test]
fn boundary_replicas_give_distinct_answers_and_reach_recall_visiting_fewer_shards() {
    let work = tempfile::tempdir().unwrap();
    let pydocs = pydocs_dir().join("passages.jsonl").exists();
    let mut corpora = vec![(false, 2.0, Some(0.1), 0.9, 4.0)];
    if pydocs {
        corpora.push((true, 0.04, None, 0.95, 2.0));
    } else {
        eprintln!("../shared/data/pydocs is absent: the pydocs goal (recall 0.95, ≤ 2 of 4 shards) is not checked");
    }
    for (use_pydocs, margin, probe_margin, target, most_visited) in corpora {
        let dir = work.path().join(format!("pydocs-{use_pydocs}"));
        std::fs::create_dir_all(&dir).unwrap();
        let corpus = recall_corpus(&dir, use_pydocs);
        let out = dir.join("index");
        let mut built = config(
            &corpus.passages,
            Some(&corpus.vectors),
            corpus.dims,
            Quant::F16,
            4,
            &out,
        );
        built.shape.replicate_margin = margin;
        built.shape.probe_margin = probe_margin;
        build_index(&built).unwrap();
        let index = IndexDir::open(&out).unwrap();
        let routing = index
            .manifest
            .routing
            .expect("the manifest records the routing");
        let stored: u64 = index
            .manifest
            .shards
            .iter()
            .map(|s| u64::from(s.count))
            .sum();
        assert!(routing.replicas > 0, "margin {margin} copied nothing");
        if margin >= 2.0 {
            assert_eq!(routing.replicas, index.manifest.count);
        }
        assert_eq!(stored, index.manifest.count + routing.replicas);
        assert_eq!(routing.probe_margin, probe_margin.unwrap_or(2.0 * margin));
        let (mut found, mut visited) = (0usize, 0usize);
        for (query, expected) in corpus.queries.iter().zip(&corpus.truth) {
            let params = SearchParams {
                k: 10,
                ef: 64,
                filter: None,
                exclude: None,
            };
            visited += edgerag::retrieve::plan(&index.manifest, query, None, &params).len();
            let ids = |hits: Vec<edgerag::shard::ShardHit>| -> Vec<i64> {
                hits.iter()
                    .map(|hit| match index.shards[hit.shard].id(hit.ord).unwrap() {
                        DocId::Int(id) => id,
                        DocId::Str(id) => panic!("integer ids expected, got {id}"),
                    })
                    .collect()
            };
            let graph = ids(index.search(query, &params).unwrap());
            let exact = ids(index.search_exact(query, &params).unwrap());
            for answer in [&graph, &exact] {
                let distinct: std::collections::HashSet<_> = answer.iter().collect();
                assert_eq!((answer.len(), distinct.len()), (10, 10), "{answer:?}");
            }
            found += graph
                .iter()
                .filter(|&&id| expected[..10].contains(&(id as i32)))
                .count();
        }
        let queries = corpus.queries.len();
        let recall = found as f64 / (10 * queries) as f64;
        let mean_visited = visited as f64 / queries as f64;
        eprintln!(
            "pydocs={use_pydocs} margin {margin}: {} copies for {} passages, recall@10 {recall:.4} visiting {mean_visited:.2} of 4 shards",
            routing.replicas, index.manifest.count
        );
        assert!(recall >= target, "recall@10 {recall} < {target}");
        assert!(
            mean_visited <= most_visited && mean_visited < 4.0,
            "visited {mean_visited} shards on average"
        );
    }
}

/// Without `--shards` the build picks the fewest shards whose estimated blobs fit
/// `--max-shard-bytes`: every blob fits, and the estimate is close enough that the count is at
/// most half again the least possible (the real bytes over the budget, rounded up) plus one;
/// `--shards` overrides the budget; a budget no split can meet is a clear error.
#[test]
fn the_shard_count_follows_max_shard_bytes_and_every_blob_fits() {
    let work = tempfile::tempdir().unwrap();
    let (passages, vectors, _) = synthetic_corpus(work.path(), 3000, 48, true);
    let built = |name: &str, shards: Option<usize>, max_shard_bytes: u64| {
        let out = work.path().join(name);
        let mut c = config(&passages, Some(&vectors), 48, Quant::F16, 1, &out);
        c.shape.shards = shards;
        c.shape.max_shard_bytes = max_shard_bytes;
        build_index(&c).map(|manifest| {
            manifest
                .shards
                .iter()
                .map(|s| s.bytes)
                .collect::<Vec<u64>>()
        })
    };
    let whole = built("whole", None, u64::MAX).unwrap();
    assert_eq!(whole.len(), 1);
    let total = whole[0];
    for parts in [2, 3, 5] {
        let budget = total / parts + 1;
        let blobs = built(&format!("in-{parts}"), None, budget).unwrap();
        let least = total.div_ceil(budget) as usize;
        eprintln!(
            "budget {budget}: {} shards (least {least}), {blobs:?}",
            blobs.len()
        );
        assert!(
            blobs.iter().all(|&b| b <= budget),
            "{blobs:?} over {budget}"
        );
        assert!(
            blobs.len() >= least && blobs.len() <= least * 3 / 2 + 1,
            "{} shards",
            blobs.len()
        );
    }
    assert_eq!(built("override", Some(2), 1000).unwrap().len(), 2);
    let error = built("impossible", None, 1000).unwrap_err().to_string();
    assert!(error.contains("--max-shard-bytes"), "{error}");
}

#[test]
fn filters_string_ids_and_passages_survive_the_round_trip() {
    let work = tempfile::tempdir().unwrap();
    let (passages, vectors, rows) = synthetic_corpus(work.path(), 800, 16, true);
    let out = work.path().join("index");
    let manifest =
        build_index(&config(&passages, Some(&vectors), 16, Quant::F16, 2, &out)).unwrap();
    assert_eq!(manifest.count, 800);
    assert_eq!(
        manifest.shards.iter().map(|s| s.count).collect::<Vec<_>>(),
        vec![400, 400]
    );
    let index = IndexDir::open(&out).unwrap();

    // The nearest passage to a stored vector is that passage, with its id and fields as given.
    let hits = index
        .search(
            &rows[123],
            &SearchParams {
                k: 1,
                ef: 64,
                filter: None,
                exclude: None,
            },
        )
        .unwrap();
    let passage = index.shards[hits[0].shard].passage(hits[0].ord).unwrap();
    assert_eq!(passage.id, DocId::Str("doc-123".into()));
    assert_eq!(passage.text, "passage 123 ünïcode");
    assert_eq!(passage.metadata["lang"], "de");
    assert!((Metric::Cosine.score(hits[0].distance) - 1.0).abs() < 1e-3);

    // Filtered graph search (broad filter) and exact scan (selective filter) both return only
    // passing passages, and the same set as brute force over the passing ones.
    let broad: Filter = serde_json::from_str(r#"{"lang": "en"}"#).unwrap();
    let selective: Filter = serde_json::from_str(r#"{"lang": "en", "group": 1}"#).unwrap();
    for filter in [broad, selective] {
        let params = SearchParams {
            k: 10,
            ef: 128,
            filter: Some(filter.clone()),
            exclude: None,
        };
        let approximate = index.search(&rows[7], &params).unwrap();
        let exact = index.search_exact(&rows[7], &params).unwrap();
        assert_eq!(approximate.len(), 10);
        for hit in &approximate {
            let metadata = index.shards[hit.shard].passage(hit.ord).unwrap().metadata;
            assert!(filter.matches(&metadata), "{metadata:?}");
        }
        let key = |hits: &[edgerag::shard::ShardHit]| {
            hits.iter()
                .map(|h| (h.shard, h.ord))
                .collect::<std::collections::BTreeSet<_>>()
        };
        assert!(key(&approximate).intersection(&key(&exact)).count() >= 9);
    }
    let nobody: Filter = serde_json::from_str(r#"{"lang": "fr"}"#).unwrap();
    assert!(index
        .search(
            &rows[7],
            &SearchParams {
                k: 5,
                ef: 32,
                filter: Some(nobody),
                exclude: None,
            }
        )
        .unwrap()
        .is_empty());

    // Wrong query dimension is an error, not a panic.
    let shard = &index.shards[0];
    assert_eq!(
        shard.search(
            &[1.0; 3],
            &SearchParams {
                k: 1,
                ef: 8,
                filter: None,
                exclude: None,
            }
        ),
        Err(ShardError::DimensionMismatch {
            expected: 16,
            got: 3
        })
    );
    assert!(matches!(
        shard.passage(10_000),
        Err(ShardError::OrdinalOutOfRange { .. })
    ));
}

#[test]
fn excluded_ids_are_never_returned_by_graph_or_exact_search_with_or_without_a_filter() {
    let work = tempfile::tempdir().unwrap();
    for string_ids in [false, true] {
        let dir = work.path().join(format!("ids-{string_ids}"));
        std::fs::create_dir_all(&dir).unwrap();
        let (passages, vectors, rows) = synthetic_corpus(&dir, 600, 16, string_ids);
        let out = dir.join("index");
        build_index(&config(&passages, Some(&vectors), 16, Quant::F16, 1, &out)).unwrap();
        let index = IndexDir::open(&out).unwrap();
        let id = |row: usize| {
            if string_ids {
                DocId::Str(format!("doc-{row}"))
            } else {
                DocId::Int(row as i64)
            }
        };
        let search = |row: usize, exclude: Option<Arc<Exclusions>>, filter: Option<Filter>| {
            let params = SearchParams {
                k: 10,
                ef: 64,
                filter,
                exclude,
            };
            let found = index.search(&rows[row], &params).unwrap();
            found
                .iter()
                .map(|h| index.shards[h.shard].passage(h.ord).unwrap().id)
                .collect::<Vec<_>>()
        };
        let plain = search(40, None, None);
        assert_eq!(plain[0], id(40));
        // Exclude the query's own passage and half of its neighbours: the rest still come, in
        // order, and the excluded never do, through the graph and through the filtered scan.
        let excluded: Vec<DocId> = plain.iter().step_by(2).cloned().collect();
        let set = Arc::new(Exclusions::new(1, &excluded));
        let kept = search(40, Some(set.clone()), None);
        assert_eq!(kept.len(), 10);
        let exact = index
            .search_exact(
                &rows[40],
                &SearchParams {
                    k: 10,
                    exclude: Some(set.clone()),
                    ..SearchParams::default()
                },
            )
            .unwrap();
        assert!(exact
            .iter()
            .all(|h| !excluded.contains(&index.shards[h.shard].passage(h.ord).unwrap().id)));
        assert!(kept.iter().all(|d| !excluded.contains(d)), "{kept:?}");
        let survivors: Vec<&DocId> = plain.iter().filter(|d| !excluded.contains(d)).collect();
        assert_eq!(
            kept.iter().take(survivors.len()).collect::<Vec<_>>(),
            survivors
        );
        let selective: Filter = serde_json::from_str(r#"{"lang": "en", "group": 1}"#).unwrap();
        let filtered = search(40, Some(set.clone()), Some(selective.clone()));
        assert!(!filtered.is_empty());
        assert!(filtered.iter().all(|d| !excluded.contains(d)));
        assert_eq!(
            filtered,
            search(40, None, Some(selective))
                .into_iter()
                .filter(|d| !excluded.contains(d))
                .take(filtered.len())
                .collect::<Vec<_>>()
        );
        // A new set under the same generation would be a caller's bug; a new generation is
        // resolved afresh.
        let none = Arc::new(Exclusions::new(2, &[]));
        assert_eq!(search(40, Some(none), None), plain);
    }
}

#[test]
fn failed_rebuild_leaves_the_previous_index_intact() {
    let work = tempfile::tempdir().unwrap();
    let (passages, vectors, _) = synthetic_corpus(work.path(), 300, 8, false);
    let out = work.path().join("index");
    let first = build_index(&config(&passages, Some(&vectors), 8, Quant::I8, 2, &out)).unwrap();

    let bad = work.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&passages).unwrap() + "{\"id\": 5, \"text\": \"duplicate\"}\n",
    )
    .unwrap();
    let failed = build_index(&config(&bad, Some(&vectors), 8, Quant::I8, 2, &out));
    assert!(
        matches!(failed, Err(BuildError::Corpus { .. })),
        "{failed:?}"
    );
    let wrong_dims = build_index(&config(&passages, Some(&vectors), 9, Quant::I8, 2, &out));
    assert!(
        matches!(wrong_dims, Err(BuildError::Vectors { .. })),
        "{wrong_dims:?}"
    );

    let reopened = IndexDir::open(&out).unwrap();
    assert_eq!(reopened.manifest, first);

    // A successful rebuild with other settings replaces it and removes the old shard files.
    let second = build_index(&config(&passages, Some(&vectors), 8, Quant::F16, 3, &out)).unwrap();
    assert_ne!(second.version, first.version);
    let shard_files = std::fs::read_dir(&out)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".shard")
        })
        .count();
    assert_eq!(shard_files, 3);
}

fn shardc_inspect(path: &Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_shardc"))
        .arg("inspect")
        .arg(path)
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

#[test]
fn corrupted_blobs_and_manifests_give_clear_errors_never_panics() {
    let work = tempfile::tempdir().unwrap();
    let (passages, vectors, rows) = synthetic_corpus(work.path(), 200, 8, true);
    let out = work.path().join("index");
    let manifest = build_index(&config(&passages, Some(&vectors), 8, Quant::I8, 1, &out)).unwrap();
    let shard_path = out.join(&manifest.shards[0].file);
    let blob = std::fs::read(&shard_path).unwrap();
    assert!(Shard::from_bytes(&blob).is_ok());
    assert!(shardc_inspect(&shard_path).0);
    assert!(shardc_inspect(&out).0);

    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let exercise = |opened: Result<Shard, ShardError>| {
        // Whatever opens must also answer (or fail) without panicking.
        if let Ok(shard) = opened {
            let _ = shard.search(
                &rows[0],
                &SearchParams {
                    k: 5,
                    ef: 16,
                    filter: None,
                    exclude: None,
                },
            );
            let lang: Filter = serde_json::from_str(r#"{"lang": "en"}"#).unwrap();
            let _ = shard.search_exact(
                &rows[0],
                &SearchParams {
                    k: 5,
                    filter: Some(lang.clone()),
                    ..SearchParams::default()
                },
            );
            (0..shard.meta().count).for_each(|ord| drop(shard.passage(ord)));
        }
    };
    let aligned = |bytes: &[u8]| {
        let mut aligned = rkyv::util::AlignedVec::<16>::with_capacity(bytes.len());
        aligned.extend_from_slice(bytes);
        aligned
    };
    for _ in 0..2000 {
        let len = rng.gen_range(0..blob.len());
        assert!(
            Shard::from_bytes(&blob[..len]).is_err(),
            "truncation to {len} bytes was accepted"
        );
    }
    let mut archive_rejections = 0;
    for round in 0..3000 {
        let mut bytes = blob.clone();
        let at = rng.gen_range(0..bytes.len());
        bytes[at] ^= 1 << rng.gen_range(0..8);
        if round % 2 == 0 {
            assert!(
                Shard::from_bytes(&bytes).is_err(),
                "flip at {at} passed the checksum"
            );
            // `open` trusts that the checksum was verified on arrival, so it does not hash:
            // unverified corrupt bytes may open, but must still never panic.
            exercise(Shard::open(aligned(&bytes)));
        } else if at >= HEADER_LEN {
            // Re-seal the header so the flip reaches bytecheck and the structure checks.
            let header = Header::for_payload(&bytes[HEADER_LEN..]).encode();
            bytes[..HEADER_LEN].copy_from_slice(&header);
            if let Err(ShardError::InvalidArchive(_) | ShardError::Inconsistent(_)) =
                Shard::from_bytes(&bytes)
            {
                archive_rejections += 1;
            }
            exercise(Shard::from_bytes(&bytes));
        }
    }
    assert!(
        archive_rejections > 0,
        "no payload corruption ever reached archive validation"
    );

    let mut wrong_magic = blob.clone();
    wrong_magic[..8].copy_from_slice(b"NOTSHARD");
    assert!(matches!(
        Shard::from_bytes(&wrong_magic),
        Err(ShardError::BadMagic)
    ));
    let mut wrong_version = blob.clone();
    wrong_version[8..12].copy_from_slice(&7u32.to_le_bytes());
    assert!(matches!(
        Shard::from_bytes(&wrong_version),
        Err(ShardError::UnsupportedVersion { found: 7, .. })
    ));

    let mut flipped_payload = blob.clone();
    flipped_payload[blob.len() / 2] ^= 0x10;
    for (bytes, expected, in_index) in [
        (&wrong_magic[..], "bad magic", "bad magic"),
        (&wrong_version[..], "version 7", "version 7"),
        // A file of another size is not the one the manifest names.
        (&blob[..100], "length mismatch", "expected"),
        // Same size and header, corrupt payload: the one hash of the payload catches it.
        (
            &flipped_payload[..],
            "checksum mismatch",
            "checksum mismatch",
        ),
    ] {
        std::fs::write(&shard_path, bytes).unwrap();
        let (ok, message) = shardc_inspect(&shard_path);
        assert!(!ok && message.contains("shardc: error"), "{message}");
        assert!(message.to_lowercase().contains(expected), "{message}");
        let (ok, message) = shardc_inspect(&out);
        assert!(!ok && message.contains("shardc: error"), "{message}");
        assert!(message.to_lowercase().contains(in_index), "{message}");
    }

    // Manifest checksum mismatch: the manifest's recorded checksum is not the one in the file's
    // header (another version's file, or a tampered manifest).
    std::fs::write(&shard_path, &blob).unwrap();
    let mut tampered: Manifest =
        serde_json::from_slice(&std::fs::read(out.join(MANIFEST_FILE)).unwrap()).unwrap();
    tampered.shards[0].checksum = checksum_hex(b"something else");
    tampered.version = tampered.content_version();
    std::fs::write(out.join(MANIFEST_FILE), tampered.to_json_pretty()).unwrap();
    assert!(matches!(
        IndexDir::open(&out),
        Err(BuildError::Manifest { .. })
    ));
    let (ok, message) = shardc_inspect(&out);
    assert!(!ok && message.contains("checksum"), "{message}");
}

/// Opening does not scan the graph's links; the search checks each link it follows, so a link
/// to a node that does not exist is an error from the search (never an out-of-bounds read).
#[test]
fn a_corrupt_link_is_an_error_from_the_search_not_a_panic() {
    let work = tempfile::tempdir().unwrap();
    let (passages, vectors, rows) = synthetic_corpus(work.path(), 1200, 8, false);
    let out = work.path().join("index");
    let manifest = build_index(&config(&passages, Some(&vectors), 8, Quant::F16, 1, &out)).unwrap();
    let blob = std::fs::read(out.join(&manifest.shards[0].file)).unwrap();
    let mut payload = rkyv::util::AlignedVec::<16>::new();
    payload.extend_from_slice(&blob[HEADER_LEN..]);
    let sound: ShardData = rkyv::from_bytes::<ShardData, rkyv::rancor::Error>(&payload).unwrap();
    assert!(
        !sound.upper_layers.is_empty(),
        "the test needs an upper layer"
    );
    let count = sound.count;
    let params = SearchParams {
        k: 5,
        ef: 16,
        filter: None,
        exclude: None,
    };

    let mut bad_layer0 = sound.clone();
    let degree = sound.degree as usize;
    (0..count as usize).for_each(|node| bad_layer0.layer0[node * degree] = count + 7);
    // The top layer's entry point 0 links outside its layer.
    let mut bad_upper = sound.clone();
    bad_upper.upper_layers.last_mut().unwrap()[0] = count;
    for (corrupt, layer) in [(bad_layer0, "layer 0"), (bad_upper, "layer ")] {
        // A sealed blob (valid checksum): opening succeeds, as it checks no links.
        let shard = Shard::from_bytes(&encode_blob(&corrupt).unwrap()).unwrap();
        match shard.search(&rows[3], &params) {
            Err(ShardError::Inconsistent(message)) => {
                assert!(
                    message.starts_with(layer) && message.contains("links to node"),
                    "{message}"
                )
            }
            other => panic!("expected a link error, got {other:?}"),
        }
        // What does not follow links still works.
        let five = SearchParams {
            k: 5,
            ..SearchParams::default()
        };
        assert_eq!(shard.search_exact(&rows[3], &five).unwrap().len(), 5);
        assert!(shard.passage(count - 1).is_ok());
    }
}

/// With one graph thread the same corpus and seed give the same shard bytes and version id
/// (so a rebuild of unchanged data publishes nothing new).
#[test]
fn single_threaded_builds_are_reproducible() {
    let work = tempfile::tempdir().unwrap();
    // Enough rows that parallel insertion would interleave, few enough to build in a second.
    let (passages, vectors, _) = synthetic_corpus(work.path(), 2000, 16, false);
    let build = |name: &str| {
        let out = work.path().join(name);
        let mut cfg = config(&passages, Some(&vectors), 16, Quant::F16, 2, &out);
        cfg.shape.threads = Some(1);
        let manifest = build_index(&cfg).unwrap();
        let blobs: Vec<Vec<u8>> = manifest
            .shards
            .iter()
            .map(|s| std::fs::read(out.join(&s.file)).unwrap())
            .collect();
        (manifest, blobs)
    };
    let (first, first_blobs) = build("a");
    let (second, second_blobs) = build("b");
    assert_eq!(first.version, second.version);
    assert_eq!(first, second);
    assert!(first_blobs == second_blobs, "shard bytes differ");
    let mut zero = config(
        &passages,
        Some(&vectors),
        16,
        Quant::F16,
        2,
        &work.path().join("c"),
    );
    zero.shape.threads = Some(0);
    assert!(matches!(build_index(&zero), Err(BuildError::Invalid(_))));
}

fn shardc_query(index: &Path, vectors: &Path, rows: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_shardc"))
        .arg("query")
        .arg("--index")
        .arg(index)
        .arg("--vector-file")
        .arg(vectors)
        .args(["--k", "5", "--json"])
        .args(rows)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn shardc_query_all_rows_answers_each_row_as_a_single_row_query_does() {
    let work = tempfile::tempdir().unwrap();
    let (passages, vectors, _) = synthetic_corpus(work.path(), 300, 16, false);
    let out = work.path().join("index");
    build_index(&config(&passages, Some(&vectors), 16, Quant::F16, 2, &out)).unwrap();
    // The corpus's own vectors as queries: 300 rows, one JSON line each, in row order.
    let all: Vec<serde_json::Value> = shardc_query(&out, &vectors, &["--all-rows"])
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(all.len(), 300);
    for row in [0usize, 1, 150, 299] {
        let single: serde_json::Value =
            serde_json::from_str(shardc_query(&out, &vectors, &["--row", &row.to_string()]).trim())
                .unwrap();
        assert_eq!(all[row]["row"], row);
        assert_eq!(all[row]["matches"], single["matches"]);
        assert_eq!(all[row]["matches"].as_array().unwrap().len(), 5);
    }
    // A row past the end is a clear error naming the file's row count.
    let output = Command::new(env!("CARGO_BIN_EXE_shardc"))
        .args(["query", "--row", "300", "--index"])
        .arg(&out)
        .arg("--vector-file")
        .arg(&vectors)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("has 300 rows, no row 300"));
}
