//! The R2 side of the store: one bucket binding per region (`SHARDS_<REGION>`), objects read
//! from the R2 body straight into the rkyv-aligned wasm memory the store hands over (no
//! zero-fill pass, no second copy, no whole-object buffer on the JS side): a bring-your-own-buffer
//! reader fills one reused JS buffer of [`READ_BYTES`] at a time (`min` asks the runtime to fill
//! it whole), copied into place. The runtime's own chunks are far smaller, and a crossing into
//! wasm per chunk made a first query's shard loads three times slower.
use futures::StreamExt;
use rkyv::util::AlignedVec;
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::{JsCast, JsValue};
use worker::js_sys::futures::JsFuture;
use worker::js_sys::{Object, Promise, Reflect, Uint8Array};
use worker::{Bucket, Env, ResponseBody};

use crate::store::Source;

#[derive(Clone)]
pub struct R2 {
    env: Env,
    regions: Vec<String>,
}

pub use crate::publish::bucket_binding as binding;

/// Every region with a bucket binding, whether or not `REGION_MAP` routes requests to it.
pub fn bound_regions(env: &Env) -> Vec<String> {
    let keys = Object::keys(env.unchecked_ref::<Object>());
    let mut regions: Vec<String> = keys
        .iter()
        .filter_map(|k| k.as_string())
        .filter_map(|k| k.strip_prefix("SHARDS_").map(str::to_ascii_lowercase))
        .filter(|r| env.bucket(&binding(r)).is_ok())
        .collect();
    regions.sort();
    regions
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
        let mut stream = wasm_streams::ReadableStream::from_raw(stream);
        let read_whole = match stream.try_get_byob_reader() {
            Ok(reader) => {
                let reader = reader.as_raw().unchecked_ref::<ByobReader>();
                read_whole_buffers(reader, key, size, &mut aligned).await?;
                true
            }
            Err(_) => false,
        };
        if !read_whole {
            // A runtime whose bodies are not byte streams: its chunks, as they come.
            let mut chunks = stream.into_stream();
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk.map_err(|e| format!("reading {key}: {e:?}"))?;
                append(&mut aligned, &Uint8Array::new(&chunk), key, size)?;
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
            // Sealed write segments live under `.writes/`; no index name starts with `.`.
            .filter(|name| !name.starts_with('.'))
            .collect())
    }
}

/// Bytes moved from the JS side into wasm memory per read: the one JS buffer a load needs.
const READ_BYTES: usize = 1 << 20;

#[wasm_bindgen]
extern "C" {
    /// A `ReadableStreamBYOBReader`, bound here for `read(view, { min })`, which resolves once
    /// `min` bytes are in `view` (or the stream ended): web-sys binds `read(view)` only.
    type ByobReader;
    #[wasm_bindgen(method, js_name = read)]
    fn read_at_least(this: &ByobReader, view: &Uint8Array, options: &Object) -> Promise;
}

/// Reads `size` bytes of `reader`'s stream into `aligned`, [`READ_BYTES`] at a time through
/// one JS buffer (each read transfers it; the next read reuses the transferred buffer).
async fn read_whole_buffers(
    reader: &ByobReader,
    key: &str,
    size: usize,
    aligned: &mut AlignedVec<16>,
) -> Result<(), String> {
    let js_error = |e: JsValue| format!("reading {key}: {e:?}");
    let mut buffer = Uint8Array::new_with_length(READ_BYTES.min(size.max(1)) as u32);
    while aligned.len() < size {
        let want = (size - aligned.len()).min(buffer.length() as usize) as u32;
        let options = Object::new();
        Reflect::set(&options, &"min".into(), &want.into()).map_err(js_error)?;
        let view = buffer.subarray(0, want);
        let result = JsFuture::from(reader.read_at_least(&view, &options))
            .await
            .map_err(js_error)?;
        let value = Reflect::get(&result, &"value".into()).map_err(js_error)?;
        let Some(filled) = value.dyn_ref::<Uint8Array>() else {
            return Err(format!("reading {key}: the stream was cancelled"));
        };
        if filled.length() == 0 {
            // Done: the stream ended before `size` bytes; the caller reports the shortfall.
            return Ok(());
        }
        append(aligned, filled, key, size)?;
        buffer = Uint8Array::new(&filled.buffer());
    }
    Ok(())
}

/// Copies `chunk` onto the end of `aligned`, which has room for `size` bytes.
fn append(
    aligned: &mut AlignedVec<16>,
    chunk: &Uint8Array,
    key: &str,
    size: usize,
) -> Result<(), String> {
    let (filled, len) = (aligned.len(), chunk.length() as usize);
    if filled + len > size {
        return Err(format!("{key}: more than its {size} bytes arrived"));
    }
    // SAFETY: capacity is `size` (reserved by the caller) and `filled + len <= size`, so the
    // destination is allocated; `raw_copy_to_ptr` writes exactly `len` bytes there, which
    // `set_len` then counts as initialised.
    unsafe {
        chunk.raw_copy_to_ptr(aligned.as_mut_ptr().add(filled));
        aligned.set_len(filled + len);
    }
    Ok(())
}
