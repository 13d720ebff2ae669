//! Plain reference implementations the fuzz targets compare upline's
//! parsers with: written from PROTOCOL.md and PROTOCOL-DECISIONS.md, by
//! hand, sharing no code with `upline-proto`.

/// base64 as tokens may carry it: the standard or URL-safe alphabet (a
/// character of either is accepted anywhere), padding optional but never
/// more than a full block needs, zero bits past the last whole byte.
pub fn b64_decode(s: &str) -> Option<Vec<u8>> {
    let body = s.trim_end_matches('=');
    let pads = s.len() - body.len();
    let rem = body.len() % 4;
    let max_pads = match rem {
        0 => 0,
        2 => 2,
        3 => 1,
        _ => return None,
    };
    if pads > max_pads {
        return None;
    }
    let mut bits: u32 = 0;
    let mut nbits = 0;
    let mut out = Vec::new();
    for c in body.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        bits = (bits << 6) | u32::from(v);
        nbits += 6;
        if nbits >= 8 {
            nbits -= 8;
            out.push((bits >> nbits) as u8);
            bits &= (1 << nbits) - 1;
        }
    }
    // Leftover bits must be zero: a second spelling of the same bytes
    // would make two signature texts verify.
    (bits == 0).then_some(out)
}

/// A bucket name: 3..=63 of `[a-z0-9-]`, a letter or digit at both ends.
pub fn bucket_ok(s: &str) -> bool {
    let b = s.as_bytes();
    let inner = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-';
    (3..=63).contains(&b.len()) && b.iter().all(inner) && b[0] != b'-' && b[b.len() - 1] != b'-'
}

/// An object name: 1..=1024 bytes of UTF-8, no control character (C0,
/// DEL, C1).
pub fn object_ok(s: &str) -> bool {
    (1..=1024).contains(&s.len())
        && !s
            .chars()
            .any(|c| (c as u32) < 0x20 || (0x7f..=0x9f).contains(&(c as u32)))
}

/// Why the reference refuses a path (mirrors `PathError`'s variants).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathRefusal {
    Shape,
    BadEscape,
    NotUtf8,
    Bucket,
    Object,
}

/// One path component: `+` is a space, `%XX` one byte, decoded once, then UTF-8.
pub fn decode_component(raw: &str) -> Result<String, PathRefusal> {
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (
                    b.get(i + 1).copied().and_then(hex),
                    b.get(i + 2).copied().and_then(hex),
                ) {
                    (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                    _ => return Err(PathRefusal::BadEscape),
                }
                i += 3;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| PathRefusal::NotUtf8)
}

/// `/{bucket}/{object}`, the object being everything after the bucket's slash.
pub fn object_path(raw: &str) -> Result<(String, String), PathRefusal> {
    let rest = raw.strip_prefix('/').ok_or(PathRefusal::Shape)?;
    let slash = rest.find('/').ok_or(PathRefusal::Shape)?;
    let bucket = decode_component(&rest[..slash])?;
    if !bucket_ok(&bucket) {
        return Err(PathRefusal::Bucket);
    }
    let object = decode_component(&rest[slash + 1..])?;
    if !object_ok(&object) {
        return Err(PathRefusal::Object);
    }
    Ok((bucket, object))
}

/// The query string as `form_urlencoded` reads it, duplicates refused
/// (the first key seen twice is named).
pub fn query_pairs(raw: &str) -> Result<Vec<(String, String)>, String> {
    let mut out: Vec<(String, String)> = Vec::new();
    for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
        if out.iter().any(|(seen, _)| *seen == k) {
            return Err(k.into_owned());
        }
        out.push((k.into_owned(), v.into_owned()));
    }
    Ok(out)
}

/// Whether a `MimeLimit` lets `content_type` through: `;`-separated
/// patterns, case-insensitive, parameters of the content type ignored;
/// `*` and `*/*` allow anything, `type/*` any `type/subtype` (a subtype is
/// required), anything else only itself.
pub fn mime_allows(limit: Option<&str>, content_type: &str) -> bool {
    let Some(limit) = limit else { return true };
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    limit
        .split(';')
        .map(|p| p.trim().to_ascii_lowercase())
        .filter(|p| !p.is_empty())
        .any(|pat| {
            if pat == "*" || pat == "*/*" {
                return true;
            }
            if let Some(top) = pat.strip_suffix("/*") {
                return match essence.split_once('/') {
                    Some((t, sub)) => t == top && !sub.is_empty(),
                    None => false,
                };
            }
            pat == essence
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b64() {
        assert_eq!(b64_decode("").unwrap(), b"");
        assert_eq!(b64_decode("QQ==").unwrap(), b"A");
        assert_eq!(b64_decode("QQ").unwrap(), b"A");
        assert_eq!(b64_decode("QR"), None);
        assert_eq!(b64_decode("QQ==="), None);
        assert_eq!(b64_decode("-_8").unwrap(), b64_decode("+/8=").unwrap());
    }
}
