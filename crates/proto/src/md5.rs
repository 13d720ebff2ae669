//! The `Content-MD5` header: 16 bytes as 32 hex digits or as base64.

use base64::Engine;

/// A parsed `Content-MD5` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContentMd5(pub [u8; 16]);

impl ContentMd5 {
    /// Accepts 32 hex digits (either case) or base64 of 16 bytes.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let bytes = if s.len() == 32 {
            hex::decode(s).ok()?
        } else {
            crate::token::decode_b64(s).ok()?
        };
        Some(Self(bytes.try_into().ok()?))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_base64() {
        // MD5("") = d41d8cd98f00b204e9800998ecf8427e
        let want = ContentMd5::parse("d41d8cd98f00b204e9800998ecf8427e").unwrap();
        assert_eq!(ContentMd5::parse("D41D8CD98F00B204E9800998ECF8427E"), Some(want));
        assert_eq!(ContentMd5::parse("1B2M2Y8AsgTpgAmY7PhCfg=="), Some(want));
        assert_eq!(ContentMd5::parse("1B2M2Y8AsgTpgAmY7PhCfg"), Some(want));
        assert_eq!(want.to_base64(), "1B2M2Y8AsgTpgAmY7PhCfg==");
        assert_eq!(ContentMd5::parse(&want.to_hex()), Some(want));
        for bad in ["", "xyz", "d41d8cd98f00b204e9800998ecf8427", "AAAA"] {
            assert_eq!(ContentMd5::parse(bad), None, "{bad}");
        }
    }
}
