//! The `choices` of an OpenAI answer or stream chunk, typed: every answer and chunk the
//! gateway relays, whichever provider wrote it, carries its choices as these structs, not
//! as `serde_json::Value` trees (a tree costs a map, a key string and a node per member,
//! for every chunk of every stream).
//!
//! The objects the gateway reads — a choice, its `message` or `delta`, a tool call and
//! its `function` — are structs of their members; a member's value stays JSON (`Value`:
//! a string, a number or `null` costs no map, and a value of an unexpected type is kept
//! as it came). Members the gateway does not know are kept too, in `other`, and an
//! object member whose value is no object (or an array member no array) is kept as the
//! JSON it was ([`Loose::Json`]). Written back, an object's members come in sorted order,
//! as a `serde_json::Map` wrote them, so the bytes a client receives are the ones a tree
//! of the same members gave.

use serde::de::value::{MapAccessDeserializer, SeqAccessDeserializer};
use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;

use crate::json_text::{Name, ObjectWriter};
use serde_json::value::RawValue;

/// A member read as `T` when it has `T`'s JSON form (an object for the structs below, an
/// array for a list), else kept as the JSON it was.
#[derive(Debug, Clone, PartialEq)]
pub enum Loose<T> {
    Typed(T),
    Json(Value),
}

impl<T> Loose<T> {
    /// The typed value, if the member had the expected form.
    pub fn typed(&self) -> Option<&T> {
        match self {
            Loose::Typed(typed) => Some(typed),
            Loose::Json(_) => None,
        }
    }

    pub fn typed_mut(&mut self) -> Option<&mut T> {
        match self {
            Loose::Typed(typed) => Some(typed),
            Loose::Json(_) => None,
        }
    }
}

static NULL: Value = Value::Null;

/// One choice of an answer (`message`) or chunk (`delta`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Choice {
    pub delta: Option<Loose<Box<Message>>>,
    pub finish_reason: Option<Value>,
    pub index: Option<Value>,
    pub logprobs: Option<Value>,
    pub message: Option<Loose<Box<Message>>>,
    /// Members the gateway does not read.
    pub other: Map<String, Value>,
}

/// An assistant `message` or a stream's `delta`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Message {
    pub annotations: Option<Value>,
    pub content: Option<Value>,
    pub reasoning: Option<Value>,
    /// DeepSeek's and xAI's name for `reasoning`, which the OpenAI adapter renames.
    pub reasoning_content: Option<Value>,
    pub refusal: Option<Value>,
    pub role: Option<Value>,
    pub tool_calls: Option<Loose<Vec<Loose<ToolCall>>>>,
    pub other: Map<String, Value>,
}

/// One of a message's `tool_calls` (whole, or a stream's piece of one).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ToolCall {
    pub function: Option<Loose<Function>>,
    pub id: Option<Value>,
    pub index: Option<Value>,
    /// `type`.
    pub kind: Option<Value>,
    pub other: Map<String, Value>,
}

/// A tool call's `function`: its name and (a piece of) its arguments, JSON text.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Function {
    pub arguments: Option<Value>,
    pub name: Option<Value>,
    pub other: Map<String, Value>,
}

impl Choice {
    /// A choice built as a tree (by the adapters that translate another wire format),
    /// typed. A value that is no object becomes a choice of no members.
    pub fn from_tree(tree: Value) -> Choice {
        from_tree(tree)
    }

    /// The finish reason, when it is a string.
    pub fn finish_reason(&self) -> Option<&str> {
        self.finish_reason.as_ref().and_then(Value::as_str)
    }

    /// The `delta`, when it is an object.
    pub fn delta(&self) -> Option<&Message> {
        self.delta.as_ref().and_then(Loose::typed).map(Box::as_ref)
    }

    /// The `message`, when it is an object.
    pub fn message(&self) -> Option<&Message> {
        self.message.as_ref().and_then(Loose::typed).map(Box::as_ref)
    }
}

impl Message {
    /// `field`'s text, when it is a string.
    pub fn text(field: &Option<Value>) -> Option<&str> {
        field.as_ref().and_then(Value::as_str)
    }

    /// The tool calls that are objects.
    pub fn tool_calls(&self) -> impl Iterator<Item = &ToolCall> {
        let calls = self.tool_calls.as_ref().and_then(Loose::typed);
        calls.into_iter().flatten().filter_map(Loose::typed)
    }

    /// Whether the message has no members.
    pub fn is_empty(&self) -> bool {
        self == &Message::default()
    }
}

impl ToolCall {
    /// The `function`, when it is an object.
    pub fn function(&self) -> Option<&Function> {
        self.function.as_ref().and_then(Loose::typed)
    }

    /// The stream `index`, when it is a number.
    pub fn index(&self) -> Option<u64> {
        self.index.as_ref().and_then(Value::as_u64)
    }

    /// The `id` (`null` when absent).
    pub fn id(&self) -> &Value {
        self.id.as_ref().unwrap_or(&NULL)
    }

    /// The function's `name` (`null` when absent).
    pub fn name(&self) -> &Value {
        self.function().and_then(|function| function.name.as_ref()).unwrap_or(&NULL)
    }

    /// The function's `arguments`, when they are text.
    pub fn arguments(&self) -> Option<&str> {
        self.function().and_then(|function| function.arguments.as_ref()?.as_str())
    }
}

/// `tree` read as `T`. The readers below take any JSON value of a member, so only a
/// `tree` that is no object fails, and gives `T`'s default (no members).
fn from_tree<T: for<'de> Deserialize<'de> + Default>(tree: Value) -> T {
    T::deserialize(tree).unwrap_or_default()
}

/// What a [`Loose`] member takes in its typed form (sealed: the forms are this module's).
pub trait Form: Sized {
    const EXPECTING: &'static str;
    /// Reads an object into `Self`, or hands `map` back when `Self` is not an object.
    fn object<'de, A: MapAccess<'de>>(map: A) -> Result<Result<Self, A>, A::Error> {
        Ok(Err(map))
    }
    /// The same for an array.
    fn array<'de, A: SeqAccess<'de>>(seq: A) -> Result<Result<Self, A>, A::Error> {
        Ok(Err(seq))
    }
}

impl<'de, T: Form> Deserialize<'de> for Loose<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(LooseVisitor(std::marker::PhantomData))
    }
}

struct LooseVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Form> Visitor<'de> for LooseVisitor<T> {
    type Value = Loose<T>;

    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str(T::EXPECTING)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        Ok(match T::object(map)? {
            Ok(typed) => Loose::Typed(typed),
            Err(map) => Loose::Json(Value::deserialize(MapAccessDeserializer::new(map))?),
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        Ok(match T::array(seq)? {
            Ok(typed) => Loose::Typed(typed),
            Err(seq) => Loose::Json(Value::deserialize(SeqAccessDeserializer::new(seq))?),
        })
    }

    fn visit_bool<E>(self, value: bool) -> Result<Self::Value, E> {
        Ok(Loose::Json(Value::Bool(value)))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Self::Value, E> {
        Ok(Loose::Json(Value::from(value)))
    }

    fn visit_u64<E>(self, value: u64) -> Result<Self::Value, E> {
        Ok(Loose::Json(Value::from(value)))
    }

    fn visit_f64<E>(self, value: f64) -> Result<Self::Value, E> {
        Ok(Loose::Json(Value::from(value)))
    }

    fn visit_str<E>(self, value: &str) -> Result<Self::Value, E> {
        Ok(Loose::Json(Value::from(value)))
    }

    fn visit_string<E>(self, value: String) -> Result<Self::Value, E> {
        Ok(Loose::Json(Value::String(value)))
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Loose::Json(Value::Null))
    }

    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Loose::Json(Value::Null))
    }
}

/// A message is boxed in its choice: a choice is moved a few times as it is read.
impl<T: Form> Form for Box<T> {
    const EXPECTING: &'static str = T::EXPECTING;
    fn object<'de, A: MapAccess<'de>>(map: A) -> Result<Result<Self, A>, A::Error> {
        Ok(T::object(map)?.map(Box::new))
    }
}

/// The `choices` array: every element must be an object.
impl Form for Vec<Choice> {
    const EXPECTING: &'static str = "an array of choices";
    fn array<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Result<Self, A>, A::Error> {
        let mut choices = Vec::with_capacity(seq.size_hint().unwrap_or(1));
        while let Some(choice) = seq.next_element()? {
            choices.push(choice);
        }
        Ok(Ok(choices))
    }
}

impl<T: Form> Form for Vec<Loose<T>> {
    const EXPECTING: &'static str = "an array";
    fn array<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<Result<Self, A>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(1));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Ok(items))
    }
}

/// The objects: each reads its known members (`"name" => field`, in sorted order) into
/// fields, the others into `other`, a name written twice keeping its last value, as a
/// JSON reader's map does; and writes them back merged in sorted order.
macro_rules! object_form {
    ($type:ident, $expecting:literal, { $($name:literal => $field:ident),* $(,)? }) => {
        impl Form for $type {
            const EXPECTING: &'static str = $expecting;
            fn object<'de, A: MapAccess<'de>>(mut map: A) -> Result<Result<Self, A>, A::Error> {
                let mut object = $type::default();
                while let Some(Name(name)) = map.next_key::<Name>()? {
                    match &*name {
                        $($name => object.$field = Some(map.next_value()?),)*
                        _ => {
                            object.other.insert(name.into_owned(), map.next_value()?);
                        }
                    }
                }
                Ok(Ok(object))
            }
        }

        impl<'de> Deserialize<'de> for $type {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                match Loose::<$type>::deserialize(deserializer)? {
                    Loose::Typed(typed) => Ok(typed),
                    Loose::Json(_) => Err(serde::de::Error::custom(concat!("not ", $expecting))),
                }
            }
        }

        impl Write for $type {
            fn write(&self, out: &mut Vec<u8>) {
                let mut object = ObjectWriter::open(out);
                let mut other = self.other.iter().peekable();
                $(
                    if let Some(value) = &self.$field {
                        while let Some((name, value)) = other.next_if(|(name, _)| name.as_str() < $name) {
                            value.write(object.value_of(name));
                        }
                        value.write(object.value_after(concat!("\"", $name, "\":")));
                    }
                )*
                for (name, value) in other {
                    value.write(object.value_of(name));
                }
                object.close();
            }
        }

        impl Serialize for $type {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                as_raw(self).serialize(serializer)
            }
        }
    };
}

object_form!(Choice, "a choice object", {
    "delta" => delta,
    "finish_reason" => finish_reason,
    "index" => index,
    "logprobs" => logprobs,
    "message" => message,
});

object_form!(Message, "a message object", {
    "annotations" => annotations,
    "content" => content,
    "reasoning" => reasoning,
    "reasoning_content" => reasoning_content,
    "refusal" => refusal,
    "role" => role,
    "tool_calls" => tool_calls,
});

object_form!(ToolCall, "a tool call object", {
    "function" => function,
    "id" => id,
    "index" => index,
    "type" => kind,
});

object_form!(Function, "a function object", {
    "arguments" => arguments,
    "name" => name,
});

/// Writing: the bytes `serde_json` writes for a tree of the same members (its keys in
/// sorted order: each object's known members are listed in sorted order, and the tests
/// compare the bytes with a tree's), written straight into a buffer with the known
/// members' names preformatted.
trait Write {
    fn write(&self, out: &mut Vec<u8>);
}

impl Write for Value {
    fn write(&self, out: &mut Vec<u8>) {
        if self.is_null() {
            out.extend_from_slice(b"null");
        } else {
            // Writing a tree into a `Vec` cannot fail: its keys are strings.
            let written = serde_json::to_writer(&mut *out, self);
            debug_assert!(written.is_ok());
        }
    }
}

impl<T: Write> Write for Loose<T> {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Loose::Typed(typed) => typed.write(out),
            Loose::Json(value) => value.write(out),
        }
    }
}

impl<T: Write> Write for Box<T> {
    fn write(&self, out: &mut Vec<u8>) {
        T::write(self, out);
    }
}

impl<T: Write> Write for [T] {
    fn write(&self, out: &mut Vec<u8>) {
        out.push(b'[');
        for (at, item) in self.iter().enumerate() {
            if at > 0 {
                out.push(b',');
            }
            item.write(out);
        }
        out.push(b']');
    }
}

impl<T: Write> Write for Vec<T> {
    fn write(&self, out: &mut Vec<u8>) {
        self.as_slice().write(out);
    }
}

/// Appends `choices` to `out` as a JSON array (what a stream chunk carries).
pub fn write_choices(out: &mut Vec<u8>, choices: &[Choice]) {
    choices.write(out);
}

/// Written through another serializer (a tree, in tests; answers are written by
/// `write_choices`): as the JSON
/// text `Write` makes.
fn as_raw(value: &impl Write) -> Box<RawValue> {
    let mut text = Vec::with_capacity(128);
    value.write(&mut text);
    // `Write` writes valid JSON, UTF-8 as the strings it copies.
    let text = String::from_utf8(text).unwrap_or_default();
    RawValue::from_string(text).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

impl<T: Write> Serialize for Loose<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        as_raw(self).serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    /// What the gateway wrote before choices were typed: the tree of the same text.
    fn as_tree(text: &str) -> String {
        serde_json::to_string(&serde_json::from_str::<Value>(text).expect("json")).expect("tree")
    }

    fn as_typed(text: &str) -> String {
        let choices: Loose<Vec<Choice>> = serde_json::from_str(text).expect("choices");
        serde_json::to_string(&choices).expect("typed")
    }

    /// Every member kept, known or not, whatever its type: nulls, unknown members at
    /// each level, members of unexpected types, arrays of parts, several choices, and
    /// escapes (written back as a tree writes them). A name written twice keeps its last
    /// value.
    #[test]
    fn choices_are_written_as_their_tree_was() {
        let text = r#"[
            {"index": 0, "delta": {"role": "assistant", "content": null, "refusal": null,
              "x_new": {"b": 1, "a": [1.50, 2e3, -0]}, "audio": {"id": "a"},
              "tool_calls": [{"index": 0, "id": "c\u0031", "type": "function",
                "function": {"name": "f", "arguments": "{\"a\":\/1}", "zz": true}, "extra": 1},
                7, {"function": null}, {"function": "text"}]},
             "logprobs": {"content": [{"token": "a", "logprob": -0.1, "bytes": [97]}]},
             "finish_reason": null, "native_finish_reason": "x", "aaa": []},
            {"index": 1, "delta": null, "message": [1], "finish_reason": 5},
            {"index": 2, "delta": {"content": [{"type": "text", "text": "é"}], "tool_calls": {"a": 1}}},
            {"index": 3, "delta": {"content": "a"}, "delta": {"content": "b"}, "index": 4},
            {}
        ]"#;
        assert_eq!(as_typed(text), as_tree(text));
        let choices: Vec<Choice> = serde_json::from_str(text).expect("choices");
        assert_eq!(choices.len(), 5);
        let delta = choices[0].delta().expect("a delta");
        assert_eq!(delta.tool_calls().count(), 3, "the object calls");
        let call = delta.tool_calls().next().expect("a call");
        assert_eq!(
            (call.id(), call.name(), call.arguments()),
            (&json!("c1"), &json!("f"), Some("{\"a\":/1}"))
        );
        assert_eq!(call.index(), Some(0));
        assert_eq!(choices[1].finish_reason(), None);
        assert!(choices[1].delta().is_none() && choices[1].message().is_none());
        assert_eq!(choices[3].delta().and_then(|delta| Message::text(&delta.content)), Some("b"));
        // A choice that is no object makes the list unreadable; `null` is no list.
        assert!(serde_json::from_str::<Loose<Vec<Choice>>>("[1]").is_err());
        assert_eq!(as_typed("null"), "null");
    }

    /// Any JSON of the choices' member names: written as the tree of the same text was.
    fn choice_like() -> impl Strategy<Value = Value> {
        const WORDS: [&str; 22] = [
            "index",
            "delta",
            "message",
            "finish_reason",
            "logprobs",
            "content",
            "reasoning",
            "reasoning_content",
            "refusal",
            "role",
            "tool_calls",
            "annotations",
            "function",
            "id",
            "type",
            "name",
            "arguments",
            "other",
            "a",
            "",
            "é\"",
            "zz",
        ];
        crate::providers::json_of_words(&WORDS)
    }

    proptest! {
        #[test]
        fn any_choices_are_written_as_their_tree_was(
            choices in proptest::collection::vec(choice_like(), 0..3),
        ) {
            // Objects only, as a choice must be: each generated value as a choice's
            // member, under every known name.
            let choices: Vec<Value> = choices
                .into_iter()
                .map(|value| json!({"delta": value, "message": value, "x": value,
                    "finish_reason": value, "index": value, "logprobs": value}))
                .collect();
            let text = Value::Array(choices).to_string();
            prop_assert_eq!(as_typed(&text), as_tree(&text));
        }
    }

    /// Every `choices` array of the recorded provider traffic (answers, stream chunks)
    /// is written back exactly as its tree was.
    #[test]
    fn recorded_choices_are_written_as_their_tree_was() {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures");
        let mut n_checked = 0;
        let mut directories = vec![std::path::PathBuf::from(root)];
        while let Some(directory) = directories.pop() {
            for entry in std::fs::read_dir(&directory).expect("fixtures") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    directories.push(path);
                    continue;
                }
                let Ok(text) = std::fs::read_to_string(&path) else { continue };
                // A JSON body, or one JSON object per line (`*.chunks.txt`) or per `data:`
                // line (`*.sse`).
                let lines = std::iter::once(text.as_str())
                    .chain(text.lines().map(|line| line.strip_prefix("data:").unwrap_or(line)));
                for candidate in lines {
                    // The members as written, in the provider's order and escapes.
                    type Members<'a> = std::collections::BTreeMap<String, &'a RawValue>;
                    let Ok(object) = serde_json::from_str::<Members>(candidate) else {
                        continue;
                    };
                    if let Some(choices) = object.get("choices").map(|raw| raw.get()) {
                        if choices.starts_with('[') {
                            assert_eq!(as_typed(choices), as_tree(choices), "{}", path.display());
                            n_checked += 1;
                        }
                    }
                }
            }
        }
        assert!(n_checked > 1000, "{n_checked} choices arrays checked");
    }
}
