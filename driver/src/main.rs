//! cilium-rs daemon and CLI.
fn main() {}
