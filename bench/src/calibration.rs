//! How fast this machine is, so figures from different machines can be compared: a fixed
//! CPU-bound loop timed in the benchmark's process (one core), and PostgreSQL's
//! select-only rate (`pgbench -S`) on the benchmark's own cluster.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tokio::process::Command;

use crate::database::Cluster;

/// The machine's figures, for results.json's `context.calibration`.
pub struct Calibration {
    pub cpu_iterations_per_s: f64,
    pub pgbench_select_tps: Option<f64>,
    pub pgbench: String,
}

impl Calibration {
    pub fn json(&self) -> Value {
        json!({
            "cpu_loop": "splitmix64 iterations, one dependent chain, one core",
            "cpu_iterations_per_s": self.cpu_iterations_per_s,
            "pgbench_select_tps": self.pgbench_select_tps,
            "pgbench": self.pgbench,
        })
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        let pgbench = self
            .pgbench_select_tps
            .map_or_else(|| "not run".to_string(), |tps| format!("{tps:.0} tps"));
        format!(
            "calibration: CPU loop {:.1} M iterations/s (one core); pgbench -S {pgbench} ({})",
            self.cpu_iterations_per_s / 1e6,
            self.pgbench
        )
    }
}

/// Runs both: the loop for `iterations`, pgbench for `pgbench_seconds`. A missing
/// pgbench is reported, not fatal: the loop alone still says something.
pub async fn calibrate(
    cluster: &Cluster,
    iterations: u64,
    pgbench_seconds: u64,
) -> Result<Calibration> {
    let cpu_iterations_per_s = tokio::task::spawn_blocking(move || cpu_loop(iterations))
        .await
        .context("the calibration loop")?;
    let (pgbench_select_tps, pgbench) = match pgbench_binary() {
        None => (
            None,
            "pgbench not found on PATH nor in /usr/lib/postgresql/*/bin".to_string(),
        ),
        Some(binary) => {
            let tps = select_only(cluster, &binary, pgbench_seconds).await?;
            (
                Some(tps),
                format!(
                    "{} -S -c 2 -j 2 -T {pgbench_seconds}, scale 1",
                    binary.display()
                ),
            )
        }
    };
    Ok(Calibration {
        cpu_iterations_per_s,
        pgbench_select_tps,
        pgbench,
    })
}

/// Iterations per second of splitmix64, each step depending on the last, so neither
/// the compiler nor the CPU can run steps side by side.
fn cpu_loop(iterations: u64) -> f64 {
    let start = Instant::now();
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..iterations {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        state = z ^ (z >> 31);
    }
    std::hint::black_box(state);
    iterations as f64 / start.elapsed().as_secs_f64()
}

/// pgbench on PATH, else the newest of Debian's PostgreSQL installations.
fn pgbench_binary() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("pgbench"))
            .find(|candidate| candidate.is_file())
    });
    on_path.or_else(|| {
        let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|entry| Some(entry.ok()?.path().join("bin/pgbench")))
            .filter(|candidate| candidate.is_file())
            .collect();
        found.sort();
        found.pop()
    })
}

/// `pgbench -i -s 1` into a database of its own, then `-S -c 2 -j 2 -T seconds`: the
/// transactions per second it reports.
async fn select_only(cluster: &Cluster, binary: &PathBuf, seconds: u64) -> Result<f64> {
    let db = cluster.create_database("pgbench").await?;
    let result = async {
        run_pgbench(binary, &["-i", "-s", "1", "-q", &db.url]).await?;
        let output = run_pgbench(
            binary,
            &[
                "-S",
                "-c",
                "2",
                "-j",
                "2",
                "-T",
                &seconds.max(1).to_string(),
                &db.url,
            ],
        )
        .await?;
        // "tps = 41234.567890 (without initial connection time)"
        output
            .lines()
            .find_map(|line| line.trim().strip_prefix("tps = "))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|tps| tps.parse::<f64>().ok())
            .with_context(|| format!("no tps in pgbench's output:\n{output}"))
    }
    .await;
    cluster.drop_database(db).await?;
    result
}

async fn run_pgbench(binary: &PathBuf, args: &[&str]) -> Result<String> {
    let output = Command::new(binary)
        .args(args)
        .output()
        .await
        .with_context(|| format!("running {}", binary.display()))?;
    if !output.status.success() {
        bail!(
            "pgbench {} failed: {}",
            args.first().copied().unwrap_or_default(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}
