//! Reading an OpenAI chat request for adapters whose upstream speaks another format:
//! typed views of messages, content parts, tools and options, each failing with a
//! `ParamError` that names the offending parameter.

use super::openai::GATEWAY_ONLY_FIELDS;
use super::ParamError;
use serde_json::{Map, Value};

/// Request fields every translating adapter understands (each still decides which
/// values it can honour).
const FIELDS_TRANSLATED: [&str; 17] = [
    "model",
    "messages",
    "stream",
    "stream_options",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "stop",
    "seed",
    "tools",
    "tool_choice",
    "response_format",
    "reasoning_effort",
    "user",
    "n",
    "parallel_tool_calls",
];

pub fn param_error(param: impl Into<String>, message: impl Into<String>) -> ParamError {
    ParamError { param: param.into(), message: message.into() }
}

/// Refuses any field outside [`FIELDS_TRANSLATED`], the gateway's own fields and
/// `extra` (what this provider additionally maps): silently dropping a parameter would
/// change the answer the client asked for.
pub fn check_fields(
    provider: &str,
    body: &Map<String, Value>,
    extra: &[&str],
) -> Result<(), ParamError> {
    for field in body.keys() {
        let known = FIELDS_TRANSLATED.contains(&field.as_str())
            || GATEWAY_ONLY_FIELDS.contains(&field.as_str())
            || extra.contains(&field.as_str());
        if !known {
            return Err(param_error(field, format!("not supported by {provider}")));
        }
    }
    if body.get("n").is_some_and(|n| n.as_u64() != Some(1)) {
        return Err(param_error("n", format!("{provider} returns exactly one choice")));
    }
    Ok(())
}

/// A refusal for a parameter this provider cannot honour, if the client set it.
pub fn refuse(provider: &str, body: &Map<String, Value>, field: &str) -> Result<(), ParamError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(()),
        Some(_) => Err(param_error(field, format!("not supported by {provider}"))),
    }
}

pub fn max_tokens(body: &Map<String, Value>) -> Result<Option<u64>, ParamError> {
    for field in ["max_completion_tokens", "max_tokens"] {
        match body.get(field) {
            None | Some(Value::Null) => {}
            Some(value) => {
                return value
                    .as_u64()
                    .filter(|&tokens| tokens > 0)
                    .map(Some)
                    .ok_or_else(|| param_error(field, "must be a positive integer"))
            }
        }
    }
    Ok(None)
}

/// `stop` as a list of sequences.
pub fn stop_sequences(body: &Map<String, Value>) -> Result<Option<Vec<Value>>, ParamError> {
    match body.get("stop") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(stop)) => Ok(Some(vec![Value::from(stop.as_str())])),
        Some(Value::Array(stops)) if stops.iter().all(Value::is_string) => Ok(Some(stops.clone())),
        Some(_) => Err(param_error("stop", "must be a string or an array of strings")),
    }
}

/// One piece of a message's content.
#[derive(Debug, PartialEq)]
pub enum Part<'a> {
    Text(&'a str),
    /// An `https:` (or `http:`) image URL.
    ImageUrl(&'a str),
    /// A `data:` URL image, split into media type and base64 payload.
    ImageData {
        media_type: &'a str,
        data: &'a str,
    },
}

/// The parts of a message's `content` (a string or an array of parts).
pub fn content_parts<'a>(content: &'a Value, param: &str) -> Result<Vec<Part<'a>>, ParamError> {
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(text) => Ok(vec![Part::Text(text)]),
        Value::Array(parts) => parts
            .iter()
            .enumerate()
            .map(|(part_idx, part)| content_part(part, &format!("{param}[{part_idx}]")))
            .collect(),
        _ => Err(param_error(param, "must be a string or an array of content parts")),
    }
}

fn content_part<'a>(part: &'a Value, param: &str) -> Result<Part<'a>, ParamError> {
    match part.get("type").and_then(Value::as_str) {
        Some("text") => part["text"]
            .as_str()
            .map(Part::Text)
            .ok_or_else(|| param_error(format!("{param}.text"), "must be a string")),
        Some("image_url") => {
            let url = part["image_url"]["url"]
                .as_str()
                .or_else(|| part["image_url"].as_str())
                .ok_or_else(|| param_error(format!("{param}.image_url.url"), "must be a string"))?;
            image(url, &format!("{param}.image_url.url"))
        }
        Some(other) => {
            Err(param_error(format!("{param}.type"), format!("unsupported part `{other}`")))
        }
        None => Err(param_error(format!("{param}.type"), "is required")),
    }
}

fn image<'a>(url: &'a str, param: &str) -> Result<Part<'a>, ParamError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (media_type, data) = rest.split_once(";base64,").ok_or_else(|| {
            param_error(param, "data URLs must be base64 (`data:<type>;base64,`)")
        })?;
        return Ok(Part::ImageData { media_type, data });
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(Part::ImageUrl(url));
    }
    Err(param_error(param, "must be an http(s) or data: URL"))
}

/// The text of a content value that may only hold text (system prompts, tool results).
pub fn text_only(content: &Value, param: &str) -> Result<String, ParamError> {
    let mut text = String::new();
    for part in content_parts(content, param)? {
        match part {
            Part::Text(piece) => text.push_str(piece),
            _ => return Err(param_error(param, "only text is supported here")),
        }
    }
    Ok(text)
}

/// An assistant message's tool call.
pub struct ToolCall<'a> {
    pub id: &'a str,
    pub name: &'a str,
    /// The parsed `arguments` (a JSON object).
    pub arguments: Value,
}

pub fn tool_calls<'a>(message: &'a Value, param: &str) -> Result<Vec<ToolCall<'a>>, ParamError> {
    let Some(calls) = message.get("tool_calls").filter(|calls| !calls.is_null()) else {
        return Ok(Vec::new());
    };
    let calls = calls
        .as_array()
        .ok_or_else(|| param_error(format!("{param}.tool_calls"), "must be an array"))?;
    calls
        .iter()
        .enumerate()
        .map(|(call_idx, call)| {
            let here = format!("{param}.tool_calls[{call_idx}]");
            let field = |value: &'a Value, name: &str| {
                value
                    .as_str()
                    .ok_or_else(|| param_error(format!("{here}.{name}"), "must be a string"))
            };
            let arguments_text = field(&call["function"]["arguments"], "function.arguments")?;
            let arguments = if arguments_text.trim().is_empty() {
                Value::Object(Map::new())
            } else {
                serde_json::from_str(arguments_text).map_err(|error| {
                    param_error(
                        format!("{here}.function.arguments"),
                        format!("invalid JSON: {error}"),
                    )
                })?
            };
            Ok(ToolCall {
                id: field(&call["id"], "id")?,
                name: field(&call["function"]["name"], "function.name")?,
                arguments,
            })
        })
        .collect()
}

/// A function the model may call.
pub struct Tool<'a> {
    pub name: &'a str,
    pub description: Option<&'a str>,
    /// JSON Schema of the arguments.
    pub parameters: Value,
}

pub fn tools(body: &Map<String, Value>) -> Result<Vec<Tool<'_>>, ParamError> {
    let Some(tools) = body.get("tools").filter(|tools| !tools.is_null()) else {
        return Ok(Vec::new());
    };
    let tools = tools.as_array().ok_or_else(|| param_error("tools", "must be an array"))?;
    tools
        .iter()
        .enumerate()
        .map(|(tool_idx, tool)| {
            let here = format!("tools[{tool_idx}]");
            if tool.get("type").and_then(Value::as_str) != Some("function") {
                return Err(param_error(
                    format!("{here}.type"),
                    "only `function` tools are supported",
                ));
            }
            let function = &tool["function"];
            Ok(Tool {
                name: function["name"]
                    .as_str()
                    .ok_or_else(|| param_error(format!("{here}.function.name"), "is required"))?,
                description: function["description"].as_str(),
                parameters: match &function["parameters"] {
                    Value::Null => serde_json::json!({"type": "object", "properties": {}}),
                    parameters => parameters.clone(),
                },
            })
        })
        .collect()
}

#[derive(Debug, PartialEq, Eq)]
pub enum ToolChoice<'a> {
    Auto,
    None,
    Required,
    Function(&'a str),
}

pub fn tool_choice(body: &Map<String, Value>) -> Result<Option<ToolChoice<'_>>, ParamError> {
    let choice = match body.get("tool_choice") {
        None | Some(Value::Null) => return Ok(None),
        Some(choice) => choice,
    };
    match choice.as_str() {
        Some("auto") => return Ok(Some(ToolChoice::Auto)),
        Some("none") => return Ok(Some(ToolChoice::None)),
        Some("required") => return Ok(Some(ToolChoice::Required)),
        _ => {}
    }
    choice["function"]["name"].as_str().map(|name| Some(ToolChoice::Function(name))).ok_or_else(
        || {
            param_error(
                "tool_choice",
                "must be auto, none, required or {\"type\": \"function\", …}",
            )
        },
    )
}

#[derive(Debug, PartialEq)]
pub enum ResponseFormat<'a> {
    Text,
    JsonObject,
    JsonSchema { name: &'a str, schema: &'a Value },
}

pub fn response_format(
    body: &Map<String, Value>,
) -> Result<Option<ResponseFormat<'_>>, ParamError> {
    let format = match body.get("response_format") {
        None | Some(Value::Null) => return Ok(None),
        Some(format) => format,
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(Some(ResponseFormat::Text)),
        Some("json_object") => Ok(Some(ResponseFormat::JsonObject)),
        Some("json_schema") => {
            let spec = &format["json_schema"];
            let schema = spec
                .get("schema")
                .ok_or_else(|| param_error("response_format.json_schema.schema", "is required"))?;
            Ok(Some(ResponseFormat::JsonSchema {
                name: spec["name"].as_str().unwrap_or("response"),
                schema,
            }))
        }
        _ => Err(param_error("response_format.type", "must be text, json_object or json_schema")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effort {
    Low,
    Medium,
    High,
}

pub fn reasoning_effort(body: &Map<String, Value>) -> Result<Option<Effort>, ParamError> {
    match body.get("reasoning_effort") {
        None | Some(Value::Null) => Ok(None),
        Some(effort) => match effort.as_str() {
            Some("minimal" | "low") => Ok(Some(Effort::Low)),
            Some("medium") => Ok(Some(Effort::Medium)),
            Some("high") => Ok(Some(Effort::High)),
            _ => Err(param_error("reasoning_effort", "must be minimal, low, medium or high")),
        },
    }
}

/// The thinking budget, in tokens, for a reasoning effort, for providers that take a
/// budget rather than an effort. These are the budgets Google documents for the
/// `reasoning_effort` of its own OpenAI-compatible Gemini endpoint; one table for every
/// budget-based provider keeps an effort meaning the same through the gateway.
pub fn thinking_budget(effort: Effort) -> u64 {
    match effort {
        Effort::Low => 1024,
        Effort::Medium => 8192,
        Effort::High => 24_576,
    }
}

/// Copies a numeric sampling option under the upstream's name, if set.
pub fn copy_number(
    body: &Map<String, Value>,
    field: &str,
    target: &mut Map<String, Value>,
    target_field: &str,
) -> Result<(), ParamError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(()),
        Some(value) if value.is_number() => {
            target.insert(target_field.to_owned(), value.clone());
            Ok(())
        }
        Some(_) => Err(param_error(field, "must be a number")),
    }
}

/// The OpenAI message list, checked to be an array of objects with a role.
pub fn messages(body: &Map<String, Value>) -> Result<Vec<(&str, &Value)>, ParamError> {
    let messages = body
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| param_error("messages", "must be an array"))?;
    messages
        .iter()
        .enumerate()
        .map(|(message_idx, message)| {
            let role = message["role"].as_str().ok_or_else(|| {
                param_error(format!("messages[{message_idx}].role"), "is required")
            })?;
            Ok((role, message))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> Map<String, Value> {
        let Value::Object(object) = value else { unreachable!() };
        object
    }

    #[test]
    fn reads_content_parts() {
        let content = json!([
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": "https://x/y.png"}},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
        ]);
        let parts = content_parts(&content, "messages[0].content").unwrap();
        assert_eq!(
            parts,
            vec![
                Part::Text("look"),
                Part::ImageUrl("https://x/y.png"),
                Part::ImageData { media_type: "image/png", data: "AAAA" },
            ]
        );
        let bad = json!([{"type": "image_url", "image_url": {"url": "ftp://x"}}]);
        let error = content_parts(&bad, "messages[0].content").unwrap_err();
        assert_eq!(error.param, "messages[0].content[0].image_url.url");
        let audio = json!([{"type": "input_audio"}]);
        assert_eq!(content_parts(&audio, "m").unwrap_err().param, "m[0].type");
    }

    #[test]
    fn refuses_unknown_fields_by_name() {
        let body = object(json!({"model": "m", "messages": [], "logprobs": true}));
        assert_eq!(check_fields("p", &body, &[]).unwrap_err().param, "logprobs");
        assert!(check_fields("p", &body, &["logprobs"]).is_ok());
        let two = object(json!({"n": 2}));
        assert_eq!(check_fields("p", &two, &[]).unwrap_err().param, "n");
        let routed = object(json!({"models": ["a"], "route": "fallback", "n": 1}));
        assert!(check_fields("p", &routed, &[]).is_ok());
    }

    #[test]
    fn reads_options() {
        let body = object(json!({"max_tokens": 10, "max_completion_tokens": 20, "stop": "x",
            "tool_choice": {"type": "function", "function": {"name": "f"}},
            "reasoning_effort": "minimal",
            "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"}}}}));
        assert_eq!(max_tokens(&body).unwrap(), Some(20));
        assert_eq!(stop_sequences(&body).unwrap(), Some(vec![json!("x")]));
        assert_eq!(tool_choice(&body).unwrap(), Some(ToolChoice::Function("f")));
        assert_eq!(reasoning_effort(&body).unwrap(), Some(Effort::Low));
        let schema = json!({"type": "object"});
        assert_eq!(
            response_format(&body).unwrap(),
            Some(ResponseFormat::JsonSchema { name: "n", schema: &schema })
        );
        let bad = object(json!({"max_tokens": -1, "stop": 3, "tool_choice": "sometimes"}));
        assert_eq!(max_tokens(&bad).unwrap_err().param, "max_tokens");
        assert_eq!(stop_sequences(&bad).unwrap_err().param, "stop");
        assert_eq!(tool_choice(&bad).unwrap_err().param, "tool_choice");
    }

    #[test]
    fn parses_tool_call_arguments() {
        let message = json!({"tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}},
            {"id": "c2", "type": "function", "function": {"name": "g", "arguments": ""}},
        ]});
        let calls = tool_calls(&message, "messages[1]").unwrap();
        assert_eq!(
            (calls[0].id, calls[0].name, &calls[0].arguments),
            ("c1", "f", &json!({"a": 1}))
        );
        assert_eq!(calls[1].arguments, json!({}));
        let broken =
            json!({"tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{"}}]});
        let error = tool_calls(&broken, "messages[1]").err().unwrap();
        assert_eq!(error.param, "messages[1].tool_calls[0].function.arguments");
    }
}
