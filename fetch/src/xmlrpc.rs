//! The little of XML-RPC that Koji's hub needs: a call with positional arguments (keyword
//! arguments go in a struct marked `__starstar`, Koji's convention), and the response's value or
//! fault.

use std::collections::BTreeMap;

/// An XML-RPC value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Nil,
    Bool(bool),
    Int(i64),
    Double(f64),
    Str(String),
    Array(Vec<Value>),
    Struct(BTreeMap<String, Value>),
}

impl Value {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }

    /// A struct member.
    pub fn get(&self, key: &str) -> Option<&Value> {
        match self {
            Value::Struct(m) => m.get(key),
            _ => None,
        }
    }

    /// Keyword arguments of a Koji call.
    pub fn kwargs<'k>(pairs: impl IntoIterator<Item = (&'k str, Value)>) -> Value {
        let mut m: BTreeMap<String, Value> =
            pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        m.insert("__starstar".into(), Value::Bool(true));
        Value::Struct(m)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_string())
    }
}

/// What a response said instead of a value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResponseError {
    #[error("fault {code}: {message}")]
    Fault { code: i64, message: String },
    #[error("not an XML-RPC response: {0}")]
    Malformed(String),
}

fn escape(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            c => out.push(c),
        }
    }
}

fn encode_value(v: &Value, out: &mut String) {
    out.push_str("<value>");
    match v {
        Value::Nil => out.push_str("<nil/>"),
        Value::Bool(b) => out.push_str(&format!("<boolean>{}</boolean>", u8::from(*b))),
        Value::Int(i) => out.push_str(&format!("<int>{i}</int>")),
        Value::Double(d) => out.push_str(&format!("<double>{d}</double>")),
        Value::Str(s) => {
            out.push_str("<string>");
            escape(s, out);
            out.push_str("</string>");
        }
        Value::Array(items) => {
            out.push_str("<array><data>");
            for i in items {
                encode_value(i, out);
            }
            out.push_str("</data></array>");
        }
        Value::Struct(m) => {
            out.push_str("<struct>");
            for (k, v) in m {
                out.push_str("<member><name>");
                escape(k, out);
                out.push_str("</name>");
                encode_value(v, out);
                out.push_str("</member>");
            }
            out.push_str("</struct>");
        }
    }
    out.push_str("</value>");
}

/// The body of a call.
pub fn encode_call(method: &str, params: &[Value]) -> String {
    let mut out = String::from("<?xml version=\"1.0\"?><methodCall><methodName>");
    escape(method, &mut out);
    out.push_str("</methodName><params>");
    for p in params {
        out.push_str("<param>");
        encode_value(p, &mut out);
        out.push_str("</param>");
    }
    out.push_str("</params></methodCall>");
    out
}

/// Decodes one `<value>` element.
pub fn decode_value(node: roxmltree::Node<'_, '_>) -> Result<Value, String> {
    let Some(inner) = node.children().find(|c| c.is_element()) else {
        // A bare <value>text</value> is a string.
        return Ok(Value::Str(node.text().unwrap_or("").to_string()));
    };
    let text = || inner.text().unwrap_or("").trim().to_string();
    Ok(match inner.tag_name().name() {
        "nil" => Value::Nil,
        "boolean" => Value::Bool(text() == "1"),
        "int" | "i4" | "i8" => Value::Int(
            text()
                .parse()
                .map_err(|e| format!("bad integer {:?}: {e}", text()))?,
        ),
        "double" => Value::Double(
            text()
                .parse()
                .map_err(|e| format!("bad double {:?}: {e}", text()))?,
        ),
        // Koji sends times as strings; they are kept as text.
        "string" | "dateTime.iso8601" | "base64" => Value::Str(inner.text().unwrap_or("").into()),
        "array" => {
            let data = inner
                .children()
                .find(|c| c.has_tag_name("data"))
                .ok_or("array without <data>")?;
            Value::Array(
                data.children()
                    .filter(|c| c.has_tag_name("value"))
                    .map(decode_value)
                    .collect::<Result<_, _>>()?,
            )
        }
        "struct" => {
            let mut m = BTreeMap::new();
            for member in inner.children().filter(|c| c.has_tag_name("member")) {
                let name = member
                    .children()
                    .find(|c| c.has_tag_name("name"))
                    .and_then(|n| n.text())
                    .ok_or("struct member without <name>")?;
                let value = member
                    .children()
                    .find(|c| c.has_tag_name("value"))
                    .ok_or("struct member without <value>")?;
                m.insert(name.to_string(), decode_value(value)?);
            }
            Value::Struct(m)
        }
        other => return Err(format!("unknown value type <{other}>")),
    })
}

/// The value of a `methodResponse`, or its fault.
pub fn decode_response(xml: &str) -> Result<Value, ResponseError> {
    let doc =
        roxmltree::Document::parse(xml).map_err(|e| ResponseError::Malformed(e.to_string()))?;
    let root = doc.root_element();
    if !root.has_tag_name("methodResponse") {
        return Err(ResponseError::Malformed(format!(
            "root element <{}>",
            root.tag_name().name()
        )));
    }
    let value_of = |n: roxmltree::Node<'_, '_>| {
        n.descendants()
            .find(|c| c.has_tag_name("value"))
            .ok_or_else(|| ResponseError::Malformed("no <value>".into()))
            .and_then(|v| decode_value(v).map_err(ResponseError::Malformed))
    };
    if let Some(fault) = root.children().find(|c| c.has_tag_name("fault")) {
        let v = value_of(fault)?;
        return Err(ResponseError::Fault {
            code: v.get("faultCode").and_then(Value::as_i64).unwrap_or(0),
            message: v
                .get("faultString")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string(),
        });
    }
    let params = root
        .children()
        .find(|c| c.has_tag_name("params"))
        .ok_or_else(|| ResponseError::Malformed("neither <params> nor <fault>".into()))?;
    value_of(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_encode_kwargs_the_koji_way() {
        let body = encode_call(
            "listRPMs",
            &[Value::kwargs([
                ("buildID", Value::Int(7)),
                ("arches", Value::Array(vec!["x86_64".into()])),
            ])],
        );
        assert!(body.contains("<methodName>listRPMs</methodName>"));
        assert!(body.contains("<name>__starstar</name><value><boolean>1</boolean></value>"));
        assert!(body.contains("<name>buildID</name><value><int>7</int></value>"));
        assert!(encode_call("x", &["a<&b".into()]).contains("a&lt;&amp;b"));
    }

    #[test]
    fn responses_and_faults_decode() {
        let ok = "<?xml version='1.0'?><methodResponse><params><param><value><struct><member><name>id</name><value><int>7</int></value></member><member><name>nvr</name><value><string>foo-1-1</string></value></member><member><name>tags</name><value><array><data><value>f40</value><value><nil/></value></data></array></value></member></struct></value></param></params></methodResponse>";
        let v = decode_response(ok).unwrap();
        assert_eq!(v.get("id").and_then(Value::as_i64), Some(7));
        assert_eq!(v.get("nvr").and_then(Value::as_str), Some("foo-1-1"));
        assert_eq!(
            v.get("tags").and_then(Value::as_array).map(<[Value]>::len),
            Some(2)
        );
        let nil = "<methodResponse><params><param><value><nil/></value></param></params></methodResponse>";
        assert_eq!(decode_response(nil).unwrap(), Value::Nil);
        let fault = "<methodResponse><fault><value><struct><member><name>faultCode</name><value><int>1000</int></value></member><member><name>faultString</name><value><string>No such build</string></value></member></struct></value></fault></methodResponse>";
        assert_eq!(
            decode_response(fault).unwrap_err(),
            ResponseError::Fault {
                code: 1000,
                message: "No such build".into()
            }
        );
        assert!(decode_response("<html/>").is_err());
        assert!(decode_response("not xml").is_err());
    }
}
