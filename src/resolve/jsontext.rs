//! JSON text written straight into the bytes a record is sent as.
//!
//! Every delivery is serialized once and never read back, so building a `serde_json::Value`
//! tree first (a map and a string per key, freed right after) cost more than the engine did.
//! Strings go through serde_json's own escaping, so the text is the same valid JSON.

use std::io::Write as _;

/// `text` as a JSON string, escaped.
pub fn string(out: &mut Vec<u8>, text: &str) {
    // Writing into a `Vec` cannot fail.
    let _ = serde_json::to_writer(&mut *out, text);
}

pub fn int(out: &mut Vec<u8>, n: i64) {
    let _ = write!(out, "{n}");
}

pub fn uint(out: &mut Vec<u8>, n: u64) {
    let _ = write!(out, "{n}");
}

/// A finite float as serde_json writes it; NaN and infinities, which JSON lacks, as `null`.
pub fn float(out: &mut Vec<u8>, f: f64) {
    let _ = serde_json::to_writer(&mut *out, &f);
}

/// Text already known to be one valid JSON value.
pub fn raw(out: &mut Vec<u8>, json: &str) {
    out.extend_from_slice(json.as_bytes());
}

/// An object or array whose members are written one by one; it places the commas.
pub struct Members<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
    close: u8,
}

impl<'a> Members<'a> {
    pub fn object(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Self {
            out,
            first: true,
            close: b'}',
        }
    }

    pub fn array(out: &'a mut Vec<u8>) -> Self {
        out.push(b'[');
        Self {
            out,
            first: true,
            close: b']',
        }
    }

    fn separate(&mut self) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
    }

    /// Starts the member `name`; its value is written into what this returns.
    pub fn key(&mut self, name: &str) -> &mut Vec<u8> {
        self.separate();
        string(self.out, name);
        self.out.push(b':');
        self.out
    }

    /// Starts the next array item.
    pub fn item(&mut self) -> &mut Vec<u8> {
        self.separate();
        self.out
    }

    pub fn end(self) {
        self.out.push(self.close);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_valid_json_with_escaped_strings() {
        let mut out = Vec::new();
        let mut object = Members::object(&mut out);
        string(object.key("a\"b"), "line\nnext");
        int(object.key("n"), -7);
        float(object.key("nan"), f64::NAN);
        let mut items = Members::array(object.key("list"));
        uint(items.item(), u64::MAX);
        raw(items.item(), r#"{"x":[1]}"#);
        items.end();
        Members::object(object.key("empty")).end();
        object.end();
        let parsed: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({"a\"b": "line\nnext", "n": -7, "nan": null,
                               "list": [u64::MAX, {"x": [1]}], "empty": {}})
        );
    }
}
