//! Links the `sluice` binary with packed relative relocations (`-z pack-relative-relocs`,
//! DT_RELR) where the linker and C library take them (GNU ld 2.38+, lld, mold; glibc
//! 2.36+), so the loader no longer reads 2.7 MB of relocation entries at every start:
//! measured 2-3 MiB of the peak RSS of a JSON -> Parquet pipeline (60-61 MiB against
//! 62-64 MiB). The binary stays position-independent, so its code is still loaded at a
//! random address. Linking it `-no-pie` saves another 3-4 MiB (the 2.4 MB of
//! `.data.rel.ro` the loader rewrites) but gives that up, so it is not done.

use std::io::Write;
use std::process::{Command, Stdio};

const RELR: &str = "-Wl,-z,pack-relative-relocs";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CC");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" && links_with(RELR) {
        println!("cargo:rustc-link-arg-bins={RELR}");
    }
}

/// Whether the C compiler driver (the linker rustc calls on linux-gnu, unless a
/// `linker` is configured for the target) links a program with `arg`.
fn links_with(arg: &str) -> bool {
    let Some(out) = std::env::var_os("OUT_DIR") else {
        return false;
    };
    // `CC` may carry arguments of its own (`ccache gcc`)
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".to_string());
    let mut cc = cc.split_whitespace();
    let Some(program) = cc.next() else {
        return false;
    };
    // GNU ld only warns about a `-z` option it does not know: make that a failure
    let child = Command::new(program)
        .args(cc)
        .args(["-x", "c", "-", "-o"])
        .arg(std::path::Path::new(&out).join("relr-probe"))
        .args(["-Wl,--fatal-warnings", arg])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        return false;
    };
    let wrote = child
        .stdin
        .take()
        .is_some_and(|mut stdin| stdin.write_all(b"int main(void) { return 0; }\n").is_ok());
    child.wait().is_ok_and(|s| s.success()) && wrote
}
