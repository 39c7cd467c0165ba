//! Shadow arms (ARCHITECTURE.md §3.1): after a counted page of the control, a sampled share of
//! requests reads each shadow arm's list for the same user in the background and compares the
//! two top-`k` lists (`feedback::lists`), counted in the shadow arm's handles and results.

use std::sync::Arc;

use super::Gateway;
use super::recommend::Lists;
use super::serve::{ServeRequest, ServedPage};
use crate::feedback::lists::overlap;
use crate::store::RankedList;

/// Comparisons of shadow arms in flight at most; more are dropped and counted (`busy`), so a
/// slow shadow model cannot pile up work behind the responses.
pub(super) const SHADOW_SLOTS: usize = 64;

impl Gateway {
    /// For a control's counted page, compares the experiment's shadow arms' lists with it:
    /// sampled, and in the background, so the response never waits for them.
    pub(super) fn compare_shadows(self: &Arc<Self>, served: &ServedPage, request: &ServeRequest<'_>) {
        let recommendation = &served.recommendation;
        let (Some(experiment), Lists::One(control)) = (&recommendation.shadows, &recommendation.lists) else {
            return;
        };
        let limit = request.page.limit;
        for (index, arm) in experiment.arms.iter().enumerate() {
            if !arm.shadow.is_some_and(sampled) {
                continue;
            }
            let handles = self.arm_metrics(request.placement, Some(&experiment.id), &arm.name);
            let Some(shadow) = handles.shadow() else {
                continue;
            };
            let Ok(permit) = Arc::clone(&self.shadow_slots).try_acquire_owned() else {
                shadow.busy.inc();
                continue;
            };
            let (gateway, experiment, control) = (Arc::clone(self), Arc::clone(experiment), Arc::clone(control));
            let user = request.user.to_string();
            tokio::spawn(async move {
                let _permit = permit;
                let (Some(arm), Some(shadow)) = (experiment.arms.get(index), handles.shadow()) else {
                    return;
                };
                let Ok((_, list, _)) = gateway.read_arm(arm, &user).await else {
                    shadow.no_list.inc();
                    return;
                };
                fn ids(list: &RankedList, limit: usize) -> Vec<&str> {
                    list.iter().take(limit).map(|item| &*item.id).collect()
                }
                let (mine, theirs) = (ids(&list, limit), ids(&control, limit));
                // The depth both lists reach is what was compared, and what the shadow's
                // coverage counts.
                let depth = mine.len().min(theirs.len());
                match overlap(mine.iter().copied(), theirs, limit) {
                    Some(o) => {
                        gateway
                            .counter(&experiment, arm)
                            .compared(o, mine[..depth].iter().copied());
                        shadow.compared(o);
                    }
                    None => shadow.no_list.inc(),
                }
            });
        }
    }
}

/// Whether this request is in a sample of `share` (0 to 1): a hash of a process-wide counter,
/// so samples are spread evenly without a random generator on the request path.
fn sampled(share: f64) -> bool {
    static DRAWS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let draw = DRAWS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let x = xxhash_rust::xxh3::xxh3_64(&draw.to_le_bytes());
    let unit = (x >> 11) as f64 / (1u64 << 53) as f64;
    unit < share
}
