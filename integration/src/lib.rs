//! Shared helpers for the end-to-end tests: dockerd, the cilium-rs daemon, images and clean-up.
