//! The `Server-Timing` breakdown of one request: what each stage cost, in milliseconds.
use serde::{Deserialize, Serialize};

/// Durations in milliseconds. `embed` and `origin` are the time spent waiting for the embeddings
/// and chat pools (to the first chunk, for streamed answers), so that the worker's own share of a
/// request is the total minus those.
#[derive(Default, Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Timing {
    pub fetch: f64,
    pub validate: f64,
    pub search: f64,
    pub merge: f64,
    pub embed: f64,
    pub origin: f64,
    pub rerank: f64,
}

impl Timing {
    /// The `Server-Timing` header value.
    pub fn header(&self) -> String {
        format!(
            "fetch;dur={:.3}, validate;dur={:.3}, search;dur={:.3}, merge;dur={:.3}, embed;dur={:.3}, origin;dur={:.3}, rerank;dur={:.3}",
            self.fetch, self.validate, self.search, self.merge, self.embed, self.origin, self.rerank
        )
    }

    /// Shards load and are searched concurrently: the slowest load is what the request waited
    /// for, while validation and search run on the one thread and add up.
    pub fn absorb(&mut self, other: &Timing) {
        self.fetch = self.fetch.max(other.fetch);
        self.validate += other.validate;
        self.search += other.search;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absorb_takes_the_slowest_fetch_and_adds_cpu_work() {
        let mut total = Timing {
            fetch: 5.0,
            search: 1.0,
            ..Timing::default()
        };
        total.absorb(&Timing {
            fetch: 3.0,
            validate: 0.5,
            search: 2.0,
            ..Timing::default()
        });
        assert_eq!((total.fetch, total.validate, total.search), (5.0, 0.5, 3.0));
        assert!(total
            .header()
            .starts_with("fetch;dur=5.000, validate;dur=0.500, search;dur=3.000"));
    }
}
