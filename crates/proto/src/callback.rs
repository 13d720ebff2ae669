//! Completion callback bodies: variable substitution in `CallbackBody`.
//!
//! Two families of variables are known: upline's `${bucket}`, `${object}`,
//! `${size}`, `${md5}`, `${mimeType}`, `${context}`, and the original
//! service's `$(Bucket)`, `$(Object)`, `$(ObjectSize)`, `$(ContentType)`,
//! `$(ObjectMD5)`. In a form body, a magic `$(Name)` standing alone as a
//! field becomes `Name=value`; media-probe variables `$(AVinfo.…)` become
//! empty (upline does not probe media). Values are escaped for the body's
//! kind — form-encoded in a form body, JSON-escaped in a JSON body — so an
//! object name can never break the body's syntax. Unknown variables are
//! left as they are.

/// The values a callback body may refer to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackVars {
    pub bucket: String,
    pub object: String,
    pub size: u64,
    pub md5: String,
    pub mime_type: String,
    pub context: String,
}

/// A rendered callback body and its content type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackBody {
    pub body: String,
    pub content_type: &'static str,
}

impl CallbackVars {
    fn lookup(&self, name: &str) -> Option<String> {
        Some(match name {
            "bucket" | "Bucket" => self.bucket.clone(),
            "object" | "Object" => self.object.clone(),
            "size" | "ObjectSize" => self.size.to_string(),
            "md5" | "ObjectMD5" => self.md5.clone(),
            "mimeType" | "ContentType" => self.mime_type.clone(),
            "context" => self.context.clone(),
            n if n.starts_with("AVinfo.") => String::new(),
            _ => return None,
        })
    }
}

/// Renders `template`: JSON when it is a JSON object once rendered,
/// `application/x-www-form-urlencoded` otherwise.
pub fn render(template: &str, vars: &CallbackVars) -> CallbackBody {
    if template.trim_start().starts_with('{') {
        let body = substitute(template, vars, |v| {
            let quoted = serde_json::to_string(v).expect("strings serialize");
            quoted[1..quoted.len() - 1].to_owned()
        });
        if serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&body).is_ok() {
            return CallbackBody {
                body,
                content_type: "application/json",
            };
        }
    }
    let form_escape = |v: &str| form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
    let body = template
        .split('&')
        .map(|field| match standalone_magic(field) {
            Some(name) => match vars.lookup(name) {
                Some(v) if !name.starts_with("AVinfo.") => format!("{name}={}", form_escape(&v)),
                _ => substitute(field, vars, form_escape),
            },
            None => substitute(field, vars, form_escape),
        })
        .collect::<Vec<_>>()
        .join("&");
    CallbackBody {
        body,
        content_type: "application/x-www-form-urlencoded",
    }
}

/// `$(Name)` alone as a whole form field.
fn standalone_magic(field: &str) -> Option<&str> {
    let inner = field.strip_prefix("$(")?.strip_suffix(')')?;
    (!inner.contains(['(', ')', '$'])).then_some(inner)
}

/// Replaces `${name}` and `$(Name)` with escaped values; unknown ones stay.
fn substitute(s: &str, vars: &CallbackVars, escape: impl Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        let close = match tail.as_bytes().get(1) {
            Some(b'{') => Some('}'),
            Some(b'(') => Some(')'),
            _ => None,
        };
        let found = close.and_then(|c| tail.find(c).map(|end| (&tail[2..end], end)));
        match found.and_then(|(name, end)| vars.lookup(name).map(|v| (v, end))) {
            Some((value, end)) => {
                out.push_str(&escape(&value));
                rest = &tail[end + 1..];
            }
            None => {
                out.push('$');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> CallbackVars {
        CallbackVars {
            bucket: "doc".into(),
            object: "a b&c.mp4".into(),
            size: 42,
            md5: "d41d8cd98f00b204e9800998ecf8427e".into(),
            mime_type: "video/mp4".into(),
            context: "ctx".into(),
        }
    }

    #[test]
    fn form_with_standalone_magic() {
        let b = render(
            "a=1&$(ObjectSize)&b=2&$(Object)&obj=${object}&x=$(AVinfo.video.width)",
            &vars(),
        );
        assert_eq!(b.content_type, "application/x-www-form-urlencoded");
        assert_eq!(
            b.body,
            "a=1&ObjectSize=42&b=2&Object=a+b%26c.mp4&obj=a+b%26c.mp4&x="
        );
    }

    #[test]
    fn json_body_escapes_values() {
        let v = CallbackVars {
            object: "say \"hi\"".into(),
            ..vars()
        };
        let b = render(r#"{"name":"${object}","size":${size},"md5":"$(ObjectMD5)"}"#, &v);
        assert_eq!(b.content_type, "application/json");
        let j: serde_json::Value = serde_json::from_str(&b.body).unwrap();
        assert_eq!(j["name"], "say \"hi\"");
        assert_eq!(j["size"], 42);
        assert_eq!(j["md5"], "d41d8cd98f00b204e9800998ecf8427e");
    }

    #[test]
    fn unknown_variables_stay() {
        let b = render("k=${nope}&m=$(Nope)&p=$5&q=$", &vars());
        assert_eq!(b.body, "k=${nope}&m=$(Nope)&p=$5&q=$");
    }
}
