//! Errors of the MotherDuck client, classified for retrying.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;

/// Every operation of the API. Used in errors, logs and (bounded) metric
/// labels, so it is a closed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    CreateServiceAccount,
    DeleteServiceAccount,
    ListTokens,
    CreateToken,
    RevokeToken,
    GetDucklingConfig,
    SetDucklingConfig,
    ActiveAccounts,
    EmbedSession,
}

impl Endpoint {
    pub const ALL: [Endpoint; 9] = [
        Endpoint::CreateServiceAccount,
        Endpoint::DeleteServiceAccount,
        Endpoint::ListTokens,
        Endpoint::CreateToken,
        Endpoint::RevokeToken,
        Endpoint::GetDucklingConfig,
        Endpoint::SetDucklingConfig,
        Endpoint::ActiveAccounts,
        Endpoint::EmbedSession,
    ];

    /// A stable snake_case name, used as a metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::CreateServiceAccount => "create_service_account",
            Endpoint::DeleteServiceAccount => "delete_service_account",
            Endpoint::ListTokens => "list_tokens",
            Endpoint::CreateToken => "create_token",
            Endpoint::RevokeToken => "revoke_token",
            Endpoint::GetDucklingConfig => "get_duckling_config",
            Endpoint::SetDucklingConfig => "set_duckling_config",
            Endpoint::ActiveAccounts => "active_accounts",
            Endpoint::EmbedSession => "embed_session",
        }
    }

    /// The server's internal handler name, as reported in `data.path`.
    pub fn handler_path(self) -> &'static str {
        match self {
            Endpoint::CreateServiceAccount => "users.createServiceAccount",
            Endpoint::DeleteServiceAccount => "users.delete",
            Endpoint::ListTokens => "users.listTokens",
            Endpoint::CreateToken => "users.createToken",
            Endpoint::RevokeToken => "users.deleteToken",
            Endpoint::GetDucklingConfig => "ducklings.getDucklingConfigForUser",
            Endpoint::SetDucklingConfig => "ducklings.setDucklingConfigForUser",
            Endpoint::ActiveAccounts => "ducklings.getActiveAccounts",
            Endpoint::EmbedSession => "dives.createEmbedSession",
        }
    }

    pub fn parse(s: &str) -> Option<Endpoint> {
        Endpoint::ALL.into_iter().find(|e| e.as_str() == s)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One failed field of a 400 validation error.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct Issue {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
    /// Field path, e.g. `["username"]`; elements may be numbers for arrays.
    #[serde(default)]
    pub path: Vec<serde_json::Value>,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path: Vec<String> = self
            .path
            .iter()
            .map(|p| match p {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect();
        if path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "`{}`: {}", path.join("."), self.message)
        }
    }
}

/// The documented error body. Every field is optional: a client must
/// tolerate extra or missing fields.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct ErrorBody {
    #[serde(default)]
    pub message: Option<String>,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub issues: Vec<Issue>,
}

/// Why a MotherDuck call failed.
///
/// No variant carries a token secret: messages come from the server's error
/// body or from the transport, and response bodies are never quoted.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The server answered with an error status and (usually) a JSON body.
    #[error(
        "{endpoint}: motherduck answered {status}{}: {message}{}",
        fmt_code(code),
        fmt_issues(issues)
    )]
    Status {
        endpoint: Endpoint,
        status: u16,
        code: Option<String>,
        message: String,
        issues: Vec<Issue>,
    },
    /// 404 with a plain-text body: no such route. The base URL is wrong.
    #[error(
        "{endpoint}: `{url}` is not a MotherDuck API route (plain-text 404); check the configured API base URL"
    )]
    RouteNotFound { endpoint: Endpoint, url: String },
    /// No complete answer within the per-request timeout.
    #[error("{endpoint}: no answer within {}", humantime::format_duration(*after))]
    Timeout { endpoint: Endpoint, after: Duration },
    /// Connection refused, reset, TLS failure, and the like.
    #[error("{endpoint}: request failed: {message}")]
    Transport {
        endpoint: Endpoint,
        message: String,
        /// True when the request certainly never reached the server
        /// (connection refused), so even a create can be repeated.
        not_sent: bool,
    },
    /// A 2xx whose body is not the documented shape.
    #[error("{endpoint}: unexpected response body ({reason})")]
    Decode { endpoint: Endpoint, reason: String },
    /// A token create failed in a way that leaves open whether the server
    /// created it, and the client could not find out by listing.
    #[error(
        "{endpoint}: outcome of creating token `{name}` for `{username}` is unknown after {attempts} attempt(s): {last}"
    )]
    CreateOutcomeUnknown {
        endpoint: Endpoint,
        username: String,
        name: String,
        attempts: u32,
        last: Box<ApiError>,
    },
}

fn fmt_code(code: &Option<String>) -> String {
    code.as_deref().map(|c| format!(" {c}")).unwrap_or_default()
}

fn fmt_issues(issues: &[Issue]) -> String {
    if issues.is_empty() {
        String::new()
    } else {
        let parts: Vec<String> = issues.iter().map(ToString::to_string).collect();
        format!(" ({})", parts.join("; "))
    }
}

impl ApiError {
    pub fn endpoint(&self) -> Endpoint {
        match self {
            ApiError::Status { endpoint, .. }
            | ApiError::RouteNotFound { endpoint, .. }
            | ApiError::Timeout { endpoint, .. }
            | ApiError::Transport { endpoint, .. }
            | ApiError::Decode { endpoint, .. }
            | ApiError::CreateOutcomeUnknown { endpoint, .. } => *endpoint,
        }
    }

    /// The HTTP status, when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::Status { status, .. } => Some(*status),
            ApiError::RouteNotFound { .. } => Some(404),
            _ => None,
        }
    }

    /// The server's error `code`, such as `NOT_FOUND`.
    pub fn code(&self) -> Option<&str> {
        match self {
            ApiError::Status { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// Validation issues of a 400.
    pub fn issues(&self) -> &[Issue] {
        match self {
            ApiError::Status { issues, .. } => issues,
            _ => &[],
        }
    }

    /// An entity 404 (JSON body): the user or token does not exist.
    pub fn is_entity_not_found(&self) -> bool {
        matches!(self, ApiError::Status { status: 404, .. })
    }

    /// Whether trying the same call again later can succeed. Permanent
    /// errors (bad request, bad credentials, missing route, missing entity)
    /// need a change of input or configuration.
    pub fn is_retryable(&self) -> bool {
        match self {
            ApiError::Status { status, .. } => matches!(status, 429 | 500 | 502 | 503 | 504),
            ApiError::Timeout { .. } | ApiError::Transport { .. } => true,
            ApiError::CreateOutcomeUnknown { .. } => true,
            ApiError::RouteNotFound { .. } | ApiError::Decode { .. } => false,
        }
    }

    /// A short, bounded classification for metrics and alerts.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiError::Status { status, .. } => match status {
                400 => "bad_request",
                401 => "unauthorized",
                403 => "forbidden",
                404 => "not_found",
                409 => "conflict",
                429 => "rate_limited",
                500..=599 => "server_error",
                _ => "http_error",
            },
            ApiError::RouteNotFound { .. } => "route_not_found",
            ApiError::Timeout { .. } => "timeout",
            ApiError::Transport { .. } => "transport",
            ApiError::Decode { .. } => "decode",
            ApiError::CreateOutcomeUnknown { .. } => "create_outcome_unknown",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_error_message_names_endpoint_code_and_issue_fields() {
        let e = ApiError::Status {
            endpoint: Endpoint::CreateServiceAccount,
            status: 400,
            code: Some("BAD_REQUEST".into()),
            message: "Username must start with an alphabetic character".into(),
            issues: vec![Issue {
                code: "invalid_string".into(),
                message: "Username must start with an alphabetic character".into(),
                path: vec![serde_json::json!("username")],
            }],
        };
        assert_eq!(
            e.to_string(),
            "create_service_account: motherduck answered 400 BAD_REQUEST: Username must start with an alphabetic character (`username`: Username must start with an alphabetic character)"
        );
        assert!(!e.is_retryable());
        assert_eq!(e.reason(), "bad_request");
    }

    #[test]
    fn classification() {
        let s = |status| ApiError::Status {
            endpoint: Endpoint::ListTokens,
            status,
            code: None,
            message: String::new(),
            issues: vec![],
        };
        for st in [429, 500, 502, 503, 504] {
            assert!(s(st).is_retryable(), "{st}");
        }
        for st in [400, 401, 403, 404, 409] {
            assert!(!s(st).is_retryable(), "{st}");
        }
        assert!(s(404).is_entity_not_found());
        let route = ApiError::RouteNotFound {
            endpoint: Endpoint::ListTokens,
            url: "http://x/v1".into(),
        };
        assert!(!route.is_entity_not_found());
        assert!(!route.is_retryable());
    }
}
