//! The admin routes' bucket calls (`/v1/admin/indexes/...`): staging a manifest, streaming a blob
//! into every bucket its placement names while it is checked, the status a re-run resumes from,
//! flipping `current` onto a complete version, and the lifecycle (list, delete, gc). What a
//! version needs and what may be deleted is decided in `crate::publish`; every action is logged.
use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::{join, join_all};
use futures::StreamExt;
use serde_json::{json, Value};
use worker::js_sys::{self, Uint8Array};
use worker::{console_log, Bucket, Data, Env, Response};

use super::writer::{Rebase, Writers};
use super::{parsed, race, read_body, Ctx, Incoming};
use crate::api::admin::AdminRoute;
use crate::api::{parse_json, ApiError};
use crate::manifest::{Manifest, ShardEntry, MANIFEST_FILE};
use crate::publish::{
    bucket_binding, check_deletable, check_stage, gc_victims, index_prefix, published_key,
    verified_key, version_prefix, version_status, versions, BlobCheck, Fed, Gc, Listed, Listing,
    PublishError, SetCurrent, VersionStatus, MANIFEST_BODY_LIMIT, UPLOAD_LIMIT_DEFAULT,
};
use crate::store::{blob_key, current_key};

/// R2 deletes at most this many keys per call.
const DELETE_BATCH: usize = 1000;
/// Small JSON bodies (`current`, `gc`).
const SMALL_BODY_LIMIT: usize = 4096;

/// One admin request: the key may manage the index (checked before any bucket is read), then the
/// action, then one audit line whatever the outcome.
pub async fn handle(
    route: AdminRoute,
    req: &Incoming,
    ctx: &mut Ctx,
) -> Result<Response, ApiError> {
    ctx.index = Some(route.index().to_string());
    let outcome = match ctx.grant.check_manage(route.index()) {
        Ok(()) => act(&route, req, ctx).await,
        Err(e) => Err(e),
    };
    audit(&route, ctx, &outcome);
    match outcome? {
        Acted::Json(value) => super::json(&value),
        Acted::Streamed(response) => Ok(response),
    }
}

/// What an admin action answers: a JSON object, or a body streamed as it is read (an export).
enum Acted {
    Json(Value),
    Streamed(Response),
}

async fn act(route: &AdminRoute, req: &Incoming, ctx: &Ctx) -> Result<Acted, ApiError> {
    let buckets = Buckets::new(
        &ctx.env,
        parsed(&ctx.env, "UPLOAD_LIMIT_BYTES", UPLOAD_LIMIT_DEFAULT)?,
    );
    let value = match route {
        AdminRoute::Versions { index } => {
            let listed = buckets.versions(index).await?;
            if listed.is_empty() {
                return Err(ApiError::UnknownIndex(index.clone()));
            }
            json!({ "index": index, "versions": listed })
        }
        AdminRoute::Stage { index, version } => {
            let (_, body) = read_body(req, ctx, MANIFEST_BODY_LIMIT).await?;
            let manifest = Manifest::from_json(&body)
                .map_err(|e| ApiError::Invalid(format!("the manifest: {e}")))?;
            check_stage(
                &manifest,
                index,
                version,
                &|r: &str| buckets.get(r).is_some(),
                buckets.limit,
            )?;
            let key = blob_key(index, version, MANIFEST_FILE);
            for region in &manifest.regions {
                buckets.put(region, &key, body.clone()).await?;
            }
            serde_json::to_value(buckets.status(&manifest).await?).unwrap_or_default()
        }
        AdminRoute::Blob {
            index,
            version,
            file,
        } => {
            let manifest = buckets.manifest(index, version).await?;
            let entry = manifest
                .shards
                .iter()
                .find(|s| &s.file == file)
                .ok_or_else(|| {
                    PublishError::NotFound(format!("{index}@{version} names no blob {file:?}"))
                })?;
            let regions = upload_blob(req, ctx, &buckets, &manifest, entry).await?;
            json!({ "index": index, "version": version, "file": file, "bytes": entry.bytes, "regions": regions })
        }
        AdminRoute::Status { index, version } => {
            let manifest = buckets.manifest(index, version).await?;
            serde_json::to_value(buckets.status(&manifest).await?).unwrap_or_default()
        }
        AdminRoute::SetCurrent { index } => {
            let (content_type, body) = read_body(req, ctx, SMALL_BODY_LIMIT).await?;
            let wanted: SetCurrent = parse_json(content_type.as_deref(), &body, SMALL_BODY_LIMIT)?;
            let mut flipped = buckets.set_current(index, &wanted.version).await?;
            // The index's live writes apply on top of the new version from now on (and a
            // compaction's writes, which that version holds, leave the log).
            let writes = Writers::new(&ctx.env)?
                .of(index)
                .rebase(&Rebase {
                    version: wanted.version.clone(),
                    compacted_seq: wanted.compacted_seq,
                })
                .await?;
            flipped["writes"] = serde_json::to_value(writes).unwrap_or_default();
            flipped
        }
        AdminRoute::DeleteVersion { index, version } => {
            let current = buckets.currents(index).await?;
            check_deletable(index, version, &current)?;
            let deleted = buckets.delete_version(index, version).await?;
            if deleted == 0 {
                return Err(
                    PublishError::NotFound(format!("{index} has no version {version}")).into(),
                );
            }
            json!({ "index": index, "version": version, "deleted_objects": deleted })
        }
        AdminRoute::DeleteIndex { index } => {
            Writers::new(&ctx.env)?.of(index).drop_log().await?;
            let deleted = buckets.delete_index(index).await?;
            if deleted == 0 {
                return Err(ApiError::UnknownIndex(index.clone()));
            }
            json!({ "index": index, "deleted_objects": deleted })
        }
        AdminRoute::Hosts { index } => super::host::report(ctx, index).await?,
        AdminRoute::Export { index } => {
            return Ok(Acted::Streamed(super::writes::export(index, ctx).await?));
        }
        AdminRoute::Gc { index } => {
            let (content_type, body) = read_body(req, ctx, SMALL_BODY_LIMIT).await?;
            let gc: Gc = parse_json(content_type.as_deref(), &body, SMALL_BODY_LIMIT)?;
            if gc.keep == 0 {
                return Err(ApiError::Invalid("keep must be at least 1".into()));
            }
            let listed = buckets.versions(index).await?;
            let current = buckets.currents(index).await?;
            let victims = gc_victims(&listed, &current, gc.keep);
            for version in &victims {
                buckets.delete_version(index, version).await?;
            }
            let kept: Vec<&String> = listed
                .iter()
                .map(|v| &v.version)
                .filter(|v| !victims.contains(v))
                .collect();
            json!({ "index": index, "kept": kept, "deleted": victims })
        }
    };
    Ok(Acted::Json(value))
}

/// One JSON line per admin action: who, what, on which index and version, and how it ended.
fn audit(route: &AdminRoute, ctx: &Ctx, outcome: &Result<Acted, ApiError>) {
    let version = match route {
        AdminRoute::Stage { version, .. }
        | AdminRoute::Blob { version, .. }
        | AdminRoute::Status { version, .. }
        | AdminRoute::DeleteVersion { version, .. } => Some(version.as_str()),
        _ => None,
    };
    let (status, detail) = match outcome {
        Ok(Acted::Json(value)) => (
            200,
            value
                .get("version")
                .and_then(Value::as_str)
                .map(str::to_string),
        ),
        Ok(Acted::Streamed(_)) => (200, None),
        Err(e) => (e.status(), Some(e.to_string())),
    };
    let line = json!({
        "audit": "admin",
        "action": route.label(),
        "index": route.index(),
        "version": version,
        "key_id": ctx.grant.key_id,
        "tenant": ctx.grant.tenant,
        "status": status,
        "detail": detail,
    });
    console_log!("{line}");
}

/// Streams the request body into the bucket of every region the blob's placement names, each
/// chunk checked (`BlobCheck`) before it is passed on, so that the last chunk, without which no
/// bucket stores the object, is passed on only if the whole blob is the one the manifest names.
/// Then marks it verified in each of those buckets.
async fn upload_blob(
    req: &Incoming,
    ctx: &Ctx,
    buckets: &Buckets,
    manifest: &Manifest,
    entry: &ShardEntry,
) -> Result<Vec<String>, ApiError> {
    let regions = manifest.shard_regions(entry).to_vec();
    let targets: Vec<(String, Bucket)> = regions
        .iter()
        .map(|r| buckets.get(r).map(|b| (r.clone(), b)).ok_or_else(|| r.clone()))
        .collect::<Result<_, _>>()
        .map_err(|r| {
            ApiError::Conflict(format!(
                "no bucket binding on this worker for region {r} (binding {}): the blob was not stored",
                bucket_binding(&r)
            ))
        })?;
    if entry.bytes > buckets.limit {
        return Err(PublishError::TooLarge {
            what: format!("blob {}", entry.file),
            size: entry.bytes,
            limit: buckets.limit,
        }
        .into());
    }
    let announced = req
        .header("content-length")
        .and_then(|v| v.trim().parse::<u64>().ok());
    if announced != Some(entry.bytes) {
        return Err(ApiError::Invalid(format!(
            "{}: the upload must announce Content-Length: {} (the manifest's size), not {}",
            entry.file,
            entry.bytes,
            announced.map_or("none".to_string(), |n| n.to_string())
        )));
    }
    let mut check = BlobCheck::new(manifest, entry)?;
    let raw = req
        .raw
        .body()
        .ok_or_else(|| ApiError::Invalid(format!("{}: the upload has no body", entry.file)))?;
    let key = blob_key(&manifest.name, &manifest.version, &entry.file);

    // One fixed-length stream per bucket: R2 stores the object only once all of its bytes came.
    let mut sinks = Vec::with_capacity(targets.len());
    let mut puts = Vec::with_capacity(targets.len());
    for (region, bucket) in &targets {
        let fixed = fixed_length_stream(entry.bytes)?;
        sinks.push(wasm_streams::WritableStream::from_raw(fixed.writable()));
        let (bucket, key, region) = (bucket.clone(), key.clone(), region.clone());
        let readable = fixed.readable();
        puts.push(async move {
            bucket
                .put(key, Data::ReadableStream(readable))
                .execute()
                .await
                .map(|_| ())
                .map_err(|e| format!("{region}: {e}"))
        });
    }
    let mut writers: Vec<_> = sinks.iter_mut().map(|s| s.get_writer()).collect();
    let stall_ms = ctx.config.body_timeout_ms;
    let feed = async {
        let mut body = wasm_streams::ReadableStream::from_raw(raw).into_stream();
        let mut chunk = Vec::new();
        let fed: Result<(), ApiError> = async {
            loop {
                let next = race(body.next(), Duration::from_millis(stall_ms))
                    .await
                    .ok_or(ApiError::BodyTimeout { ms: stall_ms })?;
                let Some(next) = next else { break };
                let array = Uint8Array::new(&next.map_err(|e| {
                    ApiError::Invalid(format!("{}: reading the body: {e:?}", entry.file))
                })?);
                chunk.resize(array.length() as usize, 0);
                array.copy_to(&mut chunk);
                let fed = check.feed(&chunk)?;
                let writes = writers
                    .iter_mut()
                    .map(|w| w.write(Uint8Array::from(chunk.as_slice()).into()));
                for written in join_all(writes).await {
                    written.map_err(|e| {
                        ApiError::Unavailable(format!("{}: writing to a bucket: {e:?}", entry.file))
                    })?;
                }
                if fed == Fed::Complete {
                    break;
                }
            }
            Ok(check.end()?)
        }
        .await;
        for writer in &mut writers {
            // An aborted stream fails its put: nothing is stored under the key.
            let _ = if fed.is_ok() {
                writer.close().await
            } else {
                writer.abort().await
            };
        }
        fed
    };
    let (fed, stored) = join(feed, join_all(puts)).await;
    if let Err(e) = fed {
        // Only possible if a bucket completed a put the stream then failed; best effort.
        for ((region, bucket), stored) in targets.iter().zip(&stored) {
            if stored.is_ok() {
                console_log!("removing {key} from {region} after a failed upload");
                let _ = bucket.delete(key.clone()).await;
            }
        }
        return Err(e);
    }
    let failed: Vec<&String> = stored.iter().filter_map(|s| s.as_ref().err()).collect();
    if !failed.is_empty() {
        return Err(PublishError::Storage(format!(
            "{}: storing failed in {}",
            entry.file,
            failed
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("; ")
        ))
        .into());
    }
    let marker = json!({ "bytes": entry.bytes, "checksum": entry.checksum }).to_string();
    let marker_key = verified_key(&manifest.name, &manifest.version, &entry.file);
    for (region, _) in &targets {
        buckets
            .put(region, &marker_key, marker.clone().into_bytes())
            .await?;
    }
    Ok(regions)
}

fn fixed_length_stream(bytes: u64) -> Result<worker::worker_sys::FixedLengthStream, ApiError> {
    let made = match u32::try_from(bytes) {
        Ok(small) => worker::worker_sys::FixedLengthStream::new(small),
        Err(_) => worker::worker_sys::FixedLengthStream::new_big_int(js_sys::BigInt::from(bytes)),
    };
    made.map_err(|e| ApiError::Unavailable(format!("FixedLengthStream({bytes}): {e:?}")))
}

/// This worker's shard buckets, one per region (`SHARDS_<REGION>` bindings).
pub(super) struct Buckets {
    env: Env,
    limit: u64,
}

impl Buckets {
    pub(super) fn new(env: &Env, limit: u64) -> Buckets {
        Buckets {
            env: env.clone(),
            limit,
        }
    }

    fn get(&self, region: &str) -> Option<Bucket> {
        self.env.bucket(&bucket_binding(region)).ok()
    }

    /// Every region with a bucket binding, whether or not `REGION_MAP` routes requests to it.
    pub(super) fn regions(&self) -> Vec<String> {
        super::r2::bound_regions(&self.env)
    }

    fn bucket(&self, region: &str) -> Result<Bucket, PublishError> {
        self.get(region).ok_or_else(|| {
            PublishError::Conflict(format!(
                "no bucket binding on this worker for region {region} (binding {})",
                bucket_binding(region)
            ))
        })
    }

    async fn put(&self, region: &str, key: &str, bytes: Vec<u8>) -> Result<(), PublishError> {
        self.bucket(region)?
            .put(key, bytes)
            .execute()
            .await
            .map(|_| ())
            .map_err(|e| PublishError::Storage(format!("writing {key} in {region}: {e}")))
    }

    async fn text(&self, region: &str, key: &str) -> Result<Option<String>, PublishError> {
        let storage =
            |e: worker::Error| PublishError::Storage(format!("reading {key} in {region}: {e}"));
        let Some(object) = self
            .bucket(region)?
            .get(key)
            .execute()
            .await
            .map_err(storage)?
        else {
            return Ok(None);
        };
        match object.body() {
            Some(body) => body
                .text()
                .await
                .map(|t| Some(t.trim().to_string()))
                .map_err(storage),
            None => Ok(Some(String::new())),
        }
    }

    /// Every object under `prefix` in `region`, page by page.
    async fn list(&self, region: &str, prefix: &str) -> Result<Vec<Listed>, PublishError> {
        let bucket = self.bucket(region)?;
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut list = bucket.list().prefix(prefix);
            if let Some(cursor) = cursor.take() {
                list = list.cursor(cursor);
            }
            let page = list
                .execute()
                .await
                .map_err(|e| PublishError::Storage(format!("listing {prefix} in {region}: {e}")))?;
            all.extend(page.objects().into_iter().map(|o| Listed {
                region: region.to_string(),
                key: o.key(),
                size: o.size(),
                uploaded_ms: o.uploaded().as_millis() as f64,
            }));
            match page.cursor() {
                Some(next) if page.truncated() => cursor = Some(next),
                _ => return Ok(all),
            }
        }
    }

    /// The staged manifest of a version, from the first region that has it.
    async fn manifest(&self, index: &str, version: &str) -> Result<Manifest, PublishError> {
        let key = blob_key(index, version, MANIFEST_FILE);
        for region in self.regions() {
            if let Some(text) = self.text(&region, &key).await? {
                return Manifest::from_json(text.as_bytes())
                    .map_err(|e| PublishError::Storage(format!("{key} in {region}: {e}")));
            }
        }
        Err(PublishError::NotFound(format!(
            "{index}@{version} is not staged: PUT its manifest first"
        )))
    }

    async fn status(&self, manifest: &Manifest) -> Result<VersionStatus, PublishError> {
        let prefix = version_prefix(&manifest.name, &manifest.version);
        let mut listings: BTreeMap<String, Listing> = BTreeMap::new();
        for region in &manifest.regions {
            let listing = match self.get(region) {
                None => None,
                Some(_) => Some(
                    self.list(region, &prefix)
                        .await?
                        .into_iter()
                        .map(|o| (o.key, o.size))
                        .collect(),
                ),
            };
            listings.insert(region.clone(), listing);
        }
        Ok(version_status(manifest, &listings, self.limit))
    }

    /// `current` as each region that has one says.
    async fn currents(&self, index: &str) -> Result<Vec<String>, PublishError> {
        let mut current = Vec::new();
        for region in self.regions() {
            if let Some(version) = self.text(&region, &current_key(index)).await? {
                current.push(version);
            }
        }
        Ok(current)
    }

    async fn versions(
        &self,
        index: &str,
    ) -> Result<Vec<crate::publish::VersionInfo>, PublishError> {
        let mut objects = Vec::new();
        for region in self.regions() {
            objects.extend(self.list(&region, &index_prefix(index)).await?);
        }
        Ok(versions(index, &objects, &self.currents(index).await?))
    }

    /// Stages a version with no shards (an index created through the API) in its regions and
    /// makes it current: the publish path of a compiled version, with nothing to upload.
    pub(super) async fn publish_empty(&self, manifest: &Manifest) -> Result<(), ApiError> {
        let body = manifest.to_json_pretty().into_bytes();
        check_stage(
            manifest,
            &manifest.name,
            &manifest.version,
            &|r: &str| self.get(r).is_some(),
            self.limit,
        )?;
        let key = blob_key(&manifest.name, &manifest.version, MANIFEST_FILE);
        for region in &manifest.regions {
            self.put(region, &key, body.clone()).await?;
        }
        self.set_current(&manifest.name, &manifest.version).await?;
        Ok(())
    }

    /// Points `current` at `version` in every region, once the version is complete in every
    /// region it names; records when it first went live.
    async fn set_current(&self, index: &str, version: &str) -> Result<Value, ApiError> {
        let manifest = self.manifest(index, version).await?;
        let status = self.status(&manifest).await?;
        if let Some(reason) = status.incomplete_reason() {
            return Err(ApiError::Conflict(reason));
        }
        let previous = self.currents(index).await?.into_iter().next();
        let published = published_key(index, version);
        for region in &manifest.regions {
            if self.text(region, &published).await?.is_none() {
                let at = json!({ "published_at_ms": worker::Date::now().as_millis() });
                self.put(region, &published, at.to_string().into_bytes())
                    .await?;
            }
        }
        let mut regions = self.regions();
        for region in &manifest.regions {
            if !regions.contains(region) {
                regions.push(region.clone());
            }
        }
        for region in &regions {
            self.put(region, &current_key(index), version.as_bytes().to_vec())
                .await?;
        }
        Ok(json!({ "index": index, "version": version, "previous": previous, "regions": regions }))
    }

    /// Deletes everything under a version's prefix in every region: the publish marker first (so
    /// it can no longer be made live), the manifest last. Returns how many objects went.
    async fn delete_version(&self, index: &str, version: &str) -> Result<usize, PublishError> {
        let mut deleted = 0;
        let published = published_key(index, version);
        let manifest = blob_key(index, version, MANIFEST_FILE);
        for region in self.regions() {
            let mut keys: Vec<String> = self
                .list(&region, &version_prefix(index, version))
                .await?
                .into_iter()
                .map(|o| o.key)
                .collect();
            keys.sort_by_key(|k| (k != &published, k == &manifest));
            deleted += self.delete(&region, &keys).await?;
        }
        Ok(deleted)
    }

    /// Deletes `current` in every region first (so readers stop finding the index), then the rest.
    async fn delete_index(&self, index: &str) -> Result<usize, PublishError> {
        let mut deleted = 0;
        let current = current_key(index);
        let regions = self.regions();
        for region in &regions {
            if self.text(region, &current).await?.is_some() {
                deleted += self.delete(region, std::slice::from_ref(&current)).await?;
            }
        }
        for region in &regions {
            let keys: Vec<String> = self
                .list(region, &index_prefix(index))
                .await?
                .into_iter()
                .map(|o| o.key)
                .collect();
            deleted += self.delete(region, &keys).await?;
        }
        Ok(deleted)
    }

    async fn delete(&self, region: &str, keys: &[String]) -> Result<usize, PublishError> {
        let bucket = self.bucket(region)?;
        for batch in keys.chunks(DELETE_BATCH) {
            bucket
                .delete_multiple(batch.iter().map(String::as_str).collect())
                .await
                .map_err(|e| PublishError::Storage(format!("deleting in {region}: {e}")))?;
        }
        Ok(keys.len())
    }
}
