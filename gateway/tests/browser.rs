//! The dashboard in a real browser: `browser.py` drives Debian's headless Chromium
//! (through chromedriver and Selenium, from `target/test-venv`) and the official `openai`
//! SDK against a real `solrouter dev`. Screenshots of every page land in
//! `target/screenshots/` (test artefacts). Chromium, chromedriver and the Python packages
//! come from `gateway/tests/setup-test-env.sh`; a missing one fails the test.

use crate::support::{data_dir, path, run_python, Dev, TEST_ENV_HINT};
use std::path::Path;

#[tokio::test]
async fn a_person_signs_up_spends_watches_and_revokes_in_chromium() {
    for binary in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        assert!(Path::new(binary).exists(), "{binary} is missing: {TEST_ENV_HINT}");
    }
    let dir = data_dir();
    let dev = Dev::start(&path(&dir), &[]);
    let screenshots =
        Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("target/screenshots");
    let env = [
        ("SOLROUTER_BASE_URL", dev.base.as_str()),
        ("SOLROUTER_SCREENSHOTS", screenshots.to_str().expect("a UTF-8 path")),
    ];
    run_python("browser.py", &env, "browser ok").await;
    dev.audit_ok().await;
}
