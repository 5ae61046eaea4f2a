//! `infra/spin.toml` deploys what the tests run: the component's artifact, and every variable
//! the component reads.

use hitcount_edge_spin::window::VARIABLES;

#[test]
fn the_spin_manifest_declares_the_component_and_its_variables() {
    let manifest_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../infra/spin.toml");
    let manifest: toml::Table = std::fs::read_to_string(manifest_path)
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(manifest["spin_manifest_version"].as_integer(), Some(2));
    let component = &manifest["component"]["hitcount-edge"];
    assert_eq!(
        component["source"].as_str(),
        Some("../target/wasm32-wasip2/release/hitcount_edge_spin.wasm")
    );
    let declared = manifest["variables"].as_table().unwrap();
    let passed = component["variables"].as_table().unwrap();
    for variable in VARIABLES {
        assert!(
            declared.contains_key(variable),
            "{variable} is not declared"
        );
        assert_eq!(
            passed[variable].as_str(),
            Some(format!("{{{{ {variable} }}}}").as_str()),
            "{variable} is not passed to the component"
        );
    }
    let trigger = &manifest["trigger"]["http"][0];
    assert_eq!(trigger["route"].as_str(), Some("/..."));
    assert_eq!(trigger["component"].as_str(), Some("hitcount-edge"));
}
