//! Builds the Spin component (`edge-module/spin`) so that the host and its tests run the real
//! `.wasm` a Spin deployment would.

#[path = "../build_component.rs"]
mod build_component;

fn main() {
    build_component::build_component(
        "hitcount-edge-spin",
        "hitcount_edge_spin",
        &[
            "edge-module/spin",
            "edge-module/core/src",
            "edge-module/wire/src",
        ],
    );
}
