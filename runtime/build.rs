//! Links the `sluice` binary position-dependent (`-no-pie`) on Linux with glibc.
//!
//! A position-independent executable of this size carries 2.7 MB of relocations that
//! the loader reads at every start, and 2.4 MB of tables (`.data.rel.ro`) that it
//! rewrites, so they stay in memory as private pages: measured 3-4 MiB of the peak RSS
//! of a JSON -> Parquet pipeline (62-63 MiB against 65.6-67.2 MiB). The price is that
//! the binary's own code loads at a fixed address (shared libraries and the heap are
//! still randomized). `SLUICE_PIE=1` at build time keeps the default.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=SLUICE_PIE");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" && std::env::var_os("SLUICE_PIE").is_none() {
        println!("cargo:rustc-link-arg-bins=-no-pie");
    }
}
