//! A route's secrets: its Standard Webhooks signing secrets and its static headers, from the file
//! or from environment variables, checked at load and never printed.
//!
//! ```toml
//! [[routes]]
//! topic = "emails"
//! url = "https://mailer.internal/hook"
//! signing_secrets = ["whsec_NEW...", "whsec_OLD..."]      # both sign during a rotation
//! signing_secret_env = "EMAILS_SIGNING_SECRET"            # more, space-separated, from the environment
//! headers = { "X-Team" = "mail" }                         # sent with every call, values secret
//! headers_env = { Authorization = "MAILER_AUTHORIZATION" } # a header's value from the environment
//! ```
//!
//! Environment values are read once, at load, from the environment [`Config::load`] is given
//! (nothing downstream reads the environment), and merged into `signing_secrets` and `headers`.
//! Errors name the key and, for the environment, the variable; never a value. `Debug` of a
//! route shows its URL without user info and `***` for every secret.

use std::collections::BTreeMap;

use conveyor_core::redact;
use conveyor_runtime::worker::webhook::signing::SigningSecret;
use conveyor_runtime::WebhookHandler;

use super::{Config, ConfigError, RouteConfig};

/// Merges the environment's values into the routes' `signing_secrets` and `headers`.
pub(super) fn resolve(config: &mut Config, env: &[(String, String)]) -> Result<(), ConfigError> {
    let lookup = |name: &str| {
        env.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    for (i, route) in config.routes.iter_mut().enumerate() {
        if let Some(var) = &route.signing_secret_env {
            let Some(value) = lookup(var) else {
                return Err(ConfigError::Invalid {
                    key: format!("routes[{i}].signing_secret_env"),
                    message: format!("the environment variable `{var}` is not set: export it with the route's signing secret(s), `whsec_...`, space-separated"),
                });
            };
            route
                .signing_secrets
                .extend(value.split_whitespace().map(str::to_owned));
        }
        for (header, var) in &route.headers_env {
            let Some(value) = lookup(var) else {
                return Err(ConfigError::Invalid {
                    key: format!("routes[{i}].headers_env.{header}"),
                    message: format!("the environment variable `{var}` is not set: export it with the header's value"),
                });
            };
            route.headers.insert(header.clone(), value);
        }
    }
    Ok(())
}

/// Checks route `i`'s secrets and headers (the messages never contain a value).
pub(super) fn check(route: &RouteConfig, i: usize) -> Result<(), ConfigError> {
    for (j, s) in route.signing_secrets.iter().enumerate() {
        if let Err(e) = SigningSecret::parse(s) {
            return Err(ConfigError::Invalid {
                key: format!("routes[{i}].signing_secrets[{j}]"),
                message: format!("{e} (the value is not shown)"),
            });
        }
    }
    if route.signing_secrets.len() > 8 {
        return Err(ConfigError::Invalid {
            key: format!("routes[{i}].signing_secrets"),
            message: format!(
                "{} secrets: at most 8 (a rotation needs two)",
                route.signing_secrets.len()
            ),
        });
    }
    if let Err(e) =
        WebhookHandler::new("http://check", route.timeout()).with_headers(route.headers.clone())
    {
        return Err(ConfigError::Invalid {
            key: format!("routes[{i}].headers"),
            message: e.to_string(),
        });
    }
    Ok(())
}

impl RouteConfig {
    /// A route delivering `topic` to `url` with every other setting at its default.
    pub fn new(topic: impl Into<String>, url: impl Into<String>) -> Self {
        RouteConfig {
            topic: topic.into(),
            url: url.into(),
            group: None,
            concurrency: super::default_route_concurrency(),
            timeout_ms: super::default_route_timeout(),
            max_buffered: super::default_route_buffer(),
            retry: None,
            ordered_retries: true,
            priorities: BTreeMap::new(),
            strict_priority: false,
            signing_secrets: Vec::new(),
            signing_secret_env: None,
            headers: BTreeMap::new(),
            headers_env: BTreeMap::new(),
            job_states: true,
        }
    }

    /// The URL as it may be printed: without user info or credential-looking query values.
    pub fn shown_url(&self) -> String {
        redact::url(&self.url)
    }

    /// The route's webhook handler: its URL, timeout, signing secrets and static headers (all
    /// checked at load: [`Config::validate`]).
    pub fn webhook_handler(&self) -> WebhookHandler {
        let secrets = self
            .signing_secrets
            .iter()
            .filter_map(|s| SigningSecret::parse(s).ok())
            .collect();
        let handler =
            WebhookHandler::new(self.url.clone(), self.timeout()).with_signing_secrets(secrets);
        match handler.clone().with_headers(self.headers.clone()) {
            Ok(h) => h,
            // refused at load; a route built by hand with a bad header sends none of them
            Err(e) => {
                tracing::error!(route = %self.topic, error = %e, "the route's static headers are not sent");
                handler
            }
        }
    }
}

impl std::fmt::Debug for RouteConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let masked = |m: &BTreeMap<String, String>| {
            m.keys()
                .map(|k| (k.clone(), redact::MASK))
                .collect::<BTreeMap<_, _>>()
        };
        f.debug_struct("RouteConfig")
            .field("topic", &self.topic)
            .field("url", &self.shown_url())
            .field("group", &self.group)
            .field("concurrency", &self.concurrency)
            .field("timeout_ms", &self.timeout_ms)
            .field("max_buffered", &self.max_buffered)
            .field("retry", &self.retry)
            .field("ordered_retries", &self.ordered_retries)
            .field("priorities", &self.priorities)
            .field("strict_priority", &self.strict_priority)
            .field(
                "signing_secrets",
                &vec![redact::MASK; self.signing_secrets.len()],
            )
            .field("signing_secret_env", &self.signing_secret_env)
            .field("headers", &masked(&self.headers))
            .field("headers_env", &self.headers_env)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Config, String> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("conveyor.toml");
        std::fs::write(&p, toml).unwrap();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::load(Some(&p), &env).map_err(|e| e.to_string())
    }

    #[test]
    fn secrets_from_the_file_and_the_environment_are_merged_and_never_shown() {
        let c = load(
            &format!("[[routes]]\ntopic = \"t\"\nurl = \"http://u:hunter2@h/x\"\nsigning_secrets = [\"{SECRET}\"]\nsigning_secret_env = \"S\"\nheaders = {{ X-A = \"plain-secret\" }}\nheaders_env = {{ Authorization = \"AUTH\" }}\n"),
            &[("S", "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"), ("AUTH", "Bearer tok-from-env")],
        )
        .unwrap();
        let r = &c.routes[0];
        assert_eq!(r.signing_secrets.len(), 2);
        assert_eq!(r.headers["Authorization"], "Bearer tok-from-env");
        let shown = format!("{c:?} {:?}", r.webhook_handler());
        for secret in [
            SECRET,
            "AAAAAAAA",
            "hunter2",
            "plain-secret",
            "tok-from-env",
        ] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(shown.contains("http://***@h/x"), "{shown}");
    }

    #[test]
    fn bad_secrets_and_headers_are_refused_without_their_values() {
        let route =
            |rest: &str| format!("[[routes]]\ntopic = \"t\"\nurl = \"http://h/x\"\n{rest}\n");
        for (rest, env, key) in [
            (
                "signing_secrets = [\"hunter2-not-whsec\"]",
                vec![],
                "routes[0].signing_secrets[0]",
            ),
            (
                "signing_secrets = [\"whsec_aHVudGVyMg\"]",
                vec![],
                "routes[0].signing_secrets[0]",
            ),
            (
                "signing_secret_env = \"MISSING\"",
                vec![],
                "routes[0].signing_secret_env",
            ),
            (
                "signing_secret_env = \"S\"",
                vec![("S", "hunter2")],
                "routes[0].signing_secrets[0]",
            ),
            (
                "headers = { Conveyor-Attempt = \"hunter2\" }",
                vec![],
                "routes[0].headers",
            ),
            (
                "headers = { \"a b\" = \"hunter2\" }",
                vec![],
                "routes[0].headers",
            ),
            (
                "headers = { X = \"hunter2\\n\" }",
                vec![],
                "routes[0].headers",
            ),
            (
                "headers_env = { X = \"MISSING\" }",
                vec![],
                "routes[0].headers_env.X",
            ),
        ] {
            let e = load(&route(rest), &env).unwrap_err();
            assert!(e.contains(&format!("`{key}`")), "{rest}: {e}");
            assert!(
                !e.contains("hunter2") && !e.contains("aHVudGVyMg"),
                "{rest}: {e}"
            );
        }
    }
}
