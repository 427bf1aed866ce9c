//! The official `openai` Python package against a real `solrouter dev`: a plain and a
//! streamed completion, embeddings (base64, the SDK's default, which it decodes, and
//! float), `usage.cost`, the balance drop and the request records, checked by
//! `openai_sdk.py`. The package comes from `requirements.txt`, installed into the
//! test venv by `setup-test-env.sh` (the README's test command runs it); a missing
//! package fails the test rather than skipping it.

use crate::support::{data_dir, path, run_python, Dev, ADMIN_TOKEN};

#[tokio::test]
async fn the_official_python_sdk_works_with_only_base_url_changed() {
    let dir = data_dir();
    let dev = Dev::start(&path(&dir), &[]);
    let key = dev.demo_key.clone().expect("demo key");
    let env = [
        ("SOLROUTER_BASE_URL", dev.base.as_str()),
        ("SOLROUTER_KEY", key.as_str()),
        ("SOLROUTER_ADMIN_TOKEN", ADMIN_TOKEN),
        ("SOLROUTER_ACCOUNT", dev.demo_account.as_str()),
    ];
    run_python("openai_sdk.py", &env, "openai sdk ok").await;
    dev.audit_ok().await;
}
