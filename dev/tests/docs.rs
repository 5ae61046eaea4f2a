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

/// A byte size as the README writes it: `4 KiB`, `8 MiB`, `1 GiB`.
fn bytes_text(bytes: u64) -> String {
    let units = [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    units
        .iter()
        .find(|(_, size)| bytes >= *size && bytes.is_multiple_of(*size))
        .map(|(unit, size)| format!("{} {unit}", bytes / size))
        .unwrap_or_else(|| format!("{bytes} bytes"))
}

/// The README's statements of limits, each written with the number its constant holds. A
/// constant changed without the README (or the README without the code) fails here.
fn limit_statements() -> Vec<String> {
    use hitcount_aggregator::api::{
        EDGE_SECRET_BYTES_MAX, HITS_BODY_BYTES_MAX, HITS_PER_REQUEST_MAX, JSON_BODY_BYTES_MAX,
        LIST_PAGE_MAX, NAME_CHARS_MAX, RETENTION_DAYS_MAX, VISITOR_ID_CHARS_MAX,
    };
    use hitcount_aggregator::config::{
        FLUSH_INTERVAL_MS_DEFAULT, FLUSH_INTERVAL_MS_MAX, RATE_LIMIT_PER_SECOND_DEFAULT,
    };
    use hitcount_aggregator::import::IMPORT_BODY_BYTES_MAX;
    use hitcount_aggregator::merge::{
        MERGE_INTERVAL_MS_DEFAULT, MERGE_INTERVAL_MS_MAX, MERGE_QUEUE_ENTRIES_MAX,
        MERGE_QUEUE_ENTRIES_MIN, MERGE_QUEUE_WAIT_MS_MAX, MERGE_RETRY_AFTER_S,
    };
    use hitcount_aggregator::patterns::{
        PATTERN_PREFIX_BYTES_MAX, PATTERN_RESOURCES_DEFAULT, PATTERN_RESOURCES_MAX, PATTERNS_MAX,
        RECENT_READ_INTERVAL_MS, RECENT_RESOURCES_MS, UNKNOWN_RESOURCES_LISTED_MAX,
    };
    use hitcount_aggregator::query::SERIES_POINTS_MAX;
    use hitcount_aggregator::store::IMPORT_CELLS_MAX;
    use hitcount_aggregator::store::hot::{
        HOT_LEASE_MS, HOT_OPERATION_TIMEOUT_MS, HOT_REBUILD_TIMEOUT_MS,
    };
    use hitcount_aggregator::store::inbox::{
        FOLD_INTERVAL_MS_MAX, FOREIGN_FOLD_AFTER_MS, MINUTE_CLOSE_GRACE_MS, UNFOLDED_ENTRIES_MAX,
    };
    use hitcount_aggregator::store::{
        DATABASE_BREAKER_OPEN_MS, DELTA_AGE_MS_MAX, HOUR_TIER_RETENTION_MS,
        MINUTE_TIER_RETENTION_MS, POOL_ACQUIRE_TIMEOUT_MS,
    };
    use hitcount_edge::config::{
        PENDING_ENTRIES_MAX_DEFAULT, WINDOW_ENTRIES_MAX_DEFAULT, WINDOW_MS_DEFAULT, WINDOW_MS_MAX,
        WINDOW_MS_MIN,
    };
    use hitcount_edge::proxy::{
        COUNT_ROUTES_MAX, ORIGIN_TIMEOUT_MS_DEFAULT, ORIGIN_TIMEOUT_MS_MAX,
        PROXY_REQUEST_BODY_BYTES_MAX,
    };
    use hitcount_edge::spool::SPOOL_BYTES_MAX_DEFAULT;
    use hitcount_edge_core::beacon::{BEACON_BODY_BYTES_MAX, PIXEL_GIF};
    use hitcount_edge_core::filter::USER_AGENT_VERDICTS;
    use hitcount_wire::text::{count_text, duration_text};
    use hitcount_wire::{
        BATCH_BYTES_MAX, BATCH_ENTRIES_MAX, CLOCK_SKEW_MS_MAX, RESOURCE_ID_BYTES_MAX,
        SECRET_BYTES_MIN, SKETCH_STANDARD_ERROR,
    };
    let bytes = |n: usize| bytes_text(n as u64);
    let (age, skew) = (
        duration_text(DELTA_AGE_MS_MAX),
        duration_text(CLOCK_SKEW_MS_MAX),
    );
    vec![
        // Requests and their limits.
        format!("up to {RESOURCE_ID_BYTES_MAX} characters) unless"),
        format!("`limit` 1 to {LIST_PAGE_MAX}, at least one scope"),
        format!(
            "({} for `POST /hits`, {} for `POST /v1/deltas`, {} for `POST /import`, {} for every other route)",
            bytes(HITS_BODY_BYTES_MAX),
            bytes(BATCH_BYTES_MAX),
            bytes(IMPORT_BODY_BYTES_MAX),
            bytes(JSON_BODY_BYTES_MAX)
        ),
        format!(
            "A file may hold up to {} and {} cells",
            bytes(IMPORT_BODY_BYTES_MAX),
            count_text(IMPORT_CELLS_MAX as u64)
        ),
        format!("a hit timestamp outside the last {age} and the next {skew}"),
        format!("more than {} points", count_text(SERIES_POINTS_MAX)),
        format!("(`A-Z a-z 0-9 . _ -`, up to {PATTERN_PREFIX_BYTES_MAX}) followed by `*`"),
        format!(
            "`resources_max` (default {}, at most {})",
            count_text(PATTERN_RESOURCES_DEFAULT),
            count_text(PATTERN_RESOURCES_MAX)
        ),
        format!(
            "the store those created in the last {} s (through any aggregator), at most once every {},",
            RECENT_RESOURCES_MS / 1_000,
            duration_text(RECENT_READ_INTERVAL_MS)
        ),
        format!(
            "At most {} patterns exist.",
            count_text(PATTERNS_MAX as u64)
        ),
        format!("at most {})", bytes(BATCH_BYTES_MAX)),
        format!("Signatures more than {skew} from the aggregator's clock are refused"),
        format!("422 for a window more than {age} old"),
        // The edge.
        format!("at most {}. 204 when counted", bytes(BEACON_BODY_BYTES_MAX)),
        format!("always answers the {}-byte GIF", PIXEL_GIF.len()),
        format!(
            "verdicts for {} user agents",
            count_text(USER_AGENT_VERDICTS as u64)
        ),
        format!(
            "Bodies declared over {} get 413",
            bytes(PROXY_REQUEST_BODY_BYTES_MAX)
        ),
        format!(
            "`--origin-timeout-ms` ({} s) 504",
            ORIGIN_TIMEOUT_MS_DEFAULT / 1_000
        ),
        format!(
            "bounded by `--spool-bytes-max` ({})",
            bytes_text(SPOOL_BYTES_MAX_DEFAULT)
        ),
        format!("| none, {} |", bytes_text(SPOOL_BYTES_MAX_DEFAULT)),
        format!("up to {COUNT_ROUTES_MAX} routes"),
        format!("| `{ORIGIN_TIMEOUT_MS_DEFAULT}` | with `--origin`"),
        format!("(then 504), 1 to {ORIGIN_TIMEOUT_MS_MAX};"),
        format!(
            "| `{WINDOW_MS_DEFAULT}` | window length, {WINDOW_MS_MIN} to {} |",
            count_text(WINDOW_MS_MAX)
        ),
        format!("| {WINDOW_ENTRIES_MAX_DEFAULT} | distinct counters per instance per window"),
        format!("| {PENDING_ENTRIES_MAX_DEFAULT} | distinct counters per instance per window"),
        // The aggregator.
        format!("(default {FLUSH_INTERVAL_MS_DEFAULT} ms)"),
        format!("with {:.2}% standard error", SKETCH_STANDARD_ERROR * 100.0),
        format!(
            "Minute counts are kept {}, hour counts {}",
            duration_text(MINUTE_TIER_RETENTION_MS),
            duration_text(HOUR_TIER_RETENTION_MS)
        ),
        format!(
            "`--merge-interval-ms` (default {MERGE_INTERVAL_MS_DEFAULT}, at most {MERGE_INTERVAL_MS_MAX})"
        ),
        format!(
            "merged in the last {} s (at least {}, four full batches; never more than {})",
            MERGE_QUEUE_WAIT_MS_MAX / 1_000,
            count_text(MERGE_QUEUE_ENTRIES_MIN as u64),
            count_text(MERGE_QUEUE_ENTRIES_MAX as u64)
        ),
        format!("`Retry-After: {MERGE_RETRY_AFTER_S}`"),
        format!(
            "at most {} distinct cells, then 503",
            count_text(UNFOLDED_ENTRIES_MAX as u64)
        ),
        format!("time out after {HOT_OPERATION_TIMEOUT_MS} ms"),
        format!("holds a {} s lease in Redis", HOT_LEASE_MS / 1_000),
        format!("for up to {} s after an", HOT_LEASE_MS / 1_000),
        format!("its {} s budget", HOT_REBUILD_TIMEOUT_MS / 1_000),
        format!(
            "such reads skip it for {} s",
            DATABASE_BREAKER_OPEN_MS / 1_000
        ),
        format!(
            "waits for the {} s connection timeout",
            POOL_ACQUIRE_TIMEOUT_MS / 1_000
        ),
        // The flags table.
        format!("admin bearer token (at least {SECRET_BYTES_MIN} characters)"),
        format!("edge signing keys (secret at least {SECRET_BYTES_MIN} characters)"),
        format!(
            "| `{FLUSH_INTERVAL_MS_DEFAULT}` | fast mode's gathering time, 1 to {FLUSH_INTERVAL_MS_MAX} |"
        ),
        format!(
            "| `{MERGE_INTERVAL_MS_DEFAULT}` | how long the first delta batch of a group waits"
        ),
        format!("is committed, 0 to {MERGE_INTERVAL_MS_MAX} |"),
        format!("this often, 0 to {FOLD_INTERVAL_MS_MAX} (see"),
        format!(
            "closed (plus {} s for late deltas, checked",
            MINUTE_CLOSE_GRACE_MS / 1_000
        ),
        format!(
            "by any other {} s after they were appended and their minute closed",
            FOREIGN_FOLD_AFTER_MS / 1_000
        ),
        format!("| `{RATE_LIMIT_PER_SECOND_DEFAULT}` | requests/s per client address"),
        format!("| `{RATE_LIMIT_PER_SECOND_DEFAULT}` | requests/s per token"),
        // The limits paragraph.
        format!(
            "bodies of {} for `POST /hits` (1 to {HITS_PER_REQUEST_MAX} hits), {} (and {} entries) \
             for `POST /v1/deltas`, {} for every other route",
            bytes(HITS_BODY_BYTES_MAX),
            bytes(BATCH_BYTES_MAX),
            count_text(BATCH_ENTRIES_MAX as u64),
            bytes(JSON_BODY_BYTES_MAX)
        ),
        format!("names of 1 to {NAME_CHARS_MAX} characters"),
        format!("resource and edge ids of 1 to {RESOURCE_ID_BYTES_MAX} characters"),
        format!("edge secrets of {SECRET_BYTES_MIN} to {EDGE_SECRET_BYTES_MAX} visible ASCII"),
        format!("visitor ids up to {VISITOR_ID_CHARS_MAX} characters"),
        format!("`limit` 1 to {LIST_PAGE_MAX} per page"),
        format!(
            "retention 1 to {} days",
            count_text(u64::from(RETENTION_DAYS_MAX))
        ),
        format!("{} points per series", count_text(SERIES_POINTS_MAX)),
        format!("hit timestamps from {age} ago to {skew} ahead"),
        format!(
            "{} patterns of up to {} resources each ({} by default); {} ids in `GET /unknown-resources`",
            count_text(PATTERNS_MAX as u64),
            count_text(PATTERN_RESOURCES_MAX),
            count_text(PATTERN_RESOURCES_DEFAULT),
            count_text(UNKNOWN_RESOURCES_LISTED_MAX as u64)
        ),
    ]
}

#[test]
fn the_readme_states_the_limits_the_code_has() {
    let readme = crate::support::readme();
    // Sentences wrap anywhere in the README's source: compare with whitespace collapsed.
    let flat = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
    let readme = flat(&readme);
    let missing: Vec<String> = limit_statements()
        .iter()
        .map(|statement| flat(statement))
        .filter(|statement| !readme.contains(statement.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "README.md does not say (with the constants' numbers):\n{}",
        missing.join("\n")
    );
}

#[test]
fn byte_sizes_read_as_the_readme_writes_them() {
    assert_eq!(bytes_text(4 * 1024), "4 KiB");
    assert_eq!(bytes_text(8 * 1024 * 1024), "8 MiB");
    assert_eq!(bytes_text(1 << 30), "1 GiB");
    assert_eq!(bytes_text(1_000), "1000 bytes");
}

/// The SQL block that distributes the tables on Citus: its statements, in order.
fn distribution_statements(markdown: &str) -> Vec<String> {
    let lines: Vec<&str> = markdown.lines().collect();
    let first = lines
        .iter()
        .position(|line| line.starts_with("SELECT create_reference_table("))
        .expect("a Citus distribution block");
    lines[first..]
        .iter()
        .take_while(|line| line.starts_with("SELECT create_"))
        .map(|line| (*line).to_owned())
        .collect()
}

/// The tables the PostgreSQL migrations create: the name after `CREATE [UNLOGGED] TABLE [IF NOT
/// EXISTS]`, in any case and spacing, outside `--` comments.
fn migrated_tables(root: &Path) -> BTreeSet<String> {
    let directory = root.join("aggregator/store/migrations");
    let mut tables = BTreeSet::new();
    for entry in std::fs::read_dir(&directory).expect("the migrations directory") {
        let sql = std::fs::read_to_string(entry.expect("a migration").path()).expect("UTF-8");
        let code: String = sql
            .lines()
            .map(|line| line.split("--").next().unwrap_or_default())
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase();
        let words: Vec<&str> = code
            .split(|c: char| c.is_whitespace() || c == '(' || c == ';')
            .filter(|word| !word.is_empty())
            .collect();
        for (index, word) in words.iter().enumerate() {
            if *word != "create" {
                continue;
            }
            let mut rest = words[index + 1..].iter().copied();
            let mut next = rest.next();
            if next == Some("unlogged") {
                next = rest.next();
            }
            if next != Some("table") {
                continue;
            }
            let mut name = rest.next();
            if name == Some("if") {
                name = rest.nth(2);
            }
            tables.insert(name.expect("a table name").to_owned());
        }
    }
    tables
}

/// On Citus, a table left undistributed stays on the coordinator alone, which nobody chose: every
/// table the migrations create, and no other, is named by the README's distribution statements
/// (the durable inbox's was missing until it was run on Citus), and the Terraform README, which
/// repeats them for elastic clusters, repeats them exactly (it had lost `rollups`).
#[test]
fn the_citus_statements_distribute_every_table_the_migrations_create() {
    let root = workspace_root();
    let statements = distribution_statements(&crate::support::readme());
    let distributed: BTreeSet<String> = statements
        .iter()
        .filter_map(|statement| statement.split('\'').nth(1))
        .map(str::to_owned)
        .collect();
    let tables = migrated_tables(&root);
    assert!(tables.len() >= 10, "migrations read: {tables:?}");
    assert_eq!(
        distributed, tables,
        "README.md's distribution statements name other tables than the migrations create"
    );
    let terraform = std::fs::read_to_string(root.join("infra/terraform/README.md"))
        .expect("infra/terraform/README.md");
    assert_eq!(distribution_statements(&terraform), statements);
}
