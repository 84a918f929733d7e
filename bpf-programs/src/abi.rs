//! Rust mirrors of every map key and value of the C datapath, with layout checks.
