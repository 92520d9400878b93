//! The backend for shards already open in this process ([`LocalIndex`](crate::index::LocalIndex)):
//! each visit is searched at once, and hits are resolved after the merge straight from the shard.
use std::rc::Rc;
use std::time::Duration;

use futures::future::{ready, Ready};

use super::{Answered, Match, ShardQuery, Shards, Visit};
use crate::clock::Clock;
use crate::manifest::Manifest;
use crate::shard::{Shard, ShardHit};
use crate::timing::Timing;

/// Open shards in manifest order: `shards[i]` is `manifest.shards[i]`.
pub struct InMemory<'a> {
    pub manifest: &'a Manifest,
    pub shards: &'a [Shard],
}

impl InMemory<'_> {
    fn shard(&self, i: usize) -> Result<&Shard, String> {
        self.shards
            .get(i)
            .ok_or_else(|| format!("no shard number {i}"))
    }
}

impl Shards for InMemory<'_> {
    type Held = ();
    type Pending = Ready<Result<Answered<()>, String>>;

    fn visit(&self, visit: Visit, query: &Rc<ShardQuery>) -> Self::Pending {
        let searched = self
            .shard(visit.shard)
            .and_then(|shard| query.search(shard, visit.ef).map_err(|e| e.to_string()));
        ready(searched.map(|hits| Answered {
            hits,
            held: (),
            timing: Timing::default(),
        }))
    }

    fn resolve(&self, _: &(), hit: &ShardHit) -> Result<Match, String> {
        let passage = self
            .shard(hit.shard)?
            .passage(hit.ord)
            .map_err(|e| e.to_string())?;
        let name = self
            .manifest
            .shards
            .get(hit.shard)
            .map_or("", |s| s.name.as_str());
        Ok(Match::new(
            passage,
            self.manifest.metric.score(hit.distance),
            name,
        ))
    }
}

/// The clock of a search with no deadline: its timer never fires.
#[derive(Clone, Copy)]
pub struct NoDeadline;

impl Clock for NoDeadline {
    fn now(&self) -> Duration {
        Duration::ZERO
    }

    async fn sleep(&self, _wait: Duration) {
        futures::future::pending::<()>().await
    }
}
