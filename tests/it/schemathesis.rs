//! The API against its own promises: Schemathesis (PyPI, version 4) reads a running
//! daemon's `/api/openapi.json`, sends what the document allows and what it does not,
//! and checks every answer against the document with every check on (status codes and
//! content types documented, bodies matching their schemas, no 5xx, bad input refused,
//! the token required). `scripts/test` installs it into `target/schemathesis-venv`; this
//! test installs it there too when it is missing, and skips only without python3.

use std::path::PathBuf;
use std::process::Command;

use crate::support::*;
use serde_json::json;

const TOKEN: &str = "schemathesis-token-for-the-api-tests";
/// Examples per operation: enough to find a wrong status or content type, few enough
/// that the run stays well under a minute.
const EXAMPLES: &str = "25";

/// The `schemathesis` program, installed when missing; `None` without python3.
fn schemathesis() -> Option<PathBuf> {
    if let Some(given) = std::env::var_os("SCHEMATHESIS").map(PathBuf::from) {
        if given.exists() {
            return Some(given);
        }
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/schemathesis-venv");
    let program = venv.join("bin/schemathesis");
    if program.exists() {
        return Some(program);
    }
    Command::new("python3").arg("--version").output().ok()?;
    let created = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .expect("python3 -m venv");
    assert!(
        created.success(),
        "python3 -m venv {} failed",
        venv.display()
    );
    let installed = Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "schemathesis>=4,<5"])
        .status()
        .expect("pip install schemathesis");
    assert!(installed.success(), "pip install schemathesis failed");
    Some(program)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_api_keeps_every_promise_of_its_openapi_document() {
    let Some(schemathesis) = schemathesis() else {
        eprintln!("SKIPPED: python3 is missing, so Schemathesis cannot run against the API");
        return;
    };
    let partner = TestPartner::start("acme", |request| {
        if request.patient_id() == "p-refused" {
            Reply::status(400, r#"{"success": false, "errorMessage": "no"}"#)
        } else {
            Reply::accepted(request)
        }
    })
    .await;
    let config = TestConfig::new()
        .partner(&partner, &[PROGRAM])
        .admin_token(TOKEN);
    let db = TestDb::migrated(&config).await;
    for patient in ["p-ok", "p-refused"] {
        db.insert_event(ENROLLMENT, &enrollment_event(patient))
            .await;
    }
    let mut orphan = enrollment_event("p-orphan");
    orphan["supportProgramId"] = json!(UNSERVED_PROGRAM);
    db.insert_event(ENROLLMENT, &orphan).await;
    let daemon = Daemon::start(&config, &db);
    db.wait_for_deliveries(&Deliveries::all().ended(), 3).await;
    let base = daemon.admin_url().await;

    // Every check on; the file adds one answer a valid bulk retry may get (it says why).
    let settings =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis/schemathesis.toml");
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&schemathesis)
            .arg("--config-file")
            .arg(&settings)
            .arg("run")
            .arg(format!("{base}/api/openapi.json"))
            .args(["--url", &base])
            .args(["--header", &format!("Authorization: Bearer {TOKEN}")])
            .args(["--checks", "all", "--max-examples", EXAMPLES])
            .args(["--seed", "1", "--no-color"])
            .env("SCHEMATHESIS_TELEMETRY", "false")
            // Its example cache stays out of the repository.
            .current_dir(std::env::temp_dir())
            .output()
            .expect("run schemathesis")
    })
    .await
    .expect("schemathesis ran");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "Schemathesis found the API breaking its document:\n{stdout}\n{stderr}"
    );
}
