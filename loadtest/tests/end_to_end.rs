//! The harness against a real `solrouter dev` on 127.0.0.1: a few seconds of open-loop
//! load with every scenario, its own mock upstream for the direct phase, and the money
//! check, read back from the JSON report.

use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const ADMIN_TOKEN: &str = "loadtest-admin-token-0123456789";
/// Longest `solrouter dev` may take to print its listening line (a debug build on a
/// shared machine).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Lines `solrouter dev` prints before it listens, with room to spare.
const STDOUT_LINES_MAX: usize = 64;

/// What Cargo sets for a test run besides `CARGO_PKG_*`.
const CARGO_TEST_VARIABLES: [&str; 7] = [
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_TARGET_TMPDIR",
    "CARGO_RUSTC_CURRENT_DIR",
];

/// `target/<profile>/solrouter`, built now: Cargo gives a test the paths of its own
/// crate's binaries only, so the gateway is built the way escargot would, into the
/// target directory and profile this test was built in. It is built as the README's
/// `cargo test --workspace` builds it (every member's tests, so every member's
/// dev-dependencies' features): after that command's own build this one has nothing
/// to do. `-p solrouter-gateway --bin solrouter` unified features over the gateway
/// alone, and so rebuilt tokio, hyper, the gateway and 70 other crates a second time
/// in every CI run (110 s of its 16 minutes).
fn solrouter_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    let target_dir = profile_dir.parent().expect("target/<profile>");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "--quiet", "--workspace", "--tests"])
        .arg("--manifest-path")
        .arg(workspace.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(target_dir);
    // The variables Cargo sets for this test describe this crate; a build script that
    // watches one (ring's watches `CARGO_MANIFEST_DIR`) would rebuild everything above
    // it, twice per run: here and in the next build from a shell.
    for (name, _) in std::env::vars_os() {
        let name_text = name.to_string_lossy();
        if name_text.starts_with("CARGO_PKG_") || CARGO_TEST_VARIABLES.contains(&&*name_text) {
            build.env_remove(&name);
        }
    }
    if profile_dir.file_name().is_some_and(|name| name == "release") {
        build.arg("--release");
    }
    let status = build.status().expect("running cargo build");
    assert!(status.success(), "cargo build --workspace --tests failed");
    let binary = profile_dir.join(format!("solrouter{}", std::env::consts::EXE_SUFFIX));
    assert!(binary.is_file(), "{} was not built", binary.display());
    binary
}

/// A running `solrouter dev`, killed when dropped (also on a panic).
struct Dev {
    child: Child,
    base: String,
}

impl Dev {
    fn start(binary: &Path, data_dir: &Path) -> Dev {
        let mut child = Command::new(binary)
            .args(["dev", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("SOLROUTER_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning solrouter dev");
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines, received) = mpsc::sync_channel(STDOUT_LINES_MAX);
        // Ends when the receiver is gone; dev prints only while starting.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if lines.send(line).is_err() {
                    return;
                }
            }
        });
        let mut dev = Dev { child, base: String::new() };
        let deadline = Instant::now() + START_TIMEOUT;
        while dev.base.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line =
                received.recv_timeout(left).expect("solrouter dev printed no listening line");
            if let Some(url) = line.strip_prefix("listening: ") {
                dev.base = url.trim().trim_end_matches("/v1/api").to_owned();
            }
        }
        dev
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn open_loop_run_with_every_scenario_passes_the_money_check() {
    let solrouter = solrouter_binary();
    let data_dir = tempfile::tempdir().expect("a temporary directory");
    let dev = Dev::start(&solrouter, data_dir.path());
    let report_path = data_dir.path().join("report.json");
    let output = Command::new(env!("CARGO_BIN_EXE_solrouter-loadtest"))
        .args(["--gateway", &dev.base, "--admin-token", ADMIN_TOKEN])
        .args(["--rate", "100,200", "--duration-s", "2"])
        .args(["--mix", "plain=5,stream=3,fallback=1,broke=1,large=1,cut=1"])
        .args(["--accounts", "3", "--keys-per-account", "2", "--hot-share", "0.5"])
        .args(["--large-prompt-words", "2000", "--timeout-s", "20"])
        .arg("--mock-bin")
        .arg(&solrouter)
        .arg("--json")
        .arg(&report_path)
        .stdin(Stdio::null())
        .output()
        .expect("running solrouter-loadtest");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "loadtest failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("money check: ok"), "{stdout}");
    assert!(stderr.contains("gateway") && stderr.contains("p99"), "no progress line: {stderr}");

    let text = std::fs::read_to_string(&report_path).expect("the JSON report");
    let report: Value = serde_json::from_str(&text).expect("the report is JSON");
    assert_eq!(report["ok"], true, "{report:#}");
    let money = &report["money"];
    assert_eq!((money["ok"].clone(), money["audit_ok"].clone()), (true.into(), true.into()));
    assert_eq!(money["accounts"], 4, "three funded accounts and the broke one");
    assert_eq!(money["mismatches"], serde_json::json!([]));
    assert_eq!(money["charged_usd"], money["reported_usd"]);
    assert_ne!(money["charged_usd"], "0.00", "the run was charged something");

    let gateway = &report["gateway"];
    // 100/s for one second, then 200/s: 300 requests, every one answered as expected.
    assert_eq!(gateway["sent"], 300, "{gateway:#}");
    // The only errors are the streams cut on purpose, each ended by the gateway with an
    // error event whose cost the money check counted.
    let n_cut = &gateway["by_scenario"]["cut"];
    assert_eq!(gateway["errors_by_kind"], serde_json::json!({"stream cut": n_cut}), "{gateway:#}");
    assert!(gateway["refused_402"].as_u64().unwrap() > 0, "{gateway:#}");
    let answered = ["ok", "refused_402", "errors"].map(|field| gateway[field].as_u64().unwrap());
    assert_eq!(answered.iter().sum::<u64>(), 300, "{gateway:#}");
    for scenario in ["plain", "stream", "fallback", "broke", "large", "cut"] {
        assert!(gateway["by_scenario"][scenario].as_u64().unwrap() > 0, "{scenario}: {gateway:#}");
    }
    for quantile in ["p50", "p90", "p99", "p99.9", "max"] {
        assert!(gateway["latency_ms"][quantile].as_f64().unwrap() > 0.0, "{quantile}");
        assert!(report["direct"]["latency_ms"][quantile].as_f64().unwrap() > 0.0, "{quantile}");
        assert!(report["overhead_ms"][quantile].is_number(), "{quantile}");
    }
    assert!(gateway["ttft_ms"]["count"].as_u64().unwrap() > 0, "{gateway:#}");
    assert_eq!(gateway["send_late_ms"]["count"], 300, "{gateway:#}");
    assert!(gateway["throughput_per_s"].as_f64().unwrap() > 0.0);
    // Connections are kept alive: a request opens at most one, most open none.
    let opened = gateway["connections_opened"].as_u64().unwrap();
    assert!((1..300).contains(&opened), "{gateway:#}");
    let direct = &report["direct"];
    // The 402s never reach an upstream, so the direct phase skips them.
    assert_eq!(direct["skipped"], gateway["refused_402"], "{direct:#}");
    assert_eq!(direct["errors_by_kind"], serde_json::json!({"stream cut": n_cut}), "{direct:#}");
    assert_eq!(direct["sent"].as_u64().unwrap() + direct["skipped"].as_u64().unwrap(), 300);
}
