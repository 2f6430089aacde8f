//! The `train` binary (filled in below).
fn main() {}
