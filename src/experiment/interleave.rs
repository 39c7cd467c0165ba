//! Team-draft interleaving (Radlinski, Kurup and Joachims, "How does clickthrough data reflect
//! retrieval quality?", CIKM 2008): one list merged from two arms' lists, every item owned by
//! the arm (team) that picked it, so a user's clicks say which arm that user prefers.
//!
//! The merge is a pure function of the two lists and a seed. The seed comes from the
//! experiment's salt, the user and the response's token nonce, so a response can be rebuilt
//! from its token, and two responses to one user may break ties differently (which is what
//! keeps a position bias from favouring one team).

use std::collections::HashSet;
use std::hash::Hash;

use xxhash_rust::xxh3::{Xxh3Builder, xxh3_64, xxh3_64_with_seed};

/// The `arm` of an interleaved response and of its request metrics: neither arm served it
/// alone. Validation reserves the name.
pub const INTERLEAVED: &str = "interleaved";

/// Which arm picked an item, as tokens carry it: 0 for the experiment's first arm, 1 for its
/// second.
pub(crate) type Team = u8;

/// The merge seed of one response: the experiment's salt, the user and the token's nonce.
pub(crate) fn merge_seed(salt: &str, user: &str, nonce: u64) -> u64 {
    // The salt's own hash seeds the user's, so two experiments give one user unrelated coins.
    xxh3_64_with_seed(user.as_bytes(), xxh3_64(salt.as_bytes()) ^ nonce.rotate_left(17))
}

/// The coin of the `tie`-th round both teams entered with equal picks: 64 coins a hash.
fn coin(seed: u64, tie: u32) -> usize {
    let word = xxh3_64_with_seed(&(tie / 64).to_le_bytes(), seed);
    usize::from(word >> (tie % 64) & 1 == 1)
}

/// Merges two ranked lists by team draft and returns the whole merged list, each item with the
/// team that picked it (0 for `a`, 1 for `b`).
///
/// In each round the team with fewer picks so far picks (a coin decides between equals): its
/// highest-ranked item not yet in the merged list. A team with no such item left stops, and the
/// other picks the rest of its list. An item both lists hold goes to the team that picks it
/// first. The items of each list must be distinct (a model's list is).
pub fn team_draft<T: Copy + Eq + Hash>(a: &[T], b: &[T], seed: u64) -> Vec<(T, usize)> {
    let lists = [a, b];
    let mut next = [0usize; 2];
    let mut picks = [0usize; 2];
    let mut ties = 0u32;
    let mut used: HashSet<T, Xxh3Builder> = HashSet::with_capacity_and_hasher(a.len() + b.len(), Xxh3Builder::new());
    let mut merged = Vec::with_capacity(a.len() + b.len());
    loop {
        for (cursor, list) in next.iter_mut().zip(lists) {
            while list.get(*cursor).is_some_and(|item| used.contains(item)) {
                *cursor += 1;
            }
        }
        let team = match (next[0] < a.len(), next[1] < b.len()) {
            (false, false) => return merged,
            (true, false) => 0,
            (false, true) => 1,
            (true, true) if picks[0] == picks[1] => {
                ties += 1;
                coin(seed, ties - 1)
            }
            (true, true) => usize::from(picks[1] < picks[0]),
        };
        let item = lists[team][next[team]];
        used.insert(item);
        merged.push((item, team));
        picks[team] += 1;
        next[team] += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Worked by hand: whichever team the coin lets pick first, the other then takes its best
    /// item not yet picked, and an item both lists hold is owned by whoever took it.
    #[test]
    fn a_shared_item_belongs_to_the_team_that_picked_it() {
        let a = ["x", "y", "z"];
        let b = ["y", "w", "x"];
        for seed in 0..64 {
            let merged = team_draft(&a, &b, seed);
            let first = merged[0].1;
            // Round 1: the coin's team takes its top; the other takes its best unused item.
            let expected_second = if first == 0 { ("y", 1) } else { ("x", 0) };
            assert_eq!(merged[0].0, if first == 0 { "x" } else { "y" }, "seed {seed}");
            assert_eq!(merged[1], expected_second, "seed {seed}");
            let mut items: Vec<&str> = merged.iter().map(|(item, _)| *item).collect();
            items.sort_unstable();
            assert_eq!(items, ["w", "x", "y", "z"], "seed {seed}: every item once");
        }
    }

    /// Both orders of the first round occur: the coin is not stuck on one team.
    #[test]
    fn the_coin_gives_both_teams_the_first_pick() {
        let firsts: HashSet<usize> = (0..32).map(|seed| team_draft(&[1], &[2], seed)[0].1).collect();
        assert_eq!(firsts, HashSet::from([0, 1]));
    }
}
