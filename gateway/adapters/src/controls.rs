//! What the catalogue says a model takes or refuses, for the adapters that shape their
//! request by it (the catalogue, `solrouter_gateway::catalog`, reads it from its file).

use serde::Deserialize;

/// Request parameters a model takes or refuses (catalogue `controls`; every field
/// defaults to what older models take). Only the Anthropic adapter reads them today.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Controls {
    #[serde(default)]
    pub thinking: Thinking,
    /// Whether non-default sampling parameters (`temperature`, `top_p`, `top_k`) are
    /// taken; Claude 4.7 and later models refuse them with a 400.
    #[serde(default = "yes")]
    pub sampling: bool,
    /// Whether forced tool use (`tool_choice` `any`/`tool`, OpenAI's `required` or a
    /// named function) is taken; Claude Opus 5.5, Sonnet 5.5 and Fable 5.1 refuse it.
    #[serde(default = "yes")]
    pub forced_tool_choice: bool,
}

fn yes() -> bool {
    true
}

impl Default for Controls {
    fn default() -> Controls {
        Controls { thinking: Thinking::Budget, sampling: true, forced_tool_choice: true }
    }
}

/// How a model is asked to think.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Thinking {
    /// A token budget (`thinking: {type: enabled, budget_tokens}`), or none: models up
    /// to Claude 4.6, and every non-Claude model.
    #[default]
    Budget,
    /// Adaptive thinking steered by `output_config.effort`, which may be turned off
    /// (`thinking: {type: disabled}`); a budget is refused.
    Adaptive,
    /// Adaptive thinking that is always on: a budget and turning it off are refused.
    AdaptiveAlways,
}
