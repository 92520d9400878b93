//! Ids a search must not return: the passages that live writes deleted or replaced since the
//! shard was compiled (tantivy keeps a delete bitset per segment for the same reason). Resolved
//! to a pass mask per shard once per set, then cached by the set's generation.
use std::collections::HashSet;
use std::sync::Arc;

use super::filter::PassMask;
use super::format::ArchivedStoredIds;
use super::DocId;

/// A set of document ids, with a generation that names its content (two sets with the same
/// generation hold the same ids, so a shard may reuse the mask it resolved for either).
#[derive(Debug, Default, PartialEq)]
pub struct Exclusions {
    pub generation: u64,
    ints: HashSet<i64>,
    strs: HashSet<String>,
}

impl Exclusions {
    pub fn new<'a>(generation: u64, ids: impl IntoIterator<Item = &'a DocId>) -> Exclusions {
        let mut set = Exclusions {
            generation,
            ..Exclusions::default()
        };
        for id in ids {
            match id {
                DocId::Int(i) => set.ints.insert(*i),
                DocId::Str(s) => set.strs.insert(s.clone()),
            };
        }
        set
    }

    pub fn len(&self) -> usize {
        self.ints.len() + self.strs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, id: &DocId) -> bool {
        match id {
            DocId::Int(i) => self.ints.contains(i),
            DocId::Str(s) => self.strs.contains(s),
        }
    }

    /// Every id, for sending the set to a shard host.
    pub fn ids(&self) -> Vec<DocId> {
        let ints = self.ints.iter().map(|&i| DocId::Int(i));
        ints.chain(self.strs.iter().cloned().map(DocId::Str))
            .collect()
    }

    /// Which ordinals of a shard with these `ids` stay searchable: one look-up per document.
    pub(crate) fn mask(&self, ids: &ArchivedStoredIds) -> Result<PassMask, super::ShardError> {
        match ids {
            ArchivedStoredIds::Int(ids) => Ok(PassMask::from_fn(ids.len(), |ord| {
                !self.ints.contains(&ids[ord].to_native())
            })),
            ArchivedStoredIds::Str(ids) => {
                let count = ids.len();
                let mut kept = Vec::with_capacity(count);
                for ord in 0..count {
                    kept.push(self.strs.is_empty() || !self.strs.contains(ids.get(ord)?));
                }
                Ok(PassMask::from_fn(count, |ord| kept[ord]))
            }
        }
    }
}

/// The mask a shard resolved for the last exclusion set it saw.
#[derive(Default)]
pub(crate) struct MaskCache(Option<(u64, Arc<PassMask>)>);

impl MaskCache {
    pub(crate) fn get(&self, generation: u64) -> Option<Arc<PassMask>> {
        self.0
            .as_ref()
            .filter(|(g, _)| *g == generation)
            .map(|(_, mask)| mask.clone())
    }

    pub(crate) fn put(&mut self, generation: u64, mask: Arc<PassMask>) {
        self.0 = Some((generation, mask));
    }
}
