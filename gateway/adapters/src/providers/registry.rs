//! Which providers (hosts) this gateway can reach: one adapter and one base URL and key
//! per host, from the environment. A host without a key is disabled, so a fresh
//! checkout talks to nobody but the built-in mock hosts. A host's name here is the one
//! name used everywhere: in the catalogue's endpoints, the `provider` request object,
//! responses' `provider` field and request records.

use super::anthropic::Anthropic;
use super::cohere::Cohere;
use super::google::Google;
use super::openai::{OpenAiCompatible, Quirks};
use super::{Adapter, Endpoint};
use foldhash::HashMap;
use http::HeaderValue;

/// The provider name the built-in mock upstream is registered under.
pub const MOCK_PROVIDER: &str = "mock";
/// The second mock host: `solrouter dev` serves it from a slower mock so that one
/// model (`mock/shared`) has two hosts of different prices and speeds.
pub const MOCK_SLOW_PROVIDER: &str = "mock-slow";
/// Each mock host and the variable that points it elsewhere than the in-process mock
/// (a test's own mock, which it can stop to fail the host).
const MOCK_HOSTS: [(&str, &str); 2] = [
    (MOCK_PROVIDER, "SOLROUTER_MOCK_BASE_URL"),
    (MOCK_SLOW_PROVIDER, "SOLROUTER_MOCK_SLOW_BASE_URL"),
];

/// Whether `host` is one of the built-in mock hosts (which count tokens in words).
pub fn is_mock(host: &str) -> bool {
    MOCK_HOSTS.iter().any(|(mock, _)| *mock == host)
}

/// Every host name the gateway knows, configured or not.
pub fn host_names() -> impl Iterator<Item = &'static str> {
    SPECS.iter().map(|spec| spec.provider).chain(MOCK_HOSTS.iter().map(|(mock, _)| *mock))
}

/// How each real provider is configured: name, adapter constructor, default base URL,
/// base-URL override variable, key variable. The default base URL is what the
/// provider's own SDK takes as base URL (the OpenAI SDK's, as each provider documents
/// it, where the provider has no SDK of its own), and the adapter appends what that SDK
/// appends.
struct Spec {
    provider: &'static str,
    adapter: fn(&'static str) -> Box<dyn Adapter>,
    base_url_default: &'static str,
    base_url_var: &'static str,
    key_var: &'static str,
}

fn openai_compatible(provider: &'static str) -> Box<dyn Adapter> {
    Box::new(OpenAiCompatible::new(provider, Quirks::OPENAI))
}

const SPECS: &[Spec] = &[
    Spec {
        provider: "openai",
        adapter: openai_compatible,
        base_url_default: "https://api.openai.com/v1",
        base_url_var: "SOLROUTER_OPENAI_BASE_URL",
        key_var: "OPENAI_API_KEY",
    },
    Spec {
        provider: "anthropic",
        adapter: |_| Box::new(Anthropic),
        base_url_default: "https://api.anthropic.com",
        base_url_var: "SOLROUTER_ANTHROPIC_BASE_URL",
        key_var: "ANTHROPIC_API_KEY",
    },
    Spec {
        provider: "google",
        adapter: |_| Box::new(Google),
        base_url_default: "https://generativelanguage.googleapis.com",
        base_url_var: "SOLROUTER_GOOGLE_BASE_URL",
        key_var: "GEMINI_API_KEY",
    },
    Spec {
        provider: "cohere",
        adapter: |_| Box::new(Cohere),
        base_url_default: "https://api.cohere.com",
        base_url_var: "SOLROUTER_COHERE_BASE_URL",
        key_var: "COHERE_API_KEY",
    },
    Spec {
        provider: "mistral",
        adapter: |provider| Box::new(OpenAiCompatible::new(provider, Quirks::MISTRAL)),
        base_url_default: "https://api.mistral.ai",
        base_url_var: "SOLROUTER_MISTRAL_BASE_URL",
        key_var: "MISTRAL_API_KEY",
    },
    Spec {
        provider: "deepseek",
        adapter: |provider| Box::new(OpenAiCompatible::new(provider, Quirks::DEEPSEEK)),
        base_url_default: "https://api.deepseek.com",
        base_url_var: "SOLROUTER_DEEPSEEK_BASE_URL",
        key_var: "DEEPSEEK_API_KEY",
    },
    Spec {
        provider: "xai",
        adapter: |provider| Box::new(OpenAiCompatible::new(provider, Quirks::XAI)),
        base_url_default: "https://api.x.ai/v1",
        base_url_var: "SOLROUTER_XAI_BASE_URL",
        key_var: "XAI_API_KEY",
    },
    Spec {
        provider: "perplexity",
        adapter: |provider| Box::new(OpenAiCompatible::new(provider, Quirks::PERPLEXITY)),
        base_url_default: "https://api.perplexity.ai",
        base_url_var: "SOLROUTER_PERPLEXITY_BASE_URL",
        key_var: "PERPLEXITY_API_KEY",
    },
    // Hosts of open-weight models, each OpenAI-compatible.
    Spec {
        provider: "groq",
        adapter: openai_compatible,
        base_url_default: "https://api.groq.com/openai/v1",
        base_url_var: "SOLROUTER_GROQ_BASE_URL",
        key_var: "GROQ_API_KEY",
    },
    Spec {
        provider: "together",
        adapter: openai_compatible,
        base_url_default: "https://api.together.xyz/v1",
        base_url_var: "SOLROUTER_TOGETHER_BASE_URL",
        key_var: "TOGETHER_API_KEY",
    },
    Spec {
        provider: "fireworks",
        adapter: openai_compatible,
        base_url_default: "https://api.fireworks.ai/inference/v1",
        base_url_var: "SOLROUTER_FIREWORKS_BASE_URL",
        key_var: "FIREWORKS_API_KEY",
    },
    Spec {
        provider: "deepinfra",
        adapter: openai_compatible,
        base_url_default: "https://api.deepinfra.com/v1/openai",
        base_url_var: "SOLROUTER_DEEPINFRA_BASE_URL",
        key_var: "DEEPINFRA_API_KEY",
    },
    Spec {
        provider: "cerebras",
        adapter: openai_compatible,
        base_url_default: "https://api.cerebras.ai/v1",
        base_url_var: "SOLROUTER_CEREBRAS_BASE_URL",
        key_var: "CEREBRAS_API_KEY",
    },
];

/// The configured providers.
pub struct Providers {
    by_name: HashMap<&'static str, Entry>,
}

struct Entry {
    adapter: Box<dyn Adapter>,
    endpoint: Endpoint,
    enabled: bool,
}

impl Providers {
    /// Reads base URLs and keys from the environment. `mock_base_url` is where the
    /// built-in mock listens (dev mode); without it the mock provider is disabled.
    pub fn from_env(mock_base_url: Option<String>) -> Providers {
        Providers::with_mocks(&[(MOCK_PROVIDER, mock_base_url)])
    }

    /// Like [`Providers::from_env`], with each mock host (`MOCK_PROVIDER`,
    /// `MOCK_SLOW_PROVIDER`) served where `mocks` says unless its variable
    /// (`SOLROUTER_MOCK_BASE_URL`, `SOLROUTER_MOCK_SLOW_BASE_URL`) says otherwise; a mock
    /// host with neither is disabled.
    pub fn with_mocks(mocks: &[(&str, Option<String>)]) -> Providers {
        Providers::from_lookup(mocks, |name| std::env::var(name).ok())
    }

    /// The adapter and endpoint of an enabled provider; `None` for unknown and for
    /// disabled providers, so nothing is ever sent without credentials.
    pub fn get(&self, provider: &str) -> Option<(&dyn Adapter, &Endpoint)> {
        let entry = self.by_name.get(provider).filter(|entry| entry.enabled)?;
        Some((entry.adapter.as_ref(), &entry.endpoint))
    }

    /// Whether `provider` is known and has what it needs (a key) to be called.
    pub fn enabled(&self, provider: &str) -> bool {
        self.get(provider).is_some()
    }

    /// Like [`Providers::from_env`], reading each variable through `lookup` instead of the
    /// environment (a configuration map, a test's values).
    pub fn from_lookup(
        mocks: &[(&str, Option<String>)],
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Providers {
        let mut by_name = HashMap::default();
        for spec in SPECS {
            let base_url = lookup(spec.base_url_var)
                .and_then(trimmed_url)
                .unwrap_or_else(|| spec.base_url_default.to_owned());
            let api_key = lookup(spec.key_var).and_then(|key| usable_key(spec, key));
            let entry = Entry {
                adapter: (spec.adapter)(spec.provider),
                enabled: api_key.is_some(),
                endpoint: Endpoint { base_url, api_key },
            };
            by_name.insert(spec.provider, entry);
        }
        for (host, base_url_var) in MOCK_HOSTS {
            let in_process = mocks.iter().find(|(mock, _)| *mock == host);
            let base_url = lookup(base_url_var)
                .and_then(trimmed_url)
                .or_else(|| in_process.and_then(|(_, url)| url.clone()));
            let mock = Entry {
                adapter: openai_compatible(host),
                enabled: base_url.is_some(),
                endpoint: Endpoint { base_url: base_url.unwrap_or_default(), api_key: None },
            };
            by_name.insert(host, mock);
        }
        Providers { by_name }
    }
}

/// A configured base URL without the blanks around it (a stray newline from a secrets
/// file), which the upstream client's URI parser would refuse; none when blank.
fn trimmed_url(url: String) -> Option<String> {
    let url = url.trim();
    (!url.is_empty()).then(|| url.to_owned())
}

/// A key is usable when it is non-blank and can travel in a header; a key with control
/// characters (a stray newline from a secrets file) disables the provider loudly
/// instead of failing every request.
fn usable_key(spec: &Spec, key: String) -> Option<String> {
    let key = key.trim().to_owned();
    if key.is_empty() {
        return None;
    }
    if HeaderValue::try_from(format!("Bearer {key}")).is_err() {
        tracing::warn!(
            provider = spec.provider,
            variable = spec.key_var,
            "API key is not a valid header value; provider disabled"
        );
        return None;
    }
    Some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn providers(mock: Option<&str>, vars: &[(&str, &str)]) -> Providers {
        let vars: HashMap<String, String> =
            vars.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())).collect();
        let mocks = [(MOCK_PROVIDER, mock.map(str::to_owned))];
        Providers::from_lookup(&mocks, |name| vars.get(name).cloned())
    }

    /// Each default base URL plus the adapter's path gives the provider's real endpoint.
    #[test]
    fn default_endpoints_are_the_providers_own() {
        let keys: Vec<(&str, &str)> = SPECS.iter().map(|spec| (spec.key_var, "key")).collect();
        let all = providers(None, &keys);
        let chat = super::super::ChatRequest {
            body: super::super::ChatBody::from_text(
                r#"{"model": "m", "messages": [{"role": "user", "content": "x"}]}"#.into(),
            ),
            stream: false,
            max_tokens: None,
            native: None,
        };
        let expected = [
            ("openai", "https://api.openai.com/v1/chat/completions"),
            ("anthropic", "https://api.anthropic.com/v1/messages"),
            ("google", "https://generativelanguage.googleapis.com/v1beta/models/u:generateContent"),
            ("cohere", "https://api.cohere.com/v2/chat"),
            ("mistral", "https://api.mistral.ai/v1/chat/completions"),
            ("deepseek", "https://api.deepseek.com/chat/completions"),
            ("xai", "https://api.x.ai/v1/chat/completions"),
            ("perplexity", "https://api.perplexity.ai/chat/completions"),
            ("groq", "https://api.groq.com/openai/v1/chat/completions"),
            ("together", "https://api.together.xyz/v1/chat/completions"),
            ("fireworks", "https://api.fireworks.ai/inference/v1/chat/completions"),
            ("deepinfra", "https://api.deepinfra.com/v1/openai/chat/completions"),
            ("cerebras", "https://api.cerebras.ai/v1/chat/completions"),
        ];
        assert_eq!(expected.len(), SPECS.len());
        for (provider, url) in expected {
            let (adapter, endpoint) = all.get(provider).unwrap();
            assert_eq!(
                adapter
                    .request(
                        endpoint,
                        &chat,
                        &super::super::Target {
                            upstream_model: "u",
                            max_tokens: 1,
                            controls: Default::default(),
                        }
                    )
                    .unwrap()
                    .url,
                url,
                "{provider}"
            );
        }
    }

    #[test]
    fn providers_without_keys_are_disabled() {
        let none = providers(None, &[]);
        assert!(!none.enabled("openai"));
        assert!(!none.enabled(MOCK_PROVIDER));
        assert!(none.get("openai").is_none());
        assert!(!none.enabled("nobody"));
        assert!(!providers(None, &[("OPENAI_API_KEY", "  ")]).enabled("openai"));
        assert!(!providers(None, &[("OPENAI_API_KEY", "sk\u{7}x")]).enabled("openai"));
    }

    #[test]
    fn reads_keys_and_base_urls() {
        let configured = providers(
            Some("http://127.0.0.1:9"),
            &[("OPENAI_API_KEY", "sk-1\n"), ("SOLROUTER_OPENAI_BASE_URL", "http://proxy/v1")],
        );
        let (adapter, endpoint) = configured.get("openai").unwrap();
        assert_eq!(adapter.provider(), "openai");
        assert_eq!(endpoint.base_url, "http://proxy/v1");
        assert_eq!(endpoint.api_key.as_deref(), Some("sk-1"));
        let (mock, mock_endpoint) = configured.get(MOCK_PROVIDER).unwrap();
        assert_eq!(mock.provider(), "mock");
        assert_eq!(mock_endpoint.base_url, "http://127.0.0.1:9");
        assert_eq!(mock_endpoint.api_key, None);

        let all = providers(
            None,
            &[
                ("ANTHROPIC_API_KEY", "a"),
                ("GEMINI_API_KEY", "g"),
                ("COHERE_API_KEY", "c"),
                ("SOLROUTER_COHERE_BASE_URL", "http://cohere-proxy"),
                ("MISTRAL_API_KEY", "m"),
                ("DEEPSEEK_API_KEY", "d"),
                ("XAI_API_KEY", "x"),
                ("PERPLEXITY_API_KEY", "p"),
                ("GROQ_API_KEY", "l"),
                ("SOLROUTER_GROQ_BASE_URL", "http://vllm:8000/v1"),
            ],
        );
        let names =
            ["anthropic", "google", "cohere", "mistral", "deepseek", "xai", "perplexity", "groq"];
        for provider in names {
            assert_eq!(all.get(provider).unwrap().0.provider(), provider);
        }
        assert_eq!(all.get("groq").unwrap().1.base_url, "http://vllm:8000/v1");
        assert_eq!(all.get("cohere").unwrap().1.base_url, "http://cohere-proxy");
        let google = all.get("google").unwrap().1;
        assert_eq!(google.base_url, "https://generativelanguage.googleapis.com");
        assert_eq!(google.api_key.as_deref(), Some("g"));
        assert!(!all.enabled("openai"));

        let default = providers(None, &[("OPENAI_API_KEY", "sk-1")]);
        assert_eq!(default.get("openai").unwrap().1.base_url, "https://api.openai.com/v1");
        let padded = [("OPENAI_API_KEY", "sk-1"), ("SOLROUTER_OPENAI_BASE_URL", " http://p/v1\n")];
        assert_eq!(providers(None, &padded).get("openai").unwrap().1.base_url, "http://p/v1");
    }
}
