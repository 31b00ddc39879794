//! Redaction: the one place that decides what of a URL or an error text may be printed or stored.
//!
//! Every text conveyor writes where people or other programs read it (logs, the start-up banner,
//! a dead letter's `dlq_error`, an API answer, a configuration error) goes through these
//! functions when it may carry a credential:
//! - [`url`]: a URL with its user info (`user:password@`) replaced by `***@` and the values of
//!   query parameters whose names look like credentials (`token`, `key`, `secret`, `sig`,
//!   `password`, `auth`, ...) replaced by `***`;
//! - [`text`]: the same for every URL found inside a free text (an HTTP client's error names the
//!   URL it failed on);
//! - [`scrub`]: known secret values (a route's static header values, its signing secrets) cut
//!   out of a text, wherever they appear (a receiver may echo the headers it got).

/// What a redacted part is replaced by.
pub const MASK: &str = "***";

/// Query parameter names (lowercase substrings) whose values are redacted.
const SECRET_PARAMS: &[&str] = &[
    "token",
    "key",
    "secret",
    "sig",
    "password",
    "passwd",
    "pwd",
    "auth",
    "credential",
    "session",
];

/// `s` (a URL) with its user info and credential-looking query values replaced by [`MASK`].
/// Text that is not a URL comes back unchanged.
///
/// ```
/// use conveyor_core::redact;
/// assert_eq!(redact::url("http://user:pw@host:8080/hook?x=1&token=abc"), "http://***@host:8080/hook?x=1&token=***");
/// assert_eq!(redact::url("https://host/hook"), "https://host/hook");
/// ```
pub fn url(s: &str) -> String {
    let Some(scheme_end) = s.find("://").map(|i| i + 3) else {
        return s.to_owned();
    };
    let (head, rest) = s.split_at(scheme_end);
    // the authority ends at the first '/', '?' or '#'
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(auth_end);
    let mut out = String::with_capacity(s.len());
    out.push_str(head);
    match authority.rfind('@') {
        Some(at) => {
            out.push_str(MASK);
            out.push_str(&authority[at..]);
        }
        None => out.push_str(authority),
    }
    // query: between '?' and '#'
    match tail.find('?') {
        Some(q) => {
            let (path, query_and_fragment) = tail.split_at(q + 1);
            out.push_str(path);
            let frag = query_and_fragment
                .find('#')
                .unwrap_or(query_and_fragment.len());
            let (query, fragment) = query_and_fragment.split_at(frag);
            let parts: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, value)) if !value.is_empty() && secret_param(name) => {
                        format!("{name}={MASK}")
                    }
                    _ => pair.to_owned(),
                })
                .collect();
            out.push_str(&parts.join("&"));
            out.push_str(fragment);
        }
        None => out.push_str(tail),
    }
    out
}

/// Whether a query parameter's name looks like it holds a credential (`token`, `key`,
/// `secret`, `sig`, `password`, `auth`, …): its value is masked.
pub fn is_credential_name(name: &str) -> bool {
    secret_param(name)
}

fn secret_param(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    SECRET_PARAMS.iter().any(|p| n.contains(p))
}

/// `s` with every URL in it (a run of non-space characters containing `://`) passed through
/// [`url`].
///
/// ```
/// use conveyor_core::redact;
/// assert_eq!(
///     redact::text("error sending request for url (http://u:pw@127.0.0.1:9/x): refused"),
///     "error sending request for url (http://***@127.0.0.1:9/x): refused"
/// );
/// ```
pub fn text(s: &str) -> String {
    if !s.contains("://") {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        if word.contains("://") {
            // keep brackets and quotes around the URL where they are
            let start = word.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(0);
            let end = word
                .rfind(|c: char| !matches!(c, ')' | ']' | '>' | '"' | '\'' | ',' | ';' | '`'))
                .map_or(word.len(), |i| {
                    i + word[i..].chars().next().map_or(1, char::len_utf8)
                });
            if start < end {
                out.push_str(&word[..start]);
                out.push_str(&url(&word[start..end]));
                out.push_str(&word[end..]);
            } else {
                out.push_str(word);
            }
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in s.chars() {
        if c.is_whitespace() {
            flush(&mut word, &mut out);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// `s` with every occurrence of each of `secrets` (empty ones ignored) replaced by [`MASK`].
///
/// ```
/// use conveyor_core::redact;
/// assert_eq!(redact::scrub("you sent Bearer s3cr3t", ["s3cr3t"]), "you sent Bearer ***");
/// ```
pub fn scrub<'a>(s: &str, secrets: impl IntoIterator<Item = &'a str>) -> String {
    let mut out = s.to_owned();
    for secret in secrets {
        if !secret.is_empty() && out.contains(secret) {
            out = out.replace(secret, MASK);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_and_credential_parameters_are_masked() {
        assert_eq!(url("http://u:p@h/x"), "http://***@h/x");
        assert_eq!(url("http://u@h"), "http://***@h");
        // an '@' in the path is not user info
        assert_eq!(url("http://h/a@b"), "http://h/a@b");
        assert_eq!(
            url("http://u:p@h?access_token=abc#f"),
            "http://***@h?access_token=***#f"
        );
        assert_eq!(
            url("http://h/x?page=2&API_KEY=z"),
            "http://h/x?page=2&API_KEY=***"
        );
        assert_eq!(url("not a url"), "not a url");
    }

    #[test]
    fn urls_inside_text_are_masked_and_the_rest_kept() {
        assert_eq!(
            text("webhook `http://u:pw@h:1/x` answered 400 (see https://a:b@c/)"),
            "webhook `http://***@h:1/x` answered 400 (see https://***@c/)"
        );
        assert_eq!(text("no url here"), "no url here");
        assert_eq!(text("é http://u:p@h é"), "é http://***@h é");
    }
}
