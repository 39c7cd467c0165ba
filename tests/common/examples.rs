//! The valid experiment folder of ARCHITECTURE.md §3, which the validation and property tests start
//! from.

/// `placements.toml` with the placements the example uses.
pub const PLACEMENTS: &str = r#"[placements.home]
default_model = "popular"     # served to users no experiment covers, and on cold start

[placements.search]
default_model = "popular-search"
"#;

/// The example of ARCHITECTURE.md §3: a valid experiment on `home`.
pub const EXPERIMENT: &str = r#"id = "home-als-rank"
placement = "home"
description = "ALS v2 against v1 on the home page"
owner = "recs-team@example.com"
status = "running"
start = 2026-11-01T00:00:00Z
end = 2026-12-01T00:00:00Z
traffic = [0.0, 50.0]
salt = "home-als-rank"

[[arms]]
name = "control"
weight = 50.0
model = "als-v1"

[[arms]]
name = "treatment"
weight = 50.0
model = "als-v2"
cache_ttl = "30m"

[overrides]
"qa-user-1" = "treatment"
"#;
