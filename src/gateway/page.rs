//! Pages cut after the cache, from the whole list (ARCHITECTURE.md §6): the filters
//! (`min_score`, `exclude`), the page asked for, and, for an interleave experiment, the team-draft
//! merge of both arms' filtered lists.

use std::collections::HashSet;

use super::recommend::{Lists, Recommendation, Teams};
use crate::experiment::{Team, team_draft};
use crate::store::Item;

/// Filters and paging applied after the cache, on the whole list.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PageRequest<'a> {
    /// Items per page.
    pub(crate) limit: usize,
    /// Items to skip.
    pub(crate) offset: usize,
    /// Drop items scoring below this.
    pub(crate) min_score: Option<f32>,
    /// Item ids the client already showed or does not want; a set, so filtering a list costs
    /// one lookup per item whatever the number of ids.
    pub(crate) exclude: &'a HashSet<&'a str>,
}

/// One page of a list: which of its items show, and where the page sits in the list.
#[derive(Debug)]
pub(crate) struct Page {
    /// Each item's index in its list (its team's list, when interleaved), in page order (merge
    /// order when interleaved): indices rather than references, so the page can be kept beside
    /// the lists it is cut from ([`ServedPage`](super::ServedPage)).
    pub(super) positions: Vec<usize>,
    /// On an interleaved page, the team of each item; empty otherwise.
    pub(super) teams: Vec<Team>,
    /// Items skipped before this page (`offset`), which its token carries so events know
    /// each item's position in the list.
    pub(super) offset: u32,
    /// Items left after filters, across all pages.
    pub(super) total: usize,
    /// Offset of the next page, `None` on the last one.
    pub(super) next_offset: Option<usize>,
}

impl PageRequest<'_> {
    /// Whether `item` passes the filters.
    fn keeps(&self, item: &Item) -> bool {
        self.min_score.is_none_or(|min| item.score >= min) && !self.exclude.contains(&*item.id)
    }

    /// The offset asked for, as tokens carry it (the API takes at most a `u32`).
    fn page_offset(&self) -> u32 {
        u32::try_from(self.offset).unwrap_or(u32::MAX)
    }

    /// The offset of the page after one of a list of `total` items.
    fn next_offset(&self, total: usize) -> Option<usize> {
        let end = self.offset.saturating_add(self.limit);
        (end < total).then_some(end)
    }

    /// The items of `list` that pass the filters, each with its index in the list.
    fn kept<'l>(&self, list: &'l [Item]) -> impl Iterator<Item = (usize, &'l Item)> {
        list.iter().enumerate().filter(|(_, item)| self.keeps(item))
    }
}

/// Cuts one page out of `list` after the filters.
fn page(list: &[Item], request: &PageRequest<'_>) -> Page {
    let total = request.kept(list).count();
    // Sized from the count, so the page is one allocation whatever its length.
    let mut positions = Vec::with_capacity(total.saturating_sub(request.offset).min(request.limit));
    positions.extend(
        request
            .kept(list)
            .skip(request.offset)
            .take(request.limit)
            .map(|(at, _)| at),
    );
    Page {
        positions,
        teams: Vec::new(),
        offset: request.page_offset(),
        total,
        next_offset: request.next_offset(total),
    }
}

/// An item of a list and its index there, equal to another by id: what the merge deduplicates
/// on.
#[derive(Debug, Clone, Copy)]
struct Pick<'l> {
    /// Its index in its team's list.
    at: usize,
    /// The item.
    item: &'l Item,
}

impl PartialEq for Pick<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.item.id == other.item.id
    }
}

impl Eq for Pick<'_> {}

impl std::hash::Hash for Pick<'_> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.item.id.hash(state);
    }
}

impl Teams {
    /// The two arms' names, team 0 first; validation gives an interleave experiment two arms
    /// (without them a page is signed without teams, and its events credit nothing).
    pub(super) fn names(&self) -> Option<[&str; 2]> {
        match self.experiment.arms.as_slice() {
            [first, second] => Some([&first.name, &second.name]),
            _ => None,
        }
    }

    /// Filters both lists, merges them by team draft and cuts the page: filters come first so
    /// an excluded item leaves its team one pick short instead of a hole in the page.
    fn page(&self, request: &PageRequest<'_>) -> Page {
        let [a, b] = self.lists.each_ref().map(|list| {
            request
                .kept(list)
                .map(|(at, item)| Pick { at, item })
                .collect::<Vec<_>>()
        });
        let merged = team_draft(&a, &b, self.seed);
        let (positions, teams) = merged
            .iter()
            .skip(request.offset)
            .take(request.limit)
            // Teams are 0 and 1, as the token's bits carry them.
            .map(|(pick, team)| (pick.at, *team as Team))
            .unzip();
        Page {
            positions,
            teams,
            offset: request.page_offset(),
            total: merged.len(),
            next_offset: request.next_offset(merged.len()),
        }
    }
}

impl Recommendation {
    /// The page `request` asks for.
    pub(super) fn page(&self, request: &PageRequest<'_>) -> Page {
        match &self.lists {
            Lists::One(list) => page(list, request),
            Lists::Teams(teams) => teams.page(request),
        }
    }

    /// The items `page` shows, in page order, each with its team on an interleaved page.
    pub(super) fn items<'a>(&'a self, page: &'a Page) -> impl ExactSizeIterator<Item = (&'a Item, Option<Team>)> {
        page.positions.iter().enumerate().map(move |(i, &at)| {
            let team = page.teams.get(i).copied();
            // Pages are cut only by `Recommendation::page` and kept beside the lists they were
            // cut from, so every position is in its list, and every item of a `Teams` page has
            // a team, 0 or 1.
            let list = match &self.lists {
                Lists::One(list) => list,
                Lists::Teams(teams) => &teams.lists[usize::from(team.unwrap_or_default() & 1)],
            };
            (&list[at], team)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(n: u32) -> Vec<Item> {
        (1..=n)
            .map(|r| Item {
                id: format!("i{r}").into(),
                score: 10.0 - r as f32,
                rank: r,
            })
            .collect()
    }

    #[test]
    fn pages_after_filters_and_keeps_model_ranks() {
        let items = list(10);
        let exclude = HashSet::from(["i2"]);
        let request = PageRequest {
            limit: 3,
            offset: 0,
            min_score: Some(2.5),
            exclude: &exclude,
        };
        let ids = |page: &Page| page.positions.iter().map(|&at| &*items[at].id).collect::<Vec<_>>();
        let first = page(&items, &request);
        assert_eq!(first.total, 6, "i1..i7 score >= 2.5, minus i2");
        assert_eq!(ids(&first), ["i1", "i3", "i4"]);
        assert_eq!(items[first.positions[1]].rank, 3);
        assert_eq!(first.next_offset, Some(3));
        let last = page(&items, &PageRequest { offset: 3, ..request });
        assert_eq!(ids(&last), ["i5", "i6", "i7"]);
        assert_eq!(last.next_offset, None);
        let beyond = page(&items, &PageRequest { offset: 50, ..request });
        assert!(beyond.positions.is_empty());
        assert_eq!(beyond.next_offset, None);
    }
}
