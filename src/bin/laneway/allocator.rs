//! The program's allocator, mimalloc, and the two settings that keep its
//! resident memory near what the engine holds.
//!
//! Messages are allocated by the thread that reads them and freed by the
//! one that delivers them; mimalloc handles that cross-thread pattern
//! without the long consolidation pauses glibc's allocator can take after a
//! large backlog is freed. Left to its defaults it commits each arena up
//! front, and a purge of freed pages on such an arena only marks them
//! reusable, which still counts as resident: the embedded default peaked
//! at 129-139 MB. Committing arena memory as it is used brought that to
//! 57-84 MB. The rest was memory already freed: mimalloc returns freed
//! pages a second after the free, and a pile taken in at once (the embedded
//! default's 50,000-message outage pile arrives in about 100 ms) is
//! allocated and freed well inside that second, so the peak grew with the
//! pile (10,000 records: 38-42 MB; 150,000: 80-92 MB), although the engine
//! holds only what its lanes and the backlog writer's budget bound.
//! Returning freed pages at once bounds it (150,000 records: 42-48 MB; the
//! embedded default 47-50 MB), for about 4 % more CPU per run of the
//! embedded default and about 6 % more per record on Kafka
//! (docs/benchmarks.md, "The embedded default").
//!
//! mimalloc also stands in for the C library's `malloc` and `free` for the
//! whole process (the crate's `override` feature), so the C code linked
//! in allocates from it too. That is librdkafka above all: it allocates a
//! list, and an entry per header, for every record whose headers are read,
//! and frees them with the record. On glibc's allocator a Kafka consume
//! spent about 1,900 instructions per record in `malloc` and `free`; with
//! mimalloc in their place it takes about 11 % fewer instructions per
//! record in all, and ends with less resident memory, since glibc kept
//! librdkafka's freed memory in its arenas (docs/benchmarks.md, "Kafka").
//!
//! An arena's commit mode is fixed when it is reserved, at the first
//! allocation, before `main` runs; so the settings are made from the
//! program's load-time initialisers (`.init_array`), before anything
//! allocates, and they allocate nothing themselves. Each is left alone when
//! its variable (`MIMALLOC_ARENA_EAGER_COMMIT`, `MIMALLOC_PURGE_DELAY`) is
//! set (mimalloc reads those itself), so an operator can still choose.

#![allow(unsafe_code)]

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(target_os = "linux")]
mod at_load {
    use std::ffi::{CStr, c_char, c_int, c_long};

    /// The program's settings: mimalloc 3's `mi_option_e` number, the value,
    /// and the variable that wins over it. mimalloc's verbose start-up lists
    /// its options by name, which `tests/cli.rs` reads to prove that each
    /// number is the option meant.
    const SETTINGS: [(c_int, c_long, &CStr); 2] = [
        // `mi_option_arena_eager_commit`: commit arena memory as it is used.
        (4, 0, c"MIMALLOC_ARENA_EAGER_COMMIT"),
        // `mi_option_purge_delay`: return freed pages at once.
        (15, 0, c"MIMALLOC_PURGE_DELAY"),
    ];

    unsafe extern "C" {
        fn mi_option_set(option: c_int, value: c_long);
        fn getenv(name: *const c_char) -> *const c_char;
    }

    /// Runs before `main` and before the first allocation.
    #[used]
    #[unsafe(link_section = ".init_array")]
    static SET_OPTIONS: extern "C" fn() = set_options;

    /// Each setting, unless its variable is set.
    extern "C" fn set_options() {
        for (option, value, variable) in SETTINGS {
            // SAFETY: getenv reads the environment with a NUL-terminated
            // name and allocates nothing; nothing else runs yet, so no
            // thread changes the environment meanwhile. mi_option_set only
            // stores an integer in mimalloc's option table, and 0 is valid
            // for both options.
            unsafe {
                if getenv(variable.as_ptr()).is_null() {
                    mi_option_set(option, value);
                }
            }
        }
    }
}
