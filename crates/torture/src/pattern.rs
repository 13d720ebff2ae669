//! Upload bytes as a pure function of `(seed, offset)`, so a checker can
//! regenerate any range of any upload instead of keeping copies: a 64 MiB
//! upload is checked against its seed, not against 64 MiB of memory.

use md5::{Digest, Md5};

/// The 8 bytes of word `word` (bytes `8*word .. 8*word+8`) of stream `seed`
/// (splitmix64's finalizer over the pair: cheap, and neighbouring words and
/// seeds share nothing visible).
fn word(seed: u64, word: u64) -> [u8; 8] {
    let mut z = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(word.wrapping_mul(0xD1B5_4A32_D192_ED03))
        .wrapping_add(0x632B_E59B_D9B4_E019);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)).to_le_bytes()
}

/// Fills `buf` with the bytes at `offset..offset + buf.len()` of stream `seed`.
pub fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    let mut pos = offset;
    let mut out = &mut buf[..];
    while !out.is_empty() {
        let w = word(seed, pos / 8);
        let skip = (pos % 8) as usize;
        let n = (8 - skip).min(out.len());
        out[..n].copy_from_slice(&w[skip..skip + n]);
        out = &mut out[n..];
        pos += n as u64;
    }
}

/// The bytes at `offset..offset + len` of stream `seed`.
pub fn bytes(seed: u64, offset: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    fill(seed, offset, &mut v);
    v
}

/// The MD5 of the first `size` bytes of stream `seed`.
pub fn md5(seed: u64, size: u64) -> [u8; 16] {
    let mut h = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < size {
        let n = (size - at).min(buf.len() as u64) as usize;
        fill(seed, at, &mut buf[..n]);
        h.update(&buf[..n]);
        at += n as u64;
    }
    h.finalize().into()
}

/// Where `data`, read at `offset`, first departs from stream `seed`.
pub fn first_difference(seed: u64, offset: u64, data: &[u8]) -> Option<u64> {
    let mut want = vec![0u8; data.len()];
    fill(seed, offset, &mut want);
    data.iter()
        .zip(&want)
        .position(|(a, b)| a != b)
        .map(|i| offset + i as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_range_agrees_with_the_whole() {
        let whole = bytes(7, 0, 1000);
        for (off, len) in [(0, 1), (3, 17), (8, 8), (9, 990), (999, 1)] {
            assert_eq!(bytes(7, off, len), whole[off as usize..off as usize + len]);
        }
        assert_ne!(bytes(8, 0, 64), whole[..64], "seeds differ");
        assert_eq!(first_difference(7, 5, &whole[5..100]), None);
        let mut bad = whole[5..100].to_vec();
        bad[10] ^= 1;
        assert_eq!(first_difference(7, 5, &bad), Some(15));
        let m: [u8; 16] = Md5::digest(&whole).into();
        assert_eq!(md5(7, 1000), m);
    }
}
