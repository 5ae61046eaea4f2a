//! ARCHITECTURE.md names only files and types that exist. A code map that names a file moved
//! away or a type renamed sends a newcomer looking for nothing, and nobody notices by reading.

use std::collections::BTreeSet;
use std::path::Path;

use crate::support::workspace_root;

/// Directories that are not the project's source: build output, installed packages, git's own.
const SKIPPED_DIRECTORIES: &[&str] = &["target", "node_modules", ".git"];

/// Extensions of the files a code map names by path.
const PATH_EXTENSIONS: &[&str] = &[
    "rs", "md", "toml", "sql", "wit", "js", "ts", "mjs", "json", "yaml", "yml", "sh", "html",
];

/// Every file and directory of the workspace, relative to its root with `/` separators.
fn workspace_paths(root: &Path) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut files = BTreeSet::new();
    let mut directories = BTreeSet::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(directory) = pending.pop() {
        for entry in std::fs::read_dir(&directory).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            let relative = entry
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if entry.file_type().unwrap().is_dir() {
                if !SKIPPED_DIRECTORIES.contains(&name.as_str()) {
                    directories.insert(relative);
                    pending.push(entry.path());
                }
            } else {
                files.insert(relative);
            }
        }
    }
    (files, directories)
}

/// The backticked spans of a line, outside fenced code blocks (the caller skips those).
fn code_spans(line: &str) -> Vec<&str> {
    line.split('`').skip(1).step_by(2).collect()
}

fn looks_like_path(span: &str) -> bool {
    let plain = span
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "_-./".contains(c));
    let named_file = span
        .rsplit_once('.')
        .is_some_and(|(_, extension)| PATH_EXTENSIONS.contains(&extension));
    // A leading `/` is a route (`/openapi.json`), not a file.
    plain
        && !span.starts_with('/')
        && (named_file || span.ends_with('/') || span.starts_with(".ci/"))
}

/// A type name as the code map writes it: `Store`, `ApiError::Internal`, `Edge::start`.
fn type_name(span: &str) -> Option<&str> {
    let first = span.split("::").next()?;
    let mut chars = first.chars();
    let capital = chars.next()?.is_ascii_uppercase();
    let rest_is_identifier = first.chars().all(|c| c.is_ascii_alphanumeric());
    let has_lowercase = first.chars().any(|c| c.is_ascii_lowercase());
    let rest_of_span_is_path = span
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '(' || c == ')');
    (capital && rest_is_identifier && has_lowercase && rest_of_span_is_path).then_some(first)
}

/// Whether a Rust or TypeScript source of the workspace defines `name` as a type.
fn defines_type(sources: &str, name: &str) -> bool {
    [
        "struct",
        "enum",
        "trait",
        "type",
        "union",
        "class",
        "interface",
    ]
    .iter()
    .any(|keyword| {
        sources
            .match_indices(&format!("{keyword} {name}"))
            .any(|(at, found)| {
                let after = sources[at + found.len()..].chars().next();
                !after.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
            })
    })
}

#[test]
fn architecture_names_only_files_and_types_that_exist() {
    let root = workspace_root();
    let (files, directories) = workspace_paths(&root);
    let crate_directories: Vec<String> = files
        .iter()
        .filter_map(|file| file.strip_suffix("/Cargo.toml").map(str::to_owned))
        .chain(["sdk-js".to_owned()])
        .collect();
    // A path is written from the root, from a crate's directory or its `src/`, or from the
    // directory whose section of the code map it appears in (`### \`aggregator/store\``).
    let mut bases = vec![String::new()];
    for directory in &crate_directories {
        bases.push(format!("{directory}/"));
        bases.push(format!("{directory}/src/"));
    }
    let exists = |path: &str, section: Option<&str>| {
        let path = path.trim_end_matches('/');
        let found = |candidate: &str| files.contains(candidate) || directories.contains(candidate);
        bases.iter().any(|base| found(&format!("{base}{path}")))
            || section.is_some_and(|section| {
                files
                    .iter()
                    .chain(directories.iter())
                    .any(|known| known.starts_with(section) && known.ends_with(&format!("/{path}")))
            })
    };
    let sources: String = files
        .iter()
        .filter(|file| file.ends_with(".rs") || file.ends_with(".ts"))
        .map(|file| std::fs::read_to_string(root.join(file)).unwrap())
        .collect();

    let architecture = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let mut missing = Vec::new();
    let mut section: Option<String> = None;
    let mut in_fence = false;
    for (index, line) in architecture.lines().enumerate() {
        if line.starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if in_fence {
            continue;
        }
        if line.starts_with("## ") {
            section = None;
        }
        if let Some(heading) = line.strip_prefix("### `") {
            section = heading
                .split('`')
                .next()
                .map(|name| name.trim_end_matches('/').to_owned());
        }
        for span in code_spans(line) {
            let absent = if looks_like_path(span) {
                !exists(span, section.as_deref())
            } else {
                type_name(span).is_some_and(|name| !defines_type(&sources, name))
            };
            if absent {
                missing.push(format!("ARCHITECTURE.md:{}: `{span}`", index + 1));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "ARCHITECTURE.md names what does not exist:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_check_tells_paths_types_and_routes_apart() {
    assert!(looks_like_path("aggregator/store/src/lib.rs"));
    assert!(looks_like_path("spool/"));
    assert!(looks_like_path(".ci/module-cycles"));
    assert!(!looks_like_path("/openapi.json"));
    assert!(!looks_like_path("--fold-interval-ms"));
    assert_eq!(type_name("ApiError::Internal"), Some("ApiError"));
    assert_eq!(type_name("Edge::start"), Some("Edge"));
    assert_eq!(type_name("MINUTE_MS"), None);
    assert_eq!(type_name("Retry-After"), None);
    assert!(defines_type("pub struct Store {", "Store"));
    assert!(!defines_type("pub struct StoreError {", "Store"));
}
