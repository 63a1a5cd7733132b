//! `sluice`: see `runtime::cli`.

fn main() -> std::process::ExitCode {
    one_malloc_arena();
    runtime::cli::main()
}

/// glibc's malloc gives each thread that allocates at the same time as another its
/// own arena (up to 8 per core), and memory freed in one arena is not reused by the
/// others. Decoding and Parquet encoding run on short-lived scoped threads, so each
/// arena ends up holding its own high-water mark of batches and pages. One arena
/// keeps one: measured on 10M JSON lines to Parquet (zstd) on 2 cores, peak RSS
/// 82-84 MiB with the default and 64-66 MiB with one arena, at the same speed
/// (6.5-7.0 s either way). `MALLOC_ARENA_MAX`, when set, still decides.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn one_malloc_arena() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets a tunable of glibc's allocator; it is called before
        // any thread but this one exists, and M_ARENA_MAX takes any positive value.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn one_malloc_arena() {}
