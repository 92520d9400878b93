//! The R2 side of the store: one bucket binding per region (`SHARDS_<REGION>`), objects read
//! straight from the R2 body into rkyv-aligned memory (the one unavoidable JS→wasm copy).
use rkyv::util::AlignedVec;
use worker::js_sys::Uint8Array;
use worker::wasm_bindgen_futures::JsFuture;
use worker::{Bucket, Env, ResponseBody};

use crate::store::Source;

#[derive(Clone)]
pub struct R2 {
    env: Env,
    regions: Vec<String>,
}

pub fn binding(region: &str) -> String {
    format!("SHARDS_{}", region.to_ascii_uppercase())
}

impl R2 {
    /// `candidates` are the regions the configuration mentions; those without a bucket binding
    /// are dropped here, so a partial deployment still serves from what it has.
    pub fn new(env: Env, candidates: Vec<String>) -> R2 {
        let regions = candidates
            .into_iter()
            .filter(|r| env.bucket(&binding(r)).is_ok())
            .collect();
        R2 { env, regions }
    }

    fn bucket(&self, region: &str) -> Result<Bucket, String> {
        self.env
            .bucket(&binding(region))
            .map_err(|e| format!("bucket {}: {e}", binding(region)))
    }
}

impl Source for R2 {
    fn regions(&self) -> Vec<String> {
        self.regions.clone()
    }

    async fn get(&self, region: &str, key: &str) -> Result<Option<AlignedVec<16>>, String> {
        let bucket = self.bucket(region)?;
        let Some(object) = bucket.get(key).execute().await.map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let Some(body) = object.body() else {
            return Ok(Some(AlignedVec::new()));
        };
        let stream = match body.response_body().map_err(|e| e.to_string())? {
            ResponseBody::Stream(stream) => stream,
            ResponseBody::Body(bytes) => {
                let mut aligned = AlignedVec::with_capacity(bytes.len());
                aligned.extend_from_slice(&bytes);
                return Ok(Some(aligned));
            }
            ResponseBody::Empty => return Ok(Some(AlignedVec::new())),
        };
        // Letting the runtime collect the stream into one ArrayBuffer keeps the chunking out of
        // wasm; then a single copy lands it in aligned memory that the shard keeps.
        let response = worker::web_sys::Response::new_with_opt_readable_stream(Some(&stream))
            .map_err(|e| format!("{e:?}"))?;
        let promise = response.array_buffer().map_err(|e| format!("{e:?}"))?;
        let buffer = JsFuture::from(promise)
            .await
            .map_err(|e| format!("{e:?}"))?;
        let array = Uint8Array::new(&buffer);
        let mut aligned = AlignedVec::<16>::with_capacity(array.length() as usize);
        aligned.resize(array.length() as usize, 0);
        array.copy_to(aligned.as_mut_slice());
        Ok(Some(aligned))
    }

    async fn indexes(&self, region: &str) -> Result<Vec<String>, String> {
        let listed = self
            .bucket(region)?
            .list()
            .delimiter("/")
            .execute()
            .await
            .map_err(|e| e.to_string())?;
        Ok(listed
            .delimited_prefixes()
            .into_iter()
            .map(|p| p.trim_end_matches('/').to_string())
            .collect())
    }

    fn now_ms(&self) -> f64 {
        super::now_ms()
    }

    async fn pause(&self) {
        // Short enough that a joined load is picked up promptly, long enough not to spin.
        worker::Delay::from(std::time::Duration::from_millis(5)).await;
    }
}
