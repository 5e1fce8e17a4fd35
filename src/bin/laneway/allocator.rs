//! The program's allocator, mimalloc, and the one setting that keeps its
//! resident memory near what the engine holds.
//!
//! Messages are allocated by the thread that reads them and freed by the
//! one that delivers them; mimalloc handles that cross-thread pattern
//! without the long consolidation pauses glibc's allocator can take after a
//! large backlog is freed. Left to its defaults it commits each arena up
//! front, and a purge of freed pages on such an arena only marks them
//! reusable, which still counts as resident: the embedded default peaked
//! at 129-139 MB. Committing arena memory as it is used brings that to
//! 63-77 MB at slightly less CPU per run, for about 5 % more CPU per
//! message on Kafka (docs/benchmarks.md, "The embedded default").
//!
//! An arena's commit mode is fixed when it is reserved, at the first
//! allocation, before `main` runs; so the setting is made from the
//! program's load-time initialisers (`.init_array`), before anything
//! allocates, and it allocates nothing itself. It is left alone when
//! `MIMALLOC_ARENA_EAGER_COMMIT` is set (mimalloc reads that itself), so an
//! operator can still choose.

#![allow(unsafe_code)]

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(target_os = "linux")]
mod at_load {
    use std::ffi::{CStr, c_char, c_int, c_long};

    /// `mi_option_arena_eager_commit` in mimalloc 3's `mi_option_e`.
    const ARENA_EAGER_COMMIT: c_int = 4;
    /// Its variable, which wins over the program's choice.
    const VARIABLE: &CStr = c"MIMALLOC_ARENA_EAGER_COMMIT";

    unsafe extern "C" {
        fn mi_option_set(option: c_int, value: c_long);
        fn getenv(name: *const c_char) -> *const c_char;
    }

    /// Runs before `main` and before the first allocation.
    #[used]
    #[unsafe(link_section = ".init_array")]
    static COMMIT_ON_DEMAND: extern "C" fn() = commit_on_demand;

    /// Commit on demand, unless the variable is set.
    extern "C" fn commit_on_demand() {
        // SAFETY: getenv reads the environment with a NUL-terminated name
        // and allocates nothing; nothing else runs yet, so no thread
        // changes the environment meanwhile. mi_option_set only stores an
        // integer in mimalloc's option table, and 0 is valid for it.
        unsafe {
            if getenv(VARIABLE.as_ptr()).is_null() {
                mi_option_set(ARENA_EAGER_COMMIT, 0);
            }
        }
    }
}
