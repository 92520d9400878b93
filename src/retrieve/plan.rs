//! Which shards a query visits, nearest centroid first, and the beam width each is searched with.
use crate::manifest::Manifest;
use crate::shard::SearchParams;

/// Workers allow six simultaneous open connections per request; more subrequests would queue
/// anyway, so the fan-out keeps at most this many in flight.
pub const MAX_IN_FLIGHT: usize = 6;

/// How much narrower each shard's beam is than that of the shard before it in a plan.
const BEAM_DECAY: f32 = 0.6;

/// One shard a query visits (its manifest position) and the beam width it is searched with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Visit {
    pub shard: usize,
    pub ef: usize,
}

/// Shards to visit, nearest centroid first: all of them, or the `probe` nearest (a probe beyond
/// the shard count means all); of an index built with boundary replication (its manifest's
/// `routing`), only those whose centroid is within `probe_margin` of the nearest one's, as a
/// neighbour of the query in a farther shard is then also stored in a nearer one (pydocs, 4
/// shards: 1.9 shards visited on average for recall@10 0.95, README "Routing"). The nearest is
/// searched with the request's `ef`, each next one with [`BEAM_DECAY`] times the beam of the one
/// before (never below `k`): a k-means partition puts most of a query's neighbours in the shards
/// nearest to it (pydocs, 4 shards: 70% in the nearest, 19% in the second), so a narrow beam
/// finds the few in the others. On pydocs this cuts the 4-shard search time at recall@10 0.97 by
/// about a fifth (`shardc eval`). A filtered search keeps `ef` and every shard up to `probe`:
/// where passing passages are is the filter's doing, not the centroids'.
pub fn plan(
    manifest: &Manifest,
    query: &[f32],
    probe: Option<usize>,
    params: &SearchParams,
) -> Vec<Visit> {
    let by_distance = manifest.shards_by_distance(query);
    let margin = manifest
        .routing
        .filter(|_| params.filter.is_none())
        .map(|r| r.probe_margin);
    let reach = by_distance
        .first()
        .zip(margin)
        .map_or(f32::INFINITY, |(&(nearest, _), margin)| nearest + margin);
    let mut ef = params.ef as f32;
    by_distance
        .into_iter()
        .take(probe.unwrap_or(manifest.shards.len()))
        .take_while(|&(distance, _)| distance <= reach)
        .map(|(_, shard)| {
            let visit = Visit {
                shard,
                ef: (ef.round() as usize).max(params.k),
            };
            if params.filter.is_none() {
                ef *= BEAM_DECAY;
            }
            visit
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2-d index whose shard i has its centroid at angle i·20° (cosine).
    fn four_shards() -> Manifest {
        let shards = (0..4)
            .map(|i| {
                let angle = (i as f32 * 20.0).to_radians();
                crate::manifest::ShardEntry {
                    name: format!("shard-{i:03}"),
                    file: format!("shard-{i:03}.shard"),
                    bytes: 1,
                    count: 1,
                    centroid: vec![angle.cos(), angle.sin()],
                    checksum: "0".repeat(16),
                    regions: vec!["weur".into()],
                }
            })
            .collect();
        Manifest {
            format_version: crate::manifest::MANIFEST_FORMAT_VERSION,
            name: "test".into(),
            version: String::new(),
            dims: 2,
            metric: crate::shard::Metric::Cosine,
            quant: crate::shard::Quant::F16,
            count: 4,
            shards,
            regions: vec!["weur".into()],
            placement: None,
            embedding_model: None,
            filter_fields: None,
            lexical: None,
            routing: None,
        }
    }

    fn k10_ef64() -> SearchParams {
        SearchParams {
            k: 10,
            ef: 64,
            filter: None,
            exclude: None,
        }
    }

    #[test]
    fn plan_visits_nearest_shards_first_with_narrowing_beams() {
        let manifest = four_shards();
        // Nearest to the query (angle 60°): shard 3, then 2, 1, 0.
        let query = [0.5, 0.866];
        let params = k10_ef64();
        let visits = |probe, params: &SearchParams| -> Vec<(usize, usize)> {
            plan(&manifest, &query, probe, params)
                .iter()
                .map(|v| (v.shard, v.ef))
                .collect()
        };
        assert_eq!(
            visits(None, &params),
            vec![(3, 64), (2, 38), (1, 23), (0, 14)]
        );
        assert_eq!(visits(Some(2), &params), vec![(3, 64), (2, 38)]);
        assert_eq!(visits(Some(9), &params).len(), 4);
        // Never narrower than k.
        let narrow = SearchParams {
            ef: 12,
            ..params.clone()
        };
        assert_eq!(
            visits(None, &narrow),
            vec![(3, 12), (2, 10), (1, 10), (0, 10)]
        );
        // A filter keeps the full beam everywhere.
        let filtered = SearchParams {
            filter: Some(crate::shard::Filter::default()),
            ..params
        };
        assert!(visits(None, &filtered).iter().all(|&(_, ef)| ef == 64));
    }

    #[test]
    fn a_routed_index_visits_only_shards_within_the_probe_margin_of_the_nearest() {
        let mut manifest = four_shards();
        // Query at 60°: cosine distances 0 (shard 3), 0.060 (2), 0.234 (1), 0.5 (0).
        let query = [0.5, 0.866];
        let params = k10_ef64();
        let shards = |manifest: &Manifest, probe, params: &SearchParams| -> Vec<usize> {
            plan(manifest, &query, probe, params)
                .iter()
                .map(|v| v.shard)
                .collect()
        };
        let routed = |probe_margin| crate::manifest::Routing {
            replicate_margin: 0.05,
            replicas: 0,
            probe_margin,
        };
        manifest.routing = Some(routed(0.05));
        assert_eq!(shards(&manifest, None, &params), vec![3]);
        manifest.routing = Some(routed(0.1));
        assert_eq!(shards(&manifest, None, &params), vec![3, 2]);
        manifest.routing = Some(routed(0.3));
        assert_eq!(shards(&manifest, None, &params), vec![3, 2, 1]);
        // `probe` still caps it.
        manifest.routing = Some(routed(1.0));
        assert_eq!(shards(&manifest, Some(2), &params), vec![3, 2]);
        assert_eq!(shards(&manifest, None, &params).len(), 4);
        // A filtered search ignores the margin; a lexical one (no vector) visits every shard.
        manifest.routing = Some(routed(0.0));
        let filtered = SearchParams {
            filter: Some(crate::shard::Filter::default()),
            ..params.clone()
        };
        assert_eq!(shards(&manifest, None, &filtered).len(), 4);
        assert_eq!(plan(&manifest, &[], None, &params).len(), 4);
    }
}
