//! Splitting a body or a stream into the JSON texts of its payloads, in bounded memory.
//!
//! The input is a sequence of top-level JSON values, separated by whitespace: one value, JSON
//! Lines, pretty-printed values one after another, or a JSON array, whose elements are the
//! payloads. [`Splitter`] takes the input in chunks of any size (a 1 GB file is read a chunk at
//! a time) and hands out each payload's text as soon as it is complete, so memory holds one
//! payload, never the input. It only finds boundaries (strings, escapes, nesting); the adapter
//! parses each text.
//!
//! Damage stays local. A payload that is not valid JSON is reported where it starts and the
//! rest is read on: a value spread over several lines that does not parse, or that grows past
//! [`MAX_PAYLOAD_BYTES`] without closing (a truncated line of a JSON Lines file), is reported
//! at its first line and reading resumes on the line after it.

use std::fmt;

use serde::Serialize;

use crate::DecodeError;

/// The largest payload accepted, in bytes. Provider payloads are a few KiB; a value growing
/// past this is unterminated or not a payload, and is reported instead of buffered further.
pub const MAX_PAYLOAD_BYTES: usize = 1024 * 1024;

/// Where a payload sits in its input, for messages about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Location {
    /// The 0-based index of an element of a top-level JSON array (counted over the input).
    Index(usize),
    /// The 1-based line a top-level value starts on.
    Line(usize),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Index(index) => write!(f, "index {index}"),
            Location::Line(line) => write!(f, "line {line}"),
        }
    }
}

/// One payload of the input: where it is, and its text or why it has none.
pub type Split = (Location, Result<String, DecodeError>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Container {
    /// Between top-level values.
    Top,
    /// Inside a top-level array, between elements.
    Array,
}

/// The value being read.
#[derive(Debug)]
struct Value {
    location: Location,
    /// The line it started on.
    first_line: usize,
    bytes: Vec<u8>,
    depth: usize,
    in_string: bool,
    escaped: bool,
    /// Not an object or an array: a string ends at its closing quote; anything else ends at
    /// the end of its line (top level) or of its element (in an array).
    scalar: bool,
    /// Past [`MAX_PAYLOAD_BYTES`]: no longer kept, only scanned to its end.
    overflowed: bool,
}

/// Splits an input given in chunks into payload texts. See the module docs.
#[derive(Debug)]
pub struct Splitter {
    container: Container,
    line: usize,
    next_index: usize,
    current: Option<Value>,
    /// Array elements so far in the current top-level array (to tell `[,` from `[1,`).
    after_comma: bool,
    started: bool,
    /// Bytes to read again before the rest of the input: the lines after a damaged value's
    /// first line.
    replay: Option<Vec<u8>>,
}

impl Default for Splitter {
    fn default() -> Self {
        Splitter::new()
    }
}

impl Splitter {
    /// A splitter at the start of an input.
    pub fn new() -> Self {
        Splitter {
            container: Container::Top,
            line: 1,
            next_index: 0,
            current: None,
            after_comma: false,
            started: false,
            replay: None,
        }
    }

    /// Reads `chunk`, appending every payload it completes to `out`.
    pub fn push(&mut self, chunk: &[u8], out: &mut Vec<Split>) {
        let chunk = if self.started {
            chunk
        } else {
            self.started = true;
            chunk.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(chunk)
        };
        self.scan(chunk, out);
    }

    /// Ends the input: a value still open is reported, as is an array never closed.
    pub fn finish(&mut self, out: &mut Vec<Split>) {
        // Each round drops at least the first line of an open value, so this ends.
        while let Some(value) = self.current.take() {
            if value.scalar {
                self.emit(value, out);
                continue;
            }
            let what = if self.container == Container::Array {
                "an array element that never ends"
            } else {
                "a value that never ends"
            };
            self.fail_open(value, what, out);
            self.scan(&[], out);
        }
        if self.container == Container::Array {
            self.container = Container::Top;
            out.push((
                Location::Line(self.line),
                Err(DecodeError::invalid_input(
                    "the JSON array is not closed with `]`",
                )),
            ));
        }
    }

    fn scan(&mut self, input: &[u8], out: &mut Vec<Split>) {
        // Owned only while bytes of a damaged value are read again, ahead of the input.
        let mut buffer: Option<Vec<u8>> = self.replay.take().map(|mut again| {
            again.extend_from_slice(input);
            again
        });
        let mut at = 0;
        loop {
            let bytes: &[u8] = buffer.as_deref().unwrap_or(input);
            let Some(&byte) = bytes.get(at) else { break };
            at += 1;
            if self.current.is_some() {
                self.continue_value(byte, out);
            } else {
                self.between_values(byte, out);
            }
            match self.replay.take() {
                // The line count was set back to the damaged value's first line; its tail
                // starts with that line's newline.
                Some(mut again) => {
                    again.extend_from_slice(&bytes[at..]);
                    buffer = Some(again);
                    at = 0;
                }
                None if byte == b'\n' => self.line += 1,
                None => {}
            }
        }
    }

    fn between_values(&mut self, byte: u8, out: &mut Vec<Split>) {
        match (self.container, byte) {
            (_, b' ' | b'\t' | b'\r' | b'\n') => {}
            (Container::Top, b'[') => {
                self.container = Container::Array;
                self.after_comma = false;
            }
            (Container::Array, b']') => {
                if self.after_comma {
                    out.push((
                        Location::Index(self.next_index),
                        Err(DecodeError::invalid_input("a `,` with no element after it")),
                    ));
                }
                self.container = Container::Top;
            }
            (Container::Array, b',') => {
                if self.after_comma || self.next_index == 0 {
                    out.push((
                        Location::Index(self.next_index),
                        Err(DecodeError::invalid_input("an empty array element")),
                    ));
                    self.next_index += 1;
                }
                self.after_comma = true;
            }
            _ => self.start_value(byte, out),
        }
    }

    fn start_value(&mut self, byte: u8, out: &mut Vec<Split>) {
        let location = match self.container {
            Container::Array => {
                let index = self.next_index;
                self.next_index += 1;
                self.after_comma = false;
                Location::Index(index)
            }
            Container::Top => Location::Line(self.line),
        };
        let mut value = Value {
            location,
            first_line: self.line,
            bytes: Vec::new(),
            depth: 0,
            in_string: false,
            escaped: false,
            scalar: !matches!(byte, b'{' | b'['),
            overflowed: false,
        };
        match byte {
            b'{' | b'[' => value.depth = 1,
            b'"' => value.in_string = true,
            _ => {}
        }
        value.bytes.push(byte);
        self.current = Some(value);
        // A lone closing delimiter is a value of one byte that cannot parse: end it now.
        if matches!(byte, b'}' | b']') {
            let value = self.current.take().expect("just set");
            self.emit(value, out);
        }
    }

    fn continue_value(&mut self, byte: u8, out: &mut Vec<Split>) {
        let container = self.container;
        let value = self.current.as_mut().expect("called with a value open");
        if value.in_string {
            value.keep(byte);
            if value.escaped {
                value.escaped = false;
            } else if byte == b'\\' {
                value.escaped = true;
            } else if byte == b'"' {
                value.in_string = false;
                if value.scalar && value.depth == 0 {
                    let value = self.current.take().expect("open");
                    self.emit(value, out);
                }
            }
            return self.check_size(out);
        }
        if value.scalar {
            // At the top level anything that is not an object, an array or a string runs to the
            // end of its line (a garbage line is one bad payload); in an array it ends where
            // the element does.
            let ends = match container {
                Container::Top => byte == b'\n',
                Container::Array => {
                    matches!(
                        byte,
                        b' ' | b'\t' | b'\r' | b'\n' | b',' | b']' | b'{' | b'[' | b'"'
                    )
                }
            };
            if ends {
                let value = self.current.take().expect("open");
                self.emit(value, out);
                // The delimiter belongs to what follows.
                return self.between_values(byte, out);
            }
            value.keep(byte);
            return self.check_size(out);
        }
        value.keep(byte);
        match byte {
            b'"' => value.in_string = true,
            b'{' | b'[' => value.depth += 1,
            b'}' | b']' => {
                value.depth -= 1;
                if value.depth == 0 {
                    let value = self.current.take().expect("open");
                    return self.finish_value(value, out);
                }
            }
            _ => {}
        }
        self.check_size(out)
    }

    fn check_size(&mut self, out: &mut Vec<Split>) {
        let grown = self
            .current
            .as_ref()
            .is_some_and(|value| !value.overflowed && value.bytes.len() > MAX_PAYLOAD_BYTES);
        if !grown {
            return;
        }
        let value = self.current.as_mut().expect("checked above");
        if self.container == Container::Array || value.first_line == self.line {
            // An element, or one long line: scan it to its end without keeping it.
            value.overflowed = true;
            value.bytes = Vec::new();
            return;
        }
        let value = self.current.take().expect("checked above");
        self.fail_open(
            value,
            "a value that does not close within the size limit",
            out,
        );
    }

    /// A complete container value: a one-line value or an array element goes to the adapter as
    /// it is; a value over several lines is checked here, so that a damaged one costs only its
    /// first line.
    fn finish_value(&mut self, value: Value, out: &mut Vec<Split>) {
        let multi_line = value.first_line != self.line && self.container == Container::Top;
        if multi_line && serde_json::from_slice::<serde::de::IgnoredAny>(&value.bytes).is_err() {
            return self.fail_open(value, "a value over several lines that is not JSON", out);
        }
        self.emit(value, out);
    }

    /// Reports a value that cannot be read at its first line, and has the lines after that
    /// line read again as new input.
    fn fail_open(&mut self, value: Value, what: &str, out: &mut Vec<Split>) {
        out.push((value.location, Err(unterminated(&value, what))));
        if value.overflowed || self.container == Container::Array {
            return;
        }
        if let Some(newline) = value.bytes.iter().position(|&byte| byte == b'\n') {
            // Lines are counted again as they are read again, from the first line's newline.
            self.line = value.first_line;
            self.replay = Some(value.bytes[newline..].to_vec());
        }
    }

    fn emit(&mut self, value: Value, out: &mut Vec<Split>) {
        let location = value.location;
        if value.overflowed {
            return out.push((
                location,
                Err(DecodeError::TooLarge {
                    limit: MAX_PAYLOAD_BYTES,
                }),
            ));
        }
        let text = String::from_utf8(value.bytes).map_err(|error| DecodeError::NotUtf8 {
            at: error.utf8_error().valid_up_to(),
        });
        out.push((location, text));
    }
}

impl Value {
    fn keep(&mut self, byte: u8) {
        if !self.overflowed {
            self.bytes.push(byte);
        }
    }
}

fn unterminated(value: &Value, what: &str) -> DecodeError {
    DecodeError::invalid_input(format!("{what} (from line {})", value.first_line))
}

/// Splits a whole body: every payload, in order.
pub fn split_all(body: &[u8]) -> Vec<Split> {
    let mut splitter = Splitter::new();
    let mut out = Vec::new();
    splitter.push(body, &mut out);
    splitter.finish(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn texts(body: &str) -> Vec<(Location, Result<String, String>)> {
        split_all(body.as_bytes())
            .into_iter()
            .map(|(at, text)| (at, text.map_err(|error| error.to_string())))
            .collect()
    }

    fn ok(at: Location, text: &str) -> (Location, Result<String, String>) {
        (at, Ok(text.to_owned()))
    }

    #[test]
    fn one_value_json_lines_and_pretty_values_split_by_their_first_line() {
        assert_eq!(
            texts(r#"{"a":1}"#),
            vec![ok(Location::Line(1), r#"{"a":1}"#)]
        );
        assert_eq!(
            texts("{\"a\":1}\n\n{\"b\":\"}{\"}\n"),
            vec![
                ok(Location::Line(1), r#"{"a":1}"#),
                ok(Location::Line(3), r#"{"b":"}{"}"#)
            ]
        );
        assert_eq!(
            texts("{\n \"a\": [1,\n 2]\n}\n{\"b\":2} {\"c\":3}"),
            vec![
                ok(Location::Line(1), "{\n \"a\": [1,\n 2]\n}"),
                ok(Location::Line(5), r#"{"b":2}"#),
                ok(Location::Line(5), r#"{"c":3}"#),
            ]
        );
    }

    #[test]
    fn array_elements_are_the_payloads_whitespace_and_escapes_kept() {
        assert_eq!(
            texts("[ {\"a\":\"x\\\"]\"} ,\n{\"b\" : 2}, 3 ]"),
            vec![
                ok(Location::Index(0), r#"{"a":"x\"]"}"#),
                ok(Location::Index(1), r#"{"b" : 2}"#),
                ok(Location::Index(2), "3"),
            ]
        );
        assert_eq!(texts("[]"), vec![]);
    }

    #[test]
    fn a_broken_json_lines_line_costs_only_that_line() {
        let body = "{\"a\":1}\n{\"b\":\n{\"c\":3}\n{\"d\":4}\n";
        let split = texts(body);
        assert_eq!(split[0], ok(Location::Line(1), r#"{"a":1}"#));
        assert_eq!(split[1].0, Location::Line(2));
        assert!(split[1].1.is_err(), "{split:?}");
        assert_eq!(
            split[2..],
            [
                ok(Location::Line(3), r#"{"c":3}"#),
                ok(Location::Line(4), r#"{"d":4}"#)
            ]
        );
    }

    #[test]
    fn an_unclosed_line_before_good_ones_is_reported_and_the_rest_read() {
        // The open brace never closes: the good lines after it are still read.
        let body = "{\"a\": [\n{\"c\":3}\n{\"d\":4}";
        let split = texts(body);
        assert_eq!(split.len(), 3, "{split:?}");
        assert!(split[0].1.is_err());
        assert_eq!(split[1], ok(Location::Line(2), r#"{"c":3}"#));
        assert_eq!(split[2], ok(Location::Line(3), r#"{"d":4}"#));
    }

    #[test]
    fn a_garbage_line_is_one_bad_payload() {
        let split = texts("not json at all\n{\"a\":1}");
        assert_eq!(split.len(), 2, "{split:?}");
        assert_eq!(split[0], ok(Location::Line(1), "not json at all"));
        assert_eq!(split[1], ok(Location::Line(2), r#"{"a":1}"#));
    }

    #[test]
    fn damaged_arrays_report_where() {
        let split = texts("[{\"a\":1},,{\"b\":2}");
        assert_eq!(split[0], ok(Location::Index(0), r#"{"a":1}"#));
        assert!(split[1].1.is_err());
        assert_eq!(split[2], ok(Location::Index(2), r#"{"b":2}"#));
        assert!(split[3].1.as_ref().unwrap_err().contains("not closed"));
    }

    #[test]
    fn chunk_boundaries_do_not_matter() {
        let body = "{\"a\":\"\\\"\"}\n[{\"b\":1},{\"c\":[2]}]\n{\n\"d\":4\n}\n7\n\"x\" not json";
        let whole = split_all(body.as_bytes());
        for size in 1..body.len() {
            let mut splitter = Splitter::new();
            let mut out = Vec::new();
            for chunk in body.as_bytes().chunks(size) {
                splitter.push(chunk, &mut out);
            }
            splitter.finish(&mut out);
            assert_eq!(out, whole, "chunks of {size}");
        }
    }

    #[test]
    fn oversized_values_are_reported_not_buffered() {
        let long = format!(
            "{{\"a\":\"{}\"}}\n{{\"b\":1}}",
            "x".repeat(MAX_PAYLOAD_BYTES)
        );
        let split = texts(&long);
        assert_eq!(split.len(), 2);
        assert!(split[0].1.as_ref().unwrap_err().contains("larger than"));
        assert_eq!(split[1], ok(Location::Line(2), r#"{"b":1}"#));
    }

    proptest! {
        /// JSON Lines of any values but arrays (a top-level array's elements are the payloads),
        /// however chunked, split back into those values.
        #[test]
        fn json_lines_of_any_values_round_trip(
            values in proptest::collection::vec(
                any_json().prop_filter("not an array", |value| !value.is_array()),
                0..8,
            ),
            size in 1usize..64,
        ) {
            let lines: Vec<String> = values.iter().map(|value| value.to_string()).collect();
            let body = lines.join("\n");
            let mut splitter = Splitter::new();
            let mut out = Vec::new();
            for chunk in body.as_bytes().chunks(size) {
                splitter.push(chunk, &mut out);
            }
            splitter.finish(&mut out);
            let got: Vec<serde_json::Value> = out
                .into_iter()
                .map(|(_, text)| serde_json::from_str(&text.unwrap()).unwrap())
                .collect();
            prop_assert_eq!(got, values);
        }

        /// Any bytes: split without a panic.
        #[test]
        fn any_bytes_split_without_a_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = split_all(&bytes);
        }
    }

    fn any_json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            ".{0,8}".prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
                proptest::collection::btree_map(".{0,6}", inner, 0..4)
                    .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
            ]
        })
    }
}
