//! The test bench: a fresh PostgreSQL database per test, partners played by real HTTP
//! servers on 127.0.0.1, and the real `dispatcher` binary run as a child process.
//!
//! `db` and `queries` hold the database and the questions tests ask it, `partner` the
//! partners, `config` the file the daemon reads, `daemon` the binary, `admin` its admin
//! server; `router` plays the daemon's steps one at a time; `cluster`, `tls` and `raw` serve the tests of outages, certificates and
//! hostile answers. This file holds the contract's constants and example events.

mod admin;
pub mod cluster;
mod config;
mod daemon;
mod db;
mod partner;
mod queries;
pub mod raw;
mod router;
pub mod tls;

use std::path::PathBuf;

use serde_json::{json, Value};

pub use admin::AdminClient;
pub use config::{partner_config, Dispatch, Retention, TestConfig};
pub use daemon::{cli, cli_ok, dispatcher, finish, Daemon, Output};
pub use db::TestDb;
pub use partner::{per_webhook_id, Received, Reply, TestPartner, ALREADY_ENROLLED};
pub use queries::{Deliveries, OutboxListener};
pub use router::{backend_pid, ended, room, support_connection, Router};

pub const PROGRAM: &str = "78ef982b-00ea-39c2-a875-f549c40e92ad";
/// A second support program, for a partner that serves only it.
pub const OTHER_PROGRAM: &str = "0b6c1a35-7f55-4c63-9a64-3c1d2f1e9b10";
/// A support program no partner serves until a test adds one: its events go unrouted.
pub const UNSERVED_PROGRAM: &str = "0c5b6a4e-6f0e-4d8a-9d7e-3f2a1b0c9d8e";
pub const ENROLLMENT: &str = "HelpAround.Patient.CompleteEnrollment";
pub const VIEWED_TRACKER: &str = "HelpAround.Patient.UserAction.ViewedTracker";
/// The Standard Webhooks example secret; every test partner signs with it.
pub const SIGNING_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
pub const MIB: u64 = 1024 * 1024;

/// The contract's example enrollment, as the enrollment flow stores it (no sendDate,
/// sourceName or eventName: the dispatcher sets those), for the given patient.
pub fn enrollment_event(patient_id: &str) -> Value {
    let mut event = example("enrollment.json");
    let object = event.as_object_mut().expect("example event is an object");
    for field in ["sendDate", "sourceName", "eventName"] {
        object.remove(field);
    }
    event["patient"]["id"] = json!(patient_id);
    event
}

pub fn viewed_tracker_event(patient_id: &str) -> Value {
    let mut event = example("viewed-tracker.json");
    let object = event.as_object_mut().expect("example event is an object");
    for field in ["sendDate", "sourceName", "eventName", "data"] {
        object.remove(field);
    }
    event["patient"]["id"] = json!(patient_id);
    event["patient"]
        .as_object_mut()
        .expect("patient")
        .remove("externalIds");
    event
}

/// `length` random letters and digits: text no compression shrinks, so 3,008 of them are
/// more than PostgreSQL can put in an index row (2,704 bytes), as an outbox row that once
/// stalled routing held in its `patient.id`.
pub fn random_text(length: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    std::iter::repeat_with(|| *uuid::Uuid::new_v4().as_bytes())
        .flatten()
        .take(length)
        .map(|byte| char::from(ALPHABET[usize::from(byte) % ALPHABET.len()]))
        .collect()
}

/// The partner contract, as vendored in `contract/` (a copy of `../shared/spec`).
pub fn spec_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("contract")
}

fn example(file: &str) -> Value {
    let text = std::fs::read_to_string(spec_dir().join("examples").join(file))
        .expect("read contract example");
    let body: Value = serde_json::from_str(&text).expect("contract example is JSON");
    body["event"].clone()
}

/// Validates a body against the contract's JSON Schema; returns the errors.
pub fn schema_errors(schema_file: &str, body: &Value) -> Vec<String> {
    let text = std::fs::read_to_string(spec_dir().join(schema_file)).expect("read schema");
    let schema: Value = serde_json::from_str(&text).expect("schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    validator
        .iter_errors(body)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect()
}

/// Writes a file into the test's directory (PEM files, secret files) and returns its path.
pub fn write_file(dir: &std::path::Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write test file");
    path
}
