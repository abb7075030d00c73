//! `/health` (KIP-1017) of a real `connect run` with `[rest]`, through curl: while Kafka, reached
//! through a fault proxy, is cut and healed, and while a task is FAILED. (scripts/rest-check.py,
//! which checks every endpoint against docs/openapi.json, runs in tests/rest.rs.)

// Test code: an unwrap that fails is a failing test, with the error in its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use connector_testkit::{free_port, init_tracing, Tansu, TansuStorage};
use serde_json::{json, Value};

mod support;

use support::{write, Runner};

/// The probe asks every 2 s and gives each try 2 s: a cut shows within about 4 s. With slack
/// for a loaded machine and the poll interval.
const CUT_BOUND: Duration = Duration::from_secs(8);

/// `curl` one request (blocking): (status, body).
fn curl(method: &str, url: &str, body: Option<&Value>) -> Option<(u16, String)> {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "--max-time", "10", "-X", method, "-w", "\n%{http_code}"]);
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", &b.to_string()]);
    }
    let out = cmd.arg(url).output().unwrap();
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n')?;
    Some((status.trim().parse().ok()?, body.to_owned()))
}

struct Api {
    base: String,
}

impl Api {
    async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Option<(u16, String)> {
        let (method, url) = (method.to_owned(), format!("{}{path}", self.base));
        tokio::task::spawn_blocking(move || curl(&method, &url, body.as_ref())).await.unwrap()
    }

    /// Polls `GET /health` every 100 ms until it answers `want`; returns the body and how long
    /// it took. Panics with the last answer and the process's log after `within`.
    async fn health_becomes(
        &self,
        want: u16,
        within: Duration,
        runner: &Runner,
    ) -> (Value, Duration) {
        let started = Instant::now();
        loop {
            let r = self.call("GET", "/health", None).await;
            if let Some((status, body)) = &r {
                if *status == want {
                    let body: Value = serde_json::from_str(body).unwrap();
                    return (body, started.elapsed());
                }
            }
            assert!(
                started.elapsed() < within,
                "/health not {want} within {within:?}: last {r:?}; log:\n{}",
                runner.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn config_file(dir: &Path, bootstrap: &str, port: u16, topic: &str) -> String {
    write(
        dir,
        "connect.toml",
        &format!(
            r#"[kafka]
bootstrap_servers = ["{bootstrap}"]
request_timeout_ms = 2000

[offsets]
store = "memory"

[rest]
listen = "127.0.0.1:{port}"
config_dir = "{rest_dir}"

[[connector]]
name = "beat"
type = "heartbeat"
topic = "{topic}"
device = "d1"
interval_ms = 100
"#,
            rest_dir = dir.join("rest.d").display()
        ),
    )
}

/// KIP-1017 through a real process: 200 once running; 503 naming Kafka within a bound of the
/// cut; 200 again after the heal; 503 naming a FAILED task, and 200 once it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_503_naming_kafka_within_a_bound_of_a_cut_and_names_a_failed_task() {
    init_tracing();
    let (tansu, proxy) = Tansu::start_behind_proxy(TansuStorage::Memory).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let config = config_file(dir.path(), &tansu.bootstrap(), port, "health-beats");
    let runner = Runner::start(&config, &dir.path().join("connect.log"), &[]);
    let api = Api { base: format!("http://127.0.0.1:{port}") };

    let (up, _) = api.health_becomes(200, Duration::from_secs(30), &runner).await;
    assert_eq!(up["status"], "healthy", "{up}");

    proxy.cut();
    let (down, took) = api.health_becomes(503, CUT_BOUND, &runner).await;
    assert_eq!(down["status"], "unhealthy", "{down}");
    let reason = down["message"].as_str().unwrap();
    assert!(reason.contains("Kafka"), "the reason names Kafka: {reason}");
    tracing::info!(took_ms = took.as_millis(), reason, "/health saw the cut");

    proxy.heal();
    let (up, took) = api.health_becomes(200, Duration::from_secs(20), &runner).await;
    assert_eq!(up["status"], "healthy", "{up}");
    tracing::info!(took_ms = took.as_millis(), "/health saw the heal");

    // A sink whose file cannot be opened: its task fails at once, and stays FAILED.
    let bad = json!({"type": "file-sink", "topics": ["health-beats"],
                     "path": dir.path().join("no-such-dir").join("out.txt")});
    let (status, body) = api.call("PUT", "/connectors/broken/config", Some(bad)).await.unwrap();
    assert_eq!(status, 201, "{body}");
    let (down, _) = api.health_becomes(503, Duration::from_secs(20), &runner).await;
    let reason = down["message"].as_str().unwrap();
    assert_eq!(down["status"], "unhealthy", "{down}");
    assert!(reason.contains("broken") && reason.contains("FAILED"), "names the task: {reason}");
    assert!(reason.contains("no-such-dir"), "and its error: {reason}");

    let (status, body) = api.call("DELETE", "/connectors/broken", None).await.unwrap();
    assert_eq!(status, 204, "{body}");
    api.health_becomes(200, Duration::from_secs(20), &runner).await;
}
