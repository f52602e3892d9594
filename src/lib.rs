//! grove: one agent-task orchestrator per workspace, shared by every window.
//!
//! The binary (`src/main.rs`) is a thin wrapper around [`cli::main`]; the
//! library exists so that integration tests (schema drift, golden vectors,
//! the store and client they drive directly) can reach what they need.
//! Modules are private unless a test or the binary uses them, so the
//! compiler reports what nothing uses; `tests/architecture.rs` checks that
//! imports between modules point down the layers (see ARCHITECTURE.md).

// All output goes through `output` (a closed stdout must not panic).
#![warn(clippy::print_stdout, clippy::print_stderr)]

#[macro_use]
pub mod output;

mod acp;
mod bench;
mod chaos;
pub mod cli;
pub mod client;
pub mod config;
mod demo;
mod election;
mod fs_watch;
mod lifecycle;
mod local_cluster;
mod loop_watch;
mod mcp;
mod node;
mod orchestrator;
pub mod paths;
pub mod primary_record;
pub mod proc;
mod projects;
pub mod protocol;
mod runs;
mod shim;
mod stats;
pub mod store;
mod subscriber;
#[cfg(feature = "test-hooks")]
pub mod test_hooks;
mod ticker;
mod trust;
mod waiter;
mod web;
mod worktree;
