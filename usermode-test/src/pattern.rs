//! The byte stream the harness sends and the sink checks: a 16-byte header, then
//! `length` bytes of a seeded pattern, so every byte's value depends on its position and
//! a lost, duplicated or reordered piece is caught.
//!
//! Header: `magic: u32` (`WSKS`), `seed: u32`, `length: u64`, little-endian.

/// Size of the stream header.
pub const HEADER_LEN: usize = 16;
/// `WSKS`.
pub const MAGIC: u32 = u32::from_le_bytes(*b"WSKS");

/// The header announcing `length` pattern bytes with `seed`.
#[must_use]
pub fn header(seed: u32, length: u64) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..4].copy_from_slice(&MAGIC.to_le_bytes());
    h[4..8].copy_from_slice(&seed.to_le_bytes());
    h[8..].copy_from_slice(&length.to_le_bytes());
    h
}

/// Parses a header: `(seed, length)`.
#[must_use]
pub fn parse_header(h: &[u8]) -> Option<(u32, u64)> {
    if h.len() < HEADER_LEN || h[..4] != MAGIC.to_le_bytes() {
        return None;
    }
    let seed = u32::from_le_bytes(h[4..8].try_into().ok()?);
    let length = u64::from_le_bytes(h[8..16].try_into().ok()?);
    Some((seed, length))
}

fn word(seed: u32, index: u64) -> u64 {
    // splitmix64 of (seed, index): cheap and position-dependent.
    let mut z = (u64::from(seed) << 32 ^ index).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Fills `out` with the pattern bytes at stream positions `pos..pos + out.len()`.
pub fn fill(seed: u32, pos: u64, out: &mut [u8]) {
    let mut i = 0;
    while i < out.len() {
        // CAST: positions are stream offsets that fit in u64.
        let p = pos + i as u64;
        let bytes = word(seed, p / 8).to_le_bytes();
        // CAST: p % 8 < 8.
        let start = (p % 8) as usize;
        let n = (8 - start).min(out.len() - i);
        out[i..i + n].copy_from_slice(&bytes[start..start + n]);
        i += n;
    }
}

/// The first index in `data` whose byte differs from the pattern at `pos + index`.
#[must_use]
pub fn first_mismatch(seed: u32, pos: u64, data: &[u8]) -> Option<usize> {
    let mut expected = vec![0u8; data.len().min(1 << 16)];
    let mut done = 0;
    while done < data.len() {
        let n = (data.len() - done).min(expected.len());
        // CAST: offsets within one buffer.
        fill(seed, pos + done as u64, &mut expected[..n]);
        if let Some(i) = data[done..done + n]
            .iter()
            .zip(&expected[..n])
            .position(|(a, b)| a != b)
        {
            return Some(done + i);
        }
        done += n;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_is_position_consistent_across_splits() {
        let mut whole = vec![0u8; 1000];
        fill(7, 3, &mut whole);
        let mut parts = vec![0u8; 1000];
        fill(7, 3, &mut parts[..5]);
        fill(7, 8, &mut parts[5..333]);
        fill(7, 336, &mut parts[333..]);
        assert_eq!(whole, parts);
        assert_eq!(first_mismatch(7, 3, &whole), None);
    }

    #[test]
    fn mismatch_found_for_reorder_and_other_seed() {
        let mut data = vec![0u8; 64];
        fill(1, 0, &mut data);
        data.swap(10, 20);
        assert_eq!(first_mismatch(1, 0, &data), Some(10));
        let mut other = vec![0u8; 64];
        fill(2, 0, &mut other);
        assert_eq!(first_mismatch(1, 0, &other), Some(0));
    }

    #[test]
    fn header_round_trips() {
        let h = header(9, 1 << 40);
        assert_eq!(parse_header(&h), Some((9, 1 << 40)));
        assert_eq!(parse_header(&h[..15]), None);
        assert_eq!(parse_header(&[0u8; 16]), None);
    }
}
