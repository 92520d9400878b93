//! The backend for shards loaded through the isolate's [`Store`]: a visit loads (or finds) its
//! shard, searches it in place and reads its hits' passages at once, so the shard is released
//! right after its own search and a query over more shards than fit the cache still completes.
use std::rc::Rc;

use futures::future::LocalBoxFuture;

use super::{passage_of, Answered, Match, Passages, ShardQuery, Shards, Visit};
use crate::clock::Clock;
use crate::shard::ShardHit;
use crate::store::{Pinned, Source, Store};
use crate::timing::Timing;

/// One pinned index version read through `store` from `source`, replicas tried from `home`.
pub struct Loaded<S, C> {
    pub store: Rc<Store>,
    pub source: S,
    pub clock: C,
    pub pinned: Rc<Pinned>,
    pub home: String,
}

impl<S: Source, C: Clock> Shards for Loaded<S, C> {
    type Held = Passages;
    type Pending = LocalBoxFuture<'static, Result<Answered<Passages>, String>>;

    fn visit(&self, visit: Visit, query: &Rc<ShardQuery>) -> Self::Pending {
        let (store, source, clock) = (self.store.clone(), self.source.clone(), self.clock.clone());
        let (pinned, home, query) = (self.pinned.clone(), self.home.clone(), query.clone());
        Box::pin(async move {
            let got = store
                .shard(&source, &clock, &pinned, visit.shard, &home)
                .await
                .map_err(|e| e.to_string())?;
            let started = clock.now_ms();
            let shard = &got.value.shard;
            let hits = query.search(shard, visit.ef).map_err(|e| e.to_string())?;
            let name = &pinned.manifest.shards[visit.shard].name;
            // The score is the ranking's to give (`rank`); a passage is read once for both.
            let held = hits
                .ords()
                .into_iter()
                .map(|ord| {
                    let passage = shard.passage(ord).map_err(|e| e.to_string())?;
                    Ok((ord, Match::new(passage, 0.0, name)))
                })
                .collect::<Result<Passages, String>>()?;
            let mut timing = Timing {
                search: clock.now_ms() - started,
                ..Timing::default()
            };
            // The load's costs belong to the request that waited for it.
            if got.loaded_now {
                timing.fetch = got.value.fetch_ms;
                timing.validate = got.value.validate_ms;
            }
            Ok(Answered { hits, held, timing })
        })
    }

    fn resolve(&self, held: &Passages, hit: &ShardHit) -> Result<Match, String> {
        passage_of(held, hit.ord)
    }
}
