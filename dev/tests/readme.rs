//! Every command block of README.md says what runs it, and the blocks that these tests run are
//! run exactly as the README writes them: read from the file, through `bash`, against real
//! servers on the ports the README names.

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Mutex;

use hitcount_test_support::ADMIN_TOKEN;
use tempfile::TempDir;

use crate::support::{binary_beside_tests, readme, workspace_root};

/// The README's examples use the default ports 8080 and 8081: one such test at a time.
static DEFAULT_PORTS: Mutex<()> = Mutex::new(());

const MARKER_START: &str = "<!-- commands: ";
/// The READMEs whose command blocks are held to this: the project's and the deployment's.
const READMES: [&str; 4] = [
    "README.md",
    "infra/k8s/README.md",
    "infra/monitoring/README.md",
    "infra/terraform/README.md",
];

fn read(path: &str) -> String {
    std::fs::read_to_string(workspace_root().join(path)).unwrap()
}

/// A fenced block of shell or SQL commands, with the marker line above it.
struct Block {
    marker: Option<String>,
    first_line: usize,
    text: String,
}

fn command_blocks(readme: &str) -> Vec<Block> {
    let lines: Vec<&str> = readme.lines().collect();
    let mut blocks = Vec::new();
    let mut index = 0;
    while index < lines.len() {
        let line = lines[index];
        if line == "```sh" || line == "```sql" {
            let marker = lines[..index]
                .iter()
                .rev()
                .find(|line| !line.trim().is_empty())
                .filter(|line| line.starts_with(MARKER_START))
                .map(|line| (*line).to_owned());
            let end = lines[index + 1..]
                .iter()
                .position(|line| *line == "```")
                .map(|offset| index + 1 + offset)
                .expect("every block is closed");
            blocks.push(Block {
                marker,
                first_line: index + 2,
                text: lines[index + 1..end].join("\n"),
            });
            index = end;
        }
        index += 1;
    }
    blocks
}

/// The block whose marker names `test`, in any of the READMEs.
fn block_run_by(test: &str) -> String {
    let tag = format!("run by dev/tests/readme.rs ({test})");
    let mut found = READMES
        .iter()
        .flat_map(|path| command_blocks(&read(path)))
        .filter(|block| block.marker.as_deref().is_some_and(|m| m.contains(&tag)));
    let block = found
        .next()
        .unwrap_or_else(|| panic!("no README block says {tag}"));
    assert!(found.next().is_none(), "two README blocks say {tag}");
    block.text
}

#[test]
fn every_command_block_says_what_runs_it() {
    let this_file = std::fs::read_to_string(workspace_root().join("dev/tests/readme.rs")).unwrap();
    assert!(
        command_blocks(&readme()).len() >= 5,
        "the README's command blocks were found"
    );
    for (readme, block) in READMES.iter().flat_map(|path| {
        command_blocks(&read(path))
            .into_iter()
            .map(move |block| (path, block))
    }) {
        let line = format!("{readme} line {}", block.first_line);
        let marker = block.marker.unwrap_or_else(|| {
            panic!("{line}: a command block without a `{MARKER_START}... -->` line above it")
        });
        let said = marker
            .trim_start_matches(MARKER_START)
            .trim_end_matches(" -->");
        if said.starts_with("not run by tests: ") {
            continue;
        }
        let named = said
            .strip_prefix("run by ")
            .unwrap_or_else(|| panic!("{line}: say `run by ...` or `not run by tests: why`"));
        // Each named test file exists; a test of this file is named by its function.
        for part in named.split(" and by ") {
            let path = part.split_whitespace().next().unwrap();
            assert!(
                workspace_root().join(path).exists(),
                "{line}: {path} does not exist"
            );
            if path == "dev/tests/readme.rs" {
                let test = part
                    .split_once('(')
                    .and_then(|(_, rest)| rest.split_once(')'))
                    .map(|(name, _)| name)
                    .unwrap_or_else(|| panic!("{line}: name the test"));
                assert!(
                    this_file.contains(&format!("fn {test}()")),
                    "{line}: no test {test} in dev/tests/readme.rs"
                );
            }
        }
    }
}

/// Runs `script` with `bash -e` in its own process group (so that the servers it starts in the
/// background are stopped with it), in `directory`, with `path_first` before `PATH`.
fn run_script(script: &str, directory: &std::path::Path, environment: &[(&str, &str)]) -> String {
    let binaries = binary_beside_tests("hitcount-aggregator");
    let binaries = binaries.parent().unwrap();
    binary_beside_tests("hitcount-edge");
    let path = format!(
        "{}:{}",
        binaries.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // Output goes to files, not pipes: the servers the script leaves in the background hold
    // its output open, and a pipe would never end.
    let logs = TempDir::new().unwrap();
    let stdout_path = logs.path().join("stdout");
    let stderr_path = logs.path().join("stderr");
    let mut child = Command::new("bash")
        .args(["-e", "-o", "pipefail", "-c", script])
        .current_dir(directory)
        .env("PATH", path)
        .env("RUST_LOG", "warn")
        .envs(environment.iter().copied())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .process_group(0)
        .spawn()
        .unwrap();
    let group = format!("-{}", child.id());
    let status = child.wait().unwrap();
    // The script's background servers are still in its group.
    let _ = Command::new("kill")
        .args(["-TERM", "--", &group])
        .stderr(std::process::Stdio::null())
        .status();
    let stdout = std::fs::read_to_string(&stdout_path).unwrap();
    assert!(
        status.success(),
        "the README block failed ({status}):\n{stdout}\n{}",
        std::fs::read_to_string(&stderr_path).unwrap()
    );
    stdout
}

#[test]
fn using_the_api() {
    let _ports = DEFAULT_PORTS
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    let directory = TempDir::new().unwrap();
    // The aggregator runs on this runtime's threads while the script runs on this one.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let aggregator = runtime.block_on(hitcount_test_support::aggregator(
        directory.path(),
        Some("127.0.0.1:8080".parse().unwrap()),
        &[],
    ));
    let output = run_script(
        &block_run_by("using_the_api"),
        &workspace_root(),
        &[("HITCOUNT_TOKEN", ADMIN_TOKEN)],
    );
    if let Some(at) = output.find("{\"error\":{\"code\"") {
        panic!(
            "a command failed: {}",
            &output[at..(at + 300).min(output.len())]
        );
    }
    assert!(output.contains("\"accepted\":1"), "{output}");
    assert!(output.contains("\"accepted\":2"), "{output}");
    assert!(
        output.contains("\"count\":3"),
        "the three hits are counted:\n{output}"
    );
    assert!(
        output.contains("\"total\":{\"count\":3,\"uniques\":2}"),
        "the top's total counts the three hits of two visitors:\n{output}"
    );
    assert!(
        output.contains("\"uniques\":2,\"series\":[{\"start_time\""),
        "the top with each listed resource's series:\n{output}"
    );
    assert!(
        output.contains("{\"resources\":1,\"count\":3,\"uniques\":2,\"granularity\":\"day\""),
        "the series over the listed resource:\n{output}"
    );
    assert!(
        output.contains("resource_id,start_time,granularity,count,uniques\nhome,"),
        "the CSV export:\n{output}"
    );
    assert!(
        output.contains("{\"type\":\"resource\",\"resource_id\":\"home\""),
        "the lossless export:\n{output}"
    );
    assert!(output.contains("\"edge_id\":\"edge-paris\""), "{output}");
    assert!(output.contains("hitcount_http_requests_total"), "{output}");
    assert!(output.contains("\"openapi\""), "{output}");
    runtime.block_on(aggregator.stop());
}

#[test]
fn moving_between_stores() {
    use hitcount_test_support::{Api, Server, postgres_database, postgres_or_skip, test_config};
    let _ports = DEFAULT_PORTS
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    if !postgres_or_skip() {
        return;
    }
    let (old_directory, new_directory, work) = (
        TempDir::new().unwrap(),
        TempDir::new().unwrap(),
        TempDir::new().unwrap(),
    );
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let mut old_config = test_config(old_directory.path());
    old_config.database_url = None;
    let mut new_config = test_config(new_directory.path());
    new_config.database_url = Some(postgres_database(new_directory.path()));
    let (old, new) = runtime.block_on(async {
        let old = Server::start_at(old_config, Some("127.0.0.1:8080".parse().unwrap())).await;
        let new = Server::start_at(new_config, Some("127.0.0.1:8081".parse().unwrap())).await;
        (old, new)
    });
    let ids = ["home", "blog.a", "blog.b"];
    runtime.block_on(async {
        let api = Api::admin(&old);
        for id in ids {
            api.create_resource(id).await;
        }
        let hits: Vec<serde_json::Value> = (0..12)
            .map(|index| serde_json::json!({"resource_id": ids[index % 3], "visitor_id": format!("v{}", index % 5)}))
            .collect();
        let (status, _) = api.post("/hits", serde_json::json!({ "hits": hits })).await;
        assert_eq!(status.as_u16(), 202);
    });
    let output = run_script(
        &block_run_by("moving_between_stores"),
        work.path(),
        &[("HITCOUNT_TOKEN", ADMIN_TOKEN)],
    );
    assert!(
        output.contains("{\"status\":\"imported\",\"resources_created\":3,"),
        "{output}"
    );
    runtime.block_on(async {
        for id in ids {
            assert_eq!(
                Api::admin(&new).count(id, "24h").await,
                Api::admin(&old).count(id, "24h").await,
                "{id}"
            );
        }
        assert_eq!(Api::admin(&new).count("home", "24h").await.0, 4);
        old.stop().await;
        new.stop().await;
    });
}

#[test]
fn running_on_cosmos_db() {
    let _ports = DEFAULT_PORTS
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    let Some(cosmos) = hitcount_test_support::CosmosServer::start_or_skip() else {
        return;
    };
    let work = TempDir::new().unwrap();
    let output = run_script(
        &block_run_by("running_on_cosmos_db"),
        work.path(),
        &[
            ("HITCOUNT_TOKEN", ADMIN_TOKEN),
            ("COSMOS_ENDPOINT", cosmos.endpoint.as_str()),
            ("COSMOS_KEY", hitcount_test_support::COSMOS_TEST_KEY),
        ],
    );
    assert!(output.contains("\"accepted\":2"), "{output}");
    assert!(
        output.contains("\"count\":2,\"uniques\":2"),
        "the two hits are counted at once:\n{output}"
    );
    assert!(
        work.path().join("data/cosmos-stream").exists(),
        "the data directory names the fold stream"
    );
}

/// The secret of the edge key the block's last command created.
fn created_secret(output: &str) -> String {
    let created: serde_json::Value = serde_json::from_str(
        output
            .lines()
            .rfind(|line| line.contains("\"edge_id\""))
            .unwrap_or_else(|| panic!("an edge key was created:\n{output}")),
    )
    .unwrap();
    created["secret"].as_str().unwrap().to_owned()
}

/// Every byte the aggregator's data directory holds.
fn data_bytes(directory: &std::path::Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(directory).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            bytes.extend(std::fs::read(path).unwrap());
        }
    }
    bytes
}

#[test]
fn secrets_at_rest() {
    let _ports = DEFAULT_PORTS
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    let work = TempDir::new().unwrap();
    let output = run_script(
        &block_run_by("secrets_at_rest"),
        work.path(),
        &[("HITCOUNT_TOKEN", ADMIN_TOKEN)],
    );
    let secret = created_secret(&output);
    let stored = data_bytes(&work.path().join("data"));
    assert!(stored.len() > 4096, "the store is there");
    assert!(
        !stored
            .windows(secret.len())
            .any(|window| window == secret.as_bytes()),
        "the secret is not stored as it is"
    );
}

/// The rotation block after the first: an aggregator with the new key alone then verifies the
/// edge's deltas, so every secret was sealed again with it.
#[test]
fn rotating_the_secret_key() {
    use hitcount_test_support::{Server, post_delta_bytes, test_config};
    let _ports = DEFAULT_PORTS
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    let work = TempDir::new().unwrap();
    let script = format!(
        "{}\nkill $! && wait $! || true\n{}",
        block_run_by("secrets_at_rest"),
        block_run_by("rotating_the_secret_key")
    );
    let output = run_script(&script, work.path(), &[("HITCOUNT_TOKEN", ADMIN_TOKEN)]);
    let secret = created_secret(&output);
    let mut config = test_config(&work.path().join("data"));
    config.database_url = None;
    config.cosmos = None;
    config.fold_interval_ms = 0;
    config.secret_key_file = Some(work.path().join("secret.key"));
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let server = Server::start_with(config).await;
        let batch = hitcount_test_support::batch_from("edge-paris", 1, 1, &[]);
        let (status, value) = post_delta_bytes(
            &server,
            "edge-paris",
            &secret,
            hitcount_aggregator::now_ms(),
            batch.encode().unwrap(),
        )
        .await;
        assert_eq!(status.as_u16(), 200, "{value}");
        server.stop().await;
    });
}

#[test]
fn importing_from_goatcounter() {
    let _ports = DEFAULT_PORTS
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    let (directory, work) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let aggregator = runtime.block_on(hitcount_test_support::aggregator(
        directory.path(),
        Some("127.0.0.1:8080".parse().unwrap()),
        &[],
    ));
    // Three pageviews of two visitors and an event, as GoatCounter's export writes them.
    let date = hitcount_aggregator::query::format_time(hitcount_aggregator::now_ms() - 3_600_000);
    let export = format!(
        "2Path,Title,Event,UserAgent,Browser,System,Session,Bot,Referrer,Referrer scheme,Screen size,Location,FirstVisit,Date\n\
         /pricing,Pricing,false,Mozilla/5.0,Firefox 133,Linux,a1,0,,,\"1920,1080,1\",NL,true,{date}\n\
         /pricing,Pricing,false,Mozilla/5.0,Firefox 133,Linux,a1,0,,,\"1920,1080,1\",NL,false,{date}\n\
         /pricing,Pricing,false,Mozilla/5.0,Safari 18,macOS,b2,0,,,\"1440,900,2\",US,true,{date}\n\
         buy-click,,true,Mozilla/5.0,Safari 18,macOS,b2,0,,,\"1440,900,2\",US,false,{date}\n"
    );
    std::fs::write(work.path().join("gc_export.csv"), export).unwrap();
    let output = run_script(
        &block_run_by("importing_from_goatcounter"),
        work.path(),
        &[("HITCOUNT_TOKEN", ADMIN_TOKEN)],
    );
    assert!(
        output.contains("\"status\":\"imported\",\"resources_created\":1,")
            && output.contains("\"skipped_rows\":1"),
        "{output}"
    );
    let counted =
        runtime.block_on(hitcount_test_support::Api::admin(&aggregator).count("pricing", "24h"));
    assert_eq!(counted, (3, 2));
    runtime.block_on(aggregator.stop());
}

#[test]
fn running_an_edge() {
    let _ports = DEFAULT_PORTS
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    let directory = TempDir::new().unwrap();
    let output = run_script(
        &block_run_by("running_an_edge"),
        directory.path(),
        &[
            ("HITCOUNT_ADMIN_TOKEN", ADMIN_TOKEN),
            ("HITCOUNT_TOKEN", ADMIN_TOKEN),
        ],
    );
    let lowercase = output.to_lowercase();
    assert!(lowercase.contains("x-hitcount-result: counted"), "{output}");
    assert!(
        lowercase.contains("content-length: 43"),
        "the pixel:\n{output}"
    );
    let read_back: serde_json::Value =
        serde_json::from_str(output.lines().last().unwrap()).unwrap();
    // The edge answers the aggregator's count plus what it has not had acknowledged; a batch in
    // flight shows in both for one round trip (README, "Running an edge").
    let count = read_back["count"].as_u64().unwrap();
    let unacknowledged = read_back["unacknowledged"].as_u64().unwrap();
    assert!(
        count >= 2 && count - unacknowledged <= 2,
        "the beacon and the pixel, read back at once: {read_back}"
    );
}

/// The deployment README's offline commands: the production overlay renders every kind it
/// promises, the migration Job renders, and the switch prints the selector patch it would make.
#[test]
fn deploying_to_kubernetes() {
    let kubectl = Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|output| output.status.success());
    if !kubectl {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "kubectl is missing (.ci/run installs it)"
        );
        eprintln!("skipped: kubectl is not installed");
        return;
    }
    let output = run_script(
        &block_run_by("deploying_to_kubernetes"),
        &workspace_root(),
        &[],
    );
    for kind in [
        "Deployment",
        "Service",
        "ConfigMap",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "NetworkPolicy",
        "Ingress",
        "Job",
    ] {
        assert!(
            output.contains(&format!("kind: {kind}\n")),
            "{kind} rendered: {output}"
        );
    }
    assert!(
        output.contains(
            r#"kubectl --namespace hitcount patch service hitcount-aggregator --type merge -p '{"spec":{"selector":{"hitcount.dev/colour":"green"}}}'"#
        ),
        "{output}"
    );
}
