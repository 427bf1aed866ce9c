//! JSON objects read and edited as text. A request the gateway forwards is read for the
//! few fields it acts on, and written upstream as the client's own bytes with those
//! fields spliced in: never built into a tree and serialized again. Values are
//! `serde_json::value::RawValue`s borrowed from the text; names are borrowed unless
//! they hold escapes. An object's [`Layout`] (where its members lie) can be kept with its
//! text, so that the next reader of the same text does not scan it again.

use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

/// One member of a JSON object.
#[derive(Debug, Clone)]
pub struct Member<'a> {
    /// The name, unescaped.
    pub name: Cow<'a, str>,
    /// The member as written: from the name's opening quote to the end of the value.
    pub text: &'a str,
    value: MemberValue<'a>,
}

/// A member's value: read as one, or placed by a [`Layout`] and read when asked for.
#[derive(Debug, Clone, Copy)]
enum MemberValue<'a> {
    Read(&'a RawValue),
    Placed(&'a str),
}

impl<'a> Member<'a> {
    fn value(&self) -> Option<&'a RawValue> {
        match self.value {
            MemberValue::Read(value) => Some(value),
            // Placed in the text it was read from, so it reads again.
            MemberValue::Placed(text) => serde_json::from_str(text).ok(),
        }
    }
}

/// Where each member of an object lies in its text, by byte offsets.
#[derive(Debug, Clone)]
pub struct Layout(Box<[Place]>);

#[derive(Debug, Clone)]
struct Place {
    /// The unescaped name where it differs from the text's.
    escaped: Option<Box<str>>,
    name: Range<usize>,
    text: Range<usize>,
    value: Range<usize>,
}

/// The members of a JSON object in the order written, duplicates included. JSON
/// readers (`serde_json::Map` among them) keep the last value of a name, and so do
/// [`Object::get`] and [`Object::write_members`].
#[derive(Debug)]
pub struct Object<'a> {
    /// The text read, every member a slice of it.
    text: &'a str,
    members: Vec<Member<'a>>,
}

/// Why a text is not a JSON object.
#[derive(Debug, thiserror::Error)]
pub enum NotAnObject {
    #[error("{0}")]
    Invalid(serde_json::Error),
    /// Valid JSON of another type.
    #[error("not a JSON object")]
    OtherType,
}

impl<'a> Object<'a> {
    /// Reads `text` as one JSON object (whitespace around it allowed).
    pub fn parse(text: &'a str) -> Result<Object<'a>, NotAnObject> {
        let RawMembers(raw) = read(text)?;
        // Each value's text is a slice of `text`; its member begins at the name's quote,
        // the first quote after the end of the previous value (past the `{` or `,`).
        let base = text.as_ptr() as usize;
        let mut previous_end = 0;
        let mut members = Vec::with_capacity(raw.len());
        for (Name(name), value) in raw {
            let value_start = (value.get().as_ptr() as usize).saturating_sub(base);
            let value_end = value_start + value.get().len();
            let gap = text.get(previous_end..value_start).unwrap_or_default();
            let name_start =
                previous_end + gap.bytes().position(|byte| byte == b'"').unwrap_or_default();
            let text = text.get(name_start..value_end).unwrap_or_default();
            debug_assert!(text.starts_with('"') && text.ends_with(value.get()), "{text}");
            previous_end = value_end;
            members.push(Member { name, text, value: MemberValue::Read(value) });
        }
        Ok(Object { text, members })
    }

    /// Where the members lie in the text read.
    pub fn layout(&self) -> Layout {
        // Every part is a slice of `self.text` (`with_layout` checks the ranges anyway).
        let base = self.text.as_ptr() as usize;
        let range = |part: &str| {
            let start = (part.as_ptr() as usize).saturating_sub(base);
            start..start + part.len()
        };
        let place = |member: &Member| {
            let quoted = member.text.get(1..).unwrap_or_default();
            let name_text = quoted.split('"').next().unwrap_or_default();
            Place {
                escaped: (member.name != name_text).then(|| member.name.as_ref().into()),
                name: range(name_text),
                text: range(member.text),
                value: match member.value {
                    MemberValue::Read(value) => range(value.get()),
                    MemberValue::Placed(value) => range(value),
                },
            }
        };
        Layout(self.members.iter().map(place).collect())
    }

    /// The object `layout` places in `text`, which it was made from: nothing is scanned.
    /// `None` if the layout does not fit the text.
    pub fn with_layout(text: &'a str, layout: &Layout) -> Option<Object<'a>> {
        let member = |place: &Place| {
            let name = match &place.escaped {
                Some(name) => Cow::Owned(name.to_string()),
                None => Cow::Borrowed(text.get(place.name.clone())?),
            };
            let value = MemberValue::Placed(text.get(place.value.clone())?);
            Some(Member { name, text: text.get(place.text.clone())?, value })
        };
        let members = layout.0.iter().map(member).collect::<Option<_>>()?;
        Some(Object { text, members })
    }

    pub fn members(&self) -> &[Member<'a>] {
        &self.members
    }

    /// The value of `name` (its last one), `null` included.
    pub fn get(&self, name: &str) -> Option<&'a RawValue> {
        self.members.iter().rev().find(|member| member.name == name).and_then(Member::value)
    }

    /// The value of `name` unless absent or `null`.
    pub fn get_set(&self, name: &str) -> Option<&'a RawValue> {
        self.get(name).filter(|value| !is_null(value))
    }

    /// Writes the members not `dropped`, each name once, with its last value, in the
    /// order written (where its last value was).
    pub fn write_members(&self, out: &mut ObjectWriter, dropped: impl Fn(&str) -> bool) {
        for (at, member) in self.members.iter().enumerate() {
            let repeated = self.members[at + 1..].iter().any(|later| later.name == member.name);
            if !repeated && !dropped(&member.name) {
                out.member_text(member.text);
            }
        }
    }
}

/// Writes a JSON object member by member into a buffer.
pub struct ObjectWriter<'o> {
    out: &'o mut Vec<u8>,
    empty: bool,
}

impl<'o> ObjectWriter<'o> {
    pub fn open(out: &'o mut Vec<u8>) -> ObjectWriter<'o> {
        out.push(b'{');
        ObjectWriter { out, empty: true }
    }

    /// A member already written as JSON (`"name":value`).
    pub fn member_text(&mut self, text: &str) {
        self.separate();
        self.out.extend_from_slice(text.as_bytes());
    }

    /// A member whose value is already written as JSON.
    pub fn member_raw(&mut self, name: &str, value: &str) {
        self.name(name);
        self.out.extend_from_slice(value.as_bytes());
    }

    pub fn member_str(&mut self, name: &str, value: &str) {
        self.name(name);
        write_json(self.out, value);
    }

    pub fn member_u64(&mut self, name: &str, value: u64) {
        self.name(name);
        write_json(self.out, &value);
    }

    pub fn member_bool(&mut self, name: &str, value: bool) {
        self.member_raw(name, if value { "true" } else { "false" });
    }

    /// Starts a member named `name`: its value is to be written into the buffer returned.
    pub fn value_of(&mut self, name: &str) -> &mut Vec<u8> {
        self.name(name);
        self.out
    }

    /// The same for a name already written as JSON, with its colon (`"name":`).
    pub fn value_after(&mut self, name_text: &str) -> &mut Vec<u8> {
        self.member_text(name_text);
        self.out
    }

    /// Opens an object as the value of `name`; [`ObjectWriter::close`] ends it.
    pub fn member_object(&mut self, name: &str) -> ObjectWriter<'_> {
        self.name(name);
        ObjectWriter::open(self.out)
    }

    pub fn close(self) {
        self.out.push(b'}');
    }

    fn name(&mut self, name: &str) {
        self.separate();
        write_json(self.out, name);
        self.out.push(b':');
    }

    fn separate(&mut self) {
        if !self.empty {
            self.out.push(b',');
        }
        self.empty = false;
    }
}

/// A string or a number as JSON.
fn write_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    // Writing a string or a number into a `Vec` cannot fail.
    let written = serde_json::to_writer(&mut *out, value);
    debug_assert!(written.is_ok());
}

/// Whether `serde_json` reads `text`, valid JSON, into a tree too: reading it as text
/// checks neither the tree's nesting limit (128) nor that every number fits an `f64`.
/// Only a text nested deeply, with many digits outside its strings or a digit followed by
/// an exponent is read as a tree to know. Strings (a prompt's text: nearly all of a large
/// body) are skipped from quote to quote by `memchr`, so the scan costs what the JSON
/// around them does.
pub fn tree_readable(text: &str) -> bool {
    /// Shallower than `serde_json`'s limit.
    const DEPTH_MAX: usize = 100;
    /// Fewer digits than an `f64` overflows at (10^309).
    const DIGITS_MAX: usize = 300;
    let as_tree = || serde_json::from_str::<serde_json::Value>(text).is_ok();
    let bytes = text.as_bytes();
    let (mut depth, mut deepest, mut digits, mut after_digit) = (0usize, 0, 0, false);
    let mut at = 0;
    while let Some(&byte) = bytes.get(at) {
        at += 1;
        match byte {
            b'"' => at = past_string(bytes, at),
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b'e' | b'E' if after_digit => return as_tree(),
            _ => {}
        }
        after_digit = byte.is_ascii_digit();
        digits += usize::from(after_digit);
    }
    deepest <= DEPTH_MAX && digits <= DIGITS_MAX || as_tree()
}

/// Where the string that starts before `at` (just past its opening quote) ends: past its
/// closing quote. A backslash escapes the byte after it.
fn past_string(bytes: &[u8], mut at: usize) -> usize {
    while let Some(found) = bytes.get(at..).and_then(|rest| memchr::memchr2(b'"', b'\\', rest)) {
        at += found + 1;
        if bytes[at - 1] == b'"' {
            return at;
        }
        at += 1;
    }
    bytes.len()
}

pub fn is_null(value: &RawValue) -> bool {
    value.get() == "null"
}

/// The string `value` holds (unescaped), if it is one.
pub fn as_str(value: &RawValue) -> Option<Cow<'_, str>> {
    let text = value.get();
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(text).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}

/// Reads `text`, one JSON object (whitespace around it allowed), with `T`'s own reading
/// of its members: what [`Object::parse`] does with raw values, a reader that wants some
/// members as trees does in the same pass.
pub fn read<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, NotAnObject> {
    serde_json::from_str(text).map_err(|error| {
        // Every reader takes any value of a member: only the text itself can be of
        // the wrong type.
        if error.classify() == serde_json::error::Category::Data {
            NotAnObject::OtherType
        } else {
            NotAnObject::Invalid(error)
        }
    })
}

/// The object `value` holds, if it is one.
pub fn object(value: &RawValue) -> Option<Object<'_>> {
    is_object(value).then(|| Object::parse(value.get()).ok()).flatten()
}

/// Whether `value` is an object, an array.
pub fn is_object(value: &RawValue) -> bool {
    value.get().starts_with('{')
}

pub fn is_array(value: &RawValue) -> bool {
    value.get().starts_with('[')
}

/// A JSON object's members as deserialized: names, and values as raw text.
struct RawMembers<'a>(Vec<(Name<'a>, &'a RawValue)>);

/// A member's name, borrowed from the text unless it has escapes.
#[derive(serde::Deserialize)]
pub(crate) struct Name<'a>(#[serde(borrow)] pub(crate) Cow<'a, str>);

impl<'de> Deserialize<'de> for RawMembers<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = RawMembers<'de>;
            fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
                formatter.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(name) = map.next_key::<Name>()? {
                    members.push((name, map.next_value::<&RawValue>()?));
                }
                Ok(RawMembers(members))
            }
        }
        deserializer.deserialize_map(Members)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Drops `dropped` from `text` and adds `"added":1`.
    fn splice(text: &str, dropped: &[&str]) -> String {
        let object = Object::parse(text).expect("an object");
        let mut out = Vec::new();
        let mut writer = ObjectWriter::open(&mut out);
        object.write_members(&mut writer, |name| dropped.contains(&name));
        writer.member_u64("added", 1);
        writer.close();
        String::from_utf8(out).expect("utf-8")
    }

    #[test]
    fn members_keep_their_text_and_order() {
        let text = " { \"b\" : [1, {\"a\": 2}] ,\n\"a\":\"x\\\"y\" , \"c\":{} } ";
        let object = Object::parse(text).expect("an object");
        let names: Vec<&str> = object.members().iter().map(|member| &*member.name).collect();
        assert_eq!(names, ["b", "a", "c"]);
        assert_eq!(object.members()[0].text, "\"b\" : [1, {\"a\": 2}]");
        assert_eq!(object.members()[1].text, "\"a\":\"x\\\"y\"");
        assert_eq!(as_str(object.get("a").unwrap()).as_deref(), Some("x\"y"));
        assert_eq!(
            splice(text, &[]),
            "{\"b\" : [1, {\"a\": 2}],\"a\":\"x\\\"y\",\"c\":{},\"added\":1}"
        );
    }

    #[test]
    fn splices_only_the_top_level() {
        // A nested object holding the dropped names is kept whole.
        let text = r#"{"model":"a","nested":{"model":"b","provider":{}},"provider":{"x":1}}"#;
        assert_eq!(
            splice(text, &["model", "provider"]),
            r#"{"nested":{"model":"b","provider":{}},"added":1}"#
        );
        // A string value that looks like a member.
        let text = r#"{"m":"\",\"provider\":1","provider":2}"#;
        assert_eq!(splice(text, &["provider"]), r#"{"m":"\",\"provider\":1","added":1}"#);
        assert_eq!(splice("{}", &[]), r#"{"added":1}"#);
        assert_eq!(splice(r#"{"provider":1}"#, &["provider"]), r#"{"added":1}"#);
    }

    #[test]
    fn duplicates_keep_the_last_value() {
        let text = r#"{"a":1,"b":2,"a":3}"#;
        let object = Object::parse(text).expect("an object");
        assert_eq!(object.get("a").unwrap().get(), "3");
        assert_eq!(splice(text, &[]), r#"{"b":2,"a":3,"added":1}"#);
        assert_eq!(splice(r#"{"a":1,"b":2,"a":3}"#, &["a"]), r#"{"b":2,"added":1}"#);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&splice(text, &[])).unwrap(),
            serde_json::json!({"a": 3, "b": 2, "added": 1})
        );
    }

    #[test]
    fn escaped_names_are_read_unescaped() {
        let text = r#"{"mod\u0065l":"m","pro\"vider":1}"#;
        let object = Object::parse(text).expect("an object");
        assert_eq!(object.get("model").unwrap().get(), "\"m\"");
        assert!(object.get("pro\"vider").is_some());
        assert_eq!(splice(text, &["model"]), r#"{"pro\"vider":1,"added":1}"#);
    }

    #[test]
    fn a_layout_places_what_was_read() {
        let texts = [
            " { \"b\" : [1, {\"a\": 2}] ,\n\"a\":\"x\\\"y\" , \"c\":{} } ",
            r#"{"mod\u0065l":"m","pro\"vider":1,"model":"n","x":null}"#,
            "{}",
        ];
        for text in texts {
            let read = Object::parse(text).expect("an object");
            let placed = Object::with_layout(text, &read.layout()).expect("fits");
            let members = |object: &Object| -> Vec<(String, String, Option<String>)> {
                let member = |m: &Member| {
                    (m.name.to_string(), m.text.to_owned(), m.value().map(|v| v.get().to_owned()))
                };
                object.members().iter().map(member).collect()
            };
            assert_eq!(members(&placed), members(&read), "{text}");
        }
        let text = r#"{"abc":1}"#;
        let layout = Object::parse(text).expect("an object").layout();
        assert!(Object::with_layout("{}", &layout).is_none(), "a layout of another text");
    }

    #[test]
    fn refuses_what_is_no_object() {
        assert!(matches!(Object::parse("[1]"), Err(NotAnObject::OtherType)));
        assert!(matches!(Object::parse("null"), Err(NotAnObject::OtherType)));
        assert!(matches!(Object::parse("{"), Err(NotAnObject::Invalid(_))));
        assert!(matches!(Object::parse("{} x"), Err(NotAnObject::Invalid(_))));
        assert!(matches!(Object::parse(r#"{"a":1,}"#), Err(NotAnObject::Invalid(_))));
    }

    #[test]
    fn knows_what_a_tree_cannot_hold() {
        let deep = |depth: usize| format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        assert!(tree_readable(&deep(100)) && tree_readable(&deep(127)));
        assert!(!tree_readable(&deep(129)) && !tree_readable(&deep(200)));
        // Brackets and digits inside strings are text, and an escaped quote ends none.
        assert!(tree_readable(&format!(r#"["{}", "{}"]"#, "[".repeat(200), "9".repeat(400))));
        let quoted = |inner: &str| format!(r#"["\"", {inner}, "x"]"#);
        assert!(tree_readable(&quoted("[1, 2]")));
        assert!(!tree_readable(&quoted(&deep(129))));
        assert!(tree_readable(r#"{"a":1e300,"b":"2e5000","c":[1E2]}"#));
        assert!(!tree_readable(r#"{"a":1e400}"#));
        assert!(!tree_readable(&format!("[1{}]", "0".repeat(400))));
        assert!(tree_readable(&format!("[1.{}]", "0".repeat(400))));
    }

    /// A JSON text of nested arrays and objects whose strings hold what the scan looks
    /// for outside them (brackets, digits, exponents, escaped quotes).
    fn json_text() -> impl Strategy<Value = String> {
        let string = "[\\[\\]{}0-9eE\"\\\\ ]{0,12}"
            .prop_map(|text| serde_json::to_string(&text).expect("a string"));
        let number = prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            (1u8..10, 0usize..400).prop_map(|(lead, zeros)| format!("{lead}{}", "0".repeat(zeros))),
            (1u8..10, 0u16..700).prop_map(|(lead, exponent)| format!("{lead}e{exponent}")),
            Just("1.5E-3".to_owned()),
        ];
        let leaf = prop_oneof![string.clone(), number, Just("null".to_owned())];
        leaf.prop_recursive(140, 400, 4, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4)
                    .prop_map(|items| format!("[{}]", items.join(","))),
                proptest::collection::vec((string.clone(), inner), 0..4).prop_map(|members| {
                    let members: Vec<String> = members
                        .into_iter()
                        .map(|(name, value)| format!("{name}:{value}"))
                        .collect();
                    format!("{{{}}}", members.join(","))
                }),
            ]
        })
    }

    proptest! {
        #[test]
        fn a_text_read_as_readable_reads_as_a_tree(text in json_text()) {
            let tree = serde_json::from_str::<serde_json::Value>(&text);
            prop_assert_eq!(tree_readable(&text), tree.is_ok(), "{}", text);
        }
    }

    #[test]
    fn reads_strings() {
        let check = |text: &str, expected: Option<&str>| {
            let value: &RawValue = serde_json::from_str(text).unwrap();
            assert_eq!(as_str(value).as_deref(), expected, "{text}");
        };
        check("\"json_schema\"", Some("json_schema"));
        check("\"\\u0074ext\"", Some("text"));
        check("\"\"", Some(""));
        check("3", None);
        check("null", None);
    }
}
