//! HTTP plumbing: the client's request as the runtime hands it over, its body read within the
//! size and time limits, its id and location, and JSON responses.
use std::time::Duration;

use futures::future::{select, Either};
use futures::StreamExt;
use serde::Serialize;
use worker::{js_sys, web_sys, Delay, Response};

use super::routes::Ctx;
use crate::api::{collect_body, ApiError};
use crate::store::Location;

/// The client's request as the runtime hands it over. Not `worker::Request`: making one reads
/// `request.cf` (in a CPU profile the costliest JS call of a request: workerd makes the object
/// from JSON on each read), which `location` then reads again for the three fields it needs.
pub(crate) struct Incoming {
    pub raw: web_sys::Request,
    headers: web_sys::Headers,
    pub method: String,
}

impl Incoming {
    pub fn new(raw: web_sys::Request) -> Incoming {
        Incoming {
            headers: raw.headers(),
            method: raw.method(),
            raw,
        }
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).ok().flatten()
    }
}

/// 64 random bits (trace and span ids; not secrets).
pub(crate) fn random_u64() -> u64 {
    let part = || (js_sys::Math::random() * u32::MAX as f64) as u64;
    (part() << 32) | part()
}

pub(crate) fn json<T: Serialize>(value: &T) -> Result<Response, ApiError> {
    Response::from_json(value)
        .map_err(|e| ApiError::Misconfigured(format!("serialising a response: {e}")))
}

pub(crate) fn to_json<T: Serialize>(value: &T) -> Result<String, ApiError> {
    serde_json::to_string(value)
        .map_err(|e| ApiError::Misconfigured(format!("serialising a request: {e}")))
}

/// `future`, unless `limit` passes first.
pub(crate) async fn race<F: std::future::Future>(future: F, limit: Duration) -> Option<F::Output> {
    match select(std::pin::pin!(future), Delay::from(limit)).await {
        Either::Left((output, _)) => Some(output),
        Either::Right(_) => None,
    }
}

/// The body and its content type. An announced oversized body is refused before reading, an
/// unannounced one as soon as it passes the limit (so it is never held whole), and a body that
/// has not arrived within `BODY_TIMEOUT_MS` with 408.
pub(crate) async fn read_body(
    req: &Incoming,
    ctx: &Ctx,
    limit: usize,
) -> Result<(Option<String>, Vec<u8>), ApiError> {
    let announced = req
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(size) = announced.filter(|&size| size > limit) {
        return Err(ApiError::TooLarge { size, limit });
    }
    let content_type = req.header("content-type");
    // No body at all is an empty one (which then fails as JSON).
    let Some(raw) = req.raw.body() else {
        return Ok((content_type, Vec::new()));
    };
    let mut body_stream = wasm_streams::ReadableStream::from_raw(raw);
    let mut reader = body_stream.get_reader().into_stream();
    let mut chunks = (&mut reader).map(|chunk| {
        chunk
            .map(|bytes| js_sys::Uint8Array::new(&bytes).to_vec())
            .map_err(|e| format!("{e:?}"))
    });
    let ms = ctx.config.body_timeout_ms;
    let outcome = collect_body(
        &mut chunks,
        limit,
        Delay::from(Duration::from_millis(ms)),
        ms,
    )
    .await;
    let stop_reading = match outcome {
        Err(ApiError::BodyTimeout { .. }) => true,
        // The rest of an oversized body is read and dropped (in JS, never copied into wasm memory)
        // within another deadline, so that the client gets the 413 after its upload rather than
        // a connection reset in the middle of it.
        Err(ApiError::TooLarge { .. }) => {
            let drain = async { while let Some(Ok(_)) = reader.next().await {} };
            race(drain, Duration::from_millis(ms)).await.is_none()
        }
        _ => false,
    };
    if stop_reading {
        // A read is still pending: cancel the body, so the runtime stops waiting for it.
        let _ = reader.cancel().await;
    }
    Ok((content_type, outcome?))
}

/// The caller's id when it is a sane token (so traces join up), else a fresh random one.
pub(crate) fn request_id(req: &Incoming) -> String {
    let given = req.header("x-request-id").unwrap_or_default();
    let sane = !given.is_empty()
        && given.len() <= 64
        && given
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if sane {
        given
    } else {
        let part = || (js_sys::Math::random() * u32::MAX as f64) as u32;
        format!("{:08x}{:08x}", part(), part())
    }
}

/// Read through Reflect instead of `worker::Cf`, whose getters unwrap and would panic on the
/// partial `cf` object a local runtime supplies.
pub(crate) fn location(req: &Incoming) -> Location {
    let cf = js_sys::Reflect::get(&req.raw, &"cf".into()).unwrap_or_default();
    let field = |name: &str| {
        if cf.is_object() {
            js_sys::Reflect::get(&cf, &name.into())
                .ok()
                .and_then(|v| v.as_string())
        } else {
            None
        }
    };
    Location {
        colo: field("colo"),
        region: field("regionCode"),
        continent: field("continent"),
    }
}
