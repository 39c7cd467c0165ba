//! Users as the unit of analysis (STATISTICS.md §1). Users are what is randomized, so each user
//! is one observation: per arm, the results keep exactly `n` (users counted in the arm) and,
//! over its users, `Σc, Σi, Σc², Σi², Σc·i` ([`UserSums`]), from which the delta method gives
//! the CTR's variance. Those sums move by integers when one user's clicks or impressions do,
//! so they need each user's own `(c, i)` per arm: this module names that state and keeps it
//! in this process when there is no Redis.
//!
//! **Who is a user here.** A user id hashes (xxh3-128, a fixed seed, so every replica agrees)
//! into a [`UserKey`]: 16 bits pick one of [`BUCKETS`] buckets, 64 more name the user in it.
//! Two users are taken for one only if they share all 80 bits: at 50 million users per arm,
//! about one chance in a billion.
//!
//! **Spread over the cluster.** An experiment's per-user state is tens of GB at 50 million
//! users, too much for one Redis slot: each bucket belongs to shard `bucket % results.shards`,
//! and each shard has its own hash tag `{experiment:shard}`, so its keys (the users' buckets,
//! the shard's sums, days and event claims) share one slot and one script touches one slot.
//! Reading adds the shards' sums.
//!
//! **Redis memory.** A bucket is one small hash, `recgw:u:{e:k}:{arm}:{bucket}`, field the
//! user's 8 bytes, value `"{impressions}:{clicks}"` (empty for a user served without events):
//! hashes of up to `hash-max-listpack-entries` (128 by default) fields stay in Redis's compact
//! listpack encoding: about 12 bytes a user and 105 a bucket key, measured as 25.6 bytes a user
//! at a million users and 85 at 100,000 (`bench/USERS.md`). With [`BUCKETS`] buckets per arm
//! that holds 8 million users per arm; past that, raise `hash-max-listpack-entries` (README
//! "Results for analysts").

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, HashMap};

use crate::feedback::lists::POSITION_BUCKETS;
use crate::feedback::sums::{PrePeriod, PreSums, UserSums};

/// Buckets of one arm's users: enough that 8 million users per arm stay at 128 a bucket.
pub(crate) const BUCKETS: u32 = 1 << 16;

/// The user hash's seed. Fixed: replicas and restarts must put a user in the same bucket.
const USER_SEED: u64 = 0x7265_6367_772d_7573;

/// A user as the per-user state knows it (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct UserKey(u128);

impl UserKey {
    /// The key of user id `user`.
    pub(crate) fn of(user: &str) -> Self {
        UserKey(xxhash_rust::xxh3::xxh3_128_with_seed(user.as_bytes(), USER_SEED))
    }

    /// The whole 128 bits, by which covariate tables sort their rows.
    pub(crate) fn raw(self) -> u128 {
        self.0
    }

    /// The bucket the user's state lives in.
    pub(crate) fn bucket(self) -> u32 {
        ((self.0 >> 64) as u64 % u64::from(BUCKETS)) as u32
    }

    /// The shard of the bucket, of `shards`.
    pub(crate) fn shard(self, shards: u32) -> u32 {
        self.bucket() % shards.max(1)
    }

    /// The user's field in its bucket.
    pub(crate) fn field(self) -> [u8; 8] {
        (self.0 as u64).to_le_bytes()
    }
}

/// The hash tag of one shard of a slot group (an experiment, or a placement's default):
/// `experiment:shard`. Experiment ids hold no `:` but holdouts (`holdout:home`) do, so the
/// shard, a number, is always the last part.
pub(crate) fn shard_tag(group: &str, shard: u32) -> String {
    format!("{group}:{shard}")
}

/// A pre-period row as the counting scripts take it: `i':c'`, empty without a row.
pub(crate) fn pre_state(pre: Option<PrePeriod>) -> String {
    pre.map(|p| format!("{}:{}", p.impressions, p.clicks))
        .unwrap_or_default()
}

/// What one UTC day added to an arm: the increments of its per-user sums (so the sums up to
/// the end of a day are the days' sums added in order), and the events not in them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Day {
    /// Increments of the per-user sums that day; `users` is the users first counted that day.
    pub(crate) sums: UserSums,
    /// Increments of the pre-period sums that day (CUPED).
    pub(crate) pre: PreSums,
    /// Impressions and clicks counted that day outside the per-user sums (see
    /// [`LocalUsers::outside`]).
    pub(crate) outside: [u64; 2],
}

/// An arm's days (days since 1970-01-01, UTC).
pub(crate) type DayCounts = BTreeMap<i64, Day>;

/// Days of counts kept per arm: more than a year, enough for any experiment's duration.
pub(crate) const MAX_DAYS: i64 = 400;

/// One user's state in an arm: what the per-user sums need to move by integers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct UserState {
    /// `[clicks, impressions]` in the arm.
    counts: [u64; 2],
    /// The user's pre-period row, frozen when the user entered the arm (CUPED).
    pre: Option<PrePeriod>,
}

/// An arm's per-user state in this process, without Redis: every user it counted, so memory
/// grows with users (about 80 bytes each) up to `results.max_buffered_users` for the process.
#[derive(Debug, Default)]
pub(crate) struct LocalUsers {
    /// Each counted user's state in the arm.
    users: HashMap<UserKey, UserState>,
    /// The per-user sums.
    pub(crate) sums: UserSums,
    /// The pre-period sums, for CUPED (zero without covariates).
    pub(crate) pre: PreSums,
    /// Impressions and clicks of users past the bound, counted in the totals but not in the
    /// sums (so the statistics are over the users held, and say they are not exact).
    pub(crate) outside: [u64; 2],
    /// Users with at least one click.
    pub(crate) clickers: u64,
    /// `[impressions, clicks]` per rank bucket ([`POSITION_BUCKETS`]).
    pub(crate) by_position: [[u64; 2]; POSITION_BUCKETS.len()],
    /// What each day added, at most [`MAX_DAYS`] of them.
    pub(crate) days: DayCounts,
}

impl LocalUsers {
    /// Counts `user` in the arm on `day` unless held already, with the pre-period row `pre`
    /// gives (asked only for a user new to the arm); `admit` says whether there is room for
    /// one more user. Returns the user's state, `None` when not held.
    fn enter(
        &mut self,
        user: UserKey,
        day: i64,
        admit: impl FnOnce() -> bool,
        pre: impl FnOnce() -> Option<PrePeriod>,
    ) -> Option<&mut UserState> {
        if !self.users.contains_key(&user) {
            if !admit() {
                return None;
            }
            let pre = pre();
            self.sums.add_user();
            self.pre.add_user(pre);
            let today = self.day(day);
            today.sums.add_user();
            today.pre.add_user(pre);
            self.users.insert(user, UserState { counts: [0, 0], pre });
        }
        self.users.get_mut(&user)
    }

    /// A user served from the arm (its first serving counts it).
    pub(crate) fn serve(
        &mut self,
        user: UserKey,
        day: i64,
        admit: impl FnOnce() -> bool,
        pre: impl FnOnce() -> Option<PrePeriod>,
    ) {
        self.enter(user, day, admit, pre);
    }

    /// An impression (`click == false`) or click of `user` at rank bucket `bucket`.
    pub(crate) fn event(
        &mut self,
        user: UserKey,
        click: bool,
        bucket: usize,
        day: i64,
        admit: impl FnOnce() -> bool,
        pre: impl FnOnce() -> Option<PrePeriod>,
    ) {
        self.by_position[bucket][usize::from(click)] += 1;
        let Some(state) = self.enter(user, day, admit, pre) else {
            self.outside[usize::from(click)] += 1;
            self.day(day).outside[usize::from(click)] += 1;
            return;
        };
        let before = *state;
        let [c, i] = before.counts;
        state.counts = if click { [c + 1, i] } else { [c, i + 1] };
        let add = |sums: &mut UserSums| match click {
            true => sums.add_click(c, i),
            false => sums.add_impression(c, i),
        };
        add(&mut self.sums);
        add(&mut self.day(day).sums);
        let pre = before.pre.unwrap_or_default();
        let add_pre = |sums: &mut PreSums| match click {
            true => sums.add_click(pre),
            false => sums.add_impression(pre),
        };
        add_pre(&mut self.pre);
        add_pre(&mut self.day(day).pre);
        self.clickers += u64::from(click && c == 0);
    }

    /// The day's entry, created (dropping the oldest past [`MAX_DAYS`]) when new.
    fn day(&mut self, day: i64) -> &mut Day {
        if let Entry::Vacant(vacant) = self.days.entry(day) {
            vacant.insert(Day::default());
            while self.days.len() > MAX_DAYS as usize {
                self.days.pop_first();
            }
        }
        self.days.entry(day).or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sums equal those of the users' final counts, computed directly, whatever the order
    /// of the events; a user served twice is one user.
    #[test]
    fn local_sums_equal_the_users_counts() {
        let mut arm = LocalUsers::default();
        let (a, b, c) = (UserKey::of("a"), UserKey::of("b"), UserKey::of("c"));
        let events = [
            (a, false),
            (a, true),
            (b, false),
            (a, false),
            (b, false),
            (a, true),
            (b, true),
        ];
        arm.serve(c, 1, || true, || None);
        arm.serve(a, 1, || true, || None);
        for (user, click) in events {
            arm.event(user, click, 0, 2, || true, || None);
        }
        arm.serve(a, 3, || true, || None);
        // a: 2 impressions 2 clicks; b: 2 impressions 1 click; c: nothing.
        let want = UserSums {
            users: 3,
            clicks: 3,
            impressions: 4,
            clicks_sq: 4 + 1,
            impressions_sq: 4 + 4,
            cross: 4 + 2,
        };
        assert_eq!(arm.sums, want);
        assert_eq!(arm.clickers, 2);
        let mut days = UserSums::default();
        for day in arm.days.values() {
            days.add(&day.sums);
        }
        assert_eq!(days, want, "the days add up to the totals");
        assert_eq!(arm.days[&1].sums.users, 2);
        assert_eq!(arm.days[&2].sums.users, 1, "b first counted by its event");
    }

    /// Past the bound, users are not held: their events count outside the sums.
    #[test]
    fn users_past_the_bound_count_outside_the_sums() {
        let mut arm = LocalUsers::default();
        arm.event(UserKey::of("a"), false, 0, 1, || true, || None);
        arm.event(UserKey::of("b"), true, 0, 1, || false, || None);
        assert_eq!(arm.sums.users, 1);
        assert_eq!((arm.sums.impressions, arm.sums.clicks), (1, 0));
        assert_eq!(arm.outside, [0, 1]);
        assert_eq!(arm.days[&1].outside, [0, 1]);
    }

    #[test]
    fn keys_spread_users_over_buckets_and_shards() {
        let mut shards = [0u32; 16];
        for user in 0..16_000 {
            let key = UserKey::of(&user.to_string());
            assert!(key.bucket() < BUCKETS);
            assert_eq!(key.shard(16), key.bucket() % 16);
            shards[key.shard(16) as usize] += 1;
        }
        assert!(shards.iter().all(|&n| (800..1200).contains(&n)), "{shards:?}");
        assert_eq!(UserKey::of("42"), UserKey::of("42"), "the same on every call");
        assert_ne!(UserKey::of("42").field(), UserKey::of("43").field());
    }
}
