//! Every Redis key the gateway writes, named once (ARCHITECTURE.md §6, §8, §10): the cache's
//! lists and generations, the counts' hashes, sketches and claims, the users' buckets, the
//! guardrails' pauses, and the arm names the results' own keys reserve. Replicas of different
//! builds share one Redis, so a key spelled in two places that drifted apart would split the
//! counts between them; here the whole layout reads at once. The counting scripts receive their
//! keys from these functions (as `KEYS`) and never build one. A leaf: it imports nothing of the
//! crate, so validation can read the reserved names without depending on the counting code.
//! The fields of the counting hashes are named here too ([`field`]), for the same reason: the
//! scripts get them from a prelude of their source, and the results read them back by the same
//! names.

/// The channel cache invalidations are published on; payload `"{generation} {model}"`.
pub(crate) const INVALIDATE_CHANNEL: &str = "recgw:invalidate";

/// `recgw:{model}:{version}:{generation}:{user}`, a user's cached list. No `{…}` hash tags: in a
/// cluster the keys of one model spread over every node.
pub(crate) fn list(model: &str, version: &str, generation: u64, user: &str) -> String {
    format!("recgw:{model}:{version}:{generation}:{user}")
}

/// `recgw:generation:{model}`, the model's cache generation: raising it invalidates every list
/// cached under the one before.
pub(crate) fn generation(model: &str) -> String {
    format!("recgw:generation:{model}")
}

/// `recgw:results:{tag}:{arm}`, the counters hash of an arm under a tag (the experiment's, or
/// one of its shards'); its days are [`days`], its items [`items`]. The results' own keys take
/// a reserved name in the arm's place ([`RESERVED_ARM_NAMES`]).
pub(crate) fn results(tag: &str, arm: &str) -> String {
    format!("recgw:results:{{{tag}}}:{arm}")
}

/// `…:days`, the per-day sums beside the counters hash `results_key`.
pub(crate) fn days(results_key: &str) -> String {
    format!("{results_key}:days")
}

/// `…:items`, the HyperLogLog of the items served beside the counters hash `results_key`.
pub(crate) fn items(results_key: &str) -> String {
    format!("{results_key}:items")
}

/// `recgw:results:{e}:applied:{replica}`, the last batch of a replica applied to an experiment.
pub(crate) fn applied(experiment: &str, replica: &str) -> String {
    format!("{}:{replica}", results(experiment, APPLIED))
}

/// `recgw:results:{e}:scratch:{replica}`, where a replica's flush puts a sketch to merge.
pub(crate) fn scratch(experiment: &str, replica: &str) -> String {
    format!("{}:{replica}", results(experiment, SCRATCH))
}

/// `recgw:results:{e}:inexact`, why an experiment's users are not exact, once they are not.
pub(crate) fn inexact(experiment: &str) -> String {
    results(experiment, INEXACT)
}

/// The duel hashes of an interleave experiment under a tag: clicks per user and team
/// (`…:duel:users`), then the totals (`…:duel`).
pub(crate) fn duel(tag: &str) -> [String; 2] {
    let totals = results(tag, DUEL);
    [format!("{totals}:users"), totals]
}

/// `recgw:u:{tag}:{arm}:{bucket}`: a bucket of one arm's users in one shard.
pub(crate) fn user_bucket(tag: &str, arm: &str, bucket: u32) -> String {
    format!("recgw:u:{{{tag}}}:{arm}:{bucket}")
}

/// `recgw:seen:{tag}:{token}`: the claims of one tracking token's events, by its id.
pub(crate) fn seen(tag: &str, token: &str) -> String {
    format!("recgw:seen:{{{tag}}}:{token}")
}

/// `recgw:guardrails:{experiment}`: the experiment's pauses, shared by every replica.
pub(crate) fn guardrails(experiment: &str) -> String {
    format!("recgw:guardrails:{{{experiment}}}")
}

/// The names the results' own keys put where an arm's name goes (`recgw:results:{tag}:{name}`):
/// the replicas' applied sequences, a flush's scratch sketch, why users are not exact, and an
/// interleave experiment's duel. An arm of such a name would share its keys with them (its
/// counters hash would be the duel's totals, or a string), so validation refuses them.
pub(crate) const RESERVED_ARM_NAMES: [&str; 4] = [APPLIED, SCRATCH, INEXACT, DUEL];
/// See [`applied`].
const APPLIED: &str = "applied";
/// See [`scratch`].
const SCRATCH: &str = "scratch";
/// See [`inexact`].
const INEXACT: &str = "inexact";
/// See [`duel`].
const DUEL: &str = "duel";

/// The fields of the counting hashes, named once. Counting writes them only through the Lua
/// scripts, which read these names from a prelude of their source ([`lua`]); the results read
/// them back through the same constants. Replicas of older builds count into the same hashes,
/// so a name changed here would split the counts between builds: these names are fixed.
///
/// - An arm's counters hash under the experiment's own tag, [`results`]`(e, arm)`: what each
///   replica's flush adds ([`EXPOSURES`], and a shadow arm's [`COMPARED`], [`JACCARD_MICRO`],
///   [`RBO_MICRO`]); and, from before the shards existed, [`IMPRESSIONS`] and [`CLICKS`] (their
///   `total`) and the rank buckets, read as counted outside the per-user sums. Its days hash
///   holds only those impressions and clicks, `YYYY-MM-DD:{day}` of the same two.
/// - An arm's counters hash under a shard's tag, [`results`]`(e:k, arm)`: every one of [`SUMS`]
///   by its `total`, [`CLICKERS`], and the rank buckets [`IMPRESSIONS_AT`]`{bucket}` and
///   [`CLICKS_AT`]`{bucket}`. Its days hash, [`days`]: every one of [`SUMS`] as
///   `YYYY-MM-DD:{day}`, the UTC day it was counted.
/// - An interleave experiment's duel under a shard's tag, [`duel`]: the totals, [`WINS`] and
///   [`TIES`]; and the users, `{user}:{team}` → the user's clicks on the team's items.
pub(crate) mod field {
    /// A per-user sum an arm keeps in a shard twice, in the same step: in its counters hash
    /// (`total`) and in its days hash as `YYYY-MM-DD:{day}`, what the day added. So the days of
    /// an arm always add up to its totals since they were kept, and give the results over time
    /// with the same estimator as the totals.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(crate) struct Sum {
        /// The field in the counters hash.
        pub(crate) total: &'static str,
        /// The code after the date in the days hash.
        pub(crate) day: &'static str,
    }

    /// Defines each per-user sum's constant, [`SUMS`] in the same order and their names for
    /// the prelude, from one list: a sum added is counted, read and named at once.
    macro_rules! sums {
        ($($(#[$doc:meta])* $name:ident = ($total:literal, $day:literal),)*) => {
            $($(#[$doc])* pub(crate) const $name: Sum = Sum { total: $total, day: $day };)*
            /// Every sum a shard keeps: what reading adds up, and the fields of a day the scripts
            /// drop once it is older than the days kept.
            pub(crate) const SUMS: [Sum; SUM_NAMES.len()] = [$($name),*];
            /// The constants' names, in [`SUMS`]' order: the prelude's names for them.
            const SUM_NAMES: [&str; [$(stringify!($name)),*].len()] = [$(stringify!($name)),*];
        };
    }

    /// Responses served from the arm: counted in memory on the request path, and added here by
    /// each replica's flush.
    pub(crate) const EXPOSURES: &str = "exposures";
    /// A shadow arm's comparisons of its list with the control's.
    pub(crate) const COMPARED: &str = "compared";
    /// The sum of the comparisons' Jaccard@k, in millionths: an integer, so the sums of
    /// replicas add up exactly whatever the order of the adds.
    pub(crate) const JACCARD_MICRO: &str = "jaccard_micro";
    /// The sum of the comparisons' rank-biased overlap, in millionths, for the same reason.
    pub(crate) const RBO_MICRO: &str = "rbo_micro";

    sums! {
        /// `n`, the users counted in the arm: each once, by its first serving or event, with or
        /// without events; users are the unit of analysis, each one observation.
        USERS = ("users", "n"),
        /// `Σi`, the arm's impressions: the denominator of its CTR.
        IMPRESSIONS = ("impressions", "i"),
        /// `Σc`, the arm's clicks: the numerator of its CTR.
        CLICKS = ("clicks", "c"),
        /// `Σi²`, for the variance of impressions between users.
        IMPRESSIONS_SQ = ("ii", "ii"),
        /// `Σc²`, for the variance of clicks between users.
        CLICKS_SQ = ("cc", "cc"),
        /// `Σc·i`, for the covariance of a user's clicks and impressions.
        CROSS = ("ci", "ci"),
        /// Users who entered the arm with a row in the experiment's covariates table (CUPED); the
        /// others count as `c' = i' = 0`.
        PRE_USERS = ("p_users", "pn"),
        /// `Σc'`, the users' pre-period clicks, frozen when each entered the arm.
        PRE_CLICKS = ("p_c", "pc"),
        /// `Σi'`, the users' pre-period impressions.
        PRE_IMPRESSIONS = ("p_i", "pi"),
        /// `Σc'²`, for the variance of pre-period clicks, the denominator of `θ_c`.
        PRE_CLICKS_SQ = ("p_cc", "pcc"),
        /// `Σi'²`, for the variance of pre-period impressions, the denominator of `θ_i`.
        PRE_IMPRESSIONS_SQ = ("p_ii", "pii"),
        /// `Σc'·i'`, for the covariance of the two adjustments within an arm.
        PRE_CROSS = ("p_ci", "pci"),
        /// `Σc·c'`, how clicks follow pre-period clicks: the numerator of `θ_c`. A click of a user
        /// with a row adds the user's `c'`.
        CLICKS_BY_CLICKS = ("x_cc", "xcc"),
        /// `Σc·i'`, for the covariance of clicks with the impressions' adjustment.
        CLICKS_BY_IMPRESSIONS = ("x_ci", "xci"),
        /// `Σi·c'`, for the covariance of impressions with the clicks' adjustment.
        IMPRESSIONS_BY_CLICKS = ("x_ic", "xic"),
        /// `Σi·i'`, how impressions follow pre-period impressions: the numerator of `θ_i`.
        IMPRESSIONS_BY_IMPRESSIONS = ("x_ii", "xii"),
    }

    /// Distinct users who clicked, since per-user counting began: a user's first click in the
    /// arm counts them. Not a sum of the estimator, so it has no days.
    pub(crate) const CLICKERS: &str = "clickers";

    /// Impressions at a rank bucket, `i@{bucket}` (`i@1`, `i@4-5`, `i@11+`: the rank buckets of
    /// the list metrics), for CTR by position. Not per-user sums, so they have no days.
    pub(crate) const IMPRESSIONS_AT: &str = "i@";
    /// Clicks at a rank bucket, `c@{bucket}`.
    pub(crate) const CLICKS_AT: &str = "c@";

    /// The duel's users that team 0 won, then team 1: those who clicked more of the team's
    /// items than of the other's. Moved between outcomes by the click that changes one, so the
    /// totals hold each clicking user once and never need a scan of the users.
    pub(crate) const WINS: [&str; 2] = ["wins0", "wins1"];
    /// The duel's users who clicked both teams' items equally often (users without a click are
    /// in no outcome).
    pub(crate) const TIES: &str = "ties";

    /// The prelude of the counting scripts' source: `local F = {…}`, every name above as the
    /// scripts read it (`F.USERS.total`, `F.SUMS`, `F.WINS[team + 1]`). In the source rather
    /// than in `ARGV`, so no call carries them and each script is one SHA per build.
    pub(crate) fn lua() -> String {
        let mut lua = String::from("local F = {\n");
        // The Lua name is the constant's own, so a name cannot be paired with another's value.
        macro_rules! named {
            ($($name:ident),* $(,)?) => {$(
                lua.push_str(&format!("  {} = {},\n", stringify!($name), $name.lua()));
            )*};
        }
        named!(
            EXPOSURES,
            COMPARED,
            JACCARD_MICRO,
            RBO_MICRO,
            SUMS,
            CLICKERS,
            IMPRESSIONS_AT,
            CLICKS_AT,
            WINS,
            TIES,
        );
        for (name, sum) in SUM_NAMES.iter().zip(SUMS) {
            lua.push_str(&format!("  {name} = {},\n", sum.lua()));
        }
        lua.push_str("}\n");
        lua
    }

    /// A name as a Lua expression. The names hold no quote or backslash (a test holds every
    /// field to lowercase letters, digits and `_@-+`), so quoting them is enough.
    trait Lua {
        fn lua(&self) -> String;
    }

    impl Lua for &str {
        fn lua(&self) -> String {
            format!("'{self}'")
        }
    }

    impl Lua for Sum {
        fn lua(&self) -> String {
            format!("{{total = {}, day = {}}}", self.total.lua(), self.day.lua())
        }
    }

    impl<T: Lua, const N: usize> Lua for [T; N] {
        fn lua(&self) -> String {
            let items: Vec<String> = self.iter().map(Lua::lua).collect();
            format!("{{{}}}", items.join(", "))
        }
    }
}
