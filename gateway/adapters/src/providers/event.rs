//! Typed, borrowed readers of the JSON the translating adapters read (Anthropic's,
//! Gemini's and Cohere's stream events and answers), in place of `serde_json::Value`
//! trees: a tree costs a map, a key string and a node per member of every event, most of
//! them members the adapter never looks at.
//!
//! Each reader takes what reading the same text into a tree and indexing it took: any
//! JSON at all. A member of another type than the one read reads as absent (as
//! `value["name"].as_str()` gave `None`), a name written twice keeps its last value (as a
//! tree's map does), members not read are skipped without being built, and strings are
//! borrowed from the text unless they have escapes. A member whose value is passed on as
//! it came is read as a `Value` (for a string, the one `String` the answer needs anyway).

use crate::json_text::Name;
use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

/// Reads one event's (or answer's) JSON text. What a tree refuses (a number beyond
/// `f64`, nesting deeper than `serde_json`'s limit, trailing characters) is refused with
/// the same error: every value, read or skipped ([`Skip`]), is parsed as a tree's is.
pub fn read<'a, T: Deserialize<'a>>(text: &'a str) -> Result<T, serde_json::Error> {
    serde_json::from_str(text)
}

/// Reads a complete answer's body as [`read`] reads an event's text. A body that is not
/// UTF-8 is no JSON a tree reads either, and is refused with the tree's error.
pub fn read_body<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, serde_json::Error> {
    match std::str::from_utf8(body) {
        Ok(text) => read(text),
        Err(_) => serde_json::from_slice::<Value>(body).and_then(T::deserialize),
    }
}

/// A string member: `None` when it is another type.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Str<'a>(pub Option<Cow<'a, str>>);

/// A count: `None` unless it is a non-negative integer (`Value::as_u64`).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Count(pub Option<u64>);

/// A count that may also be written as a whole-valued float (Cohere's): a non-negative
/// finite number, rounded up (saturating at `u64::MAX`).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Number(pub Option<u64>);

/// `true` only when it is the JSON `true`.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Flag(pub bool);

/// An array's elements read as `T`; empty when it is no array.
#[derive(Debug, Clone, PartialEq)]
pub struct List<T>(pub Vec<T>);

/// An object's member values read as `T`; empty when it is no object.
#[derive(Debug, Clone, PartialEq)]
pub struct Values<T>(pub Vec<T>);

/// An object read as `T`; `None` when it is no object.
#[derive(Debug, Clone, PartialEq)]
pub struct IfObject<T>(pub Option<T>);

/// An array read as `T`; `None` when it is no array.
#[derive(Debug, Clone, PartialEq)]
pub struct IfArray<T>(pub Option<T>);

impl<T> Default for IfArray<T> {
    fn default() -> Self {
        IfArray(None)
    }
}

impl<T> Default for IfObject<T> {
    fn default() -> Self {
        IfObject(None)
    }
}

impl<T> Default for List<T> {
    fn default() -> Self {
        List(Vec::new())
    }
}

impl<T> Default for Values<T> {
    fn default() -> Self {
        Values(Vec::new())
    }
}

/// The text of a string member, if present and a string.
pub fn text<'s>(member: &'s Option<Str<'_>>) -> Option<&'s str> {
    member.as_ref()?.0.as_deref()
}

/// The count of a member, if present and a count.
pub fn count(member: &Option<Count>) -> Option<u64> {
    member.and_then(|count| count.0)
}

/// The elements of a list member (none when absent or no array).
pub fn items<T>(member: &Option<List<T>>) -> &[T] {
    member.as_ref().map_or(&[], |list| &list.0)
}

/// A member's value as passed on: `null` when absent.
pub fn value(member: Option<Value>) -> Value {
    member.unwrap_or(Value::Null)
}

/// A value read and dropped, as reading it into a tree reads it — every number parsed,
/// every nested array and object counted against `serde_json`'s nesting limit — so that
/// what a tree refuses (a number beyond `f64`, too deep a nesting) is refused with the
/// same error; nothing is built (a string is scanned, not copied, unless escaped).
#[derive(Debug)]
pub struct Skip;

impl<'de> Deserialize<'de> for Skip {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SkipVisitor)
    }
}

struct SkipVisitor;

impl<'de> Visitor<'de> for SkipVisitor {
    type Value = Skip;
    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any JSON value")
    }
    fn visit_str<E>(self, _: &str) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_unit<E>(self) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_none<E>(self) -> Result<Skip, E> {
        Ok(Skip)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Skip, A::Error> {
        while map.next_entry::<Skip, Skip>()?.is_some() {}
        Ok(Skip)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Skip, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Skip)
    }
}

/// A reader of any JSON value: each JSON type it does not read is skipped ([`Skip`]: an
/// object's or array's members unbuilt) and reads as its default.
pub trait Lenient<'de>: Default {
    fn string(_text: Cow<'de, str>) -> Self {
        Self::default()
    }
    fn unsigned(_number: u64) -> Self {
        Self::default()
    }
    fn signed(_number: i64) -> Self {
        Self::default()
    }
    fn float(_number: f64) -> Self {
        Self::default()
    }
    fn boolean(_value: bool) -> Self {
        Self::default()
    }
    fn object<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        while map.next_entry::<Skip, Skip>()?.is_some() {}
        Ok(Self::default())
    }
    fn array<A: SeqAccess<'de>>(mut seq: A) -> Result<Self, A::Error> {
        while seq.next_element::<Skip>()?.is_some() {}
        Ok(Self::default())
    }
}

struct LenientVisitor<T>(PhantomData<T>);

impl<'de, T: Lenient<'de>> Visitor<'de> for LenientVisitor<T> {
    type Value = T;
    fn expecting(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str("any JSON value")
    }
    fn visit_borrowed_str<E>(self, text: &'de str) -> Result<T, E> {
        Ok(T::string(Cow::Borrowed(text)))
    }
    fn visit_str<E>(self, text: &str) -> Result<T, E> {
        Ok(T::string(Cow::Owned(text.to_owned())))
    }
    fn visit_string<E>(self, text: String) -> Result<T, E> {
        Ok(T::string(Cow::Owned(text)))
    }
    fn visit_bool<E>(self, value: bool) -> Result<T, E> {
        Ok(T::boolean(value))
    }
    fn visit_i64<E>(self, number: i64) -> Result<T, E> {
        Ok(T::signed(number))
    }
    fn visit_u64<E>(self, number: u64) -> Result<T, E> {
        Ok(T::unsigned(number))
    }
    fn visit_f64<E>(self, number: f64) -> Result<T, E> {
        Ok(T::float(number))
    }
    fn visit_unit<E>(self) -> Result<T, E> {
        Ok(T::default())
    }
    fn visit_none<E>(self) -> Result<T, E> {
        Ok(T::default())
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
        T::object(map)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<T, A::Error> {
        T::array(seq)
    }
}

/// Reads `deserializer`'s value, whatever its type, with `T`'s lenient reading.
pub fn read_lenient<'de, T: Lenient<'de>, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<T, D::Error> {
    deserializer.deserialize_any(LenientVisitor(PhantomData))
}

/// `Deserialize` for lenient readers.
macro_rules! deserialize_lenient {
    ($($type:ident$(<$lifetime:lifetime>)?),* $(,)?) => {$(
        impl<'de> serde::Deserialize<'de> for $type<$($lifetime)?> {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                $crate::providers::event::read_lenient(deserializer)
            }
        }
    )*};
    // Wrappers of one reader `T`, read as the bound says.
    ($($type:ident<T: $bound:ident>),* $(,)?) => {$(
        impl<'de, T: $bound<'de>> serde::Deserialize<'de> for $type<T> {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                $crate::providers::event::read_lenient(deserializer)
            }
        }
    )*};
}
pub(crate) use deserialize_lenient;

/// Object readers, each the struct `$type` (lifetime `'de`, the text's) of the members
/// named, each `Option<T>` (`Some` whenever the member is present, even `null`: a `T`
/// reads any value), every other member skipped; a value of another type reads as no
/// members.
macro_rules! lenient_object {
    ($($(#[$meta:meta])* $vis:vis struct $type:ident<'de> {
        $($(#[$field_meta:meta])* $name:literal => $field:ident: $field_type:ty),* $(,)?
    })*) => {$(
        $(#[$meta])*
        #[derive(Debug, Default)]
        $vis struct $type<'de> {
            $($(#[$field_meta])* pub $field: Option<$field_type>,)*
            _text: std::marker::PhantomData<&'de str>,
        }

        impl<'de> $crate::providers::event::Lenient<'de> for $type<'de> {
            fn object<A: serde::de::MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
                /// A member's name: one of the fields, or another (`None`), matched as it
                /// is read (unescaped), never copied.
                #[allow(non_camel_case_types)]
                enum Field { $($field,)* }
                struct Name(Option<Field>);
                impl<'de> serde::Deserialize<'de> for Name {
                    fn deserialize<D: serde::Deserializer<'de>>(names: D) -> Result<Self, D::Error> {
                        struct Names;
                        impl serde::de::Visitor<'_> for Names {
                            type Value = Name;
                            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                                formatter.write_str("a member name")
                            }
                            fn visit_str<E>(self, name: &str) -> Result<Name, E> {
                                Ok(Name(match name {
                                    $($name => Some(Field::$field),)*
                                    _ => None,
                                }))
                            }
                        }
                        names.deserialize_identifier(Names)
                    }
                }
                let mut object = Self::default();
                while let Some(Name(name)) = map.next_key()? {
                    match name {
                        $(Some(Field::$field) => object.$field = Some(map.next_value()?),)*
                        None => {
                            map.next_value::<$crate::providers::event::Skip>()?;
                        }
                    }
                }
                Ok(object)
            }
        }

        $crate::providers::event::deserialize_lenient!($type<'de>);
    )*};
}
pub(crate) use lenient_object;

impl<'de> Lenient<'de> for Str<'de> {
    fn string(text: Cow<'de, str>) -> Self {
        Str(Some(text))
    }
}

impl Lenient<'_> for Count {
    fn unsigned(number: u64) -> Self {
        Count(Some(number))
    }
}

impl Lenient<'_> for Number {
    fn unsigned(number: u64) -> Self {
        Number(Some(number))
    }
    fn float(number: f64) -> Self {
        // Saturates at u64::MAX: a nonsense count must not wrap around.
        Number((number.is_finite() && number >= 0.0).then(|| number.ceil() as u64))
    }
}

impl Lenient<'_> for Flag {
    fn boolean(value: bool) -> Self {
        Flag(value)
    }
}

impl<'de, T: Deserialize<'de>> Lenient<'de> for List<T> {
    fn array<A: SeqAccess<'de>>(mut seq: A) -> Result<Self, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(16));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(List(items))
    }
}

impl<'de, T: Deserialize<'de>> Lenient<'de> for Values<T> {
    /// In the order of their names, a name written twice keeping its last value, as a
    /// tree's map gives them.
    fn object<A: MapAccess<'de>>(mut map: A) -> Result<Self, A::Error> {
        let mut values = std::collections::BTreeMap::new();
        while let Some(Name(name)) = map.next_key()? {
            values.insert(name, map.next_value()?);
        }
        Ok(Values(values.into_values().collect()))
    }
}

impl<'de, T: Lenient<'de>> Lenient<'de> for IfObject<T> {
    fn object<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        T::object(map).map(|object| IfObject(Some(object)))
    }
}

impl<'de, T: Lenient<'de>> Lenient<'de> for IfArray<T> {
    fn array<A: SeqAccess<'de>>(seq: A) -> Result<Self, A::Error> {
        T::array(seq).map(|array| IfArray(Some(array)))
    }
}

deserialize_lenient!(Str<'de>, Count, Number, Flag);
deserialize_lenient!(IfArray<T: Lenient>, IfObject<T: Lenient>);
deserialize_lenient!(List<T: Deserialize>, Values<T: Deserialize>);

#[cfg(test)]
mod tests {
    use super::*;

    lenient_object! {
        struct Probe<'de> {
            "b" => b: Flag,
            "f" => f: Number,
            "l" => l: List<Str<'de>>,
            "n" => n: Count,
            "o" => o: IfObject<Inner<'de>>,
            "s" => s: Str<'de>,
            "v" => v: Values<Str<'de>>,
            "x" => x: Value,
        }

        struct Inner<'de> {
            "s" => s: Str<'de>,
        }
    }

    fn probe(text: &str) -> Probe<'_> {
        read(text).expect("readable")
    }

    #[test]
    fn members_read_as_a_tree_indexed_them() {
        let text = r#"{"s":"plain","n":7,"f":2.5,"b":true,"l":["a",1,"b\"c"],
            "v":{"z":"last","a":"first","m":5,"a":"again"},"o":{"s":"in"},"x":{"k":[1]},
            "unknown":{"deep":[[{"s":"not this"}]]}}"#;
        let read = probe(text);
        assert!(matches!(read.s, Some(Str(Some(Cow::Borrowed("plain"))))), "borrowed");
        assert_eq!(
            (count(&read.n), read.f, read.b),
            (Some(7), Some(Number(Some(3))), Some(Flag(true)))
        );
        let list: Vec<_> = items(&read.l).iter().map(|item| item.0.as_deref()).collect();
        assert_eq!(list, [Some("a"), None, Some("b\"c")]);
        let values: Vec<_> = read.v.unwrap().0.into_iter().map(|value| value.0).collect();
        assert_eq!(values, [Some("again".into()), None, Some("last".into())], "sorted, last kept");
        assert_eq!(
            read.o.and_then(|o| o.0).and_then(|o| o.s).and_then(|s| s.0).as_deref(),
            Some("in")
        );
        assert_eq!(value(read.x), serde_json::json!({"k": [1]}));
    }

    #[test]
    fn members_of_other_types_read_as_absent() {
        let read =
            probe(r#"{"s":5,"n":-1,"f":-0.5,"b":"true","l":{"a":1},"v":[1],"o":[{}],"x":null}"#);
        assert_eq!(text(&read.s), None);
        assert_eq!((count(&read.n), read.f, read.b), (None, Some(Number(None)), Some(Flag(false))));
        assert!(items(&read.l).is_empty() && read.v.unwrap().0.is_empty());
        assert_eq!(read.o.map(|o| o.0.is_none()), Some(true));
        assert_eq!(read.x, Some(Value::Null), "present, null");
        let read = probe(r#"{"s":"a\u0062","n":1.0,"f":18446744073709551615,"s":"c","n":2}"#);
        assert_eq!((text(&read.s), count(&read.n)), (Some("c"), Some(2)), "the last kept");
        assert_eq!(read.f, Some(Number(Some(u64::MAX))));
        assert!(matches!(probe(r#"{"s":"a\u0062"}"#).s, Some(Str(Some(Cow::Owned(_))))));
        for other in ["null", "[1,{\"s\":\"x\"}]", "\"s\"", "1", "true"] {
            let read = probe(other);
            assert!(read.s.is_none() && read.x.is_none(), "{other}");
        }
    }

    #[test]
    fn what_a_tree_refuses_is_refused_with_its_error() {
        let deep = format!(r#"{{"unknown":{}{}}}"#, "[".repeat(200), "]".repeat(200));
        let deep_read = format!(r#"{{"l":[{}{}]}}"#, "{\"a\":".repeat(200), "}".repeat(200));
        let digits = format!(r#"{{"n":1{}}}"#, "0".repeat(400));
        let cases = [r#"{"unknown":1e400}"#, r#"{"n":-1e400}"#, r#"{"s":"a"} x"#, r#"{"s":"#];
        for text in cases.iter().copied().chain([deep.as_str(), deep_read.as_str(), &digits]) {
            let tree = serde_json::from_str::<Value>(text).expect_err("a tree refuses it");
            let read = read::<Probe>(text).expect_err("refused");
            assert_eq!(read.to_string(), tree.to_string(), "{text}");
        }
    }

    /// Any JSON of the probe's member names, whole or cut short, with a number or nesting
    /// a tree cannot hold put in or not: read exactly when a tree reads it, refused with
    /// the tree's error otherwise.
    fn json_like() -> impl proptest::strategy::Strategy<Value = Value> {
        const NAMES: [&str; 10] = ["b", "f", "l", "n", "o", "s", "v", "x", "unknown", "é\""];
        crate::providers::json_of_words(&NAMES)
    }

    proptest::proptest! {
        #[test]
        fn reads_what_a_tree_reads(
            value in json_like(),
            cut in proptest::option::of(0usize..400),
            spoiled in proptest::option::of(0usize..400),
            spoiler in proptest::sample::select(vec!["1e400", "-1e999", "[[[[[[[[[[", "\"\\u12\"", "}"]),
        ) {
            let mut text = value.to_string();
            if let Some(at) = spoiled.map(|at| at % (text.len() + 1)) {
                if text.is_char_boundary(at) {
                    text.insert_str(at, spoiler);
                }
            }
            if let Some(at) = cut.map(|at| at % (text.len() + 1)) {
                if text.is_char_boundary(at) {
                    text.truncate(at);
                }
            }
            let tree = serde_json::from_str::<Value>(&text).map(|_| ()).map_err(|e| e.to_string());
            let read = read::<Probe>(&text).map(|_| ()).map_err(|e| e.to_string());
            proptest::prop_assert_eq!(read, tree, "{}", text);
        }
    }
}
