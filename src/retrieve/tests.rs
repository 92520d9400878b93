//! Native tests of the engine over every backend, with an in-memory blob source and virtual
//! time: replica fallback, deadlines and partial answers, background completion, mismatch
//! refusal, bounded concurrency, the memory budget, and agreement with `LocalIndex`.
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

use futures::StreamExt;
use rkyv::util::AlignedVec;

use super::*;
use crate::build::{build_index, BuildConfig, IndexShape, DEFAULT_DEGREE};
use crate::clock::Clock;
use crate::index::LocalIndex;
use crate::manifest::{Manifest, Placement, MANIFEST_FILE};
use crate::shard::{Metric, Quant};
use crate::store::{blob_key, current_key, Budget, Pinned, Source, Store};
use crate::testing::VirtualClock;

const DIMS: usize = 16;
const ROWS: usize = 800;
const REGIONS: [&str; 2] = ["weur", "enam"];

/// A clustered corpus built into `shards` shards (every shard in both regions).
fn build(dir: &Path, name: &str, shards: usize, seed: u64) -> (Manifest, Vec<Vec<u8>>) {
    let mut lines = String::new();
    let mut vectors = Vec::new();
    let mut state = seed;
    let mut next = || {
        // xorshift: reproducible without a dependency on rand's value stream.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % 2000) as f32 / 1000.0 - 1.0
    };
    let centres: Vec<Vec<f32>> = (0..8)
        .map(|_| (0..DIMS).map(|_| next()).collect())
        .collect();
    for row in 0..ROWS {
        let c = &centres[row % centres.len()];
        let v: Vec<f32> = c.iter().map(|x| x + 0.3 * next()).collect();
        let line =
            serde_json::json!({"id": row, "text": format!("passage {row}"), "group": row % 3});
        lines.push_str(&format!("{line}\n"));
        vectors.extend(v.iter().flat_map(|x| x.to_le_bytes()));
    }
    let (passages, raw) = (dir.join("p.jsonl"), dir.join("v.f32"));
    std::fs::write(&passages, lines).unwrap();
    std::fs::write(&raw, vectors).unwrap();
    let out = dir.join(name);
    let manifest = build_index(&BuildConfig {
        passages,
        vectors: Some(raw),
        dims: DIMS,
        shape: IndexShape {
            metric: Metric::Cosine,
            quant: Quant::F16,
            shards: Some(shards),
            max_shard_bytes: crate::build::DEFAULT_MAX_SHARD_BYTES,
            regions: REGIONS.map(String::from).to_vec(),
            placement: Placement::Replicate,
            seed: 42,
            threads: Some(1),
            filter_fields: None,
            replicate_margin: 0.0,
            probe_margin: None,
        },
        name: name.into(),
        out: out.clone(),
        ef_construction: 100,
        degree: DEFAULT_DEGREE,
        embedding_model: None,
        progress: false,
    })
    .unwrap();
    let blobs = manifest
        .shards
        .iter()
        .map(|s| std::fs::read(out.join(&s.file)).unwrap())
        .collect();
    (manifest, blobs)
}

/// Objects by (region, key).
type Objects = HashMap<(String, String), Vec<u8>>;

/// Buckets in memory; each get takes `delay_ms` (per key, else the default) of virtual time and
/// is counted, with the most ever in flight at once.
#[derive(Clone)]
struct Buckets {
    clock: VirtualClock,
    objects: Rc<RefCell<Objects>>,
    delays: Rc<RefCell<HashMap<String, f64>>>,
    default_delay_ms: f64,
    gets: Rc<Cell<usize>>,
    in_flight: Rc<Cell<usize>>,
    most_in_flight: Rc<Cell<usize>>,
}

impl Buckets {
    fn new(clock: &VirtualClock) -> Buckets {
        Buckets {
            clock: clock.clone(),
            objects: Rc::default(),
            delays: Rc::default(),
            default_delay_ms: 1.0,
            gets: Rc::default(),
            in_flight: Rc::default(),
            most_in_flight: Rc::default(),
        }
    }

    fn put(&self, region: &str, key: &str, bytes: Vec<u8>) {
        let mut objects = self.objects.borrow_mut();
        objects.insert((region.into(), key.into()), bytes);
    }

    /// Publishes `manifest` and its blobs in every region and points `current` at it.
    fn publish(&self, manifest: &Manifest, blobs: &[Vec<u8>]) {
        for region in REGIONS {
            let name = &manifest.name;
            let json = manifest.to_json_pretty().into_bytes();
            self.put(
                region,
                &blob_key(name, &manifest.version, MANIFEST_FILE),
                json,
            );
            for (entry, blob) in manifest.shards.iter().zip(blobs) {
                self.put(
                    region,
                    &blob_key(name, &manifest.version, &entry.file),
                    blob.clone(),
                );
            }
            self.put(
                region,
                &current_key(name),
                manifest.version.clone().into_bytes(),
            );
        }
    }
}

impl Source for Buckets {
    fn regions(&self) -> Vec<String> {
        REGIONS.map(String::from).to_vec()
    }

    async fn get(
        &self,
        region: &str,
        key: &str,
        max_len: usize,
        mut aligned: AlignedVec<16>,
    ) -> Result<Option<AlignedVec<16>>, String> {
        self.gets.set(self.gets.get() + 1);
        self.in_flight.set(self.in_flight.get() + 1);
        let most = self.most_in_flight.get().max(self.in_flight.get());
        self.most_in_flight.set(most);
        let delay = self
            .delays
            .borrow()
            .get(key)
            .copied()
            .unwrap_or(self.default_delay_ms);
        self.clock.sleep_ms(delay).await;
        self.in_flight.set(self.in_flight.get() - 1);
        let objects = self.objects.borrow();
        let Some(bytes) = objects.get(&(region.to_string(), key.to_string())) else {
            return Ok(None);
        };
        if bytes.len() > max_len {
            return Err(format!("{} bytes, more than {max_len}", bytes.len()));
        }
        aligned.clear();
        aligned.extend_from_slice(bytes);
        Ok(Some(aligned))
    }

    async fn indexes(&self, _region: &str) -> Result<Vec<String>, String> {
        Ok(Vec::new())
    }
}

/// A `shards`-shard index published in both regions of fresh in-memory buckets whose gets take
/// `delay_ms` of virtual time; the directory it was built in lives as long as the first value.
fn published(
    shards: usize,
    delay_ms: f64,
) -> (
    tempfile::TempDir,
    Manifest,
    Vec<Vec<u8>>,
    VirtualClock,
    Buckets,
) {
    let dir = tempfile::tempdir().unwrap();
    let (manifest, blobs) = build(dir.path(), "docs", shards, 7);
    let clock = VirtualClock::default();
    let mut source = Buckets::new(&clock);
    source.default_delay_ms = delay_ms;
    source.publish(&manifest, &blobs);
    (dir, manifest, blobs, clock, source)
}

fn budget(cache_bytes: usize) -> Budget {
    Budget {
        cache_bytes,
        current_ttl_ms: 1000.0,
        room_wait_ms: 1000.0,
    }
}

/// Queries near the corpus (rows' own vectors are not kept, so perturbed centres will do).
fn queries(manifest: &Manifest) -> Vec<Vec<f32>> {
    manifest
        .shards
        .iter()
        .flat_map(|s| {
            (0..5).map(move |j| {
                s.centroid
                    .iter()
                    .enumerate()
                    .map(|(d, x)| x + 0.05 * ((d + j) % 3) as f32)
                    .collect()
            })
        })
        .collect()
}

fn query(vector: &[f32], k: usize) -> Rc<ShardQuery> {
    Rc::new(ShardQuery {
        vector: Some(vector.to_vec()),
        lexical: None,
        k,
        filter: None,
        exclude: None,
    })
}

fn params(k: usize) -> crate::shard::SearchParams {
    crate::shard::SearchParams {
        k,
        ef: 64,
        filter: None,
        exclude: None,
    }
}

/// One search through the store-backed backend, the way the worker does it in local mode.
async fn search_loaded(
    store: &Rc<Store>,
    source: &Buckets,
    index: &str,
    vector: Vec<f32>,
    deadline_ms: f64,
) -> (
    Result<Resolved, AllFailed>,
    Rc<Pinned>,
    Unfinished<<Loaded<Buckets, VirtualClock> as Shards>::Pending>,
) {
    let clock = source.clock.clone();
    let pinned = Rc::new(
        store
            .pin(source, &clock, index, "weur")
            .await
            .expect("pins"),
    );
    let shards = Loaded {
        store: store.clone(),
        source: source.clone(),
        clock: clock.clone(),
        pinned: pinned.clone(),
        home: "weur".into(),
    };
    let visits = plan(&pinned.manifest, &vector, None, &params(10));
    let gathered = gather(&shards, &clock, visits, &query(&vector, 10), deadline_ms).await;
    let resolved = gathered.resolve(&shards, &pinned.manifest, 10);
    (resolved, pinned, gathered.unfinished)
}

#[test]
fn store_backed_search_equals_local_index_exactly() {
    let (_dir, manifest, blobs, clock, source) = published(4, 1.0);
    let local = LocalIndex::open(manifest.clone(), &blobs).unwrap();
    let store = Rc::new(Store::new(budget(64 << 20)));
    for vector in queries(&manifest) {
        let expected = local.search(&vector, &params(10)).unwrap();
        let expected = local.matches(&expected).unwrap();
        let (store, source2, v) = (store.clone(), source.clone(), vector.clone());
        let (resolved, _, _) =
            clock.block_on(async move { search_loaded(&store, &source2, "docs", v, 5000.0).await });
        let resolved = resolved.unwrap();
        assert!(resolved.failed.is_empty());
        let got: Vec<Match> = resolved.vector.into_iter().map(|(_, m)| m).collect();
        assert_eq!(got, expected);
        assert_eq!(got.len(), 10);
    }
}

/// Shard hosts in this process: each question is answered by [`HostQuery::answer`] over a
/// host-side store of its own, as a `ShardHost` object does.
#[derive(Clone)]
struct InProcessHosts {
    store: Rc<Store>,
    source: Buckets,
    asked: Rc<Cell<usize>>,
}

impl ShardHosts for InProcessHosts {
    async fn ask(&self, question: HostQuery) -> Result<HostAnswer, String> {
        self.asked.set(self.asked.get() + 1);
        let clock = self.source.clock.clone();
        let pinned = self
            .store
            .pin_version(
                &self.source,
                &clock,
                &question.index,
                &question.version,
                &question.region,
            )
            .await
            .map_err(|e| e.to_string())?;
        let shards = Loaded {
            store: self.store.clone(),
            source: self.source.clone(),
            clock,
            pinned: Rc::new(pinned),
            home: question.region.clone(),
        };
        question.answer(&shards).await
    }
}

#[test]
fn remote_hosts_answer_exactly_what_the_local_index_does() {
    let (_dir, manifest, blobs, clock, source) = published(4, 1.0);
    let local = LocalIndex::open(manifest.clone(), &blobs).unwrap();
    let hosts = InProcessHosts {
        store: Rc::new(Store::new(budget(64 << 20))),
        source: source.clone(),
        asked: Rc::default(),
    };
    let remote = Rc::new(Remote {
        hosts: hosts.clone(),
        index: manifest.name.clone(),
        version: manifest.version.clone(),
        region: "weur".into(),
    });
    for (n, vector) in queries(&manifest).into_iter().enumerate() {
        let expected = local
            .matches(&local.search_shards(&vector, &params(10), Some(2)).unwrap())
            .unwrap();
        let visits = plan(&manifest, &vector, Some(2), &params(10));
        let (remote2, clock2, manifest2) = (remote.clone(), clock.clone(), manifest.clone());
        let resolved = clock.block_on(async move {
            let gathered = gather(&*remote2, &clock2, visits, &query(&vector, 10), 5000.0).await;
            gathered.resolve(&remote2, &manifest2, 10)
        });
        let got: Vec<Match> = resolved
            .unwrap()
            .vector
            .into_iter()
            .map(|(_, m)| m)
            .collect();
        assert_eq!(got, expected);
        assert_eq!(
            hosts.asked.get(),
            2 * (n + 1),
            "only the planned hosts are asked"
        );
    }
}

#[test]
fn a_corrupt_replica_is_skipped_for_the_other_regions_good_copy() {
    let (_dir, manifest, blobs, clock, source) = published(2, 1.0);
    // weur's copy of shard 0 has one flipped byte in its payload.
    let mut corrupt = blobs[0].clone();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x40;
    let key = blob_key("docs", &manifest.version, &manifest.shards[0].file);
    source.put("weur", &key, corrupt);
    let store = Rc::new(Store::new(budget(64 << 20)));
    let vector = queries(&manifest)[0].clone();
    let (store2, source2) = (store.clone(), source.clone());
    let (resolved, _, _) = clock
        .block_on(async move { search_loaded(&store2, &source2, "docs", vector, 5000.0).await });
    let resolved = resolved.unwrap();
    assert!(resolved.failed.is_empty(), "{:?}", resolved.failed);
    assert_eq!(resolved.vector.len(), 10);
    // Shard 0 is served from enam's copy, read after weur's corrupt one.
    let (store2, source2, clock2) = (store.clone(), source.clone(), clock.clone());
    let region = clock.block_on(async move {
        let pinned = store2.pin(&source2, &clock2, "docs", "weur").await.unwrap();
        let got = store2
            .shard(&source2, &clock2, &pinned, 0, "weur")
            .await
            .unwrap();
        got.value.region.clone()
    });
    assert_eq!(region, "enam");

    // With both replicas corrupt the shard fails, named, and the answer is the other shard's.
    let mut corrupt = blobs[0].clone();
    corrupt[last] ^= 0x40;
    source.put("enam", &key, corrupt);
    let fresh = Rc::new(Store::new(budget(64 << 20)));
    let vector = queries(&manifest)[0].clone();
    let source2 = source.clone();
    let (resolved, _, _) = clock
        .block_on(async move { search_loaded(&fresh, &source2, "docs", vector, 5000.0).await });
    let resolved = resolved.unwrap();
    assert_eq!(resolved.failed.len(), 1);
    let (name, why) = &resolved.failed[0];
    assert_eq!(name, &manifest.shards[0].name);
    assert!(
        why.contains("weur") && why.contains("enam") && why.contains("checksum"),
        "{why}"
    );
    assert!(resolved.vector.iter().all(|(h, _)| h.shard == 1));
}

#[test]
fn a_shard_slower_than_the_deadline_makes_a_named_partial_answer_and_lands_for_the_next() {
    let (_dir, manifest, _blobs, clock, source) = published(4, 1.0);
    let slow = blob_key("docs", &manifest.version, &manifest.shards[2].file);
    source.delays.borrow_mut().insert(slow, 500.0);
    let store = Rc::new(Store::new(budget(64 << 20)));
    let vector = queries(&manifest)[0].clone();
    let (store2, source2, clock2) = (store.clone(), source.clone(), clock.clone());
    let (partial, unfinished_len, elapsed, after_background) = clock.block_on(async move {
        let started = clock2.now_ms();
        let (resolved, _, unfinished) =
            search_loaded(&store2, &source2, "docs", vector, 100.0).await;
        let elapsed = clock2.now_ms() - started;
        let len = unfinished.len();
        // What the worker hands to waitUntil: the slow load finishes after the answer.
        let before = store2.held().shards;
        unfinished.for_each(|_| async {}).await;
        (
            resolved.unwrap(),
            len,
            elapsed,
            (before, store2.held().shards),
        )
    });
    assert_eq!(
        partial.failed,
        vec![(
            manifest.shards[2].name.clone(),
            "deadline exceeded".to_string()
        )]
    );
    assert!(partial.vector.iter().all(|(h, _)| h.shard != 2));
    assert_eq!(partial.vector.len(), 10);
    assert!(
        elapsed < 110.0,
        "answered at the deadline, not after the slow shard ({elapsed} ms)"
    );
    assert_eq!(unfinished_len, 1);
    assert_eq!(
        after_background,
        (3, 4),
        "the slow shard is cached once its load finishes"
    );
    // The next request finds it cached and answers in full, without reading it again.
    let gets = source.gets.get();
    let vector = queries(&manifest)[0].clone();
    let source2 = source.clone();
    let (resolved, _, _) =
        clock.block_on(async move { search_loaded(&store, &source2, "docs", vector, 100.0).await });
    assert!(resolved.unwrap().failed.is_empty());
    assert_eq!(source.gets.get(), gets, "nothing was read again");
}

#[test]
fn a_shard_or_manifest_that_differs_from_what_named_it_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (manifest, blobs) = build(dir.path(), "docs", 2, 7);
    let clock = VirtualClock::default();

    // The manifest says shard 1 holds one vector more than its blob does.
    let mut wrong = manifest.clone();
    wrong.shards[1].count += 1;
    wrong.count += 1;
    wrong.version = wrong.content_version();
    let source = Buckets::new(&clock);
    source.publish(&wrong, &blobs);
    let store = Rc::new(Store::new(budget(64 << 20)));
    let vector = queries(&manifest)[0].clone();
    let source2 = source.clone();
    let (resolved, _, _) = clock
        .block_on(async move { search_loaded(&store, &source2, "docs", vector, 5000.0).await });
    let resolved = resolved.unwrap();
    assert_eq!(resolved.failed.len(), 1);
    let (name, why) = &resolved.failed[0];
    assert_eq!(name, &manifest.shards[1].name);
    assert!(
        why.contains(&format!("its count is {}", manifest.shards[1].count)),
        "{why}"
    );

    // `current` names a version whose manifest says it is another index's.
    let mut other = manifest.clone();
    other.name = "other".into();
    other.version = other.content_version();
    let source = Buckets::new(&clock);
    source.publish(&other, &blobs);
    source.put(
        "weur",
        &current_key("docs"),
        other.version.clone().into_bytes(),
    );
    source.put(
        "enam",
        &current_key("docs"),
        other.version.clone().into_bytes(),
    );
    let json = other.to_json_pretty().into_bytes();
    source.put(
        "weur",
        &blob_key("docs", &other.version, MANIFEST_FILE),
        json.clone(),
    );
    source.put(
        "enam",
        &blob_key("docs", &other.version, MANIFEST_FILE),
        json,
    );
    let store = Store::new(budget(64 << 20));
    let clock2 = clock.clone();
    let pinned =
        clock.block_on(async move { store.pin(&source, &clock2, "docs", "weur").await.err() });
    let why = pinned.map(|e| e.to_string()).unwrap_or_default();
    assert!(why.contains("names name \"other\""), "{why}");
}

#[test]
fn no_more_than_six_subrequests_are_ever_in_flight() {
    let (_dir, manifest, _blobs, clock, source) = published(12, 20.0);
    let store = Rc::new(Store::new(budget(64 << 20)));
    let vector = queries(&manifest)[0].clone();
    let source2 = source.clone();
    let (resolved, _, _) = clock
        .block_on(async move { search_loaded(&store, &source2, "docs", vector, 5000.0).await });
    assert!(resolved.unwrap().failed.is_empty());
    assert_eq!(source.most_in_flight.get(), MAX_IN_FLIGHT);
    assert!(source.gets.get() >= 12);
}

#[test]
fn a_query_over_three_times_the_budget_stays_inside_it_and_exact() {
    let (_dir, manifest, blobs, clock, source) = published(8, 3.0);
    let local = LocalIndex::open(manifest.clone(), &blobs).unwrap();
    // Every shard is held in a buffer the size of the largest, in whole pages.
    let slot = crate::pages::page_rounded(blobs.iter().map(Vec::len).max().unwrap());
    let cache_bytes = blobs.len() * slot / 3;
    assert!(
        slot * 2 < cache_bytes,
        "the test wants several shards per budget"
    );
    let store = Rc::new(Store::new(budget(cache_bytes)));
    let peak = Rc::new(Cell::new(0));
    let mut pool = futures::executor::LocalPool::new();
    let results = Rc::new(RefCell::new(Vec::new()));
    // Four concurrent clients, each asking every query once.
    for client in 0..4 {
        let (store, source, results) = (store.clone(), source.clone(), results.clone());
        let mut vectors = queries(&manifest);
        vectors.rotate_left(client * 5);
        futures::task::LocalSpawnExt::spawn_local(&pool.spawner(), async move {
            for vector in vectors {
                let (resolved, _, _) =
                    search_loaded(&store, &source, "docs", vector.clone(), 5000.0).await;
                results.borrow_mut().push((vector, resolved));
            }
        })
        .unwrap();
    }
    let watcher = {
        let (store, clock, peak) = (store.clone(), clock.clone(), peak.clone());
        async move {
            for _ in 0..20_000 {
                let held = store.held();
                peak.set(peak.get().max(held.shard_bytes + held.reserved_bytes));
                clock.sleep_ms(0.5).await;
            }
        }
    };
    futures::task::LocalSpawnExt::spawn_local(&pool.spawner(), watcher).unwrap();
    clock.run(&mut pool);
    assert!(
        peak.get() <= cache_bytes,
        "peak {} > budget {cache_bytes}",
        peak.get()
    );
    let results = results.borrow();
    assert_eq!(results.len(), 4 * queries(&manifest).len());
    for (vector, resolved) in results.iter() {
        let resolved = resolved.as_ref().unwrap();
        assert!(resolved.failed.is_empty(), "{:?}", resolved.failed);
        let expected = local
            .matches(&local.search(vector, &params(10)).unwrap())
            .unwrap();
        let got: Vec<&Match> = resolved.vector.iter().map(|(_, m)| m).collect();
        assert_eq!(got, expected.iter().collect::<Vec<_>>());
    }
}

#[test]
fn a_shard_larger_than_the_budget_is_refused_naming_it() {
    let (_dir, manifest, blobs, clock, source) = published(2, 1.0);
    let smallest = blobs.iter().map(Vec::len).min().unwrap();
    let store = Rc::new(Store::new(budget(smallest - 1)));
    let vector = queries(&manifest)[0].clone();
    let source2 = source.clone();
    let (resolved, _, _) = clock
        .block_on(async move { search_loaded(&store, &source2, "docs", vector, 5000.0).await });
    let AllFailed(failed) = resolved.err().unwrap();
    assert_eq!(failed.len(), 2);
    for (name, why) in failed {
        assert!(
            why.contains(&format!("shard {name} of docs/"))
                && why.contains("more than this isolate's shard budget"),
            "{why}"
        );
    }
    assert_eq!(
        source.gets.get(),
        2,
        "only the pointer and the manifest were read"
    );
}

#[test]
fn written_passages_rank_among_the_shards_hits_by_distance() {
    use crate::shard::{DocId, ShardHit};
    use crate::write::delta::WrittenHit;
    let compiled = |shard: usize, distance: f32, id: i64| {
        let hit = ShardHit {
            shard,
            ord: 0,
            distance,
        };
        let passage = Passage {
            id: DocId::Int(id),
            text: format!("compiled {id}"),
            metadata: Map::new(),
        };
        (
            hit,
            Match::new(passage, Metric::Cosine.score(distance), "s"),
        )
    };
    let written = WrittenHit {
        distance: 0.2,
        id: DocId::Str("w".into()),
        text: "written".into(),
        metadata: Map::new(),
    };
    let found = vec![compiled(0, 0.1, 1), compiled(1, 0.3, 2)];
    let with_writes = |found: Vec<(ShardHit, Match)>, written: Vec<WrittenHit>, k: usize| {
        let resolved = Resolved {
            vector: found,
            ..Resolved::default()
        };
        let written = Written {
            vector: written,
            lexical: Vec::new(),
        };
        let ranking = Ranking::new(SearchMode::Vector, k, 60);
        rank(resolved, written, Metric::Cosine, ranking)
    };
    let merged = with_writes(found.clone(), vec![written.clone()], 2);
    let ids: Vec<Value> = merged.iter().map(|m| m.id.clone()).collect();
    assert_eq!(ids, vec![Value::from(1), Value::from("w")]);
    assert_eq!(merged[1].shard, WRITES_SHARD);
    assert!((merged[1].score - 0.8).abs() < 1e-6);
    let all = with_writes(found, vec![written], 10);
    assert_eq!(all.len(), 3, "k bounds the answer, not the parts");
}
