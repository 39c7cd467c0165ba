//! Every Redis key the gateway writes, named once (ARCHITECTURE.md §6, §8, §10): the cache's
//! lists and generations, the counts' hashes, sketches and claims, the users' buckets, the
//! guardrails' pauses, and the arm names the results' own keys reserve. Replicas of different
//! builds share one Redis, so a key spelled in two places that drifted apart would split the
//! counts between them; here the whole layout reads at once. The counting scripts receive their
//! keys from these functions (as `KEYS`) and never build one. A leaf: it imports nothing of the
//! crate, so validation can read the reserved names without depending on the counting code.

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
