//! Budgets: what an agent's forwarded requests may spend per calendar period
//! (`[budget]` and a rule's `budget`). The policy says what the budgets are; the
//! counters are state, kept here, per profile and budget.
//!
//! A period is calendar-aligned in UTC: a `day` budget starts again at 00:00 UTC, a
//! `month` budget on the 1st. A request is charged when it is admitted to be
//! forwarded (after its hold, its rate limit and the SSRF check), atomically against
//! every budget that applies to it, so concurrent requests never overshoot a limit.
//! A request approved by a human after its budget was spent is charged all the same
//! (the spend then shows above the limit). A request charged and then not forwarded
//! because its event could not be recorded stays charged: a budget errs on the side
//! of spending less, never more. Budgets are money: watch mode enforces them too.
//!
//! Counters live in memory and start from zero when gvmd starts.

use std::collections::HashMap;
use std::sync::Mutex;

use gvm_policy::{Budget, BudgetPer};
use time::{Duration, OffsetDateTime};

/// One budget that applies to a request.
#[derive(Debug, Clone)]
pub(crate) struct Applies {
    /// The counter's key: `profile` or `network.rule[i]`.
    pub key: String,
    /// What the agent and the audit log are told: `profile` or
    /// `network.rule[i] (file:line)`.
    pub name: String,
    pub budget: Budget,
}

/// Why a request may not be charged: the first spent budget.
#[derive(Debug, Clone)]
pub(crate) struct Exhausted {
    pub name: String,
    pub budget: Budget,
    pub spent: u64,
    pub resets_at: OffsetDateTime,
}

impl Exhausted {
    pub(crate) fn resets_at_rfc3339(&self) -> String {
        self.resets_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
    }
}

struct Counter {
    /// Start of the period counted (Unix seconds).
    period: i64,
    requests: u64,
}

/// The spend counters of all profiles.
#[derive(Default)]
pub(crate) struct Spend {
    counters: Mutex<HashMap<(String, String), Counter>>,
}

/// The period of `per` that contains `now`: `[start, end)`, in UTC.
pub(crate) fn period(per: BudgetPer, now: OffsetDateTime) -> (OffsetDateTime, OffsetDateTime) {
    let now = now.to_offset(time::UtcOffset::UTC);
    let date = now.date();
    let at = |h: u8, m: u8| date.with_hms(h, m, 0).map(|t| t.assume_utc()).unwrap_or(now);
    match per {
        BudgetPer::Minute => {
            let s = at(now.hour(), now.minute());
            (s, s + Duration::MINUTE)
        }
        BudgetPer::Hour => {
            let s = at(now.hour(), 0);
            (s, s + Duration::HOUR)
        }
        BudgetPer::Day => {
            let s = date.midnight().assume_utc();
            (s, s + Duration::DAY)
        }
        BudgetPer::Month => {
            let first = |y: i32, m: time::Month| {
                time::Date::from_calendar_date(y, m, 1).map(|d| d.midnight().assume_utc()).unwrap_or(now)
            };
            let (y, m) = (date.year(), date.month());
            let next = if m == time::Month::December { first(y + 1, time::Month::January) } else { first(y, m.next()) };
            (first(y, m), next)
        }
    }
}

impl Spend {
    /// The first of `budgets` already spent at `now`, without charging anything.
    pub(crate) fn exhausted(&self, profile: &str, budgets: &[Applies], now: OffsetDateTime) -> Option<Exhausted> {
        let map = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        budgets.iter().find_map(|a| {
            let (start, end) = period(a.budget.per, now);
            let spent = map
                .get(&(profile.to_string(), a.key.clone()))
                .filter(|c| c.period == start.unix_timestamp())
                .map_or(0, |c| c.requests);
            (spent >= a.budget.requests).then(|| Exhausted {
                name: a.name.clone(),
                budget: a.budget,
                spent,
                resets_at: end,
            })
        })
    }

    /// Charges one request to every budget of `budgets`, or to none: `Err` names the
    /// first spent one. `force` charges even past a limit (a request a human approved).
    pub(crate) fn charge(
        &self,
        profile: &str,
        budgets: &[Applies],
        now: OffsetDateTime,
        force: bool,
    ) -> Result<(), Exhausted> {
        let mut map = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        if !force {
            for a in budgets {
                let (start, end) = period(a.budget.per, now);
                let spent = map
                    .get(&(profile.to_string(), a.key.clone()))
                    .filter(|c| c.period == start.unix_timestamp())
                    .map_or(0, |c| c.requests);
                if spent >= a.budget.requests {
                    return Err(Exhausted { name: a.name.clone(), budget: a.budget, spent, resets_at: end });
                }
            }
        }
        for a in budgets {
            let start = period(a.budget.per, now).0.unix_timestamp();
            let c = map.entry((profile.to_string(), a.key.clone())).or_insert(Counter { period: start, requests: 0 });
            if c.period != start {
                *c = Counter { period: start, requests: 0 };
            }
            c.requests += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gvm_policy::OnExhausted;
    use time::macros::datetime;

    #[test]
    fn periods_are_calendar_aligned_in_utc() {
        let t = datetime!(2026-12-31 23:59:30 +02:00); // 21:59:30 UTC
        let p = |per| {
            let (s, e) = period(per, t);
            (s.to_string(), e.to_string())
        };
        assert_eq!(p(BudgetPer::Minute).0, "2026-12-31 21:59:00.0 +00:00:00");
        assert_eq!(p(BudgetPer::Hour).1, "2026-12-31 22:00:00.0 +00:00:00");
        assert_eq!(p(BudgetPer::Day).0, "2026-12-31 0:00:00.0 +00:00:00");
        assert_eq!(
            p(BudgetPer::Month),
            ("2026-12-01 0:00:00.0 +00:00:00".into(), "2027-01-01 0:00:00.0 +00:00:00".into())
        );
        assert_eq!(period(BudgetPer::Month, datetime!(2026-02-14 10:00 UTC)).1, datetime!(2026-03-01 0:00 UTC));
    }

    #[test]
    fn charges_are_all_or_nothing_and_periods_reset() {
        let s = Spend::default();
        let b = |requests, per| Budget { requests, per, on_exhausted: OnExhausted::Deny };
        let both = [
            Applies { key: "profile".into(), name: "profile".into(), budget: b(3, BudgetPer::Day) },
            Applies { key: "r0".into(), name: "r0".into(), budget: b(2, BudgetPer::Hour) },
        ];
        let t = datetime!(2026-05-05 10:15 UTC);
        assert!(s.charge("p", &both, t, false).is_ok());
        assert!(s.charge("p", &both, t, false).is_ok());
        let e = s.charge("p", &both, t, false).unwrap_err();
        assert_eq!((e.name.as_str(), e.spent, e.resets_at), ("r0", 2, datetime!(2026-05-05 11:00 UTC)));
        // Refused: the profile's counter was not charged either.
        assert!(s.charge("p", &both[..1], t, false).is_ok());
        assert_eq!(s.exhausted("p", &both[..1], t).unwrap().spent, 3);
        assert!(s.exhausted("other", &both, t).is_none());
        // A human's approval is charged past the limit.
        assert!(s.charge("p", &both[..1], t, true).is_ok());
        assert_eq!(s.exhausted("p", &both[..1], t).unwrap().spent, 4);
        // The next day starts again.
        assert!(s.exhausted("p", &both, datetime!(2026-05-06 0:00 UTC)).is_none());
    }
}
