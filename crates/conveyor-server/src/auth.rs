//! API tokens: who may call which route.
//!
//! A token is a random secret (`cvt_` and 43 characters, [`generate`]) a client sends as
//! `Authorization: Bearer <token>`. The server keeps only its SHA-256 ([`TokenConfig::sha256`],
//! or the token read from an environment variable named by [`TokenConfig::env`] and hashed at
//! start), compares hashes in constant time with every configured token, and grants what the
//! token's roles allow:
//!
//! | role | allows |
//! |---|---|
//! | `read` | every `GET`: topics, records, lag, pauses, schedules, jobs, request stats, `/metrics` |
//! | `enqueue` | `POST /v1/topics/{topic}/jobs`, `.../jobs/batch`, `.../requests`, for the topics its `topics` patterns match (all when it has none) |
//! | `admin` | everything: topics, schedules, pause and resume, cancel, dead-letter replay, and what `read` and `enqueue` allow |
//!
//! `/healthz`, `/readyz` and `/openapi.json` need no token (probes and documentation). With no
//! token configured the API is open, as `conveyor dev` is on loopback; `conveyor serve` refuses to
//! listen beyond loopback that way unless `api.allow_unauthenticated = true`.
//!
//! No token, an unknown one, or a malformed header: `401 unauthenticated` with
//! `WWW-Authenticate: Bearer`. A known token without the right: `403 forbidden`, naming the role
//! or topic it lacks but never the token.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::ApiError;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Every `GET`.
    Read,
    /// Enqueue jobs, batches and requests (to the token's topics).
    Enqueue,
    /// Everything.
    Admin,
}

/// `[[api.tokens]]`: one token. Give exactly one of `sha256` and `env`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// A name for logs and errors (never the token).
    pub name: String,
    /// What the token may do.
    pub roles: Vec<Role>,
    /// For `enqueue`: the topics it may enqueue to, each exact (`emails`) or a prefix ending in
    /// `*` (`billing.*`). Empty: every topic.
    #[serde(default)]
    pub topics: Vec<String>,
    /// The token's SHA-256, 64 hex digits (`conveyor tokens create` prints it).
    #[serde(default)]
    pub sha256: Option<String>,
    /// The environment variable holding the token itself (hashed at start).
    #[serde(default)]
    pub env: Option<String>,
}

impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenConfig")
            .field("name", &self.name)
            .field("roles", &self.roles)
            .field("topics", &self.topics)
            .field("sha256", &self.sha256.as_ref().map(|_| "<redacted>"))
            .field("env", &self.env)
            .finish()
    }
}

/// Why a token configuration cannot work (the configuration key is added by the caller).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TokenError(pub String);

/// A token ready to be checked.
#[derive(Clone)]
struct Entry {
    name: String,
    hash: [u8; 32],
    read: bool,
    enqueue: bool,
    admin: bool,
    topics: Vec<String>,
}

/// The configured tokens. Empty: the API is open.
#[derive(Clone, Default)]
pub struct Tokens {
    entries: Arc<Vec<Entry>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.entries.iter().map(|e| e.name.as_str()).collect();
        f.debug_struct("Tokens").field("names", &names).finish()
    }
}

/// A new random token: `cvt_` and 32 random bytes in unpadded base64url.
pub fn generate() -> String {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut bytes);
    format!(
        "cvt_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// The SHA-256 of `token` in hex, as `sha256` in `[[api.tokens]]` holds it.
pub fn hash_hex(token: &str) -> String {
    Sha256::digest(token.trim().as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn parse_hex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

impl Tokens {
    /// Builds the tokens, reading `env` tokens through `lookup`.
    pub fn new(
        configs: &[TokenConfig],
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Tokens, (usize, &'static str, TokenError)> {
        let mut entries = Vec::new();
        for (i, c) in configs.iter().enumerate() {
            let err = |key: &'static str, m: String| Err((i, key, TokenError(m)));
            if c.name.trim().is_empty() {
                return err(
                    "name",
                    "give the token a name (shown in logs, never the token)".into(),
                );
            }
            if configs[..i].iter().any(|o| o.name == c.name) {
                return err("name", format!("`{}` names two tokens", c.name));
            }
            if c.roles.is_empty() {
                return err(
                    "roles",
                    "give at least one of \"read\", \"enqueue\", \"admin\"".into(),
                );
            }
            let enqueue = c.roles.contains(&Role::Enqueue);
            if !c.topics.is_empty() && !enqueue {
                return err(
                    "topics",
                    "topics limit the `enqueue` role; add it or remove topics".into(),
                );
            }
            for t in &c.topics {
                let name = t.strip_suffix('*').unwrap_or(t);
                if t.is_empty() || name.contains('*') {
                    return err(
                        "topics",
                        format!("`{t}` is not a topic or a prefix ending in `*`"),
                    );
                }
            }
            let hash = match (&c.sha256, &c.env) {
                (Some(h), None) => match parse_hex(&h.to_ascii_lowercase()) {
                    Some(h) => h,
                    None => return err("sha256", "must be 64 hex digits, the SHA-256 of the token (`conveyor tokens hash` prints it)".into()),
                },
                (None, Some(var)) => match lookup(var).filter(|v| !v.trim().is_empty()) {
                    Some(token) => {
                        let mut h = [0u8; 32];
                        h.copy_from_slice(&Sha256::digest(token.trim().as_bytes()));
                        h
                    }
                    None => return err("env", format!("the environment variable {var} is not set or empty: set it to the token")),
                },
                _ => return err("sha256", "give exactly one of `sha256` (the token's hash) and `env` (a variable holding the token)".into()),
            };
            if entries.iter().any(|e: &Entry| e.hash == hash) {
                return err(
                    "sha256",
                    format!(
                        "token `{}` is the same secret as another token: each needs its own",
                        c.name
                    ),
                );
            }
            entries.push(Entry {
                name: c.name.clone(),
                hash,
                admin: c.roles.contains(&Role::Admin),
                enqueue,
                read: c.roles.contains(&Role::Read),
                topics: c.topics.clone(),
            });
        }
        Ok(Tokens {
            entries: Arc::new(entries),
        })
    }

    /// Whether any token is configured (else the API is open).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The token `header` (an `Authorization` value) names, comparing its hash with every
    /// configured one in constant time.
    fn find(&self, header: Option<&str>) -> Result<&Entry, ApiError> {
        let token = header
            .and_then(|h| {
                let (scheme, rest) = h.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                ApiError::Unauthenticated(
                    "send a token: `Authorization: Bearer <token>` (the CLI sends CONVEYOR_TOKEN)"
                        .into(),
                )
            })?;
        let hash = Sha256::digest(token.as_bytes());
        let mut found = None;
        for e in self.entries.iter() {
            // every entry is compared, so the time says nothing about which matched
            if bool::from(e.hash.ct_eq(hash.as_slice())) {
                found = Some(e);
            }
        }
        found.ok_or_else(|| {
            ApiError::Unauthenticated(
                "the token is not one this server knows: check CONVEYOR_TOKEN or the token's entry in [[api.tokens]]".into(),
            )
        })
    }
}

/// What a route needs.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Need {
    Open,
    Read,
    Enqueue(Option<String>),
    Admin,
}

fn need(method: &Method, route: &str, topic: Option<String>) -> Need {
    match route {
        "/healthz" | "/readyz" | "/openapi.json" => Need::Open,
        "/v1/topics/{topic}/jobs"
        | "/v1/topics/{topic}/jobs/batch"
        | "/v1/topics/{topic}/requests"
            if method == Method::POST =>
        {
            Need::Enqueue(topic)
        }
        _ if method == Method::GET || method == Method::HEAD => Need::Read,
        // anything else, including routes added later and not listed here, needs `admin`
        _ => Need::Admin,
    }
}

fn topic_allowed(patterns: &[String], topic: &str) -> bool {
    patterns.is_empty()
        || patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => topic.starts_with(prefix),
            None => p == topic,
        })
}

/// `routes` with [`authorize`] on each once a token is configured (none: the API is open).
pub fn guard<S: Clone + Send + Sync + 'static>(
    routes: axum::Router<S>,
    tokens: Tokens,
) -> axum::Router<S> {
    match tokens.is_empty() {
        true => routes,
        false => routes.route_layer(axum::middleware::from_fn_with_state(tokens, authorize)),
    }
}

/// The middleware (installed with `route_layer`, so it sees the matched route).
pub async fn authorize(
    State(tokens): State<Tokens>,
    matched: Option<MatchedPath>,
    params: Option<Path<HashMap<String, String>>>,
    req: Request,
    next: Next,
) -> Response {
    let route = matched.as_ref().map(|m| m.as_str()).unwrap_or("");
    let topic = params.and_then(|Path(mut p)| p.remove("topic"));
    let need = need(req.method(), route, topic);
    if need == Need::Open {
        return next.run(req).await;
    }
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let entry = match tokens.find(header) {
        Ok(e) => e,
        Err(e) => return e.into_response(),
    };
    let allowed = entry.admin
        || match &need {
            Need::Open => true,
            Need::Read => entry.read,
            Need::Enqueue(Some(topic)) => entry.enqueue && topic_allowed(&entry.topics, topic),
            Need::Enqueue(None) => entry.enqueue && entry.topics.is_empty(),
            Need::Admin => false,
        };
    if !allowed {
        let what = match &need {
            Need::Read => "the `read` role".to_owned(),
            Need::Enqueue(Some(t)) if entry.enqueue => {
                format!(
                    "enqueueing to `{t}` (its topics: {})",
                    entry.topics.join(", ")
                )
            }
            Need::Enqueue(_) => "the `enqueue` role".to_owned(),
            _ => "the `admin` role".to_owned(),
        };
        return ApiError::Forbidden(format!(
            "token `{}` does not allow {} {}: it needs {what}",
            entry.name,
            req.method(),
            route
        ))
        .into_response();
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_need_what_the_table_says() {
        let t = || Some("emails".to_owned());
        assert_eq!(need(&Method::GET, "/healthz", None), Need::Open);
        assert_eq!(
            need(&Method::GET, "/v1/topics/{topic}/records", t()),
            Need::Read
        );
        assert_eq!(
            need(&Method::POST, "/v1/topics/{topic}/jobs", t()),
            Need::Enqueue(t())
        );
        assert_eq!(
            need(&Method::POST, "/v1/topics/{topic}/dlq:replay", t()),
            Need::Admin
        );
        assert_eq!(need(&Method::DELETE, "/v1/jobs/{id}", None), Need::Admin);
        assert_eq!(need(&Method::POST, "/v1/some/new/route", None), Need::Admin);
    }

    #[test]
    fn topic_patterns_match_exactly_or_by_prefix() {
        let p = vec!["emails".to_owned(), "billing.*".to_owned()];
        assert!(topic_allowed(&p, "emails"));
        assert!(topic_allowed(&p, "billing.invoices"));
        assert!(!topic_allowed(&p, "emails2"));
        assert!(!topic_allowed(&p, "billing"));
        assert!(topic_allowed(&[], "anything"));
    }

    #[test]
    fn debug_never_shows_a_hash_and_tokens_hash_as_printed() {
        let token = generate();
        assert!(token.starts_with("cvt_") && token.len() == 47, "{token}");
        let c = TokenConfig {
            name: "ci".into(),
            roles: vec![Role::Read],
            topics: vec![],
            sha256: Some(hash_hex(&token)),
            env: None,
        };
        assert!(!format!("{c:?}").contains(c.sha256.as_deref().unwrap()));
        let tokens = Tokens::new(&[c], |_| None).unwrap();
        assert_eq!(
            tokens.find(Some(&format!("Bearer {token}"))).unwrap().name,
            "ci"
        );
        assert!(tokens.find(Some("Bearer cvt_wrong")).is_err());
        assert!(tokens.find(Some(&format!("Basic {token}"))).is_err());
        assert!(tokens.find(None).is_err());
    }
}
