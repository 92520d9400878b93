//! The vocabulary shared by the builder, the shard and the manifest: distance metric and vector quantisation.

use serde::{Deserialize, Serialize};

use super::error::ShardError;

/// How closeness between a query and a passage vector is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Metric {
    /// Cosine similarity; vectors are normalised at build time, queries at search time.
    Cosine,
    /// Euclidean distance (squared internally).
    L2,
    /// Inner product.
    Dot,
}

impl Metric {
    /// Turns an internal distance (smaller = closer) into the public score:
    /// cosine similarity, inner product, or euclidean distance.
    pub fn score(self, distance: f32) -> f32 {
        match self {
            Metric::Cosine => 1.0 - distance,
            Metric::Dot => -distance,
            Metric::L2 => distance.max(0.0).sqrt(),
        }
    }

    /// Internal distance between two f32 vectors (both already normalised for cosine).
    pub fn distance_f32(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            Metric::Cosine => 1.0 - super::quant::dot_f32(a, b),
            Metric::Dot => -super::quant::dot_f32(a, b),
            Metric::L2 => super::quant::l2sq_f32(a, b),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Metric::Cosine => "cosine",
            Metric::L2 => "l2",
            Metric::Dot => "dot",
        }
    }

    /// The byte that stores this metric in a shard archive.
    pub fn code(self) -> u8 {
        match self {
            Metric::Cosine => 0,
            Metric::L2 => 1,
            Metric::Dot => 2,
        }
    }

    pub(crate) fn from_code(code: u8) -> Result<Metric, ShardError> {
        match code {
            0 => Ok(Metric::Cosine),
            1 => Ok(Metric::L2),
            2 => Ok(Metric::Dot),
            other => Err(ShardError::Inconsistent(format!(
                "unknown metric code {other}"
            ))),
        }
    }
}

impl std::str::FromStr for Metric {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cosine" => Ok(Metric::Cosine),
            "l2" => Ok(Metric::L2),
            "dot" => Ok(Metric::Dot),
            other => Err(format!(
                "unknown metric {other:?} (expected cosine, l2 or dot)"
            )),
        }
    }
}

/// How passage vectors are stored in a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quant {
    /// IEEE half precision, 2 bytes per dimension.
    F16,
    /// Signed bytes with one f32 scale per vector, 1 byte per dimension.
    I8,
}

impl Quant {
    pub fn as_str(self) -> &'static str {
        match self {
            Quant::F16 => "f16",
            Quant::I8 => "i8",
        }
    }
}

impl std::str::FromStr for Quant {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f16" => Ok(Quant::F16),
            "i8" => Ok(Quant::I8),
            other => Err(format!(
                "unknown quantisation {other:?} (expected f16 or i8)"
            )),
        }
    }
}
