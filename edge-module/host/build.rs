//! Builds the counting component (`edge-module/component`) so that `cargo build` leaves a
//! `hitcount-edge` with its module embedded.

#[path = "../build_component.rs"]
mod build_component;

fn main() {
    build_component::build_component(
        "hitcount-edge-component",
        "hitcount_edge_component",
        &[
            "edge-module/component",
            "edge-module/core/src",
            "edge-module/wire/src",
            "edge-module/wit",
        ],
    );
}
