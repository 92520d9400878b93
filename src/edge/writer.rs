//! Live-write bindings: the `IndexWriter` Durable Object (one per index, SQLite-backed storage)
//! that keeps the index's write log, and the entry worker's stub calls to it ([`Writers`]).
//!
//! The log is a table of the newest row per id written since the base version, plus one meta
//! record (`crate::write::LogMeta`). A batch's rows and the new meta are written by statements
//! with no `await` between them, which the runtime commits as one transaction; the answer (and
//! so the acknowledged seq) leaves the object only once that transaction is durable (the
//! object's output gate). The object handles one request at a time between awaits, so seqs
//! have no gaps and no duplicates.
//!
//! Sealing runs in the object's alarm, set by a write that fills the tail to `WRITE_SEAL_ROWS`
//! rows (or by a compaction that retires segments): the rows of the span are written as one
//! segment blob into every region's bucket, and only then listed in the meta record, so a
//! listed segment is always readable (an alarm that fails is retried by the runtime). The rows
//! themselves stay in the table until a compaction, so a reader that cannot read a segment is
//! sent the rows instead.
use std::cell::Cell;

use serde::{Deserialize, Serialize};
use worker::*;

use crate::api::admin::percent_encode;
use crate::api::ApiError;
use crate::write::log::IdKind;
use crate::write::{
    id_key, segment, Applied, LogMeta, Refused, SealPlan, Sealed, Since, WriteBatch, WriteState,
};

pub const BINDING: &str = "INDEX_WRITER";

/// Rows per `since` page (a page always ends at a whole write, so it may hold a batch more):
/// small, so that an isolate catching up holds little beside its view.
const SINCE_PAGE_ROWS: usize = 500;
const META_KEY: &str = "log";
/// Tail rows that make a segment, unless `WRITE_SEAL_ROWS` says otherwise.
const SEAL_ROWS_DEFAULT: u64 = 1000;

/// `POST /rebase`: the compiled version writes now apply on top of, and (after a compaction)
/// the seq up to which that version holds them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rebase {
    pub version: String,
    pub compacted_seq: Option<u64>,
}

/// The object's answer when it refuses: the status and why.
#[derive(Serialize, Deserialize)]
struct Refusal {
    status: u16,
    detail: String,
}

#[durable_object]
pub struct IndexWriter {
    state: State,
    env: Env,
    schema_ready: Cell<bool>,
}

impl DurableObject for IndexWriter {
    fn new(state: State, env: Env) -> Self {
        IndexWriter {
            state,
            env,
            schema_ready: Cell::new(false),
        }
    }

    async fn alarm(&self) -> Result<Response> {
        // An error makes the runtime retry the alarm with backoff.
        self.seal().await.map_err(|r| Error::RustError(r.detail))?;
        self.retire()
            .await
            .map_err(|r| Error::RustError(r.detail))?;
        Response::ok("sealed")
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let path = req.path();
        let outcome = match (req.method(), path.as_str()) {
            // Parsed by serde_json from the text: a batch of a thousand vectors is too many
            // small JS values for a JSON.parse and a walk across the boundary.
            (Method::Post, "/write") => match req
                .text()
                .await
                .map(|t| serde_json::from_str::<WriteBatch>(&t))
            {
                Ok(Ok(batch)) => match self.write(batch) {
                    Ok(applied) => {
                        self.schedule().await;
                        to_value(&applied)
                    }
                    Err(refusal) => Err(refusal),
                },
                Ok(Err(e)) => Err(refusal(400, format!("write batch: {e}"))),
                Err(e) => Err(refusal(400, format!("write batch: {e}"))),
            },
            (Method::Get, "/since") => {
                let url = req.url()?;
                let query: std::collections::HashMap<String, String> =
                    url.query_pairs().into_owned().collect();
                let after = query.get("after").and_then(|a| a.parse().ok()).unwrap_or(0);
                let rows_only = query.contains_key("rows_only");
                self.since(after, query.get("base").map(String::as_str), rows_only)
                    .and_then(|s| to_value(&s))
            }
            (Method::Get, "/state") => self.meta().and_then(|m| to_value(&m.state())),
            (Method::Post, "/drop") => {
                let dropped = self.drop_log();
                self.schedule().await;
                dropped.and_then(|m| to_value(&m.state()))
            }
            (Method::Post, "/rebase") => match req.json::<Rebase>().await {
                Ok(rebase) => {
                    let rebased = self.rebase(rebase);
                    self.schedule().await;
                    rebased.and_then(|s| to_value(&s))
                }
                Err(e) => Err(refusal(400, format!("rebase: {e}"))),
            },
            _ => Err(refusal(404, format!("no writer route {path}"))),
        };
        match outcome {
            Ok(value) => Response::from_json(&value),
            Err(refusal) => Ok(Response::from_json(&refusal)?.with_status(refusal.status)),
        }
    }
}

fn refusal(status: u16, detail: String) -> Refusal {
    Refusal { status, detail }
}

fn storage_error(e: Error) -> Refusal {
    refusal(500, format!("the write log's storage: {e}"))
}

fn to_value<T: Serialize>(value: &T) -> std::result::Result<serde_json::Value, Refusal> {
    serde_json::to_value(value).map_err(|e| refusal(500, e.to_string()))
}

#[derive(Deserialize)]
struct MetaRow {
    value: String,
}

#[derive(Deserialize)]
struct Count {
    n: u64,
}

#[derive(Deserialize)]
struct StoredRow {
    seq: u64,
    change: String,
}

#[derive(Deserialize)]
struct SeqRow {
    seq: u64,
}

type Refusable<T> = std::result::Result<T, Refusal>;

impl IndexWriter {
    fn sql(&self) -> Refusable<SqlStorage> {
        let sql = self.state.storage().sql();
        if !self.schema_ready.get() {
            for statement in [
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
                "CREATE TABLE IF NOT EXISTS rows (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, change TEXT NOT NULL)",
                "CREATE INDEX IF NOT EXISTS rows_by_seq ON rows (seq, id)",
            ] {
                execute(&sql, statement, vec![])?;
            }
            self.schema_ready.set(true);
        }
        Ok(sql)
    }

    fn meta(&self) -> Refusable<LogMeta> {
        let rows: Vec<MetaRow> = query(
            &self.sql()?,
            "SELECT value FROM meta WHERE key = ?",
            vec![META_KEY.into()],
        )?;
        match rows.first() {
            Some(row) => serde_json::from_str(&row.value)
                .map_err(|e| refusal(500, format!("the write log's meta record: {e}"))),
            None => Ok(LogMeta::default()),
        }
    }

    fn put_meta(&self, sql: &SqlStorage, meta: &LogMeta) -> Refusable<()> {
        let value = serde_json::to_string(meta).map_err(|e| refusal(500, e.to_string()))?;
        execute(
            sql,
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            vec![META_KEY.into(), value.into()],
        )
    }

    /// Appends a batch under the next seq: every statement runs before the next await, so the
    /// batch and the meta commit together or not at all.
    fn write(&self, batch: WriteBatch) -> Refusable<Applied> {
        let sql = self.sql()?;
        let mut meta = self.meta()?;
        let keys: Vec<String> = batch.changes.iter().map(|c| id_key(&c.id)).collect();
        // Every id new is the most the batch can add; only near the limit are the ids the log
        // already holds looked up one by one.
        let mut new_rows = keys.len() as u64;
        if meta.rows + new_rows > batch.max_rows {
            new_rows = 0;
            for key in &keys {
                let held: Vec<Count> = query(
                    &sql,
                    "SELECT COUNT(*) AS n FROM rows WHERE id = ?",
                    vec![key.clone().into()],
                )?;
                if held.first().is_none_or(|c| c.n == 0) {
                    new_rows += 1;
                }
            }
        }
        let seq = meta
            .admit(&batch, new_rows)
            .map_err(|refused| match refused {
                Refused::Invalid(why) => refusal(422, why),
                Refused::Backlog(why) => refusal(503, why),
            })?;
        for (key, change) in keys.into_iter().zip(&batch.changes) {
            let change = serde_json::to_string(change).map_err(|e| refusal(500, e.to_string()))?;
            execute(
                &sql,
                "INSERT OR REPLACE INTO rows (id, seq, change) VALUES (?, ?, ?)",
                vec![key.into(), (seq as i64).into(), change.into()],
            )?;
        }
        meta.last_seq = seq;
        meta.rows = count_rows(&sql)?;
        if meta.id_kind.is_none() {
            meta.id_kind = batch.changes.first().map(|c| IdKind::of(&c.id));
        }
        self.put_meta(&sql, &meta)?;
        Ok(Applied {
            seq,
            pending_writes: meta.rows,
        })
    }

    /// The rows above `after` (every row, when `base` is not the log's base any more), a page
    /// of whole writes at a time.
    fn since(&self, after: u64, base: Option<&str>, rows_only: bool) -> Refusable<Since> {
        let sql = self.sql()?;
        let meta = self.meta()?;
        let (reset, from) = meta.plan_since(after, base);
        let (sealed, from) = if rows_only {
            (Vec::new(), from)
        } else {
            meta.sealed_since(from)
        };
        // The seq of the page's last row, if the rows above `from` fill more than a page.
        let cut: Vec<SeqRow> = query(
            &sql,
            "SELECT seq FROM rows WHERE seq > ? ORDER BY seq LIMIT 1 OFFSET ?",
            vec![(from as i64).into(), (SINCE_PAGE_ROWS as i64).into()],
        )?;
        let (rows, upto, more) = match cut.first() {
            None => (rows_in(&sql, from, meta.last_seq)?, meta.last_seq, false),
            Some(cut) => {
                let rows = rows_in(&sql, from, cut.seq - 1)?;
                if rows.is_empty() {
                    // One write larger than a page still goes whole.
                    let whole = rows_in(&sql, cut.seq - 1, cut.seq)?;
                    (whole, cut.seq, cut.seq < meta.last_seq)
                } else {
                    (rows, cut.seq - 1, true)
                }
            }
        };
        Ok(Since {
            base_version: meta.base_version,
            base_seq: meta.base_seq,
            last_seq: meta.last_seq,
            reset,
            sealed,
            rows,
            upto,
            more,
        })
    }

    /// Forgets every write (the index is being deleted); seqs go on from where they were, so a
    /// seq once acknowledged never names another write.
    fn drop_log(&self) -> Refusable<LogMeta> {
        let sql = self.sql()?;
        let meta = self.meta()?;
        execute(&sql, "DELETE FROM rows", vec![])?;
        let mut left = LogMeta {
            last_seq: meta.last_seq,
            base_seq: meta.last_seq,
            sealed: meta.sealed,
            retired: meta.retired,
            ..LogMeta::default()
        };
        left.retire_sealed();
        self.put_meta(&sql, &left)?;
        Ok(left)
    }

    /// Sets the base version; after a compaction, drops the rows that version now holds.
    fn rebase(&self, rebase: Rebase) -> Refusable<WriteState> {
        let sql = self.sql()?;
        let mut meta = self.meta()?;
        if let Some(compacted) = rebase.compacted_seq {
            if compacted > meta.last_seq || compacted < meta.base_seq {
                return Err(refusal(
                    409,
                    format!(
                        "compacted seq {compacted} is outside the log ({}..={})",
                        meta.base_seq, meta.last_seq
                    ),
                ));
            }
            execute(
                &sql,
                "DELETE FROM rows WHERE seq <= ?",
                vec![(compacted as i64).into()],
            )?;
            meta.rows = count_rows(&sql)?;
            meta.base_seq = compacted;
            // The segments' spans start below the new base; the rows above it are sealed anew.
            meta.retire_sealed();
        }
        meta.base_version = Some(rebase.version);
        self.put_meta(&sql, &meta)?;
        Ok(meta.state())
    }

    fn seal_rows(&self) -> u64 {
        self.env
            .var("WRITE_SEAL_ROWS")
            .ok()
            .and_then(|v| v.to_string().parse().ok())
            .unwrap_or(SEAL_ROWS_DEFAULT)
    }

    /// What to seal next, from the meta record and the tail's row count.
    fn seal_plan(&self) -> Refusable<(LogMeta, Option<SealPlan>)> {
        let sql = self.sql()?;
        let meta = self.meta()?;
        let tail: Vec<Count> = query(
            &sql,
            "SELECT COUNT(*) AS n FROM rows WHERE seq > ?",
            vec![(meta.sealed_upto() as i64).into()],
        )?;
        let plan = meta.seal_plan(tail.first().map_or(0, |c| c.n), self.seal_rows());
        Ok((meta, plan))
    }

    /// Sets the alarm now if there is something to seal or delete; a failure only delays the
    /// seal to the next write (every row stays readable from the table meanwhile).
    async fn schedule(&self) {
        let due = match self.seal_plan() {
            Ok((meta, plan)) => plan.is_some() || !meta.retired.is_empty(),
            Err(_) => false,
        };
        if due {
            let now = std::time::Duration::from_millis(0);
            if let Err(e) = self.state.storage().set_alarm(now).await {
                console_warn!("index writer: setting the seal alarm: {e}");
            }
        }
    }

    /// Seals while there is something to seal: each segment is in every region's bucket
    /// before it is listed.
    async fn seal(&self) -> Refusable<()> {
        let owner = self.state.id().to_string();
        while let (_, Some(plan)) = self.seal_plan()? {
            let (SealPlan::Tail { above, upto } | SealPlan::Reseal { above, upto }) = plan;
            let rows = rows_in(&self.sql()?, above, upto)?;
            let sealed = Sealed {
                key: Sealed::key_for(&owner, above, upto, Date::now().as_millis()),
                above,
                upto,
                rows: rows.len() as u64,
            };
            let blob = segment::encode(above, upto, &rows).map_err(|e| refusal(500, e))?;
            drop(rows);
            for region in super::r2::bound_regions(&self.env) {
                self.bucket(&region)?
                    .put(&sealed.key, blob.clone())
                    .execute()
                    .await
                    .map_err(|e| {
                        refusal(503, format!("writing {} in {region}: {e}", sealed.key))
                    })?;
            }
            // Writes, a compaction or a drop may have run during the puts: read the meta anew.
            let mut meta = self.meta()?;
            meta.record_seal(plan, sealed);
            self.put_meta(&self.sql()?, &meta)?;
        }
        Ok(())
    }

    /// Deletes retired segments' objects from every region, then forgets them.
    async fn retire(&self) -> Refusable<()> {
        let retired = self.meta()?.retired;
        if retired.is_empty() {
            return Ok(());
        }
        for region in super::r2::bound_regions(&self.env) {
            let bucket = self.bucket(&region)?;
            for key in &retired {
                bucket
                    .delete(key)
                    .await
                    .map_err(|e| refusal(503, format!("deleting {key} in {region}: {e}")))?;
            }
        }
        let mut meta = self.meta()?;
        meta.retired.retain(|key| !retired.contains(key));
        self.put_meta(&self.sql()?, &meta)
    }

    fn bucket(&self, region: &str) -> Refusable<Bucket> {
        let binding = super::r2::binding(region);
        self.env
            .bucket(&binding)
            .map_err(|e| refusal(500, format!("bucket {binding}: {e}")))
    }
}

/// One statement's rows, each read as a `T`.
fn query<T: serde::de::DeserializeOwned>(
    sql: &SqlStorage,
    statement: &str,
    bindings: Vec<SqlStorageValue>,
) -> Refusable<Vec<T>> {
    sql.exec(statement, Some(bindings))
        .and_then(|cursor| cursor.to_array())
        .map_err(storage_error)
}

/// One statement whose rows, if any, are not read.
fn execute(sql: &SqlStorage, statement: &str, bindings: Vec<SqlStorageValue>) -> Refusable<()> {
    sql.exec(statement, Some(bindings)).map_err(storage_error)?;
    Ok(())
}

fn count_rows(sql: &SqlStorage) -> Refusable<u64> {
    let counted: Vec<Count> = query(sql, "SELECT COUNT(*) AS n FROM rows", vec![])?;
    Ok(counted.first().map_or(0, |c| c.n))
}

/// The rows with `above < seq <= upto`, in seq order.
fn rows_in(sql: &SqlStorage, above: u64, upto: u64) -> Refusable<Vec<crate::write::Row>> {
    let stored: Vec<StoredRow> = query(
        sql,
        "SELECT seq, change FROM rows WHERE seq > ? AND seq <= ? ORDER BY seq, id",
        vec![(above as i64).into(), (upto as i64).into()],
    )?;
    stored
        .into_iter()
        .map(|row| {
            serde_json::from_str(&row.change)
                .map(|change| crate::write::Row {
                    seq: row.seq,
                    change,
                })
                .map_err(|e| refusal(500, format!("row at seq {}: {e}", row.seq)))
        })
        .collect()
}

/// The entry worker's calls to an index's writer.
#[derive(Clone)]
pub struct Writers {
    ns: ObjectNamespace,
}

impl Writers {
    pub fn new(env: &Env) -> std::result::Result<Writers, ApiError> {
        let ns = env
            .durable_object(BINDING)
            .map_err(|e| ApiError::Misconfigured(format!("{BINDING}: {e}")))?;
        Ok(Writers { ns })
    }

    /// The writer of `index`.
    pub fn of(&self, index: &str) -> IndexWriterStub {
        IndexWriterStub {
            ns: self.ns.clone(),
            index: index.to_string(),
        }
    }
}

/// One index's writer, as the entry worker calls it.
pub struct IndexWriterStub {
    ns: ObjectNamespace,
    index: String,
}

impl IndexWriterStub {
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
    ) -> std::result::Result<T, ApiError> {
        let unreachable = |e: Error| {
            ApiError::WritesUnavailable(format!("the writer of {} did not answer: {e}", self.index))
        };
        let stub = self
            .ns
            .id_from_name(&self.index)
            .and_then(|id| id.get_stub())
            .map_err(unreachable)?;
        let mut init = RequestInit::new();
        init.with_method(method);
        if let Some(body) = body {
            init.with_body(Some(body.into()));
        }
        let request = Request::new_with_init(&format!("https://index-writer{path}"), &init)
            .map_err(unreachable)?;
        let mut response = stub
            .fetch_with_request(request)
            .await
            .map_err(unreachable)?;
        if response.status_code() != 200 {
            let refusal: Refusal = response.json().await.map_err(unreachable)?;
            return Err(match refusal.status {
                422 => ApiError::Invalid(refusal.detail),
                409 => ApiError::Conflict(refusal.detail),
                503 => ApiError::WritesUnavailable(refusal.detail),
                _ => ApiError::WritesUnavailable(format!(
                    "the writer of {}: {}",
                    self.index, refusal.detail
                )),
            });
        }
        // serde_json over the text: a page of rows is too many small JS values for `json()`.
        let text = response.text().await.map_err(unreachable)?;
        serde_json::from_str(&text).map_err(|e| {
            ApiError::WritesUnavailable(format!("the writer of {} answered: {e}", self.index))
        })
    }

    pub async fn write(&self, batch: &WriteBatch) -> std::result::Result<Applied, ApiError> {
        let body = serde_json::to_string(batch)
            .map_err(|e| ApiError::Misconfigured(format!("encoding a write batch: {e}")))?;
        self.call(Method::Post, "/write", Some(body)).await
    }

    pub async fn state(&self) -> std::result::Result<WriteState, ApiError> {
        self.call(Method::Get, "/state", None).await
    }

    pub async fn drop_log(&self) -> std::result::Result<WriteState, ApiError> {
        self.call(Method::Post, "/drop", Some(String::new())).await
    }

    pub async fn rebase(&self, rebase: &Rebase) -> std::result::Result<WriteState, ApiError> {
        let body = serde_json::to_string(rebase)
            .map_err(|e| ApiError::Misconfigured(format!("encoding a rebase: {e}")))?;
        self.call(Method::Post, "/rebase", Some(body)).await
    }

    /// The writer's `since` answer (see [`crate::write::Writer::since`]).
    pub async fn since(
        &self,
        after: u64,
        base: Option<&str>,
        rows_only: bool,
    ) -> std::result::Result<Since, String> {
        let mut path = format!("/since?after={after}");
        if let Some(base) = base {
            path.push_str("&base=");
            path.push_str(&percent_encode(base));
        }
        if rows_only {
            path.push_str("&rows_only=1");
        }
        self.call(Method::Get, &path, None)
            .await
            .map_err(|e| e.to_string())
    }
}
