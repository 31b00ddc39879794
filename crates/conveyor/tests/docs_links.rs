//! The documentation's links hold: every relative link in README.md, DEVELOPERS.md and
//! docs/*.md points to a file or folder that exists, every `#anchor` (in the same file or
//! another Markdown file) matches a heading there, by GitHub's rules (lowercase; letters,
//! digits, `-` and `_` kept, spaces to `-`, everything else dropped; a repeated heading gets
//! `-1`, `-2`, ...), and docs/README.md, the table of contents, links every page of docs/.
//! Links inside code (fenced blocks, `inline code`) and to other sites are not checked.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// `path` as it is written from the repository's root.
fn shown(path: &Path) -> String {
    let mut parts: Vec<String> = Vec::new();
    let relative = path.strip_prefix(root()).unwrap_or(path);
    for c in relative.components() {
        match c {
            std::path::Component::ParentDir => {
                parts.pop();
            }
            std::path::Component::CurDir => {}
            c => parts.push(c.as_os_str().to_string_lossy().into_owned()),
        }
    }
    parts.join("/")
}

/// The Markdown files checked, relative to the repository's root.
fn pages() -> Vec<String> {
    let mut pages = vec!["README.md".to_owned(), "DEVELOPERS.md".to_owned()];
    let mut docs: Vec<String> = std::fs::read_dir(root().join("docs"))
        .expect("docs/")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".md"))
        .map(|n| format!("docs/{n}"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// The lines of `text` outside fenced code blocks, with their line numbers.
fn prose(text: &str) -> Vec<(usize, &str)> {
    let mut fence = false;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            fence = !fence;
            continue;
        }
        if !fence {
            out.push((i + 1, line));
        }
    }
    out
}

/// GitHub's anchor for a heading's text.
fn slug(heading: &str) -> String {
    heading
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown text's headings.
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = BTreeSet::new();
    for (_, line) in prose(text) {
        let hashes = line.len() - line.trim_start_matches('#').len();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(line[hashes..].trim());
        let n = seen.entry(base.clone()).or_insert(0);
        out.insert(match *n {
            0 => base.clone(),
            k => format!("{base}-{k}"),
        });
        *n += 1;
    }
    out
}

/// `line` without its `inline code` spans.
fn without_code(line: &str) -> String {
    line.split('`').step_by(2).collect::<Vec<_>>().join(" ")
}

/// The targets of the inline links `[text](target)` of a line.
fn link_targets(line: &str) -> Vec<String> {
    let line = without_code(line);
    let mut out = Vec::new();
    let mut rest = line.as_str();
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        let end = rest.find(')').unwrap_or(rest.len());
        // a title after the target: `[text](target "title")`
        let target = rest[..end].split_whitespace().next().unwrap_or("");
        out.push(target.trim_matches(|c| c == '<' || c == '>').to_owned());
        rest = &rest[end..];
    }
    out
}

/// What is wrong with the links of `page`, one line each.
fn broken_links(page: &str) -> Vec<String> {
    let path = root().join(page);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{page}: {e}"));
    let dir = path.parent().unwrap().to_owned();
    let mut wrong = Vec::new();
    for (n, line) in prose(&text) {
        for target in link_targets(line) {
            if target.is_empty()
                || target.contains("://")
                || target.starts_with("mailto:")
                || target.starts_with("//")
            {
                if target.is_empty() {
                    wrong.push(format!("{page}:{n}: an empty link"));
                }
                continue;
            }
            let (file, anchor) = match target.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (target.as_str(), None),
            };
            let linked = if file.is_empty() {
                path.clone()
            } else {
                dir.join(file)
            };
            if !linked.exists() {
                wrong.push(format!(
                    "{page}:{n}: `{target}`: {} does not exist",
                    shown(&linked)
                ));
                continue;
            }
            let Some(anchor) = anchor else { continue };
            if linked.extension().is_some_and(|e| e == "md") {
                let there = std::fs::read_to_string(&linked).unwrap();
                if !anchors(&there).contains(anchor) {
                    wrong.push(format!(
                        "{page}:{n}: `{target}`: no heading of {} has the anchor `#{anchor}`",
                        shown(&linked)
                    ));
                }
            }
        }
    }
    wrong
}

#[test]
fn the_slugs_follow_githubs_rules() {
    assert_eq!(slug("Request/reply"), "requestreply");
    assert_eq!(
        slug("What the server keeps, and its bounds"),
        "what-the-server-keeps-and-its-bounds"
    );
    assert_eq!(
        slug("Signed calls (Standard Webhooks)"),
        "signed-calls-standard-webhooks"
    );
    assert_eq!(slug("`conveyor dev` and_more"), "conveyor-dev-and_more");
    let a = anchors("# A\n## B\n```\n# not a heading\n```\n## B\n#nope\n");
    assert_eq!(a, BTreeSet::from(["a".into(), "b".into(), "b-1".into()]));
    assert_eq!(
        link_targets("see [x](a.md#b) and `[y](code.md)` and [z](c.md \"title\")"),
        ["a.md#b", "c.md"]
    );
}

#[test]
fn every_relative_link_and_anchor_in_the_documentation_resolves() {
    let pages = pages();
    assert!(pages.len() > 10, "{pages:?}");
    let wrong: Vec<String> = pages.iter().flat_map(|p| broken_links(p)).collect();
    assert!(
        wrong.is_empty(),
        "{} broken links:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
}

#[test]
fn the_table_of_contents_links_every_page_of_docs() {
    let toc = std::fs::read_to_string(root().join("docs/README.md")).unwrap();
    let linked: BTreeSet<String> = prose(&toc)
        .into_iter()
        .flat_map(|(_, l)| link_targets(l))
        .map(|t| t.split('#').next().unwrap().to_owned())
        .collect();
    let missing: Vec<String> = pages()
        .into_iter()
        .filter_map(|p| p.strip_prefix("docs/").map(str::to_owned))
        .filter(|p| p != "README.md" && !linked.contains(p))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/README.md does not link {missing:?}"
    );
}
