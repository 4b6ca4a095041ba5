//! deploy/ against the daemon it is for: every metric the alert rules
//! (deploy/prometheus/alerts.yml, and the series their unit tests feed them) and the
//! Grafana dashboard (deploy/grafana/dispatcher.json) name is one a running daemon
//! exports on /metrics, so renaming a metric breaks this test rather than, silently, an
//! alert. (scripts/check-deploy runs the rules and the queries through promtool.)

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::support::*;
use serde_json::Value;

fn deploy_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy")
        .join(path)
}

fn read(path: &str) -> String {
    let path = deploy_file(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn dashboard() -> Value {
    serde_json::from_str(&read("grafana/dispatcher.json")).expect("the dashboard is JSON")
}

/// The metric names in `text`, read loosely as PromQL: every identifier that starts
/// with `dispatcher_` (label values and alert names are not, and the admin server's
/// host name has a hyphen).
fn metric_names(text: &str) -> BTreeSet<String> {
    let is_name_char = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = BTreeSet::new();
    for (start, _) in text.match_indices("dispatcher_") {
        if text[..start].chars().next_back().is_some_and(is_name_char) {
            continue;
        }
        let name: String = text[start..]
            .chars()
            .take_while(|&c| is_name_char(c))
            .collect();
        names.insert(name);
    }
    names
}

/// Every string in a JSON document: the dashboard's queries, its variables' queries and
/// whatever else may name a metric.
fn strings(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::String(text) => out.push(text.clone()),
        Value::Array(items) => items.iter().for_each(|item| strings(item, out)),
        Value::Object(fields) => fields.values().for_each(|field| strings(field, out)),
        _ => {}
    }
}

/// The series names a scrape can hold: each family of a `# TYPE` line with the
/// suffixes of its type (a counter's `_total`, a histogram's `_bucket`, `_sum` and
/// `_count`), and each sample's name.
fn exported(scrape: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut words = rest.split_whitespace();
            let (Some(family), Some(kind)) = (words.next(), words.next()) else {
                panic!("a # TYPE line without family and type: {line}");
            };
            let suffixes: &[&str] = match kind {
                "counter" => &["_total", "_created"],
                "histogram" => &["_bucket", "_sum", "_count", "_created"],
                "summary" => &["", "_sum", "_count", "_created"],
                _ => &[""],
            };
            names.extend(suffixes.iter().map(|suffix| format!("{family}{suffix}")));
        } else if !line.starts_with('#') && !line.is_empty() {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            names.insert(name.to_string());
        }
    }
    names
}

/// What a running daemon serves on /metrics once each of its metrics has a series: a
/// family appears at its first sample, so the daemon scraped has delivered an event and
/// rescued the claim of another daemon that crashed mid-request (leases_expired).
async fn scrape_a_daemon_that_has_seen_everything() -> String {
    let first_request = AtomicBool::new(true);
    let partner = TestPartner::start("acme", move |request| {
        let hang = first_request.swap(false, Ordering::SeqCst);
        Reply::accepted(request).after(Duration::from_secs(if hang { 60 } else { 0 }))
    })
    .await;
    // A short lease, so the crashed daemon's claim is taken back within seconds.
    let config = TestConfig::new()
        .partner(&partner, &[PROGRAM])
        .dispatch(Dispatch::default())
        .lease(Duration::from_secs(5))
        .poll_interval(Duration::from_millis(200))
        .request_timeout(Duration::from_secs(3))
        .shutdown_grace(Duration::from_secs(1));
    let db = TestDb::migrated(&config).await;
    db.insert_event(ENROLLMENT, &enrollment_event("p-1")).await;
    let crashed = Daemon::start(&config, &db);
    partner.wait_for_requests(1).await;
    crashed.crash();

    let daemon = Daemon::start(&config, &db);
    db.wait_for_state("delivered", 1).await;
    let admin = AdminClient::of(&daemon, None).await;
    let response = admin
        .raw(admin.http().get(format!("{}/metrics", admin.base)))
        .await;
    assert_eq!(response.status(), 200);
    response.text().await.expect("the metrics text")
}

#[tokio::test(flavor = "multi_thread")]
async fn every_metric_the_alerts_and_the_dashboard_name_is_one_the_daemon_exports() {
    let mut used = Vec::new();
    for file in ["prometheus/alerts.yml", "prometheus/alerts.test.yml"] {
        used.extend(metric_names(&read(file)).into_iter().map(|m| (m, file)));
    }
    let mut texts = Vec::new();
    strings(&dashboard(), &mut texts);
    for text in &texts {
        used.extend(
            metric_names(text)
                .into_iter()
                .map(|m| (m, "grafana/dispatcher.json")),
        );
    }
    // Not vacuous: each file names the metrics its alerts and panels are about.
    for file in [
        "prometheus/alerts.yml",
        "prometheus/alerts.test.yml",
        "grafana/dispatcher.json",
    ] {
        assert!(
            used.iter().filter(|(_, f)| *f == file).count() >= 5,
            "{file} names hardly any metric: {used:?}"
        );
    }

    let scrape = scrape_a_daemon_that_has_seen_everything().await;
    let exported = exported(&scrape);
    let unknown: BTreeSet<_> = used
        .iter()
        .filter(|(metric, _)| !exported.contains(metric))
        .collect();
    assert!(
        unknown.is_empty(),
        "deploy/ names metrics the daemon does not export: {unknown:?}\nexported: {exported:?}"
    );
}

#[test]
fn the_dashboard_is_a_grafana_dashboard_whose_panels_query_the_chosen_data_source() {
    let dashboard = dashboard();
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    assert!(dashboard["uid"].is_string() && dashboard["title"].is_string());
    let variables = dashboard["templating"]["list"]
        .as_array()
        .expect("templating.list");
    assert!(
        variables.iter().any(|v| v["name"] == "datasource"
            && v["type"] == "datasource"
            && v["query"] == "prometheus"),
        "no Prometheus data source variable"
    );
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for panel in panels {
        assert!(
            ids.insert(panel["id"].as_u64().expect("panel id")),
            "{panel}"
        );
        for key in ["x", "y", "w", "h"] {
            assert!(panel["gridPos"][key].is_u64(), "{panel}");
        }
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{panel}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{}", panel["title"]);
        for target in targets {
            assert!(target["refId"].is_string(), "{target}");
            assert!(
                target["expr"]
                    .as_str()
                    .is_some_and(|e| e.contains("dispatcher_")),
                "{target}"
            );
        }
    }
    assert!(panels.len() >= 10);
}

#[test]
fn metric_names_are_read_from_promql_with_their_suffixes() {
    let names = metric_names(
        r#"histogram_quantile(0.9, sum by (le) (rate(dispatcher_attempt_duration_seconds_bucket{partner=~"$partner"}[5m]))) / x_dispatcher_no"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["dispatcher_attempt_duration_seconds_bucket"]
    );
    let exported = exported(
        "# TYPE dispatcher_attempts counter\n# TYPE dispatcher_attempt_duration_seconds histogram\ndispatcher_database_up 1\n",
    );
    for name in [
        "dispatcher_attempts_total",
        "dispatcher_attempt_duration_seconds_bucket",
        "dispatcher_attempt_duration_seconds_count",
        "dispatcher_database_up",
    ] {
        assert!(exported.contains(name), "{name}");
    }
    assert!(!exported.contains("dispatcher_attempts"));
}
