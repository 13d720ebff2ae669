//! What the fuzz targets check: each parser of `upline-proto` against a
//! reference (`reference.rs`) and its own round-trip, never only the
//! absence of a panic. Each function panics (a libFuzzer crash) on the
//! first disagreement, saying what disagreed.

use arbitrary::Arbitrary;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use upline_proto::token::sign;
use upline_proto::{
    Bucket, ContentMd5, LbsParams, ObjectKey, ObjectPath, PathError, PutPolicy, QueryError, ResumeParams,
    Token, TokenError, UploadParams, signed_url,
};

pub mod reference;

use reference::PathRefusal;

/// The one credential pair the verifier knows.
pub const AK: &str = "fuzz-access-key";
pub const SK: &[u8] = b"fuzz-secret-key";

fn keyring(ak: &str) -> Option<Vec<u8>> {
    (ak == AK).then(|| SK.to_vec())
}

fn hmac(secret: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(secret).expect("any key length");
    m.update(msg);
    m.finalize().into_bytes().to_vec()
}

// ---------------------------------------------------------------- tokens

/// The reference split of an `x-nos-token` value.
fn ref_token_split(s: &str) -> Result<(&str, &str, &str), TokenError> {
    let rest = s
        .trim()
        .strip_prefix("UPLOAD ")
        .ok_or(TokenError::Prefix)?
        .trim_start();
    let i = rest.find(':').ok_or(TokenError::Shape)?;
    let j = i + 1 + rest[i + 1..].find(':').ok_or(TokenError::Shape)?;
    let (a, sig, pol) = (&rest[..i], &rest[i + 1..j], &rest[j + 1..]);
    if a.is_empty() || sig.is_empty() || pol.is_empty() {
        return Err(TokenError::Shape);
    }
    Ok((a, sig, pol))
}

/// The verifier's expected answer, checked in the documented order:
/// access key, signature (base64, then HMAC over the policy text as
/// received), policy (base64, JSON), callback URL, expiry.
fn ref_verify(
    ak: &str,
    sig: &str,
    pol: &str,
    now: i64,
    require_expires: bool,
) -> Result<PutPolicy, TokenError> {
    let secret = keyring(ak).ok_or(TokenError::UnknownAccessKey)?;
    let claimed = reference::b64_decode(sig).ok_or(TokenError::SignBase64)?;
    if claimed != hmac(&secret, pol.as_bytes()) {
        return Err(TokenError::BadSignature);
    }
    let json = reference::b64_decode(pol).ok_or(TokenError::PolicyBase64)?;
    // Strict JSON (UTF-8, valid escapes everywhere), an object.
    let v: serde_json::Value =
        serde_json::from_slice(&json).map_err(|e| TokenError::PolicyJson(e.to_string()))?;
    if !v.is_object() {
        return Err(TokenError::PolicyJson("not an object".into()));
    }
    // Duplicate keys are refused (a parser differential otherwise).
    let policy: PutPolicy =
        serde_json::from_slice(&json).map_err(|e| TokenError::PolicyJson(e.to_string()))?;
    if let Some(url) = &policy.callback_url {
        let l = url.to_ascii_lowercase();
        if !(l.starts_with("http://") || l.starts_with("https://")) {
            return Err(TokenError::CallbackUrl);
        }
    }
    match policy.expires {
        Some(e) if now >= e => Err(TokenError::Expired),
        None if require_expires => Err(TokenError::NoExpires),
        _ => Ok(policy),
    }
}

fn same_error_kind(a: &TokenError, b: &TokenError) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

fn agree(what: &str, got: &Result<PutPolicy, TokenError>, want: &Result<PutPolicy, TokenError>) {
    let ok = match (got, want) {
        (Ok(a), Ok(b)) => a == b,
        (Err(a), Err(b)) => same_error_kind(a, b),
        _ => false,
    };
    assert!(ok, "{what}: upline says {got:?}, the reference {want:?}");
}

/// A raw header value: the split agrees with the reference and
/// round-trips; verification agrees with the reference, both as the
/// value is and with its policy text re-signed by the known key (which
/// reaches the policy checks behind the signature).
pub fn token_raw(s: &str, now: i64) {
    let got = Token::parse(s);
    let want = ref_token_split(s);
    match (&got, &want) {
        (Ok(t), Ok((a, sig, pol))) => {
            assert_eq!((t.access_key, t.encoded_sign, t.encoded_policy), (*a, *sig, *pol));
            let again = format!("UPLOAD {}:{}:{}", t.access_key, t.encoded_sign, t.encoded_policy);
            assert_eq!(Token::parse(&again).as_ref(), Ok(t), "parse(render(t)) == t");
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "{s:?}"),
        _ => panic!("split of {s:?}: upline {got:?}, reference {want:?}"),
    }
    let Ok(t) = got else { return };
    for require in [true, false] {
        agree(
            "verify",
            &t.verify(keyring, now, require),
            &ref_verify(t.access_key, t.encoded_sign, t.encoded_policy, now, require),
        );
    }
    // The same policy text, properly signed: the policy checks decide.
    let resigned = format!("UPLOAD {AK}:{}:{}", sign(SK, t.encoded_policy), t.encoded_policy);
    if let Ok(r) = Token::parse(&resigned)
        && r.encoded_policy == t.encoded_policy
    {
        for require in [true, false] {
            agree(
                "verify (re-signed)",
                &r.verify(keyring, now, require),
                &ref_verify(AK, r.encoded_sign, r.encoded_policy, now, require),
            );
        }
    }
    // Content-MD5 shares the lenient base64 decoding.
    let md5 = ContentMd5::parse(s);
    let t = s.trim();
    let want = if t.len() == 32 {
        (0..16)
            .map(|i| {
                t.get(2 * i..2 * i + 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
            })
            .filter(|_| t.bytes().all(|b| b.is_ascii_hexdigit()))
            .collect::<Option<Vec<u8>>>()
    } else {
        reference::b64_decode(t)
    };
    let want = want.and_then(|b| <[u8; 16]>::try_from(b).ok());
    assert_eq!(md5.map(|m| m.0), want, "Content-MD5 {s:?}");
}

/// A put policy built from fuzz input, and what is done with its token.
#[derive(Debug, Arbitrary)]
pub struct SignInput {
    pub bucket: String,
    pub object: String,
    pub expires: Option<i64>,
    pub callback_url: Option<String>,
    pub callback_body: Option<String>,
    pub object_size_min: Option<u64>,
    pub object_size_max: Option<u64>,
    pub mime_limit: Option<String>,
    pub tag: Option<String>,
    pub secret: Vec<u8>,
    pub now: i64,
    /// Re-spell the token with the URL-safe alphabet and/or no padding.
    pub url_safe: bool,
    pub unpadded: bool,
    /// One byte of the token replaced: (index, new byte).
    pub mutation: (usize, u8),
}

/// sign(policy) → verify gives the policy back (or the refusal the
/// policy calls for), in every accepted spelling; a token changed in
/// one byte never verifies unless it still says the same thing. The
/// same for signed download URLs.
pub fn token_sign(i: &SignInput) {
    let policy = PutPolicy {
        bucket: i.bucket.clone(),
        object: i.object.clone(),
        expires: i.expires,
        callback_url: i.callback_url.clone(),
        callback_body: i.callback_body.clone(),
        object_size_min: i.object_size_min,
        object_size_max: i.object_size_max,
        mime_limit: i.mime_limit.clone(),
        tag: i.tag.clone(),
    };
    let secret_for = |ak: &str| (ak == AK).then(|| i.secret.clone());
    // Only the signature may be re-spelled: the MAC covers the policy
    // text as it is, so another spelling of the policy is another policy.
    let signed = policy.sign(AK, &i.secret);
    let (head, encoded_policy) = signed.rsplit_once(':').expect("three parts");
    let (prefix, mut sig) = head
        .rsplit_once(':')
        .map(|(p, s)| (p, s.to_owned()))
        .expect("three parts");
    if i.url_safe {
        sig = sig.replace('+', "-").replace('/', "_");
    }
    if i.unpadded {
        sig = sig.replace('=', "");
    }
    let token = format!("{prefix}:{sig}:{encoded_policy}");
    let want = {
        let cb_ok = policy.callback_url.as_deref().is_none_or(|u| {
            let l = u.to_ascii_lowercase();
            l.starts_with("http://") || l.starts_with("https://")
        });
        match policy.expires {
            _ if !cb_ok => Err(TokenError::CallbackUrl),
            Some(e) if i.now >= e => Err(TokenError::Expired),
            None => Err(TokenError::NoExpires),
            _ => Ok(policy.clone()),
        }
    };
    let parsed = Token::parse(&token).expect("a signed token parses");
    agree("sign → verify", &parsed.verify(secret_for, i.now, true), &want);

    let (at, byte) = i.mutation;
    let mut bytes = token.clone().into_bytes();
    if at < bytes.len() && bytes[at].is_ascii() && byte.is_ascii() && bytes[at] != byte {
        bytes[at] = byte;
        let mutated = String::from_utf8(bytes).expect("ASCII for ASCII");
        let verdict = Token::parse(&mutated).and_then(|t| t.verify(secret_for, i.now, false));
        if verdict.is_ok() {
            // Only another spelling of the same token may pass: the same
            // key, the same policy text, the same signature bytes.
            let t = Token::parse(&mutated).expect("it verified");
            assert_eq!(t.access_key, AK, "{mutated:?} verified");
            assert_eq!(t.encoded_policy, parsed.encoded_policy, "{mutated:?} verified");
            assert_eq!(
                reference::b64_decode(t.encoded_sign),
                reference::b64_decode(parsed.encoded_sign),
                "{mutated:?} verified with other signature bytes"
            );
        }
    }

    // Signed download URLs, for names a request path can carry.
    if let (Ok(b), Ok(o)) = (Bucket::parse(&i.bucket), ObjectKey::parse(&i.object)) {
        let expires = i.expires.unwrap_or(0);
        let q = signed_url::sign(AK, &i.secret, b.as_str(), o.as_str(), expires);
        let want = if i.now >= expires {
            Err(TokenError::Expired)
        } else {
            Ok(())
        };
        assert_eq!(
            signed_url::verify(&q, b.as_str(), o.as_str(), secret_for, i.now),
            want
        );
        let mut bytes = q.clone().into_bytes();
        if at < bytes.len() && bytes[at].is_ascii() && byte.is_ascii() && bytes[at] != byte {
            bytes[at] = byte;
            let mutated = String::from_utf8(bytes).expect("ASCII for ASCII");
            if signed_url::verify(&mutated, b.as_str(), o.as_str(), secret_for, i.now).is_ok() {
                let pairs = reference::query_pairs(&mutated).expect("it verified");
                let get = |k: &str| pairs.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone());
                assert_eq!(get("AccessKey").as_deref(), Some(AK), "{mutated:?}");
                assert_eq!(get("Expires"), Some(expires.to_string()), "{mutated:?}");
                let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(hmac(&i.secret, format!("GET\n{b}\n{o}\n{expires}").as_bytes()));
                assert_eq!(get("Signature"), Some(sig), "{mutated:?}");
            }
        }
    }
}

// --------------------------------------------------------------- queries

/// Input of the query target: a raw query string and upload parameters.
#[derive(Debug, Arbitrary)]
pub struct QueryInput {
    pub raw: String,
    pub offset: u64,
    pub complete: bool,
    pub context: Option<String>,
}

fn ref_version(q: &[(String, String)]) -> Result<(), QueryError> {
    match get(q, "version") {
        None => Err(QueryError::Missing("version")),
        Some("1.0") => Ok(()),
        Some(_) => Err(QueryError::Version),
    }
}

fn get<'a>(q: &'a [(String, String)], k: &str) -> Option<&'a str> {
    q.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str())
}

fn ref_upload(raw: &str) -> Result<UploadParams, QueryError> {
    let q = reference::query_pairs(raw).map_err(QueryError::Duplicate)?;
    ref_version(&q)?;
    let offset = get(&q, "offset").ok_or(QueryError::Missing("offset"))?;
    if offset.is_empty() || !offset.bytes().all(|b| b.is_ascii_digit()) {
        return Err(QueryError::Offset);
    }
    // Digits only: the value fits a u64 or is refused, never wrapped.
    let offset = offset
        .bytes()
        .try_fold(0u64, |n, d| n.checked_mul(10)?.checked_add(u64::from(d - b'0')))
        .ok_or(QueryError::Offset)?;
    let complete = match get(&q, "complete").ok_or(QueryError::Missing("complete"))? {
        "true" | "1" => true,
        "false" | "0" => false,
        _ => return Err(QueryError::Complete),
    };
    let context = get(&q, "context").filter(|c| !c.is_empty()).map(str::to_owned);
    Ok(UploadParams {
        offset,
        complete,
        context,
    })
}

fn ref_resume(raw: &str) -> Result<ResumeParams, QueryError> {
    let q = reference::query_pairs(raw).map_err(QueryError::Duplicate)?;
    ref_version(&q)?;
    match get(&q, "context") {
        Some(c) if !c.is_empty() => Ok(ResumeParams {
            context: c.to_owned(),
        }),
        _ => Err(QueryError::Context),
    }
}

fn ref_lbs(raw: &str) -> Result<String, QueryError> {
    let q = reference::query_pairs(raw).map_err(QueryError::Duplicate)?;
    ref_version(&q)?;
    let b = get(&q, "bucketname").ok_or(QueryError::Missing("bucketname"))?;
    if reference::bucket_ok(b) {
        Ok(b.to_owned())
    } else {
        Err(QueryError::Name(upline_proto::NameError::Bucket))
    }
}

/// The three endpoints' query parsers agree with the reference; what
/// parses renders back to itself; rendered parameters parse back.
pub fn query(i: &QueryInput) {
    let raw = i.raw.as_str();
    let got = UploadParams::parse(raw);
    assert_eq!(got, ref_upload(raw), "upload query {raw:?}");
    if let Ok(p) = &got {
        assert_eq!(
            UploadParams::parse(&p.render()).as_ref(),
            Ok(p),
            "render of {p:?}"
        );
    }
    assert_eq!(ResumeParams::parse(raw), ref_resume(raw), "resume query {raw:?}");
    assert_eq!(
        LbsParams::parse(raw).map(|p| p.bucket.as_str().to_owned()),
        ref_lbs(raw),
        "lbs query {raw:?}"
    );
    assert_eq!(
        signed_url::is_signed(raw),
        reference::query_pairs(raw).is_ok_and(|q| get(&q, "Signature").is_some()),
        "is_signed {raw:?}"
    );
    let p = UploadParams {
        offset: i.offset,
        complete: i.complete,
        // An empty context means "none" on the wire.
        context: i.context.clone().filter(|c| !c.is_empty()),
    };
    assert_eq!(UploadParams::parse(&p.render()), Ok(p.clone()), "rendered {p:?}");
}

// ----------------------------------------------------------------- paths

/// Input of the path target: a raw request path, and a name to render.
#[derive(Debug, Arbitrary)]
pub struct PathInput {
    pub raw: String,
    pub bucket: String,
    pub object: String,
}

fn refusal(e: &PathError) -> PathRefusal {
    use upline_proto::NameError;
    match e {
        PathError::Shape => PathRefusal::Shape,
        PathError::BadEscape => PathRefusal::BadEscape,
        PathError::NotUtf8 => PathRefusal::NotUtf8,
        PathError::Name(NameError::Bucket) => PathRefusal::Bucket,
        PathError::Name(_) => PathRefusal::Object,
    }
}

/// Path decoding agrees with the reference; parse(render(p)) == p; a
/// rendered path holds only characters a URI path may carry; a token's
/// scope accepts exactly the path that decodes to its names.
pub fn path(i: &PathInput) {
    let got = ObjectPath::parse(&i.raw);
    let want = reference::object_path(&i.raw);
    match (&got, &want) {
        (Ok(p), Ok((b, o))) => {
            assert_eq!((p.bucket.as_str(), p.object.as_str()), (b.as_str(), o.as_str()));
            assert_eq!(ObjectPath::parse(&p.render()).as_ref(), Ok(p), "render of {p:?}");
        }
        (Err(e), Err(r)) => assert_eq!(refusal(e), *r, "{:?}", i.raw),
        _ => panic!("path {:?}: upline {got:?}, reference {want:?}", i.raw),
    }
    let names = (Bucket::parse(&i.bucket), ObjectKey::parse(&i.object));
    assert_eq!(
        names.0.is_ok(),
        reference::bucket_ok(&i.bucket),
        "bucket {:?}",
        i.bucket
    );
    assert_eq!(
        names.1.is_ok(),
        reference::object_ok(&i.object),
        "object {:?}",
        i.object
    );
    if let (Ok(bucket), Ok(object)) = names {
        let p = ObjectPath { bucket, object };
        let rendered = p.render();
        assert!(
            rendered
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-._~/%".contains(&c)),
            "{rendered:?} needs no further escaping"
        );
        assert_eq!(ObjectPath::parse(&rendered), Ok(p.clone()));
        assert_eq!(
            reference::object_path(&rendered),
            Ok((i.bucket.clone(), i.object.clone()))
        );
        // A token for these names is in scope for this path and no other.
        let policy = PutPolicy {
            bucket: i.bucket.clone(),
            object: i.object.clone(),
            ..Default::default()
        };
        assert_eq!(policy.check_scope(p.bucket.as_str(), p.object.as_str()), Ok(()));
        if let Ok(other) = &got {
            let same = other.bucket == p.bucket && other.object == p.object;
            let scope = policy.check_scope(other.bucket.as_str(), other.object.as_str());
            assert_eq!(scope.is_ok(), same, "scope of {:?} for {:?}", policy, i.raw);
        }
    }
}

// -------------------------------------------------------------- policies

/// Input of the policy target.
#[derive(Debug, Arbitrary)]
pub struct PolicyInput {
    pub json: Vec<u8>,
    pub content_type: String,
    pub mime_limit: Option<String>,
    pub bucket: String,
    pub object: String,
}

/// A parsed policy serializes and parses back to itself and agrees field
/// by field with a generic JSON reading; `MimeLimit` and the scope check
/// agree with the reference.
pub fn policy(i: &PolicyInput) {
    let strict_object = serde_json::from_slice::<serde_json::Value>(&i.json).is_ok_and(|v| v.is_object());
    assert_eq!(
        PutPolicy::from_json(&i.json).is_ok(),
        strict_object && serde_json::from_slice::<PutPolicy>(&i.json).is_ok(),
        "policy {:?}",
        String::from_utf8_lossy(&i.json)
    );
    if let Ok(p) = PutPolicy::from_json(&i.json) {
        let text = serde_json::to_vec(&p).expect("a policy serializes");
        assert_eq!(PutPolicy::from_json(&text).ok().as_ref(), Some(&p));
        let v: serde_json::Value = serde_json::from_slice(&i.json).expect("valid JSON");
        assert!(v.is_object(), "a policy is a JSON object");
        let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
        assert_eq!(Some(p.bucket.clone()), s("Bucket"));
        assert_eq!(Some(p.object.clone()), s("Object"));
        assert_eq!(p.expires, v.get("Expires").and_then(|x| x.as_i64()));
        assert_eq!(p.callback_url, s("CallbackUrl"));
        assert_eq!(p.callback_body, s("CallbackBody"));
        assert_eq!(p.object_size_min, v.get("ObjectSizeMin").and_then(|x| x.as_u64()));
        assert_eq!(p.object_size_max, v.get("ObjectSizeMax").and_then(|x| x.as_u64()));
        assert_eq!(p.mime_limit, s("MimeLimit"));
        assert_eq!(p.tag, s("x:upline"));
        check_scope_and_mime(&p, i);
    }
    let p = PutPolicy {
        bucket: i.bucket.clone(),
        object: i.object.clone(),
        mime_limit: i.mime_limit.clone(),
        ..Default::default()
    };
    let text = serde_json::to_vec(&p).expect("a policy serializes");
    assert_eq!(PutPolicy::from_json(&text).ok(), Some(p.clone()));
    check_scope_and_mime(&p, i);
}

fn check_scope_and_mime(p: &PutPolicy, i: &PolicyInput) {
    assert_eq!(
        p.allows_mime(&i.content_type),
        reference::mime_allows(p.mime_limit.as_deref(), &i.content_type),
        "MimeLimit {:?} for {:?}",
        p.mime_limit,
        i.content_type
    );
    let want = if p.bucket != i.bucket {
        Err(TokenError::BucketMismatch)
    } else if p.object != i.object {
        Err(TokenError::ObjectMismatch)
    } else {
        Ok(())
    };
    assert_eq!(p.check_scope(&i.bucket, &i.object), want);
}
