//! List metrics: how two arms' lists for one user compare, and where on a page clicks land.
//!
//! - **Jaccard@k**: `|S ∩ T| / |S ∪ T|` over the top `k` of each list.
//! - **Rank-biased overlap** (Webber, Moffat and Zobel, "A similarity measure for indefinite
//!   rankings", TOIS 2010), extrapolated from depth `k` (their equation 32), with persistence
//!   `p = 0.9`: `RBO_ext = X_k/k · p^k + (1−p)/p · Σ_{d=1..k} X_d/d · p^d`, `X_d` the overlap of
//!   the two top-`d` prefixes. Identical lists give 1, disjoint ones 0, and agreement at the
//!   top weighs more than further down (`p = 0.9` puts about 86% of the weight on the top 10).
//!
//! Both cut the two lists to the same depth, the shorter of `k` and either list's length, so
//! two lists of different lengths compare as far as both go.

use std::collections::HashSet;

/// RBO's persistence: the chance a reader goes on to the next rank.
pub(crate) const RBO_P: f64 = 0.9;

/// Jaccard@k and RBO of two ranked lists of distinct ids, compared to depth `k`; `None` when
/// either list is empty or `k` is 0.
pub(crate) fn overlap<'a>(
    s: impl IntoIterator<Item = &'a str>,
    t: impl IntoIterator<Item = &'a str>,
    k: usize,
) -> Option<Overlap> {
    let s: Vec<&str> = s.into_iter().take(k).collect();
    let t: Vec<&str> = t.into_iter().take(k).collect();
    let depth = s.len().min(t.len());
    if depth == 0 {
        return None;
    }
    let (mut seen_s, mut seen_t) = (HashSet::with_capacity(depth), HashSet::with_capacity(depth));
    let mut shared = 0usize;
    let mut weighted = 0.0;
    let mut weight = 1.0;
    for d in 0..depth {
        let (a, b) = (s[d], t[d]);
        // X_d grows by one for each new item seen in both prefixes.
        if a == b {
            shared += 1;
        } else {
            shared += usize::from(seen_t.contains(a)) + usize::from(seen_s.contains(b));
        }
        seen_s.insert(a);
        seen_t.insert(b);
        weight *= RBO_P;
        weighted += shared as f64 / (d + 1) as f64 * weight;
    }
    let rbo = shared as f64 / depth as f64 * weight + (1.0 - RBO_P) / RBO_P * weighted;
    Some(Overlap {
        jaccard: shared as f64 / (2 * depth - shared) as f64,
        rbo: rbo.clamp(0.0, 1.0),
    })
}

/// How alike two lists are.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Overlap {
    /// Jaccard@k.
    pub(crate) jaccard: f64,
    /// Extrapolated rank-biased overlap, `p = 0.9`.
    pub(crate) rbo: f64,
}

/// The rank buckets CTR by position is kept in: ranks 1, 2, 3, 4–5, 6–10 and 11 on.
pub(crate) const POSITION_BUCKETS: [&str; 6] = ["1", "2", "3", "4-5", "6-10", "11+"];

/// The bucket of 1-based `rank` in [`POSITION_BUCKETS`].
pub(crate) fn position_bucket(rank: usize) -> usize {
    match rank {
        0 | 1 => 0,
        2 => 1,
        3 => 2,
        4 | 5 => 3,
        6..=10 => 4,
        _ => 5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values from a separate Python transcription of the definitions:
    /// `rbo_ext = X(k)/k*p**k + (1-p)/p*sum(X(d)/d*p**d for d in 1..k)`, with
    /// `X(d) = len(set(S[:d]) & set(T[:d]))`, and `jaccard = |S∩T| / |S∪T|` of the top k.
    #[test]
    fn overlap_matches_the_definitions() {
        let cases = [
            ("abcdefghij", "abcdefghij", 1.0, 1.0),
            ("abcdefghij", "klmnopqrst", 0.0, 0.0),
            ("abcdefghij", "bacdefghij", 0.8999999999999999, 1.0),
            ("abcde", "edcba", 0.7377750000000001, 1.0),
            ("abcdefghij", "abcxyzdefg", 0.7547192696928571, 0.5384615384615384),
            ("ab", "ba", 0.9, 1.0),
        ];
        let chars = |s: &'static str| s.split("").filter(|c| !c.is_empty()).collect::<Vec<_>>();
        for (s, t, rbo, jaccard) in cases {
            let got = overlap(chars(s), chars(t), 10).expect("defined");
            assert!((got.rbo - rbo).abs() < 1e-12, "{s} {t}: {got:?}");
            assert!((got.jaccard - jaccard).abs() < 1e-12, "{s} {t}: {got:?}");
        }
        assert_eq!(overlap(chars("abc"), [], 10), None);
        // Cut to the shorter list: the top 3 of both.
        let cut = overlap(chars("abcxyz"), chars("abc"), 10).expect("defined");
        assert_eq!((cut.jaccard, cut.rbo), (1.0, 1.0));
    }

    #[test]
    fn ranks_fall_in_their_buckets() {
        let buckets: Vec<&str> = [1, 2, 3, 4, 5, 6, 10, 11, 100]
            .map(|rank| POSITION_BUCKETS[position_bucket(rank)])
            .to_vec();
        assert_eq!(buckets, ["1", "2", "3", "4-5", "4-5", "6-10", "6-10", "11+", "11+"]);
    }
}
