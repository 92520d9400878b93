//! Admission of a request: this isolate's key table (`AUTH`, the `API_KEYS` secret), the caller's
//! grant for the route, and the key's rate limit, kept by one `RateLimiter` Durable Object per
//! key. The object is reachable only through its binding: no route forwards to it.
use std::cell::RefCell;
use std::rc::Rc;

use serde::{Deserialize, Serialize};
use worker::*;

use super::{var, Config, Incoming};
use crate::api::{ApiError, Route};
use crate::auth::{Auth, Grant};
use crate::ratelimit::{Decision, Rate, TokenBucket};

const BINDING: &str = "RATE_LIMITER";
const BUCKET_KEY: &str = "bucket";

thread_local! {
    static AUTH: RefCell<Option<Rc<Auth>>> = const { RefCell::new(None) };
}

/// Built at the isolate's first request; an invalid configuration is not cached, so every
/// request fails naming the var and field until the deployment is fixed.
fn for_isolate(env: &Env, config: &Config) -> Result<Rc<Auth>, ApiError> {
    if let Some(auth) = AUTH.with(|cell| cell.borrow().clone()) {
        return Ok(auth);
    }
    let keys = env.secret("API_KEYS").ok().map(|s| s.to_string());
    let auth = Rc::new(Auth::from_vars(
        var(env, "AUTH").as_deref(),
        config.dev,
        keys.as_deref(),
    )?);
    AUTH.with(|cell| *cell.borrow_mut() = Some(auth.clone()));
    Ok(auth)
}

/// The caller's grant: 401/403 from the key rules, 429 when the key's rate is used up.
pub async fn admit(
    req: &Incoming,
    env: &Env,
    config: &Config,
    route: &Route,
) -> Result<Grant, ApiError> {
    let authorization = req.header("authorization");
    let grant = for_isolate(env, config)?.admit(route, authorization.as_deref())?;
    if let Some(rate) = grant.rate {
        take(env, &grant.key_id, rate).await?;
    }
    Ok(grant)
}

#[derive(Serialize, Deserialize)]
struct Verdict {
    /// `None`: allowed.
    retry_after_s: Option<u64>,
}

/// One token from the key's bucket. A limiter that cannot be asked lets the request through
/// (logged): an outage of the counter must not take the API down with it.
async fn take(env: &Env, key_id: &str, rate: Rate) -> Result<(), ApiError> {
    let ns = env
        .durable_object(BINDING)
        .map_err(|e| ApiError::Misconfigured(format!("{BINDING}: {e}")))?;
    let ask = async {
        let stub = ns.id_from_name(key_id)?.get_stub()?;
        let mut init = RequestInit::new();
        init.with_method(Method::Post)
            .with_body(Some(serde_json::to_string(&rate)?.into()));
        let mut response = stub
            .fetch_with_request(Request::new_with_init("https://rate-limiter/take", &init)?)
            .await?;
        response.json::<Verdict>().await
    };
    match ask.await {
        Ok(Verdict {
            retry_after_s: Some(retry_after_s),
        }) => Err(ApiError::RateLimited { retry_after_s }),
        Ok(Verdict {
            retry_after_s: None,
        }) => Ok(()),
        Err(e) => {
            console_error!("rate limiter for key {key_id}: {e}; letting the request through");
            Ok(())
        }
    }
}

/// One token bucket (one API key), in memory and in storage, so that the count survives the
/// object's eviction. Requests to one object run one at a time between awaits, and storage
/// operations hold further events back, so read-modify-write is atomic.
#[durable_object]
pub struct RateLimiter {
    state: State,
    bucket: RefCell<Option<TokenBucket>>,
}

impl DurableObject for RateLimiter {
    fn new(state: State, _env: Env) -> Self {
        RateLimiter {
            state,
            bucket: RefCell::new(None),
        }
    }

    async fn fetch(&self, mut req: Request) -> Result<Response> {
        let rate: Rate = req.json().await?;
        let now = Date::now().as_millis() as f64;
        if self.bucket.borrow().is_none() {
            let stored = self.state.storage().get::<TokenBucket>(BUCKET_KEY).await?;
            self.bucket
                .borrow_mut()
                .get_or_insert(stored.unwrap_or_else(|| TokenBucket::full(rate, now)));
        }
        let (decision, bucket) = {
            let mut slot = self.bucket.borrow_mut();
            let bucket = slot.get_or_insert_with(|| TokenBucket::full(rate, now));
            (bucket.take(rate, now), *bucket)
        };
        let retry_after_s = match decision {
            Decision::Allowed => {
                self.state.storage().put(BUCKET_KEY, bucket).await?;
                None
            }
            // A refusal takes nothing, and refilling from the stored state later gives the same
            // count: no write, so a flood of refused requests costs no storage.
            Decision::Limited { retry_after_s } => Some(retry_after_s),
        };
        Response::from_json(&Verdict { retry_after_s })
    }
}
