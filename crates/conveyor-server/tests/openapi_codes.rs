//! The error codes the server can answer (`ApiError::code` in `src/error.rs`) are exactly the
//! codes the OpenAPI document declares (the `Error` schema's `code` enum, and its description),
//! the codes `docs/http-api.md` lists, and those of `error.rs`'s own table: a code added,
//! renamed or removed in one place and not the others fails here, naming it.

use std::collections::BTreeSet;

const ERROR_RS: &str = include_str!("../src/error.rs");
const OPENAPI: &str = include_str!("../src/openapi.json");
const HTTP_API_MD: &str = include_str!("../../../docs/http-api.md");

/// The string literals `ApiError::code` returns: every `=> "..."` in its body.
fn server_codes() -> BTreeSet<String> {
    let start = ERROR_RS
        .find("pub fn code(&self)")
        .expect("ApiError::code in src/error.rs");
    let body = &ERROR_RS[start..];
    let body = &body[..body.find("\n    }\n").expect("the end of ApiError::code")];
    let codes: BTreeSet<String> = body
        .split("=> \"")
        .skip(1)
        .map(|s| s[..s.find('"').unwrap()].to_owned())
        .collect();
    assert!(codes.len() > 20, "too few codes parsed: {codes:?}");
    codes
}

/// The codes (backticked lowercase words) in the first column of the table rows among `lines`.
fn table_codes(lines: impl Iterator<Item = String>) -> BTreeSet<String> {
    lines
        .filter(|l| l.starts_with("| `"))
        .flat_map(|l| {
            let first = l.split('|').nth(1).unwrap_or("").to_owned();
            first
                .split('`')
                .skip(1)
                .step_by(2)
                .filter(|w| w.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn differences(name: &str, found: &BTreeSet<String>, server: &BTreeSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    for c in server.difference(found) {
        out.push(format!("`{c}` is a server code missing from {name}"));
    }
    for c in found.difference(server) {
        out.push(format!(
            "`{c}` is in {name} but the server never answers it"
        ));
    }
    out
}

#[test]
fn the_openapi_document_and_the_docs_list_exactly_the_server_error_codes() {
    let server = server_codes();
    let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
    let code = &doc["components"]["schemas"]["Error"]["properties"]["error"]["properties"]["code"];
    let declared: BTreeSet<String> = code["enum"]
        .as_array()
        .expect("the Error schema's code has an enum")
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    let description = doc["info"]["description"].as_str().unwrap();
    // the codes named in the description, and every other word with an underscore (a code
    // the server no longer answers)
    let described: BTreeSet<String> = description
        .split(|c: char| !(c.is_ascii_lowercase() || c == '_'))
        .filter(|w| w.contains('_') || server.contains(*w) || declared.contains(*w))
        .map(str::to_owned)
        .collect();
    let documented = table_codes(
        HTTP_API_MD
            .lines()
            .skip_while(|l| *l != "## Errors")
            .skip(1)
            .take_while(|l| !l.starts_with('#'))
            .map(str::to_owned),
    );
    let module_table = table_codes(
        ERROR_RS
            .lines()
            .filter_map(|l| l.strip_prefix("//! "))
            .map(str::to_owned),
    );

    let mut wrong = differences("openapi.json's Error code enum", &declared, &server);
    wrong.extend(differences(
        "openapi.json's info.description",
        &described,
        &server,
    ));
    wrong.extend(differences(
        "docs/http-api.md's Errors table",
        &documented,
        &server,
    ));
    wrong.extend(differences(
        "error.rs's module table",
        &module_table,
        &server,
    ));
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}
