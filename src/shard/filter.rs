//! Metadata equality filters: resolved once per query to dictionary value ids, then to a pass mask.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::error::ShardError;
use super::format::{native_u32, ArchivedMetadataColumn};

/// Passages pass when every named metadata field equals the given JSON value, e.g.
/// `{"source": "library/os.html"}`. Serialised as that JSON object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Filter {
    pub equals: serde_json::Map<String, Value>,
}

/// The one canonical text of a JSON value (object keys sorted, no whitespace) used as the
/// dictionary key at build time and the lookup key at query time.
pub fn canonical_json(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            let fields: Vec<String> = entries
                .into_iter()
                .map(|(key, value)| {
                    format!("{}:{}", Value::String(key.clone()), canonical_json(value))
                })
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        Value::Array(items) => format!(
            "[{}]",
            items
                .iter()
                .map(canonical_json)
                .collect::<Vec<_>>()
                .join(",")
        ),
        scalar => scalar.to_string(),
    }
}

/// Which ordinals pass a filter, and how many.
pub(crate) struct PassMask {
    words: Vec<u64>,
    pub(crate) passing: usize,
}

impl PassMask {
    /// The ordinals below `count` for which `passes` holds.
    pub(crate) fn from_fn(count: usize, mut passes: impl FnMut(usize) -> bool) -> PassMask {
        let mut words = vec![0u64; count.div_ceil(64)];
        let mut passing = 0;
        for ord in 0..count {
            if passes(ord) {
                words[ord / 64] |= 1 << (ord % 64);
                passing += 1;
            }
        }
        PassMask { words, passing }
    }

    /// The ordinals both masks pass.
    pub(crate) fn and(&self, other: &PassMask) -> PassMask {
        let words: Vec<u64> = self
            .words
            .iter()
            .zip(&other.words)
            .map(|(a, b)| a & b)
            .collect();
        let passing = words.iter().map(|w| w.count_ones() as usize).sum();
        PassMask { words, passing }
    }

    pub(crate) fn allows(&self, ord: u32) -> bool {
        self.words[ord as usize / 64] & (1 << (ord % 64)) != 0
    }

    /// Resolves each condition to (column, value id) once, then marks the documents matching all.
    pub(crate) fn resolve(
        filter: &Filter,
        columns: &[ArchivedMetadataColumn],
        count: usize,
    ) -> Result<PassMask, ShardError> {
        let mut conditions = Vec::with_capacity(filter.equals.len());
        for (field, value) in &filter.equals {
            let wanted = canonical_json(value);
            let resolved = match columns.iter().find(|c| c.field.as_str() == field) {
                Some(column) => column
                    .values
                    .binary_search(&wanted)?
                    .map(|value_id| (native_u32(&column.doc_values), value_id as u32)),
                None => None,
            };
            match resolved {
                Some(condition) => conditions.push(condition),
                None => {
                    return Ok(PassMask {
                        words: vec![0; count.div_ceil(64)],
                        passing: 0,
                    })
                }
            }
        }
        Ok(PassMask::from_fn(count, |ord| {
            conditions
                .iter()
                .all(|(doc_values, value_id)| doc_values[ord] == *value_id)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_at_every_depth() {
        let a = json!({"b": 1, "a": {"y": [1, "x"], "x": null}});
        assert_eq!(canonical_json(&a), r#"{"a":{"x":null,"y":[1,"x"]},"b":1}"#);
        assert_eq!(canonical_json(&json!("q\"uote")), r#""q\"uote""#);
    }

    #[test]
    fn filter_is_a_plain_json_object() {
        let filter: Filter = serde_json::from_str(r#"{"source": "a.html", "year": 3}"#).unwrap();
        assert_eq!(filter.equals.len(), 2);
        assert_eq!(
            serde_json::to_value(&filter).unwrap(),
            json!({"source": "a.html", "year": 3})
        );
    }
}
