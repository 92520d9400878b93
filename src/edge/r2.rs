//! The R2 side of the store: one bucket binding per region (`SHARDS_<REGION>`), objects read
//! chunk by chunk from the R2 body straight into the rkyv-aligned wasm memory the store hands
//! over (no zero-fill pass, no second copy, no whole-object buffer on the JS side).
use futures::StreamExt;
use rkyv::util::AlignedVec;
use worker::js_sys::Uint8Array;
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

    async fn get(
        &self,
        region: &str,
        key: &str,
        max_len: usize,
        mut aligned: AlignedVec<16>,
    ) -> Result<Option<AlignedVec<16>>, String> {
        let bucket = self.bucket(region)?;
        let Some(object) = bucket.get(key).execute().await.map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let size = usize::try_from(object.size()).unwrap_or(usize::MAX);
        if size > max_len {
            return Err(format!(
                "{key} is {size} bytes, more than the {max_len} expected"
            ));
        }
        aligned.clear();
        aligned.reserve_exact(size);
        let Some(body) = object.body() else {
            return Ok(Some(aligned));
        };
        let stream = match body.response_body().map_err(|e| e.to_string())? {
            ResponseBody::Stream(stream) => stream,
            ResponseBody::Body(bytes) => {
                if bytes.len() != size {
                    return Err(format!("{key}: {} bytes arrived of {size}", bytes.len()));
                }
                aligned.extend_from_slice(&bytes);
                return Ok(Some(aligned));
            }
            ResponseBody::Empty => return Ok(Some(aligned)),
        };
        let mut chunks = wasm_streams::ReadableStream::from_raw(stream).into_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = Uint8Array::new(&chunk.map_err(|e| format!("reading {key}: {e:?}"))?);
            let (filled, len) = (aligned.len(), chunk.length() as usize);
            if filled + len > size {
                return Err(format!("{key}: more than its {size} bytes arrived"));
            }
            // SAFETY: capacity is `size` and `filled + len <= size`, so the destination is
            // allocated; `raw_copy_to_ptr` writes exactly `len` bytes there, which `set_len` then
            // counts as initialised.
            unsafe {
                chunk.raw_copy_to_ptr(aligned.as_mut_ptr().add(filled));
                aligned.set_len(filled + len);
            }
        }
        if aligned.len() != size {
            return Err(format!("{key}: {} bytes arrived of {size}", aligned.len()));
        }
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
}
