//! The cached form of a ranked list: compact bytes, not JSON, so Redis holds more users per
//! gigabyte and a hit decodes without a parser.
//!
//! ```text
//! u8 format (1) | u8 present (0: the model has no list for this user, 1: list)
//! varint n | n × (varint id length, id bytes, f32 little-endian score)
//! ```
//! Ranks are not stored: a served list's ranks are its positions (1-based).

use std::sync::Arc;

use crate::store::{Item, RankedList};

const FORMAT: u8 = 1;

fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn take_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = bytes.split_first()?;
        *bytes = rest;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Encodes a lookup result; `None` (user not in the model) is cached too, so cold users do not
/// reach the store on every request.
pub(crate) fn encode(list: Option<&[Item]>) -> Vec<u8> {
    let Some(list) = list else {
        return vec![FORMAT, 0];
    };
    let mut out = Vec::with_capacity(3 + list.iter().map(|i| i.id.len() + 6).sum::<usize>());
    out.extend_from_slice(&[FORMAT, 1]);
    put_varint(&mut out, list.len() as u64);
    for item in list {
        put_varint(&mut out, item.id.len() as u64);
        out.extend_from_slice(item.id.as_bytes());
        out.extend_from_slice(&item.score.to_le_bytes());
    }
    out
}

/// Decodes what [`encode`] wrote; `None` for anything else (another format, truncation), which
/// the cache treats as a miss.
pub(crate) fn decode(mut bytes: &[u8]) -> Option<Option<RankedList>> {
    let (&[format, present], rest) = bytes.split_first_chunk::<2>()?;
    bytes = rest;
    if format != FORMAT || present > 1 {
        return None;
    }
    if present == 0 {
        return bytes.is_empty().then_some(None);
    }
    let n = usize::try_from(take_varint(&mut bytes)?).ok()?;
    // Each item takes at least 5 bytes: a bound on `n` before allocating for it.
    if n > bytes.len() / 5 {
        return None;
    }
    let mut items = Vec::with_capacity(n);
    for rank in 1..=n {
        let len = usize::try_from(take_varint(&mut bytes)?).ok()?;
        let (id, rest) = bytes.split_at_checked(len)?;
        let (score, rest) = rest.split_first_chunk::<4>()?;
        bytes = rest;
        items.push(Item {
            id: std::str::from_utf8(id).ok()?.into(),
            score: f32::from_le_bytes(*score),
            rank: u32::try_from(rank).ok()?,
        });
    }
    bytes.is_empty().then(|| Some(Arc::from(items)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_lists_and_absence() {
        let list: Vec<Item> = (1..=300u32)
            .map(|r| Item {
                id: format!("item-{r}").into(),
                score: 1.0 / r as f32,
                rank: r,
            })
            .collect();
        let bytes = encode(Some(&list));
        assert_eq!(decode(&bytes), Some(Some(Arc::from(list.clone()))));
        assert_eq!(decode(&encode(None)), Some(None));
        assert_eq!(decode(&encode(Some(&[]))), Some(Some(Arc::from(Vec::new()))));
        // 50 ids of 5 characters cost 3 + 50 × (1 + 5 + 4) bytes.
        let fifty: Vec<Item> = (0..50)
            .map(|i| Item {
                id: format!("{:05}", i).into(),
                score: 0.5,
                rank: i + 1,
            })
            .collect();
        assert_eq!(encode(Some(&fifty)).len(), 503);
    }

    #[test]
    fn rejects_anything_else() {
        let bytes = encode(Some(&[Item {
            id: "a".into(),
            score: 1.0,
            rank: 1,
        }]));
        for cut in 0..bytes.len() {
            assert_eq!(decode(&bytes[..cut]), None, "truncated at {cut}");
        }
        assert_eq!(decode(&[2, 0]), None);
        assert_eq!(
            decode(&[FORMAT, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f]),
            None
        );
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert_eq!(decode(&trailing), None);
    }
}
