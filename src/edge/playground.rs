//! `GET /` and the playground's files: a compiled-in [`Asset`] as a response with its headers.
use worker::Response;

use crate::api::ApiError;
use crate::playground::Asset;

pub fn respond(asset: &Asset) -> Result<Response, ApiError> {
    let failed = |e: worker::Error| ApiError::Misconfigured(format!("serving {}: {e}", asset.path));
    let mut response = Response::ok(asset.body).map_err(failed)?;
    let headers = response.headers_mut();
    for (name, value) in asset.headers() {
        headers.set(name, value).map_err(failed)?;
    }
    Ok(response)
}
