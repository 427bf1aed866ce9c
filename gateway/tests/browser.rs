//! The dashboard in a real browser: `browser.py` drives Debian's headless Chromium
//! (through chromedriver and Selenium, from `target/test-venv`) and the official `openai`
//! SDK against a real `solrouter dev`. Screenshots of every page land in
//! `target/screenshots/` (test artefacts). Chromium, chromedriver and the Python packages
//! come from `gateway/tests/setup-test-env.sh`; a missing one fails the test.

mod support;

use std::path::Path;
use std::process::Command;
use support::{data_dir, path, venv_python, Dev, MAIN_VENV, TEST_ENV_HINT};

#[tokio::test]
async fn a_person_signs_up_spends_watches_and_revokes_in_chromium() {
    for binary in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        assert!(Path::new(binary).exists(), "{binary} is missing: {TEST_ENV_HINT}");
    }
    let dir = data_dir();
    let dev = Dev::start(&path(&dir), &[]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/browser.py");
    let screenshots =
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("target/screenshots");
    let base = dev.base.clone();
    let python = venv_python(MAIN_VENV);
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .arg(script)
            .env("SOLROUTER_BASE_URL", base)
            .env("SOLROUTER_SCREENSHOTS", &screenshots)
            .output()
            .unwrap_or_else(|error| panic!("running {}: {error}", python.display()))
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "browser.py failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("browser ok"), "{stdout}");
    dev.audit_ok().await;
}
