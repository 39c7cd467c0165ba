//! The one call that serves a page ([`Gateway::serve_page`]): from a request read and checked
//! to a page served, signed and counted, so the handler that makes it only renders the result.

use std::sync::Arc;
use std::time::Instant;

use super::Gateway;
use super::page::{Page, PageRequest};
use super::recommend::{Lists, Recommendation, ServeError};
use crate::store::Item;

/// A request for one page of a user's recommendations, once read and checked: what
/// [`Gateway::serve_page`] serves.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ServeRequest<'a> {
    /// The user, a valid id.
    pub(crate) user: &'a str,
    /// The placement asked for, which may not exist.
    pub(crate) placement: &'a str,
    /// The page and its filters.
    pub(crate) page: PageRequest<'a>,
    /// The request's `X-Request-Id`, which the exposure row carries.
    pub(crate) request_id: &'a str,
    /// When the request arrived: the response time counted for the arm runs from there.
    pub(crate) started: Instant,
}

/// One page served and counted: what the response shows.
#[derive(Debug)]
pub(crate) struct ServedPage {
    /// The list the page was cut from, and what the response says about where it came from.
    pub(crate) recommendation: Recommendation,
    /// Which of its items the page shows.
    pub(super) page: Page,
    /// The page's signed claims, which events bring back.
    pub(crate) tracking_token: String,
}

impl ServedPage {
    /// The page's items, in page order, each with the arm of its team on an interleaved page.
    pub(crate) fn items(&self) -> impl Iterator<Item = (&Item, Option<&str>)> {
        let arms = match &self.recommendation.lists {
            Lists::One(_) => None,
            Lists::Teams(teams) => Some(&teams.experiment.arms),
        };
        self.recommendation.items(&self.page).map(move |(item, team)| {
            let arm = arms.zip(team).and_then(|(arms, team)| arms.get(usize::from(team)));
            (item, arm.map(|arm| arm.name.as_str()))
        })
    }

    /// How many items the page shows.
    pub(crate) fn len(&self) -> usize {
        self.page.positions.len()
    }

    /// Items left after the filters, across all pages.
    pub(crate) fn total(&self) -> usize {
        self.page.total
    }

    /// Offset of the next page, `None` on the last one.
    pub(crate) fn next_offset(&self) -> Option<usize> {
        self.page.next_offset
    }
}

impl Gateway {
    /// Serves one page of `request.user`'s recommendations on `request.placement`: assigns the
    /// user, reads the list through the cache (the placement default standing in for an arm
    /// that cannot answer), cuts the page, signs its token, and counts it: in the arm's metrics
    /// and, with logs on, as an exposure row. All in one call, so a response is never counted
    /// in `recommendations_total` without its exposure row (ARCHITECTURE.md §9), whatever its
    /// caller does; the caller renders what it returns.
    pub(crate) async fn serve_page(self: &Arc<Self>, request: &ServeRequest<'_>) -> Result<ServedPage, ServeError> {
        let recommendation = self.recommend(request.user, request.placement).await?;
        let page = recommendation.page(&request.page);
        let tracking_token = self.tracking_token(&recommendation, request, &page);
        let served = ServedPage {
            recommendation,
            page,
            tracking_token,
        };
        self.cover(&served);
        self.compare_shadows(&served, request);
        let recommendation = &served.recommendation;
        self.arm_metrics(
            request.placement,
            recommendation.experiment.as_deref(),
            &recommendation.arm,
        )
        .served(served.len(), recommendation.fallback, request.started.elapsed());
        self.log_exposure(recommendation, request);
        Ok(served)
    }
}
