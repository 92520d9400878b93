//! The isolate's shard store without I/O: which region serves a request, which replicas to try,
//! which version a request pins (its `current` pointer read single-flight, once per TTL), and a
//! byte-bounded LRU whose loads are single-flight and whose memory stays inside its budget: a
//! load reserves its manifest size before it fetches, evicting only shards no request holds, so
//! ready shards, shards in use and loads in flight together never exceed `CACHE_BYTES`; every
//! shard of a version is read into a buffer of one size, so freed buffers are reused whole.
//! R2 (or any other blob source) plugs in through [`Source`] and time through
//! [`Clock`]; `edge` supplies the R2 one and the worker's timers.
use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;

use rkyv::util::AlignedVec;
use serde::Deserialize;

use crate::clock::Clock;
use crate::manifest::{is_index_name, Manifest, MANIFEST_FILE};
use crate::pages::page_rounded;
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

/// A loaded value shared by the cache and the requests using it.
struct Loaded<V> {
    value: Rc<V>,
    bytes: usize,
    /// When it was loaded, for values that go stale (the `current` pointers).
    at_ms: f64,
}

enum Slot<V> {
    Ready {
        loaded: Loaded<V>,
        used: u64,
    },
    /// A request is loading this key with `reserved` bytes set aside for it; `load_id` tells its
    /// slot from a later load's.
    Loading {
        load_id: u64,
        reserved: usize,
    },
}

/// What [`Cache::get_or_load`] hands back.
pub struct Got<V> {
    pub value: Rc<V>,
    /// This request waited for the load (so its fetch/validate time belongs to this request).
    pub loaded_now: bool,
}

/// How long a load waits for room before it gives up, and how often it looks again.
const ROOM_POLL_MS: f64 = 5.0;

/// Keyed values bounded by total bytes, least recently used evicted first. A load reserves its
/// size before it starts; ready values, values still held by a request (never evicted while
/// held: their memory could not be freed) and reservations together stay within the capacity.
/// Concurrent requests for a missing key share one load; a failed or abandoned load is
/// forgotten (its reservation released), so the next request retries.
pub struct Cache<V> {
    capacity: usize,
    state: RefCell<CacheState<V>>,
}

struct CacheState<V> {
    slots: HashMap<String, Slot<V>>,
    /// Bytes of ready values (held by requests or not).
    ready: usize,
    /// Bytes reserved by loads in flight.
    reserved: usize,
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

/// Why a load could not start: the budget is taken by values in use and loads in flight.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("no room for {needed} bytes within {capacity}: {held} bytes are in use by requests and {reserved} reserved by loads in flight")]
pub struct NoRoom {
    pub needed: usize,
    pub capacity: usize,
    pub held: usize,
    pub reserved: usize,
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
        if let Some(Slot::Loading { load_id, reserved }) = state.slots.get(self.key) {
            if *load_id == self.load_id {
                let reserved = *reserved;
                state.reserved -= reserved;
                state.slots.remove(self.key);
            }
        }
    }
}

impl<V: 'static> CacheState<V> {
    /// Evicts unheld ready values, least recently used first, until `needed` more bytes fit.
    fn make_room(&mut self, capacity: usize, needed: usize) -> Result<(), NoRoom> {
        while self.ready + self.reserved + needed > capacity {
            let victim = self
                .slots
                .iter()
                .filter_map(|(k, s)| match s {
                    Slot::Ready { loaded, used } if Rc::strong_count(&loaded.value) == 1 => {
                        Some((*used, k.clone()))
                    }
                    _ => None,
                })
                .min();
            let Some((_, victim)) = victim else {
                return Err(NoRoom {
                    needed,
                    capacity,
                    held: self.ready,
                    reserved: self.reserved,
                });
            };
            if let Some(Slot::Ready { loaded, .. }) = self.slots.remove(&victim) {
                self.ready -= loaded.bytes;
            }
        }
        Ok(())
    }
}

impl<V: 'static> Cache<V> {
    pub fn new(capacity: usize) -> Self {
        Cache {
            capacity,
            state: RefCell::new(CacheState {
                slots: HashMap::new(),
                ready: 0,
                reserved: 0,
                tick: 0,
                reads: Reads::default(),
            }),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes held by ready entries.
    pub fn bytes(&self) -> usize {
        self.state.borrow().ready
    }

    /// Bytes reserved by loads in flight.
    pub fn reserved(&self) -> usize {
        self.state.borrow().reserved
    }

    pub fn reads(&self) -> Reads {
        self.state.borrow().reads
    }

    pub fn len(&self) -> usize {
        let state = self.state.borrow();
        let ready = state.slots.values();
        ready.filter(|s| matches!(s, Slot::Ready { .. })).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cached value, or the result of `load` (value, its size in bytes), which runs only if
    /// no ready value and no load in flight exist for `key`. `reserve` bytes are set aside
    /// before `load` starts (evicting unheld values first); while they do not fit, the request
    /// waits for room, up to `room_wait_ms`, then fails with [`NoRoom`]. A ready value that
    /// `fresh` rejects (given its load time) is loaded again, single-flight like a missing one.
    ///
    /// A request that finds another request's load in flight never touches that load: workerd
    /// forbids using one request's I/O from another and cancels a request that awaits only
    /// someone else's I/O. It checks the slot again after each short sleep on its own timer, and
    /// loads by itself if the other load failed or was abandoned.
    pub async fn get_or_load<F, E, C>(
        &self,
        key: &str,
        reserve: usize,
        fresh: impl Fn(f64) -> bool,
        load: F,
        clock: &C,
        room_wait_ms: f64,
    ) -> Result<Got<V>, E>
    where
        F: Future<Output = Result<(V, usize), E>>,
        E: From<NoRoom>,
        C: Clock,
    {
        let mut waited = false;
        let began = clock.now_ms();
        let load_id = loop {
            {
                let mut state = self.state.borrow_mut();
                state.tick += 1;
                let tick = state.tick;
                match state.slots.get_mut(key) {
                    Some(Slot::Ready { loaded, used }) if fresh(loaded.at_ms) => {
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
                    stale_or_missing => {
                        if let Some(Slot::Ready { .. }) = stale_or_missing {
                            if let Some(Slot::Ready { loaded, .. }) = state.slots.remove(key) {
                                state.ready -= loaded.bytes;
                            }
                        }
                        match state.make_room(self.capacity, reserve) {
                            Ok(()) => {
                                state.reserved += reserve;
                                let slot = Slot::Loading {
                                    load_id: tick,
                                    reserved: reserve,
                                };
                                state.slots.insert(key.to_string(), slot);
                                state.reads.misses += 1;
                                break tick;
                            }
                            Err(no_room) if clock.now_ms() - began >= room_wait_ms => {
                                return Err(no_room.into())
                            }
                            Err(_) => {}
                        }
                    }
                }
            }
            waited = true;
            clock.sleep_ms(ROOM_POLL_MS).await;
        };
        let _guard = LoadingGuard {
            cache: self,
            key,
            load_id,
        };
        let (value, bytes) = load.await?;
        let value = Rc::new(value);
        self.settle(key, load_id, value.clone(), bytes, clock.now_ms());
        Ok(Got {
            value,
            loaded_now: true,
        })
    }

    /// Turns a load's reservation into a ready value (kept only if it fits, evicting unheld
    /// values when it came out larger than reserved).
    fn settle(&self, key: &str, load_id: u64, value: Rc<V>, bytes: usize, at_ms: f64) {
        let mut state = self.state.borrow_mut();
        match state.slots.get(key) {
            Some(Slot::Loading {
                load_id: id,
                reserved,
            }) if *id == load_id => {
                let reserved = *reserved;
                state.reserved -= reserved;
                state.slots.remove(key);
            }
            _ => return,
        }
        if state.make_room(self.capacity, bytes).is_err() {
            // Served to this request (which holds it) but not kept.
            return;
        }
        state.tick += 1;
        let used = state.tick;
        state.ready += bytes;
        let loaded = Loaded {
            value,
            bytes,
            at_ms,
        };
        state
            .slots
            .insert(key.to_string(), Slot::Ready { loaded, used });
    }
}

/// Where blobs come from: one bucket per configured region (R2 buckets in the worker).
// Single-threaded wasm: the futures never cross threads, so no Send bound is wanted.
#[allow(async_fn_in_trait)]
pub trait Source: Clone + 'static {
    /// Regions that have a bucket.
    fn regions(&self) -> Vec<String>;
    /// The whole object, copied once into `into` (cleared first, grown only if its capacity is
    /// short); `Ok(None)` if the bucket lacks it. An object longer than `max_len` is an error
    /// before any of it is read, so a wrong or hostile object cannot allocate more than the
    /// caller reserved.
    async fn get(
        &self,
        region: &str,
        key: &str,
        max_len: usize,
        into: AlignedVec<16>,
    ) -> Result<Option<AlignedVec<16>>, String>;
    /// Index names (top-level prefixes) in a region's bucket.
    async fn indexes(&self, region: &str) -> Result<Vec<String>, String>;
}

#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum StoreError {
    #[error("no index named {0:?}")]
    UnknownIndex(String),
    #[error("{0}")]
    Unavailable(String),
}

impl From<NoRoom> for StoreError {
    fn from(e: NoRoom) -> StoreError {
        StoreError::Unavailable(format!("the isolate's shard budget is full: {e}"))
    }
}

/// An index version as one request sees it: every shard it reads comes from this version.
pub struct Pinned {
    pub index: String,
    pub version: String,
    pub manifest: Rc<Manifest>,
}

impl Pinned {
    /// The buffer every shard of this version is read into, and is charged against the budget:
    /// the largest shard's size in whole wasm pages. One size for all, so that the page run an
    /// evicted shard frees always fits the next one (see [`crate::pages`]) and memory does not
    /// grow past what the budget allows.
    pub fn shard_slot_bytes(&self) -> usize {
        let largest = self.manifest.shards.iter().map(|s| s.bytes).max();
        page_rounded(largest.map_or(0, |b| usize::try_from(b).unwrap_or(usize::MAX)))
    }
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
/// The largest manifest or pointer object read (a manifest of a few thousand shards).
const MANIFEST_MAX_BYTES: usize = 4 << 20;
/// Pointers are a few bytes; this bounds the number of indexes remembered.
const POINTER_CACHE_BYTES: usize = 1 << 20;

/// What the store is told when it is made.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// `CACHE_BYTES`: shards ready, in use and loading, together.
    pub cache_bytes: usize,
    /// `CURRENT_TTL_MS`: how long a read of `<index>/current` is trusted.
    pub current_ttl_ms: f64,
    /// How long a shard load waits for room in the budget before it fails.
    pub room_wait_ms: f64,
}

/// The isolate's view of the shard store: version pointers, manifests and shards.
pub struct Store {
    budget: Budget,
    pointers: Cache<String>,
    manifests: Cache<Manifest>,
    shards: Cache<LoadedShard>,
}

/// What the store holds right now, for `/healthz` and `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Held {
    pub shards: usize,
    /// Bytes of open shards (in use or not).
    pub shard_bytes: usize,
    /// Bytes reserved by shard loads in flight.
    pub reserved_bytes: usize,
    /// `CACHE_BYTES`: the bound on the two above together.
    pub budget_bytes: usize,
}

impl Store {
    pub fn new(budget: Budget) -> Self {
        Store {
            budget,
            pointers: Cache::new(POINTER_CACHE_BYTES),
            manifests: Cache::new(MANIFEST_CACHE_BYTES),
            shards: Cache::new(budget.cache_bytes),
        }
    }

    pub fn held(&self) -> Held {
        Held {
            shards: self.shards.len(),
            shard_bytes: self.shards.bytes(),
            reserved_bytes: self.shards.reserved(),
            budget_bytes: self.shards.capacity(),
        }
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

    /// Reads (or recalls) `<index>/current` once and loads that version's manifest. Once the
    /// pointer is older than `CURRENT_TTL_MS` one request reads it again while the others wait
    /// for that read. A name no index can have is unknown without a lookup (and is not echoed whole).
    pub async fn pin<S: Source, C: Clock>(
        &self,
        source: &S,
        clock: &C,
        index: &str,
        home: &str,
    ) -> Result<Pinned, StoreError> {
        if !is_index_name(index) {
            let shown: String = index.chars().take(32).collect();
            let more = if shown.len() < index.len() { "…" } else { "" };
            return Err(StoreError::UnknownIndex(format!("{shown}{more}")));
        }
        let order = replica_order(home, &[], &source.regions());
        let key = current_key(index);
        let (source2, key2, name) = (source.clone(), key.clone(), index.to_string());
        let load = async move {
            let (bytes, _) = read_first(&source2, &order, &key2, MANIFEST_MAX_BYTES)
                .await?
                .ok_or(StoreError::UnknownIndex(name))?;
            let version = String::from_utf8_lossy(&bytes).trim().to_string();
            let len = version.len();
            Ok::<_, StoreError>((version, len))
        };
        let (now, ttl) = (clock.now_ms(), self.budget.current_ttl_ms);
        let version = self
            .pointers
            .get_or_load(&key, 0, |at| now - at < ttl, load, clock, 0.0)
            .await?
            .value;
        self.pin_version(source, clock, index, &version, home).await
    }

    /// Loads the manifest of a version named by someone else (a shard host gets it from the
    /// entry worker, so both sides use the same version), checking it is that index's version.
    pub async fn pin_version<S: Source, C: Clock>(
        &self,
        source: &S,
        clock: &C,
        index: &str,
        version: &str,
        home: &str,
    ) -> Result<Pinned, StoreError> {
        let order = replica_order(home, &[], &source.regions());
        let key = blob_key(index, version, MANIFEST_FILE);
        let (source2, key2) = (source.clone(), key.clone());
        let (index2, version2) = (index.to_string(), version.to_string());
        let load = async move {
            let (bytes, region) = read_first(&source2, &order, &key2, MANIFEST_MAX_BYTES)
                .await?
                .ok_or_else(|| {
                    StoreError::Unavailable(format!("{key2} is missing in every region"))
                })?;
            let manifest = Manifest::from_json(&bytes)
                .and_then(|m| m.check_pointed(&index2, &version2).map(|()| m))
                .map_err(|e| StoreError::Unavailable(format!("{key2} in {region}: {e}")))?;
            Ok::<_, StoreError>((manifest, bytes.len()))
        };
        let manifest = self
            .manifests
            .get_or_load(&key, 0, |_| true, load, clock, 0.0)
            .await?
            .value;
        Ok(Pinned {
            index: index.to_string(),
            version: version.to_string(),
            manifest,
        })
    }

    /// Shard `i` of the pinned version: from this isolate's cache, else read from the first
    /// region holding an intact copy of the file the manifest names, with the manifest's size
    /// reserved in the budget before the read starts. A replica is intact when its size and
    /// header checksum are the manifest's, its payload hashes to that checksum (verified once,
    /// as it arrives, before it is cached), it opens, and it describes itself as the manifest
    /// does (dims, metric, quantisation, count); any other replica is skipped for the next region.
    pub async fn shard<S: Source, C: Clock>(
        &self,
        source: &S,
        clock: &C,
        pinned: &Pinned,
        i: usize,
        home: &str,
    ) -> Result<Got<LoadedShard>, StoreError> {
        let entry = pinned
            .manifest
            .shards
            .get(i)
            .ok_or_else(|| StoreError::Unavailable(format!("no shard number {i}")))?;
        let size = usize::try_from(entry.bytes).unwrap_or(usize::MAX);
        let slot = pinned.shard_slot_bytes();
        if slot > self.budget.cache_bytes {
            return Err(StoreError::Unavailable(format!(
                "shard {} of {}/{} takes {} bytes ({} of its own, in a buffer the size of the \
                 version's largest shard), more than this isolate's shard budget (CACHE_BYTES = {})",
                entry.name, pinned.index, pinned.version, slot, entry.bytes, self.budget.cache_bytes
            )));
        }
        let key = blob_key(&pinned.index, &pinned.version, &entry.file);
        let order = replica_order(home, &entry.regions, &source.regions());
        let (source2, clock2) = (source.clone(), clock.clone());
        let (manifest, key2) = (pinned.manifest.clone(), key.clone());
        let load = async move {
            let (source, clock) = (source2, clock2);
            let started = clock.now_ms();
            let mut problems = Vec::new();
            for region in &order {
                let buffer = AlignedVec::with_capacity(slot);
                let bytes = match source.get(region, &key2, size, buffer).await {
                    Ok(Some(bytes)) => bytes,
                    Ok(None) => continue,
                    Err(e) => {
                        problems.push(format!("{region}: {e}"));
                        continue;
                    }
                };
                let intact = manifest.verify_shard(i, &bytes).map_err(|e| e.to_string());
                if let Err(e) =
                    intact.and_then(|()| format::verify_payload(&bytes).map_err(|e| e.to_string()))
                {
                    problems.push(format!("{region}: {e}"));
                    continue;
                }
                let fetched = clock.now_ms();
                let opened = Shard::open(bytes)
                    .map_err(|e| e.to_string())
                    .and_then(|shard| {
                        let meta = shard.meta();
                        manifest
                            .check_shard_meta(i, &meta)
                            .map_err(|e| e.to_string())?;
                        Ok(shard)
                    });
                let shard = match opened {
                    Ok(shard) => shard,
                    Err(e) => {
                        problems.push(format!("{region}: {e}"));
                        continue;
                    }
                };
                let validate_ms = clock.now_ms() - fetched;
                let loaded = LoadedShard {
                    shard,
                    region: region.clone(),
                    fetch_ms: fetched - started,
                    validate_ms,
                };
                return Ok((loaded, slot));
            }
            if problems.is_empty() {
                problems.push("missing in every region".into());
            }
            Err(StoreError::Unavailable(format!(
                "{key2}: {}",
                problems.join("; ")
            )))
        };
        let room_wait_ms = self.budget.room_wait_ms;
        self.shards
            .get_or_load(&key, slot, |_| true, load, clock, room_wait_ms)
            .await
    }
}

/// The object from the first region that has it, and that region. Errors only if no region has
/// it and some region failed to answer (so "missing" is never confused with "unreachable").
async fn read_first<S: Source>(
    source: &S,
    order: &[String],
    key: &str,
    max_len: usize,
) -> Result<Option<(AlignedVec<16>, String)>, StoreError> {
    let mut errors = Vec::new();
    for region in order {
        match source.get(region, key, max_len, AlignedVec::new()).await {
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
    use crate::testing::VirtualClock;
    use futures::executor::LocalPool;
    use futures::task::LocalSpawnExt;
    use futures::FutureExt;
    use std::cell::Cell;

    /// A load that counts its calls and takes `ms` of virtual time.
    fn timed_load(
        clock: &VirtualClock,
        calls: &Rc<Cell<u32>>,
        value: &'static str,
        bytes: usize,
        ms: f64,
    ) -> impl Future<Output = Result<(String, usize), StoreError>> {
        let (clock, calls) = (clock.clone(), calls.clone());
        async move {
            calls.set(calls.get() + 1);
            clock.sleep_ms(ms).await;
            Ok((value.to_string(), bytes))
        }
    }

    fn always(_: f64) -> bool {
        true
    }

    #[test]
    fn concurrent_gets_share_one_load() {
        let clock = VirtualClock::default();
        let cache: Rc<Cache<String>> = Rc::new(Cache::new(100));
        let calls = Rc::new(Cell::new(0));
        let mut pool = LocalPool::new();
        let results = Rc::new(RefCell::new(Vec::new()));
        for _ in 0..5 {
            let (cache, calls, results, clock) =
                (cache.clone(), calls.clone(), results.clone(), clock.clone());
            pool.spawner()
                .spawn_local(async move {
                    let load = timed_load(&clock, &calls, "blob", 10, 20.0);
                    let got = cache.get_or_load("a", 10, always, load, &clock, 0.0).await;
                    let got = got.expect("loads");
                    results
                        .borrow_mut()
                        .push((got.value.to_string(), got.loaded_now));
                })
                .expect("spawns");
        }
        clock.run(&mut pool);
        assert_eq!(calls.get(), 1, "one load in flight");
        assert_eq!(*results.borrow(), vec![("blob".to_string(), true); 5]);
        let again = clock.block_on({
            let (cache, calls, clock) = (cache.clone(), calls.clone(), clock.clone());
            async move {
                let load = timed_load(&clock, &calls, "x", 1, 0.0);
                cache
                    .get_or_load("a", 1, always, load, &clock, 0.0)
                    .await
                    .map(|g| g.loaded_now)
            }
        });
        assert_eq!(again, Ok(false));
        assert_eq!((calls.get(), cache.bytes(), cache.len()), (1, 10, 1));
        assert_eq!(
            cache.reads(),
            Reads { hits: 1, misses: 5 },
            "the loader and its four waiters missed"
        );
    }

    /// Loads `key` of `bytes` at once and drops it (nobody holds it afterwards).
    fn get(
        cache: &Rc<Cache<String>>,
        calls: &Rc<Cell<u32>>,
        key: &'static str,
        bytes: usize,
    ) -> Result<bool, StoreError> {
        let clock = VirtualClock::default();
        let (cache, calls, clock2) = (cache.clone(), calls.clone(), clock.clone());
        clock.block_on(async move {
            let load = timed_load(&clock2, &calls, key, bytes, 0.0);
            let got = cache
                .get_or_load(key, bytes, always, load, &clock2, 0.0)
                .await;
            got.map(|g| g.loaded_now)
        })
    }

    #[test]
    fn evicts_least_recently_used_by_bytes_before_loading() {
        let cache: Rc<Cache<String>> = Rc::new(Cache::new(100));
        let calls = Rc::new(Cell::new(0));
        get(&cache, &calls, "a", 40).unwrap();
        get(&cache, &calls, "b", 40).unwrap();
        get(&cache, &calls, "a", 40).unwrap(); // a is now more recent than b
        get(&cache, &calls, "c", 40).unwrap(); // 120 > 100: b goes before c loads
        assert_eq!((cache.bytes(), cache.len(), calls.get()), (80, 2, 3));
        assert_eq!(cache.reads(), Reads { hits: 1, misses: 3 });
        assert_eq!(get(&cache, &calls, "a", 40), Ok(false));
        assert_eq!(get(&cache, &calls, "b", 40), Ok(true), "b was evicted");
        let huge = get(&cache, &calls, "huge", 500);
        assert!(
            matches!(huge, Err(StoreError::Unavailable(ref why)) if why.contains("no room for 500 bytes within 100")),
            "{huge:?}"
        );
        assert_eq!(cache.reserved(), 0, "a refused load reserves nothing");
    }

    #[test]
    fn loads_in_flight_and_values_in_use_count_against_the_budget() {
        let clock = VirtualClock::default();
        let cache: Rc<Cache<String>> = Rc::new(Cache::new(100));
        let calls = Rc::new(Cell::new(0));
        let mut pool = LocalPool::new();
        let peak = Rc::new(Cell::new(0usize));
        let log = Rc::new(RefCell::new(Vec::new()));
        // `a` (60) is loaded and then held by its request for 50 ms; `b` (60) cannot fit beside
        // it, so its load waits for room (up to 100 ms) and starts once `a` is released.
        for (key, start_ms, hold_ms) in [("a", 0.0, 47.0), ("b", 10.0, 0.0)] {
            let (cache, calls, clock, peak, log) = (
                cache.clone(),
                calls.clone(),
                clock.clone(),
                peak.clone(),
                log.clone(),
            );
            pool.spawner()
                .spawn_local(async move {
                    clock.sleep_ms(start_ms).await;
                    let load = timed_load(&clock, &calls, key, 60, 5.0);
                    let got = cache
                        .get_or_load(key, 60, always, load, &clock, 100.0)
                        .await;
                    let got = got.expect("room frees up within the wait");
                    log.borrow_mut().push((key, clock.now_ms()));
                    peak.set(peak.get().max(cache.bytes() + cache.reserved()));
                    clock.sleep_ms(hold_ms).await;
                    drop(got);
                })
                .expect("spawns");
        }
        let watcher = {
            let (cache, clock, peak) = (cache.clone(), clock.clone(), peak.clone());
            async move {
                for _ in 0..100 {
                    peak.set(peak.get().max(cache.bytes() + cache.reserved()));
                    clock.sleep_ms(1.0).await;
                }
            }
        };
        pool.spawner().spawn_local(watcher).expect("spawns");
        clock.run(&mut pool);
        assert_eq!(
            *log.borrow(),
            vec![("a", 5.0), ("b", 60.0)],
            "b loads only after a is released"
        );
        assert!(peak.get() <= 100, "peak {} over the budget", peak.get());
        assert_eq!((cache.bytes(), cache.len(), cache.reserved()), (60, 1, 0));

        // Held for longer than the wait: the load gives up naming the bytes in use.
        let held = get(&cache, &calls, "b", 60).map(|_| ());
        assert_eq!(held, Ok(()));
        let holder = clock.block_on({
            let (cache, calls, clock) = (cache.clone(), calls.clone(), clock.clone());
            async move {
                let load = timed_load(&clock, &calls, "b", 60, 0.0);
                let kept = cache.get_or_load("b", 60, always, load, &clock, 0.0).await;
                let load = timed_load(&clock, &calls, "c", 60, 0.0);
                let refused = cache.get_or_load("c", 60, always, load, &clock, 30.0).await;
                drop(kept);
                refused.err()
            }
        });
        let why = holder.map(|e| e.to_string()).unwrap_or_default();
        assert!(why.contains("60 bytes are in use by requests"), "{why}");
    }

    #[test]
    fn an_abandoned_load_releases_its_reservation_and_is_taken_over() {
        let clock = VirtualClock::default();
        let cache: Cache<String> = Cache::new(100);
        let pending = futures::future::pending::<Result<(String, usize), StoreError>>();
        let mut abandoned = Box::pin(cache.get_or_load("a", 70, always, pending, &clock, 0.0));
        // Start the load (it never finishes), then drop it as a cancelled request would.
        assert!(abandoned.as_mut().now_or_never().is_none());
        assert_eq!(cache.reserved(), 70);
        drop(abandoned);
        assert_eq!(cache.reserved(), 0);
        let calls = Rc::new(Cell::new(0));
        let load = timed_load(&clock, &calls, "ok", 70, 0.0);
        let got = cache
            .get_or_load("a", 70, always, load, &clock, 0.0)
            .now_or_never();
        let got = got.expect("ready").expect("loads");
        assert_eq!((got.value.as_str(), calls.get()), ("ok", 1));
    }

    #[test]
    fn failed_loads_release_their_reservation_and_are_retried() {
        let clock = VirtualClock::default();
        let cache: Cache<String> = Cache::new(100);
        let failing = async { Err::<(String, usize), _>(StoreError::Unavailable("boom".into())) };
        let failed = cache
            .get_or_load("a", 50, always, failing, &clock, 0.0)
            .now_or_never();
        assert_eq!(
            failed.and_then(|r| r.err()),
            Some(StoreError::Unavailable("boom".into()))
        );
        assert_eq!(cache.reserved(), 0);
        let calls = Rc::new(Cell::new(0));
        let load = timed_load(&clock, &calls, "ok", 50, 0.0);
        let got = cache
            .get_or_load("a", 50, always, load, &clock, 0.0)
            .now_or_never();
        assert!(matches!(got, Some(Ok(_))));
        assert_eq!(calls.get(), 1);
    }

    #[test]
    fn a_stale_value_is_loaded_again_once_for_all_waiters() {
        let clock = VirtualClock::default();
        let cache: Rc<Cache<String>> = Rc::new(Cache::new(100));
        let calls = Rc::new(Cell::new(0));
        let mut pool = LocalPool::new();
        let seen = Rc::new(RefCell::new(Vec::new()));
        // Three readers at t=0 and three at t=200, with values fresh for 100 ms.
        for start in [0.0, 0.0, 0.0, 200.0, 200.0, 200.0] {
            let (cache, calls, clock, seen) =
                (cache.clone(), calls.clone(), clock.clone(), seen.clone());
            pool.spawner()
                .spawn_local(async move {
                    clock.sleep_ms(start).await;
                    let now = clock.now_ms();
                    let value = if start == 0.0 { "v1" } else { "v2" };
                    let load = timed_load(&clock, &calls, value, 2, 10.0);
                    let got = cache
                        .get_or_load("p", 2, |at| now - at < 100.0, load, &clock, 0.0)
                        .await;
                    seen.borrow_mut()
                        .push(got.expect("loads").value.to_string());
                })
                .expect("spawns");
        }
        clock.run(&mut pool);
        assert_eq!(calls.get(), 2, "one read per expiry");
        assert_eq!(*seen.borrow(), ["v1", "v1", "v1", "v2", "v2", "v2"]);
        assert_eq!(cache.bytes(), 2);
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
        async fn get(
            &self,
            _region: &str,
            _key: &str,
            _max: usize,
            _into: AlignedVec<16>,
        ) -> Result<Option<AlignedVec<16>>, String> {
            self.0.set(self.0.get() + 1);
            Ok(None)
        }
        async fn indexes(&self, _region: &str) -> Result<Vec<String>, String> {
            Ok(Vec::new())
        }
    }

    #[test]
    fn impossible_index_names_are_unknown_without_a_lookup() {
        let budget = Budget {
            cache_bytes: 1 << 20,
            current_ttl_ms: 1000.0,
            room_wait_ms: 0.0,
        };
        let (store, source, clock) = (
            Store::new(budget),
            Empty::default(),
            VirtualClock::default(),
        );
        let pin = |name: &str| {
            store
                .pin(&source, &clock, name, "weur")
                .now_or_never()
                .and_then(|r| r.err())
        };
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
}
