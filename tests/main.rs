//! laneway's integration tests, one binary: each file beside this one is a
//! module of it, and `support/` is the tree they share. One binary builds
//! and links once, where one per file built the support tree and linked
//! every dependency again for each (most of the test build's time).
//!
//! What one process means for the tests:
//!
//! - tests of different files run side by side (`--test-threads`, the
//!   machine's cores by default), so what they share outside the process
//!   is guarded as it was inside a file: RabbitMQ by
//!   [`support::broker::broker_lock`] (shared for a test that uses the
//!   broker, exclusive for one that restarts it), the AMQP 1.0 clients
//!   run in process by [`support::amqp1::turn`] (one at a time), names
//!   by [`support::names`];
//! - a file's tests are selected by its module path:
//!   `cargo test --release --test integration backlog_damage::`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod adaptive_slots;
mod admin;
mod admin_limits;
mod amqp1_aliyun;
mod amqp1_retries;
mod amqp1_settlement;
mod amqp1_silent_peer;
mod amqp1_source;
mod amqp_backlog;
mod amqp_backlog_processes;
mod amqp_pile;
mod amqp_poison;
mod amqp_restart;
mod amqp_roundtrip;
mod amqp_sink;
mod amqp_stream;
mod backlog_conformance;
mod backlog_crash;
mod backlog_damage;
mod backlog_disk;
mod backlog_durability;
mod backlog_faults;
mod backlog_golden;
mod backlog_model;
mod classification;
mod cli;
mod dead_letter_torn_tail;
mod dedup_window;
mod engine_delivery;
mod engine_routing;
mod engine_scheduler;
mod exact_bytes;
mod fatal_errors;
mod files_and_errors;
mod http_sink;
mod input_gaps;
mod json_depth;
mod jsonl_checkpoint;
mod jsonl_torn_tail;
mod kafka_catch_up;
mod kafka_example;
mod kafka_flow;
mod kafka_keys;
mod kafka_processes;
mod kafka_retries;
mod layering;
mod log_output;
mod metrics_unique;
mod pulsar_source;
mod run_sigkill;
mod secrets;
mod simulate_sources;
mod sink_full_disk;
mod state_faults;
mod stdin_stop;
mod superseded;
mod tune;
mod writer_budget;
