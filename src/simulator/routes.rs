//! The simulator's HTTP routes: the MotherDuck API as documented.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde_json::{Value, json};

use super::Simulator;
use super::state::{Fault, FaultOutcome, State, UserKind};
use super::validate;
use crate::motherduck::{Endpoint, Issue, TokenType};

/// An error answer of the documented shape.
pub(crate) struct SimError {
    status: u16,
    message: String,
    issues: Vec<Issue>,
}

impl SimError {
    fn new(status: u16, message: impl Into<String>) -> SimError {
        SimError {
            status,
            message: message.into(),
            issues: Vec::new(),
        }
    }

    fn validation(issues: Vec<Issue>) -> SimError {
        let message = issues
            .first()
            .map_or_else(|| "Invalid input".to_owned(), |i| i.message.clone());
        SimError {
            status: 400,
            message,
            issues,
        }
    }

    fn into_response(self, endpoint: Endpoint) -> Response {
        let code = code_for(self.status);
        let mut body = json!({
            "message": self.message,
            "code": code,
            "data": { "code": code, "httpStatus": self.status, "path": endpoint.handler_path() },
        });
        if !self.issues.is_empty() {
            body["issues"] = serde_json::to_value(&self.issues).unwrap_or(Value::Null);
        }
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(body)).into_response()
    }
}

fn code_for(status: u16) -> &'static str {
    match status {
        400 => "BAD_REQUEST",
        401 => "UNAUTHORIZED",
        403 => "FORBIDDEN",
        404 => "NOT_FOUND",
        409 => "CONFLICT",
        429 => "TOO_MANY_REQUESTS",
        502 => "BAD_GATEWAY",
        503 => "SERVICE_UNAVAILABLE",
        504 => "GATEWAY_TIMEOUT",
        _ => "INTERNAL_SERVER_ERROR",
    }
}

/// The authenticated caller.
struct Caller {
    username: String,
}

fn authenticate(state: &State, headers: &HeaderMap) -> Result<Caller, SimError> {
    let unauthorized = || SimError::new(401, "Missing or invalid access token");
    let raw = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(unauthorized)?;
    let secret = raw
        .strip_prefix("Bearer ")
        .or_else(|| raw.strip_prefix("bearer "))
        .ok_or_else(unauthorized)?
        .trim();
    let idx = *state
        .by_hash
        .get(&super::state::hash_secret(secret))
        .ok_or_else(unauthorized)?;
    let token = &state.tokens[idx];
    if !token.is_live(state.now()) {
        return Err(unauthorized());
    }
    let user = state.user(&token.username).ok_or_else(unauthorized)?;
    if user.kind != UserKind::Admin || token.token_type != TokenType::ReadWrite {
        return Err(SimError::new(
            403,
            "This operation requires a read/write token of a user with the Admin role",
        ));
    }
    Ok(Caller {
        username: user.username.clone(),
    })
}

fn parse_body(body: &Bytes) -> Result<Value, SimError> {
    serde_json::from_slice(body).map_err(|_| {
        SimError::validation(vec![Issue {
            code: "invalid_type".into(),
            message: "Request body must be valid JSON".into(),
            path: vec![],
        }])
    })
}

/// Counts a request as being served while it lives.
struct InFlight(Simulator);

impl InFlight {
    fn enter(sim: &Simulator) -> InFlight {
        let mut st = sim.lock();
        st.counters.in_flight += 1;
        st.counters.max_in_flight = st.counters.max_in_flight.max(st.counters.in_flight);
        InFlight(sim.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.counters.in_flight = st.counters.in_flight.saturating_sub(1);
    }
}

/// Runs one API request: latency, faults, authentication, then `work`
/// under the state lock.
async fn handle(
    sim: &Simulator,
    endpoint: Endpoint,
    headers: &HeaderMap,
    work: impl FnOnce(&mut State, Caller) -> Result<Value, SimError>,
) -> Response {
    let _in_flight = InFlight::enter(sim);
    let latency = sim.lock().latency();
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let fault = sim.lock().take_fault(endpoint);
    if matches!(fault, Some(FaultOutcome::Scripted(Fault::Hang))) {
        std::future::pending::<()>().await;
    }
    let mut state = sim.lock();
    let after_commit = match fault {
        Some(FaultOutcome::RateLimited { retry_after }) => {
            let mut r = SimError::new(429, "Too many requests").into_response(endpoint);
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            return r;
        }
        Some(FaultOutcome::Scripted(Fault::Status(s))) => {
            return SimError::new(s, "Simulated failure").into_response(endpoint);
        }
        Some(FaultOutcome::Scripted(Fault::StatusAfterCommit(s))) => Some(s),
        Some(FaultOutcome::Scripted(Fault::Hang)) | None => None,
    };
    let caller = match authenticate(&state, headers) {
        Ok(c) => c,
        Err(e) => return e.into_response(endpoint),
    };
    let result = work(&mut state, caller);
    drop(state);
    if let Some(s) = after_commit {
        return SimError::new(s, "Simulated failure after commit").into_response(endpoint);
    }
    match result {
        Ok(v) => (StatusCode::OK, axum::Json(v)).into_response(),
        Err(e) => e.into_response(endpoint),
    }
}

fn not_found_user(username: &str) -> SimError {
    SimError::new(404, format!("User `{username}` not found"))
}

async fn create_service_account(
    AxState(sim): AxState<Simulator>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(&sim, Endpoint::CreateServiceAccount, &headers, |st, _| {
        let body = parse_body(&body)?;
        let obj = validate::object(&body).map_err(SimError::validation)?;
        let username =
            validate::username(obj.get("username"), &["username"]).map_err(SimError::validation)?;
        if st.user(&username).is_some() {
            return Err(SimError::new(
                409,
                format!("A user named `{username}` already exists"),
            ));
        }
        let u = st.add_user(&username, UserKind::ServiceAccount);
        Ok(json!({ "username": u.username }))
    })
    .await
}

async fn delete_service_account(
    AxState(sim): AxState<Simulator>,
    headers: HeaderMap,
    Path(username): Path<String>,
) -> Response {
    handle(
        &sim,
        Endpoint::DeleteServiceAccount,
        &headers,
        |st, caller| {
            let user = st
                .user(&username)
                .ok_or_else(|| not_found_user(&username))?;
            if user.username.eq_ignore_ascii_case(&caller.username) {
                return Err(SimError::new(400, "You cannot delete your own user"));
            }
            let name = user.username.clone();
            let now = st.now();
            for t in st
                .tokens
                .iter_mut()
                .filter(|t| t.username.eq_ignore_ascii_case(&name) && t.revoked_at.is_none())
            {
                t.revoked_at = Some(now);
            }
            st.users.remove(&name.to_lowercase());
            Ok(json!({ "username": name }))
        },
    )
    .await
}

fn token_json(t: &super::IssuedToken) -> Value {
    let mut v = json!({
        "id": t.id,
        "name": t.name,
        "created_ts": t.created_ts.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "read_only": t.read_only,
        "token_type": t.token_type.as_str(),
        "description": t.description,
    });
    if let Some(e) = t.expire_at {
        v["expire_at"] = json!(e.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    }
    v
}

async fn list_tokens(
    AxState(sim): AxState<Simulator>,
    headers: HeaderMap,
    Path(username): Path<String>,
) -> Response {
    handle(&sim, Endpoint::ListTokens, &headers, |st, _| {
        let user = st
            .user(&username)
            .ok_or_else(|| not_found_user(&username))?;
        let now = st.now();
        let tokens: Vec<Value> = st
            .tokens
            .iter()
            .filter(|t| t.username.eq_ignore_ascii_case(&user.username) && t.is_live(now))
            .map(token_json)
            .collect();
        Ok(json!({ "tokens": tokens }))
    })
    .await
}

async fn create_token(
    AxState(sim): AxState<Simulator>,
    headers: HeaderMap,
    Path(username): Path<String>,
    body: Bytes,
) -> Response {
    handle(&sim, Endpoint::CreateToken, &headers, |st, caller| {
        let user = st
            .user(&username)
            .ok_or_else(|| not_found_user(&username))?;
        if user.kind != UserKind::ServiceAccount
            && !user.username.eq_ignore_ascii_case(&caller.username)
        {
            return Err(SimError::new(
                403,
                "Admins may create tokens only for themselves and for service accounts",
            ));
        }
        let username = user.username.clone();
        let body = parse_body(&body)?;
        let spec = validate::create_token(&body).map_err(SimError::validation)?;
        let (idx, secret) = st.issue(
            &username,
            &spec.name,
            spec.ttl,
            spec.token_type,
            spec.description,
        );
        let mut v = token_json(&st.tokens[idx]);
        v["token"] = json!(secret);
        Ok(v)
    })
    .await
}

async fn revoke_token(
    AxState(sim): AxState<Simulator>,
    headers: HeaderMap,
    Path((username, token_id)): Path<(String, String)>,
) -> Response {
    handle(&sim, Endpoint::RevokeToken, &headers, |st, _| {
        let user = st
            .user(&username)
            .ok_or_else(|| not_found_user(&username))?;
        let name = user.username.clone();
        let now = st.now();
        let token = st
            .tokens
            .iter_mut()
            .find(|t| t.id == token_id && t.username.eq_ignore_ascii_case(&name) && t.is_live(now))
            .ok_or_else(|| SimError::new(404, format!("Token `{token_id}` not found")))?;
        token.revoked_at = Some(now);
        Ok(json!({}))
    })
    .await
}

async fn get_instances(
    AxState(sim): AxState<Simulator>,
    headers: HeaderMap,
    Path(username): Path<String>,
) -> Response {
    handle(&sim, Endpoint::GetDucklingConfig, &headers, |st, _| {
        let user = st
            .user(&username)
            .ok_or_else(|| not_found_user(&username))?;
        Ok(serde_json::to_value(&user.duckling).unwrap_or(Value::Null))
    })
    .await
}

async fn set_instances(
    AxState(sim): AxState<Simulator>,
    headers: HeaderMap,
    Path(username): Path<String>,
    body: Bytes,
) -> Response {
    handle(&sim, Endpoint::SetDucklingConfig, &headers, |st, _| {
        if st.user(&username).is_none() {
            return Err(not_found_user(&username));
        }
        let body = parse_body(&body)?;
        let config = validate::duckling_config(&body).map_err(SimError::validation)?;
        let user = st
            .users
            .get_mut(&username.to_lowercase())
            .ok_or_else(|| not_found_user(&username))?;
        user.duckling = config;
        Ok(serde_json::to_value(&user.duckling).unwrap_or(Value::Null))
    })
    .await
}

async fn active_accounts(AxState(sim): AxState<Simulator>, headers: HeaderMap) -> Response {
    handle(&sim, Endpoint::ActiveAccounts, &headers, |st, _| {
        let now = st.now();
        // An account counts as active while it holds a live token; its
        // read/write Duckling is reported running.
        let accounts: Vec<Value> = st
            .users
            .values()
            .filter(|u| u.kind == UserKind::ServiceAccount)
            .filter(|u| {
                st.tokens
                    .iter()
                    .any(|t| t.username.eq_ignore_ascii_case(&u.username) && t.is_live(now))
            })
            .map(|u| {
                json!({
                    "username": u.username,
                    "ducklings": [{ "id": "rw", "type": "read_write", "status": "active" }],
                })
            })
            .collect();
        Ok(json!({ "accounts": accounts }))
    })
    .await
}

async fn embed_session(
    AxState(sim): AxState<Simulator>,
    headers: HeaderMap,
    Path(dive_id): Path<String>,
    body: Bytes,
) -> Response {
    handle(&sim, Endpoint::EmbedSession, &headers, |st, _| {
        if st.knobs.embed_forbidden {
            return Err(SimError::new(
                403,
                "Embed sessions require the Business plan",
            ));
        }
        let body = parse_body(&body)?;
        let spec = validate::embed_session(&body).map_err(SimError::validation)?;
        let user = st
            .user(&spec.username)
            .ok_or_else(|| not_found_user(&spec.username))?;
        if user.kind != UserKind::ServiceAccount {
            return Err(SimError::new(
                400,
                "Embed sessions can only be created for service accounts",
            ));
        }
        let session = format!("mdes_{}_{}", dive_id.len(), uuid::Uuid::new_v4().simple());
        Ok(json!({ "session": session }))
    })
    .await
}

async fn no_route() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "Not Found",
    )
        .into_response()
}

pub fn router(sim: Simulator) -> Router {
    Router::new()
        .route("/v1/users", post(create_service_account))
        .route("/v1/users/{username}", delete(delete_service_account))
        .route(
            "/v1/users/{username}/tokens",
            get(list_tokens).post(create_token),
        )
        .route(
            "/v1/users/{username}/tokens/{token_id}",
            delete(revoke_token),
        )
        .route(
            "/v1/users/{username}/instances",
            get(get_instances).put(set_instances),
        )
        .route("/v1/active_accounts", get(active_accounts))
        .route("/v1/dives/{dive_id}/embed-session", post(embed_session))
        .fallback(no_route)
        .method_not_allowed_fallback(no_route)
        .with_state(sim)
}
