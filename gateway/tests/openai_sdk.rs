//! The official `openai` Python package against a real `solrouter dev`: a plain and a
//! streamed completion, embeddings (base64, the SDK's default, which it decodes, and
//! float), `usage.cost`, the balance drop and the request records, checked by
//! `openai_sdk.py`. The package comes from `requirements.txt`, installed into the
//! test venv by `setup-test-env.sh` (the README's test command runs it); a missing
//! package fails the test rather than skipping it.

mod support;

use std::process::Command;
use support::{data_dir, path, venv_python, Dev, ADMIN_TOKEN, MAIN_VENV};

#[tokio::test]
async fn the_official_python_sdk_works_with_only_base_url_changed() {
    let dir = data_dir();
    let dev = Dev::start(&path(&dir), &[]);
    let key = dev.demo_key.clone().expect("demo key");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_sdk.py");
    let base = dev.base.clone();
    let account = dev.demo_account.clone();
    let python = venv_python(MAIN_VENV);
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .arg(script)
            .env("SOLROUTER_BASE_URL", base)
            .env("SOLROUTER_KEY", key)
            .env("SOLROUTER_ADMIN_TOKEN", ADMIN_TOKEN)
            .env("SOLROUTER_ACCOUNT", account)
            .output()
            .unwrap_or_else(|error| panic!("running {}: {error}", python.display()))
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "openai_sdk.py failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("openai sdk ok"), "{stdout}");
    dev.audit_ok().await;
}
