//! The program's allocator, mimalloc, and the two settings that keep its
//! resident memory near what the engine holds.
//!
//! Messages are allocated by the thread that reads them and freed by the
//! one that delivers them; mimalloc handles that cross-thread pattern
//! without the long consolidation pauses glibc's allocator can take after a
//! large backlog is freed. Left to its defaults it keeps freed memory
//! resident for a while: it purges 10 ms after a free, and on an arena
//! committed up front a purge only marks the pages reusable, which still
//! counts as resident. The embedded default peaked at 120-130 MB that way
//! while holding far less; purging at once and committing arena memory on
//! demand brought the peak to about 50 MB at the same CPU time
//! (docs/benchmarks.md, "The embedded default").
//!
//! An arena's commit mode is fixed when it is reserved, at the first
//! allocation, before `main` runs; so the settings are made from the
//! program's load-time initialisers (`.init_array`), before anything
//! allocates, and they allocate nothing themselves. Either is left alone
//! when its environment variable is set (mimalloc reads
//! `MIMALLOC_PURGE_DELAY` and `MIMALLOC_ARENA_EAGER_COMMIT` itself).

#![allow(unsafe_code)]

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(target_os = "linux")]
mod at_load {
    use std::ffi::{CStr, c_char, c_int, c_long};

    /// `mi_option_arena_eager_commit` in mimalloc 3's `mi_option_e`.
    const ARENA_EAGER_COMMIT: c_int = 4;
    /// `mi_option_purge_delay` in mimalloc 3's `mi_option_e`.
    const PURGE_DELAY: c_int = 15;

    unsafe extern "C" {
        fn mi_option_set(option: c_int, value: c_long);
        fn getenv(name: *const c_char) -> *const c_char;
    }

    /// Runs before `main` and before the first allocation.
    #[used]
    #[unsafe(link_section = ".init_array")]
    static TUNE: extern "C" fn() = tune;

    /// Purge at once, commit on demand: each unless its variable is set.
    extern "C" fn tune() {
        let settings: [(c_int, &CStr); 2] = [
            (PURGE_DELAY, c"MIMALLOC_PURGE_DELAY"),
            (ARENA_EAGER_COMMIT, c"MIMALLOC_ARENA_EAGER_COMMIT"),
        ];
        for (option, variable) in settings {
            // SAFETY: getenv reads the environment with a NUL-terminated
            // name and allocates nothing; nothing else runs yet, so no
            // thread changes the environment meanwhile. mi_option_set only
            // stores an integer in mimalloc's option table, and 0 is valid
            // for both options.
            unsafe {
                if getenv(variable.as_ptr()).is_null() {
                    mi_option_set(option, 0);
                }
            }
        }
    }
}
