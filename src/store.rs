//! The isolate's shard store without I/O: which region serves a request, which replicas to try,
//! which version a request pins, and a byte-bounded LRU whose loads are single-flight.
//! R2 (or any other blob source) plugs in through [`Source`]; `edge` supplies the R2 one.
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;

use rkyv::util::AlignedVec;
use serde::Deserialize;

use crate::manifest::{is_index_name, Manifest, MANIFEST_FILE};
use crate::shard::{format, Shard};

/// `<index>/current` holds the live version; everything else is immutable under its version.
pub fn current_key(index: &str) -> String {
    format!("{index}/current")
}

pub fn blob_key(index: &str, version: &str, file: &str) -> String {
    format!("{index}/{version}/{file}")
}

/// Where a request entered, from `request.cf`.
#[derive(Debug, Default, Clone)]
pub struct Location {
    pub colo: Option<String>,
    pub region: Option<String>,
    pub continent: Option<String>,
}

/// The configured table (`REGION_MAP`, JSON) from a request's location to a shard region.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RegionMap {
    pub default: String,
    #[serde(default)]
    pub colo: HashMap<String, String>,
    #[serde(default)]
    pub region: HashMap<String, String>,
    #[serde(default)]
    pub continent: HashMap<String, String>,
}

impl RegionMap {
    pub fn from_json(json: &str) -> Result<RegionMap, String> {
        serde_json::from_str(json).map_err(|e| format!("REGION_MAP: {e}"))
    }

    /// The most specific match (colo, then region code, then continent), else the default;
    /// `forced` (the dev-only override header) wins. The answer is always one of `available`
    /// (the manifest's regions) when there are any: an unknown region falls back to the default,
    /// then to the first available.
    pub fn home(&self, location: &Location, forced: Option<&str>, available: &[String]) -> String {
        let lookup = |table: &HashMap<String, String>, key: &Option<String>| {
            key.as_ref().and_then(|k| table.get(k)).cloned()
        };
        let wanted = forced
            .map(str::to_string)
            .or_else(|| lookup(&self.colo, &location.colo))
            .or_else(|| lookup(&self.region, &location.region))
            .or_else(|| lookup(&self.continent, &location.continent))
            .unwrap_or_else(|| self.default.clone());
        let has = |r: &str| available.iter().any(|a| a == r);
        if available.is_empty() || has(&wanted) {
            wanted
        } else if has(&self.default) {
            self.default.clone()
        } else {
            available[0].clone()
        }
    }
}

/// Regions to read a shard from, in order: home first, then the regions the manifest says hold
/// a replica, then any other configured region (a replica may exist that the manifest omits).
/// Only regions with a configured bucket appear.
pub fn replica_order(home: &str, holders: &[String], configured: &[String]) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    for region in std::iter::once(home)
        .chain(holders.iter().map(String::as_str))
        .chain(configured.iter().map(String::as_str))
    {
        if configured.iter().any(|c| c == region) && !order.iter().any(|o| o == region) {
            order.push(region.to_string());
        }
    }
    order
}

/// Remembers each index's `current` version for a short time, so that not every request pays a
/// storage read, while a flip is seen within `ttl_ms`. A request reads it once and pins it.
pub struct VersionPointers {
    ttl_ms: f64,
    seen: RefCell<HashMap<String, (String, f64)>>,
}

impl VersionPointers {
    pub fn new(ttl_ms: f64) -> Self {
        VersionPointers {
            ttl_ms,
            seen: RefCell::new(HashMap::new()),
        }
    }

    pub fn fresh(&self, index: &str, now_ms: f64) -> Option<String> {
        let seen = self.seen.borrow();
        let (version, at) = seen.get(index)?;
        (now_ms - at < self.ttl_ms).then(|| version.clone())
    }

    pub fn remember(&self, index: &str, version: &str, now_ms: f64) {
        self.seen
            .borrow_mut()
            .insert(index.to_string(), (version.to_string(), now_ms));
    }
}

/// A loaded value shared by the cache and the requests using it.
struct Loaded<V> {
    value: Rc<V>,
    bytes: usize,
}

// Not derived: that would demand `V: Clone`, and only the Rc is cloned.
impl<V> Clone for Loaded<V> {
    fn clone(&self) -> Self {
        Loaded {
            value: self.value.clone(),
            bytes: self.bytes,
        }
    }
}

enum Slot<V> {
    Ready {
        loaded: Loaded<V>,
        used: u64,
    },
    /// A request is loading this key; `load_id` tells its slot from a later load's.
    Loading {
        load_id: u64,
    },
}

/// What [`Cache::get_or_load`] hands back.
pub struct Got<V> {
    pub value: Rc<V>,
    /// This request waited for the load (so its fetch/validate time belongs to this request).
    pub loaded_now: bool,
}

/// Keyed values bounded by total bytes, least recently used evicted first. Concurrent requests
/// for a missing key share one load; a failed or abandoned load is forgotten, so the next
/// request retries. Values in use by a request stay alive (Rc) even if evicted meanwhile.
pub struct Cache<V> {
    capacity: usize,
    state: RefCell<CacheState<V>>,
}

struct CacheState<V> {
    slots: HashMap<String, Slot<V>>,
    bytes: usize,
    tick: u64,
    reads: Reads,
}

/// How [`Cache::get_or_load`] calls ended, since the cache was made.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Reads {
    /// Found ready at once.
    pub hits: u64,
    /// Waited for a load: its own, or one another request had in flight.
    pub misses: u64,
}

/// Removes a `Loading` slot whose load ended without settling it (its request went away).
struct LoadingGuard<'a, V> {
    cache: &'a Cache<V>,
    key: &'a str,
    load_id: u64,
}

impl<V> Drop for LoadingGuard<'_, V> {
    fn drop(&mut self) {
        let mut state = self.cache.state.borrow_mut();
        if matches!(state.slots.get(self.key), Some(Slot::Loading { load_id }) if *load_id == self.load_id)
        {
            state.slots.remove(self.key);
        }
    }
}

impl<V: 'static> Cache<V> {
    pub fn new(capacity: usize) -> Self {
        Cache {
            capacity,
            state: RefCell::new(CacheState {
                slots: HashMap::new(),
                bytes: 0,
                tick: 0,
                reads: Reads::default(),
            }),
        }
    }

    /// Bytes held by ready entries.
    pub fn bytes(&self) -> usize {
        self.state.borrow().bytes
    }

    pub fn reads(&self) -> Reads {
        self.state.borrow().reads
    }

    pub fn len(&self) -> usize {
        self.state
            .borrow()
            .slots
            .values()
            .filter(|s| matches!(s, Slot::Ready { .. }))
            .count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cached value, or the result of `load` (value, its size in bytes). `load` runs only
    /// if no ready value and no load in flight exist for `key`. A request that finds another
    /// request's load in flight never touches that load: workerd forbids using one request's
    /// I/O from another and cancels a request that awaits only someone else's I/O. It checks
    /// the slot again after each `pause()`, a timer of its own, and loads by itself if the
    /// other load failed or was abandoned.
    pub async fn get_or_load<F, E, P, PF>(&self, key: &str, load: F, pause: P) -> Result<Got<V>, E>
    where
        F: Future<Output = Result<(V, usize), E>>,
        P: Fn() -> PF,
        PF: Future<Output = ()>,
    {
        let mut waited = false;
        let load_id = loop {
            {
                let mut state = self.state.borrow_mut();
                state.tick += 1;
                let tick = state.tick;
                match state.slots.get_mut(key) {
                    Some(Slot::Ready { loaded, used }) => {
                        *used = tick;
                        let value = loaded.value.clone();
                        if waited {
                            state.reads.misses += 1;
                        } else {
                            state.reads.hits += 1;
                        }
                        return Ok(Got {
                            value,
                            loaded_now: waited,
                        });
                    }
                    Some(Slot::Loading { .. }) => {}
                    None => {
                        state
                            .slots
                            .insert(key.to_string(), Slot::Loading { load_id: tick });
                        state.reads.misses += 1;
                        break tick;
                    }
                }
            }
            waited = true;
            pause().await;
        };
        let _guard = LoadingGuard {
            cache: self,
            key,
            load_id,
        };
        let (value, bytes) = load.await?;
        let loaded = Loaded {
            value: Rc::new(value),
            bytes,
        };
        self.settle(key, loaded.clone());
        Ok(Got {
            value: loaded.value,
            loaded_now: true,
        })
    }

    fn settle(&self, key: &str, loaded: Loaded<V>) {
        let mut state = self.state.borrow_mut();
        state.slots.remove(key);
        // A value larger than the whole budget is served once and not kept.
        if loaded.bytes > self.capacity {
            return;
        }
        state.tick += 1;
        let used = state.tick;
        state.bytes += loaded.bytes;
        state
            .slots
            .insert(key.to_string(), Slot::Ready { loaded, used });
        while state.bytes > self.capacity {
            let victim = state
                .slots
                .iter()
                .filter_map(|(k, s)| match s {
                    Slot::Ready { used, .. } if k != key => Some((*used, k.clone())),
                    _ => None,
                })
                .min();
            let Some((_, victim)) = victim else { break };
            if let Some(Slot::Ready { loaded, .. }) = state.slots.remove(&victim) {
                state.bytes -= loaded.bytes;
            }
        }
    }
}

/// Where blobs come from: one bucket per configured region (R2 buckets in the worker).
// Single-threaded wasm: the futures never cross threads, so no Send bound is wanted.
#[allow(async_fn_in_trait)]
pub trait Source: Clone + 'static {
    /// Regions that have a bucket.
    fn regions(&self) -> Vec<String>;
    /// The whole object, read straight into aligned memory; `Ok(None)` if the bucket lacks it.
    async fn get(&self, region: &str, key: &str) -> Result<Option<AlignedVec<16>>, String>;
    /// Index names (top-level prefixes) in a region's bucket.
    async fn indexes(&self, region: &str) -> Result<Vec<String>, String>;
    fn now_ms(&self) -> f64;
    /// A short wait on the calling request's own timer (see [`Cache::get_or_load`]).
    async fn pause(&self);
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum StoreError {
    #[error("no index named {0:?}")]
    UnknownIndex(String),
    #[error("{0}")]
    Unavailable(String),
}

/// An index version as one request sees it: every shard it reads comes from this version.
pub struct Pinned {
    pub index: String,
    pub version: String,
    pub manifest: Rc<Manifest>,
}

/// An open shard and what it cost to get it.
pub struct LoadedShard {
    pub shard: Shard,
    pub region: String,
    /// Reading the blob and verifying it arrived intact (the one hash of its payload).
    pub fetch_ms: f64,
    /// Opening the verified bytes ([`Shard::open`]): header, archive and structure checks.
    pub validate_ms: f64,
}

/// Manifests are small; this only bounds a pathological number of versions.
const MANIFEST_CACHE_BYTES: usize = 8 << 20;

/// The isolate's view of the shard store: version pointers, manifests and shards.
pub struct Store {
    pointers: VersionPointers,
    manifests: Cache<Manifest>,
    shards: Cache<LoadedShard>,
}

impl Store {
    pub fn new(cache_bytes: usize, current_ttl_ms: f64) -> Self {
        Store {
            pointers: VersionPointers::new(current_ttl_ms),
            manifests: Cache::new(MANIFEST_CACHE_BYTES),
            shards: Cache::new(cache_bytes),
        }
    }

    /// Shard bytes this isolate holds.
    pub fn shard_bytes(&self) -> usize {
        self.shards.bytes()
    }

    pub fn shard_count(&self) -> usize {
        self.shards.len()
    }

    /// Shard reads served from this isolate's LRU (hits) or from a load (misses).
    pub fn shard_reads(&self) -> Reads {
        self.shards.reads()
    }

    /// Index names, as listed by the first region that answers.
    pub async fn indexes<S: Source>(
        &self,
        source: &S,
        home: &str,
    ) -> Result<Vec<String>, StoreError> {
        let mut last = String::from("no region is configured");
        for region in replica_order(home, &[], &source.regions()) {
            match source.indexes(&region).await {
                Ok(names) => return Ok(names),
                Err(e) => last = format!("listing {region}: {e}"),
            }
        }
        Err(StoreError::Unavailable(last))
    }

    /// Reads (or recalls) `<index>/current` once and loads that version's manifest.
    /// A name no index can have is unknown without a lookup (and is not echoed whole).
    pub async fn pin<S: Source>(
        &self,
        source: &S,
        index: &str,
        home: &str,
    ) -> Result<Pinned, StoreError> {
        if !is_index_name(index) {
            let shown: String = index.chars().take(32).collect();
            let more = if shown.len() < index.len() { "…" } else { "" };
            return Err(StoreError::UnknownIndex(format!("{shown}{more}")));
        }
        let version = match self.pointers.fresh(index, source.now_ms()) {
            Some(version) => version,
            None => {
                let order = replica_order(home, &[], &source.regions());
                let (bytes, _) = read_first(source, &order, &current_key(index))
                    .await?
                    .ok_or_else(|| StoreError::UnknownIndex(index.to_string()))?;
                let version = String::from_utf8_lossy(&bytes).trim().to_string();
                self.pointers.remember(index, &version, source.now_ms());
                version
            }
        };
        self.pin_version(source, index, &version, home).await
    }

    /// Loads the manifest of a version named by someone else (a shard host gets it from the
    /// entry worker, so both sides use the same version).
    pub async fn pin_version<S: Source>(
        &self,
        source: &S,
        index: &str,
        version: &str,
        home: &str,
    ) -> Result<Pinned, StoreError> {
        let order = replica_order(home, &[], &source.regions());
        let key = blob_key(index, version, MANIFEST_FILE);
        let (source2, key2) = (source.clone(), key.clone());
        let load = async move {
            let (bytes, region) = read_first(&source2, &order, &key2).await?.ok_or_else(|| {
                StoreError::Unavailable(format!("{key2} is missing in every region"))
            })?;
            let manifest = Manifest::from_json(&bytes)
                .map_err(|e| StoreError::Unavailable(format!("{key2} in {region}: {e}")))?;
            Ok((manifest, bytes.len()))
        };
        let manifest = self
            .manifests
            .get_or_load(&key, load, || source.pause())
            .await?
            .value;
        Ok(Pinned {
            index: index.to_string(),
            version: version.to_string(),
            manifest,
        })
    }

    /// Shard `i` of the pinned version: from this isolate's cache, else read from the first
    /// region holding an intact copy of the file the manifest names (the manifest's checksum is
    /// the one in the blob's header, and the payload hashes to it: verified once, as it arrives,
    /// before it is cached), then opened without hashing again.
    pub async fn shard<S: Source>(
        &self,
        source: &S,
        pinned: &Pinned,
        i: usize,
        home: &str,
    ) -> Result<Got<LoadedShard>, StoreError> {
        let entry = pinned
            .manifest
            .shards
            .get(i)
            .ok_or_else(|| StoreError::Unavailable(format!("no shard number {i}")))?;
        let key = blob_key(&pinned.index, &pinned.version, &entry.file);
        let order = replica_order(home, &entry.regions, &source.regions());
        let (loader, manifest, key2) = (source.clone(), pinned.manifest.clone(), key.clone());
        let load = async move {
            let source = loader;
            let started = source.now_ms();
            let mut problems = Vec::new();
            for region in &order {
                let bytes = match source.get(region, &key2).await {
                    Ok(Some(bytes)) => bytes,
                    Ok(None) => continue,
                    Err(e) => {
                        problems.push(format!("{region}: {e}"));
                        continue;
                    }
                };
                // A corrupt replica is skipped: another region may hold a good one.
                let intact = manifest.verify_shard(i, &bytes).map_err(|e| e.to_string());
                if let Err(e) =
                    intact.and_then(|()| format::verify_payload(&bytes).map_err(|e| e.to_string()))
                {
                    problems.push(format!("{region}: {e}"));
                    continue;
                }
                let fetched = source.now_ms();
                let len = bytes.len();
                let shard = Shard::open(bytes)
                    .map_err(|e| StoreError::Unavailable(format!("{key2} in {region}: {e}")))?;
                let validate_ms = source.now_ms() - fetched;
                return Ok((
                    LoadedShard {
                        shard,
                        region: region.clone(),
                        fetch_ms: fetched - started,
                        validate_ms,
                    },
                    len,
                ));
            }
            if problems.is_empty() {
                problems.push("missing in every region".into());
            }
            Err(StoreError::Unavailable(format!(
                "{key2}: {}",
                problems.join("; ")
            )))
        };
        self.shards.get_or_load(&key, load, || source.pause()).await
    }
}

/// The object from the first region that has it, and that region. Errors only if no region has
/// it and some region failed to answer (so "missing" is never confused with "unreachable").
async fn read_first<S: Source>(
    source: &S,
    order: &[String],
    key: &str,
) -> Result<Option<(AlignedVec<16>, String)>, StoreError> {
    let mut errors = Vec::new();
    for region in order {
        match source.get(region, key).await {
            Ok(Some(bytes)) => return Ok(Some((bytes, region.clone()))),
            Ok(None) => {}
            Err(e) => errors.push(format!("{region}: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(None)
    } else {
        Err(StoreError::Unavailable(format!(
            "reading {key}: {}",
            errors.join("; ")
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::executor::LocalPool;
    use futures::task::LocalSpawnExt;
    use futures::FutureExt;
    use std::cell::Cell;

    /// For sequential gets, which never find a load in flight and so never pause.
    fn no_pause() -> futures::future::Ready<()> {
        futures::future::ready(())
    }

    fn counting_load(
        calls: &Rc<Cell<u32>>,
        value: &'static str,
        bytes: usize,
    ) -> impl Future<Output = Result<(String, usize), String>> {
        let calls = calls.clone();
        async move {
            calls.set(calls.get() + 1);
            futures::future::ready(()).await;
            Ok((value.to_string(), bytes))
        }
    }

    #[test]
    fn concurrent_gets_share_one_load() {
        let cache: Rc<Cache<String>> = Rc::new(Cache::new(100));
        let calls = Rc::new(Cell::new(0));
        let (tx, rx) = futures::channel::oneshot::channel::<()>();
        let gate = rx.shared();
        let mut pool = LocalPool::new();
        let results = Rc::new(RefCell::new(Vec::new()));
        for _ in 0..5 {
            let (cache, calls, gate, results) =
                (cache.clone(), calls.clone(), gate.clone(), results.clone());
            pool.spawner()
                .spawn_local(async move {
                    let load_gate = gate.clone();
                    let load = async move {
                        calls.set(calls.get() + 1);
                        let _ = load_gate.await;
                        Ok::<_, String>(("blob".to_string(), 10))
                    };
                    // Waiters pause until the gate opens: by then the load has settled.
                    let pause = || gate.clone().map(|_| ());
                    let got = cache.get_or_load("a", load, pause).await.unwrap();
                    results
                        .borrow_mut()
                        .push((got.value.to_string(), got.loaded_now));
                })
                .unwrap();
        }
        pool.run_until_stalled();
        assert_eq!(calls.get(), 1, "one load in flight");
        tx.send(()).unwrap();
        pool.run_until_stalled();
        assert_eq!(*results.borrow(), vec![("blob".to_string(), true); 5]);
        let again = futures::executor::block_on(cache.get_or_load(
            "a",
            counting_load(&calls, "x", 1),
            no_pause,
        ))
        .unwrap();
        assert!(!again.loaded_now);
        assert_eq!((calls.get(), cache.bytes(), cache.len()), (1, 10, 1));
        assert_eq!(
            cache.reads(),
            Reads { hits: 1, misses: 5 },
            "the loader and its four waiters missed"
        );
    }

    #[test]
    fn evicts_least_recently_used_by_bytes() {
        let cache: Cache<String> = Cache::new(100);
        let calls = Rc::new(Cell::new(0));
        let get = |key: &'static str, bytes| {
            futures::executor::block_on(cache.get_or_load(
                key,
                counting_load(&calls, key, bytes),
                no_pause,
            ))
            .unwrap()
        };
        get("a", 40);
        get("b", 40);
        get("a", 40); // a is now more recent than b
        get("c", 40); // 120 > 100: b goes
        assert_eq!((cache.bytes(), cache.len(), calls.get()), (80, 2, 3));
        assert_eq!(cache.reads(), Reads { hits: 1, misses: 3 });
        assert!(!get("a", 40).loaded_now);
        assert!(get("b", 40).loaded_now, "b was evicted");
        get("huge", 500); // served, not kept, nothing else evicted for it
        assert_eq!(cache.bytes(), 80);
        assert!(get("huge", 500).loaded_now);
    }

    #[test]
    fn an_abandoned_load_is_taken_over_by_a_waiter() {
        let cache: Cache<String> = Cache::new(100);
        let abandoned = cache.get_or_load(
            "a",
            futures::future::pending::<Result<(String, usize), String>>(),
            no_pause,
        );
        let mut abandoned = Box::pin(abandoned);
        // Start the load (it never finishes), then drop it as a cancelled request would.
        assert!(abandoned.as_mut().now_or_never().is_none());
        drop(abandoned);
        let calls = Rc::new(Cell::new(0));
        let got = futures::executor::block_on(cache.get_or_load(
            "a",
            counting_load(&calls, "ok", 1),
            no_pause,
        ))
        .unwrap();
        assert_eq!((got.value.as_str(), calls.get()), ("ok", 1));
    }

    #[test]
    fn failed_loads_are_retried() {
        let cache: Cache<String> = Cache::new(100);
        let failing = async { Err::<(String, usize), String>("boom".into()) };
        assert_eq!(
            futures::executor::block_on(cache.get_or_load("a", failing, no_pause)).err(),
            Some("boom".to_string())
        );
        let calls = Rc::new(Cell::new(0));
        assert!(futures::executor::block_on(cache.get_or_load(
            "a",
            counting_load(&calls, "ok", 1),
            no_pause
        ))
        .is_ok());
        assert_eq!(calls.get(), 1);
    }

    #[test]
    fn region_mapping_prefers_specific_and_stays_available() {
        let map = RegionMap::from_json(
            r#"{"default":"weur","continent":{"NA":"enam","AS":"apac"},"colo":{"SJC":"wnam"}}"#,
        )
        .unwrap();
        let avail = vec!["weur".to_string(), "enam".to_string()];
        let loc = |colo: &str, continent: &str| Location {
            colo: Some(colo.into()),
            region: None,
            continent: Some(continent.into()),
        };
        assert_eq!(map.home(&loc("EWR", "NA"), None, &avail), "enam");
        assert_eq!(
            map.home(&loc("SJC", "NA"), None, &avail),
            "weur",
            "wnam unavailable: default"
        );
        assert_eq!(map.home(&loc("LHR", "EU"), None, &avail), "weur");
        assert_eq!(map.home(&loc("LHR", "EU"), Some("enam"), &avail), "enam");
        assert_eq!(
            map.home(&Location::default(), None, &["enam".to_string()]),
            "enam"
        );
        assert!(
            RegionMap::from_json(r#"{"continent":{}}"#).is_err(),
            "default is required"
        );
    }

    #[test]
    fn replicas_home_first_then_holders_then_rest() {
        let configured: Vec<String> = ["weur", "enam", "apac"].map(String::from).to_vec();
        let holders = vec!["apac".to_string(), "mars".to_string()];
        assert_eq!(
            replica_order("enam", &holders, &configured),
            ["enam", "apac", "weur"]
        );
        assert_eq!(
            replica_order("mars", &[], &configured),
            ["weur", "enam", "apac"]
        );
    }

    /// A source with no objects that counts its reads.
    #[derive(Clone, Default)]
    struct Empty(Rc<Cell<u32>>);

    impl Source for Empty {
        fn regions(&self) -> Vec<String> {
            vec!["weur".into()]
        }
        async fn get(&self, _region: &str, _key: &str) -> Result<Option<AlignedVec<16>>, String> {
            self.0.set(self.0.get() + 1);
            Ok(None)
        }
        async fn indexes(&self, _region: &str) -> Result<Vec<String>, String> {
            Ok(Vec::new())
        }
        fn now_ms(&self) -> f64 {
            0.0
        }
        async fn pause(&self) {}
    }

    #[test]
    fn impossible_index_names_are_unknown_without_a_lookup() {
        let (store, source) = (Store::new(1 << 20, 1000.0), Empty::default());
        let pin = |name: &str| futures::executor::block_on(store.pin(&source, name, "weur")).err();
        assert_eq!(pin("docs"), Some(StoreError::UnknownIndex("docs".into())));
        assert_eq!(source.0.get(), 1, "a possible name is looked up");
        let long = "d".repeat(100_000);
        assert_eq!(
            pin(&long),
            Some(StoreError::UnknownIndex(format!("{}…", &long[..32])))
        );
        for bad in ["", "..", "a/b", ".hidden", "tab\tname"] {
            assert!(
                matches!(pin(bad), Some(StoreError::UnknownIndex(_))),
                "{bad:?}"
            );
        }
        assert_eq!(source.0.get(), 1, "impossible names are not looked up");
    }

    #[test]
    fn version_pointer_expires() {
        let p = VersionPointers::new(1000.0);
        p.remember("docs", "v1", 0.0);
        assert_eq!(p.fresh("docs", 999.0).as_deref(), Some("v1"));
        assert_eq!(p.fresh("docs", 1000.0), None);
        assert_eq!(p.fresh("other", 0.0), None);
    }
}
