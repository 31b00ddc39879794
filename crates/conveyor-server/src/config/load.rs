//! Loading: `conveyor.toml` (or the file given), then the `CONVEYOR_*` variables the binary
//! passes (never read from the process here), secrets resolved and tokens hashed, then
//! validation ([`Config::load`]); and the messages of a figment error, which never show a
//! secret-looking value.

use super::*;

/// Environment variables with the prefix that are not configuration keys (and `CONVEYOR_TEST_*`,
/// read by the tests).
/// `CONVEYOR_TOKEN` is the CLI's token (a server may run where it is set).
const NOT_CONFIG: &[&str] = &[
    "config",
    "log",
    "log_format",
    "url",
    "skip_live",
    "cache",
    "token",
];

/// The environment variables the file names as holders of secrets (`[[api.tokens]] env`,
/// `routes.signing_secret_env`, `routes.headers_env`): read as secrets, never as keys, whatever
/// their names (`CONVEYOR_TOKEN_OPS` would otherwise be read as a key `token_ops`).
fn secret_variables(file: &Figment) -> Vec<String> {
    let Ok(v) = file.extract::<serde_json::Value>() else {
        return Vec::new();
    };
    let mut names = Vec::new();
    for t in v["api"]["tokens"].as_array().into_iter().flatten() {
        names.extend(t["env"].as_str().map(str::to_owned));
    }
    for r in v["routes"].as_array().into_iter().flatten() {
        names.extend(r["signing_secret_env"].as_str().map(str::to_owned));
        if let Some(h) = r["headers_env"].as_object() {
            names.extend(h.values().filter_map(|v| v.as_str().map(str::to_owned)));
        }
    }
    names
}

impl Config {
    /// Loads `path` (when given; a missing file is an error) or `./conveyor.toml` (when it exists),
    /// then applies `CONVEYOR_*` variables from `env`, then validates.
    pub fn load(path: Option<&Path>, env: &[(String, String)]) -> Result<Config, ConfigError> {
        let mut fig = Figment::new();
        match path {
            Some(p) if !p.exists() => {
                return Err(ConfigError::Invalid {
                    key: "--config".into(),
                    message: format!("{} does not exist", p.display()),
                })
            }
            Some(p) => fig = fig.merge(Toml::file(p)),
            None if Path::new("conveyor.toml").exists() => {
                fig = fig.merge(Toml::file("conveyor.toml"))
            }
            None => {}
        }
        let secrets = secret_variables(&fig);
        let vars = env
            .iter()
            .filter(|(k, _)| !secrets.contains(k))
            .cloned()
            .collect();
        let fig = fig.merge(EnvList { vars });
        let mut config: Config = fig
            .extract()
            .map_err(|e| ConfigError::Parse(format_figment(e)))?;
        route_secrets::resolve(&mut config, env)?;
        config.validate()?;
        // tokens read from the environment are kept only as their hash from here on
        let lookup = |var: &str| env.iter().find(|(k, _)| k == var).map(|(_, v)| v.clone());
        crate::auth::Tokens::new(&config.api.tokens, lookup).map_err(|(i, key, e)| {
            ConfigError::Invalid {
                key: format!("api.tokens[{i}].{key}"),
                message: e.0,
            }
        })?;
        for t in &mut config.api.tokens {
            if let Some(token) = t.env.as_deref().and_then(lookup) {
                t.sha256 = Some(crate::auth::hash_hex(&token));
                t.env = None;
            }
        }
        Ok(config)
    }
}

/// Whether a configuration key's value must never appear in a message.
fn secret_looking(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "token", "ssl.key.pem", "ssl_key"]
        .iter()
        .any(|s| k.contains(s))
}

pub(crate) fn format_figment(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            // `topics.0.name` reads as the documented `topics[0].name`
            let mut key = String::new();
            for seg in &e.path {
                if seg.parse::<usize>().is_ok() {
                    key.push_str(&format!("[{seg}]"));
                } else {
                    if !key.is_empty() {
                        key.push('.');
                    }
                    key.push_str(seg);
                }
            }
            let source = e
                .metadata
                .as_ref()
                .map(|m| m.name.to_string())
                .unwrap_or_default();
            if key.is_empty() {
                format!("{} ({source})", e.kind)
            } else if secret_looking(&key) {
                // figment's messages quote the value ("found unsigned int `123456`")
                format!("`{key}`: not a valid value (the value is not shown: the key names a secret; quote it as a string) ({source})")
            } else {
                format!("`{key}`: {} ({source})", e.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A figment provider reading `CONVEYOR_*` pairs from a given list (the binary passes the process
/// environment), so tests never touch global state.
pub(super) struct EnvList {
    pub(super) vars: Vec<(String, String)>,
}

impl figment::Provider for EnvList {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named("environment variable(s)")
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let mut dict = figment::value::Dict::new();
        for (k, v) in &self.vars {
            let Some(rest) = k.strip_prefix("CONVEYOR_") else {
                continue;
            };
            let key = rest.to_ascii_lowercase();
            if NOT_CONFIG.contains(&key.as_str()) || key.starts_with("test_") {
                continue;
            }
            let mut path: Vec<String> = key.split("__").map(str::to_owned).collect();
            // librdkafka property names use dots, which shells cannot export:
            // CONVEYOR_KAFKA__PROPERTIES__SASL_PASSWORD sets `sasl.password`.
            let property = path.len() == 3 && path[0] == "kafka" && path[1] == "properties";
            if property {
                path[2] = path[2].replace('_', ".");
            }
            // librdkafka property values are strings, whatever they look like: a numeric
            // password or `linger.ms=5` must not be type-guessed into a number (an error
            // would then print the value)
            let value: figment::value::Value = match property {
                true => figment::value::Value::from(v.clone()),
                false => v.parse().expect("figment values parse from any string"),
            };
            let mut nested = value;
            for seg in path.iter().skip(1).rev() {
                let mut d = figment::value::Dict::new();
                d.insert((*seg).to_owned(), nested);
                nested = d.into();
            }
            merge_into(&mut dict, &path[0], nested);
        }
        Ok(figment::Profile::Default.collect(dict))
    }
}

fn merge_into(dict: &mut figment::value::Dict, key: &str, value: figment::value::Value) {
    use figment::value::Value;
    match (dict.get_mut(key), value) {
        (Some(Value::Dict(_, existing)), Value::Dict(_, new)) => {
            for (k, v) in new {
                merge_into(existing, &k, v);
            }
        }
        (_, value) => {
            dict.insert(key.to_owned(), value);
        }
    }
}
