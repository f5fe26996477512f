//! Request validation with the documented rules, reporting failures as
//! zod-style issues (`code`, `message`, `path`), one per failed field.
//!
//! Bodies are checked as `serde_json::Value` rather than through serde
//! structs so that every failure becomes an issue with the server's codes
//! instead of a serde message.

use serde_json::{Map, Value, json};

use crate::motherduck::{
    DucklingConfig, InstanceSize, Issue, ReadScalingConfig, ReadWriteConfig, TokenType,
};

pub const TTL_MIN: u64 = 300;
pub const TTL_MAX: u64 = 31_536_000;
pub const NAME_MAX: usize = 255;
pub const DESCRIPTION_MAX: usize = 1000;
pub const USERNAME_MIN: usize = 3;
pub const USERNAME_MAX: usize = 255;
pub const FLOCK_MAX: u64 = 64;
pub const COOLDOWN_MIN: u64 = 60;
pub const COOLDOWN_MAX: u64 = 86_400;
pub const RESERVED_TOKEN_NAMES: [&str; 2] = ["MotherDuck Extension", "MotherDuck Flights"];

fn issue(code: &str, message: impl Into<String>, path: &[&str]) -> Issue {
    Issue {
        code: code.to_owned(),
        message: message.into(),
        path: path.iter().map(|p| json!(p)).collect(),
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn invalid_type(expected: &str, got: Option<&Value>, path: &[&str]) -> Issue {
    let message = match got {
        None => "Required".to_owned(),
        Some(v) => format!("Expected {expected}, received {}", type_name(v)),
    };
    issue("invalid_type", message, path)
}

/// The body as an object, or the issue saying it is not one.
pub fn object(body: &Value) -> Result<&Map<String, Value>, Vec<Issue>> {
    body.as_object()
        .ok_or_else(|| vec![invalid_type("object", Some(body), &[])])
}

/// Username rules: 3–255 characters, a letter first, then letters, digits
/// and underscores.
pub fn username(value: Option<&Value>, path: &[&str]) -> Result<String, Vec<Issue>> {
    let Some(Value::String(s)) = value else {
        return Err(vec![invalid_type("string", value, path)]);
    };
    let mut issues = Vec::new();
    let len = s.chars().count();
    if len < USERNAME_MIN {
        issues.push(issue(
            "too_small",
            format!("Username must contain at least {USERNAME_MIN} character(s)"),
            path,
        ));
    }
    if len > USERNAME_MAX {
        issues.push(issue(
            "too_big",
            format!("Username must contain at most {USERNAME_MAX} character(s)"),
            path,
        ));
    }
    if !s.chars().next().is_some_and(|c| c.is_ascii_alphabetic()) {
        issues.push(issue(
            "invalid_string",
            "Username must start with an alphabetic character",
            path,
        ));
    }
    if !s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        issues.push(issue(
            "invalid_string",
            "Username may only contain letters, numbers and underscores",
            path,
        ));
    }
    if issues.is_empty() {
        Ok(s.clone())
    } else {
        Err(issues)
    }
}

/// A validated token-create body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSpec {
    pub name: String,
    pub ttl: Option<u64>,
    pub token_type: TokenType,
    pub description: Option<String>,
}

/// `POST /v1/users/{username}/tokens`. `ttl` is accepted as a number or a
/// numeric string, as MotherDuck's own Python sample sends it.
pub fn create_token(body: &Value) -> Result<TokenSpec, Vec<Issue>> {
    let obj = object(body)?;
    let mut issues = Vec::new();

    let name = match obj.get("name") {
        Some(Value::String(s)) => {
            let len = s.chars().count();
            if len == 0 {
                issues.push(issue(
                    "too_small",
                    "String must contain at least 1 character(s)",
                    &["name"],
                ));
            } else if len > NAME_MAX {
                issues.push(issue(
                    "too_big",
                    format!("String must contain at most {NAME_MAX} character(s)"),
                    &["name"],
                ));
            } else if RESERVED_TOKEN_NAMES.contains(&s.as_str()) {
                issues.push(issue(
                    "custom",
                    format!("Token name `{s}` is reserved"),
                    &["name"],
                ));
            }
            s.clone()
        }
        other => {
            issues.push(invalid_type("string", other, &["name"]));
            String::new()
        }
    };

    let ttl = match obj.get("ttl") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let n = match v {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.trim().parse::<f64>().ok(),
                _ => None,
            };
            match n {
                None => {
                    issues.push(invalid_type("number", Some(v), &["ttl"]));
                    None
                }
                Some(n) if n.fract() != 0.0 || !n.is_finite() => {
                    issues.push(issue(
                        "invalid_type",
                        "Expected integer, received float",
                        &["ttl"],
                    ));
                    None
                }
                Some(n) if n < TTL_MIN as f64 => {
                    issues.push(issue(
                        "too_small",
                        format!("Number must be greater than or equal to {TTL_MIN}"),
                        &["ttl"],
                    ));
                    None
                }
                Some(n) if n > TTL_MAX as f64 => {
                    issues.push(issue(
                        "too_big",
                        format!("Number must be less than or equal to {TTL_MAX}"),
                        &["ttl"],
                    ));
                    None
                }
                Some(n) => Some(n as u64),
            }
        }
    };

    let token_type = match obj.get("token_type") {
        None | Some(Value::Null) => TokenType::ReadWrite,
        Some(Value::String(s)) if s == "read_write" => TokenType::ReadWrite,
        Some(Value::String(s)) if s == "read_scaling" => TokenType::ReadScaling,
        Some(v) => {
            issues.push(issue(
                "invalid_enum_value",
                format!(
                    "Invalid enum value. Expected 'read_write' | 'read_scaling', received {}",
                    v
                ),
                &["token_type"],
            ));
            TokenType::ReadWrite
        }
    };

    let description = match obj.get("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => {
            let len = s.chars().count();
            if len == 0 || len > DESCRIPTION_MAX {
                issues.push(issue(
                    if len == 0 { "too_small" } else { "too_big" },
                    format!("String must contain between 1 and {DESCRIPTION_MAX} character(s)"),
                    &["description"],
                ));
            }
            Some(s.clone())
        }
        Some(v) => {
            issues.push(invalid_type("string", Some(v), &["description"]));
            None
        }
    };

    if issues.is_empty() {
        Ok(TokenSpec {
            name,
            ttl,
            token_type,
            description,
        })
    } else {
        Err(issues)
    }
}

fn instance_size(
    block: &Map<String, Value>,
    path: &[&str],
    issues: &mut Vec<Issue>,
) -> InstanceSize {
    let mut p = path.to_vec();
    p.push("instance_size");
    match block.get("instance_size") {
        Some(Value::String(s)) => InstanceSize::parse(s).unwrap_or_else(|| {
            issues.push(issue(
                "invalid_enum_value",
                format!(
                    "Invalid enum value. Expected 'pulse' | 'standard' | 'jumbo' | 'mega' | 'giga', received '{s}'"
                ),
                &p,
            ));
            InstanceSize::Unknown
        }),
        other => {
            issues.push(invalid_type("string", other, &p));
            InstanceSize::Unknown
        }
    }
}

fn integer_in(
    value: Option<&Value>,
    min: u64,
    max: u64,
    path: &[&str],
    issues: &mut Vec<Issue>,
) -> Option<u64> {
    match value {
        Some(Value::Number(n)) => match n.as_u64() {
            Some(v) if (min..=max).contains(&v) => Some(v),
            _ if n.as_f64().is_some_and(|f| f.fract() != 0.0) => {
                issues.push(issue(
                    "invalid_type",
                    "Expected integer, received float",
                    path,
                ));
                None
            }
            _ if n.as_f64().is_some_and(|f| f < min as f64) => {
                issues.push(issue(
                    "too_small",
                    format!("Number must be greater than or equal to {min}"),
                    path,
                ));
                None
            }
            _ => {
                issues.push(issue(
                    "too_big",
                    format!("Number must be less than or equal to {max}"),
                    path,
                ));
                None
            }
        },
        other => {
            issues.push(invalid_type("number", other, path));
            None
        }
    }
}

fn cooldown(
    block: &Map<String, Value>,
    size: InstanceSize,
    path: &[&str],
    issues: &mut Vec<Issue>,
) -> Option<u32> {
    let mut p = path.to_vec();
    p.push("cooldown_seconds");
    match block.get("cooldown_seconds") {
        None | Some(Value::Null) => None,
        Some(v) => {
            if size == InstanceSize::Pulse {
                issues.push(issue(
                    "custom",
                    "cooldown_seconds is not supported for pulse instances",
                    &p,
                ));
                return None;
            }
            integer_in(Some(v), COOLDOWN_MIN, COOLDOWN_MAX, &p, issues).map(|v| v as u32)
        }
    }
}

fn block<'a>(
    parent: &'a Map<String, Value>,
    key: &'a str,
    path: &[&'a str],
    issues: &mut Vec<Issue>,
) -> Option<(&'a Map<String, Value>, Vec<&'a str>)> {
    let mut p = path.to_vec();
    p.push(key);
    match parent.get(key) {
        Some(Value::Object(m)) => Some((m, p)),
        other => {
            issues.push(invalid_type("object", other, &p));
            None
        }
    }
}

/// `PUT /v1/users/{username}/instances`: both blocks, `instance_size` and
/// `flock_size` required; `flock_size` 0–64; `cooldown_seconds` 60–86400
/// and not for pulse.
pub fn duckling_config(body: &Value) -> Result<DucklingConfig, Vec<Issue>> {
    let obj = object(body)?;
    let mut issues = Vec::new();
    let Some((config, cpath)) = block(obj, "config", &[], &mut issues) else {
        return Err(issues);
    };
    let rw = block(config, "read_write", &cpath, &mut issues).map(|(b, p)| {
        let size = instance_size(b, &p, &mut issues);
        let cooldown_seconds = cooldown(b, size, &p, &mut issues);
        ReadWriteConfig {
            instance_size: size,
            cooldown_seconds,
        }
    });
    let rs = block(config, "read_scaling", &cpath, &mut issues).map(|(b, p)| {
        let size = instance_size(b, &p, &mut issues);
        let mut fp = p.clone();
        fp.push("flock_size");
        let flock = integer_in(b.get("flock_size"), 0, FLOCK_MAX, &fp, &mut issues);
        let cooldown_seconds = cooldown(b, size, &p, &mut issues);
        ReadScalingConfig {
            instance_size: size,
            flock_size: flock.unwrap_or(0) as u32,
            cooldown_seconds,
        }
    });
    match (rw, rs) {
        (Some(read_write), Some(read_scaling)) if issues.is_empty() => Ok(DucklingConfig {
            read_write,
            read_scaling,
        }),
        _ => Err(issues),
    }
}

/// A validated embed-session body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedSpec {
    pub username: String,
    pub session_hint: Option<String>,
}

/// `POST /v1/dives/{dive_id}/embed-session`.
pub fn embed_session(body: &Value) -> Result<EmbedSpec, Vec<Issue>> {
    let obj = object(body)?;
    let mut issues = Vec::new();
    let username = match obj.get("username") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) => {
            issues.push(issue(
                "too_small",
                "String must contain at least 1 character(s)",
                &["username"],
            ));
            String::new()
        }
        other => {
            issues.push(invalid_type("string", other, &["username"]));
            String::new()
        }
    };
    let session_hint = match obj.get("session_hint") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(v) => {
            issues.push(invalid_type("string", Some(v), &["session_hint"]));
            None
        }
    };
    if issues.is_empty() {
        Ok(EmbedSpec {
            username,
            session_hint,
        })
    } else {
        Err(issues)
    }
}
