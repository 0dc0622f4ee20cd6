//! Budgets: how much an agent may spend in a calendar period, per profile
//! (`[budget]`) and per rule (`budget = { ... }`). The policy only says what the
//! budgets are; counting spend is state, kept by the gateway.

use std::fmt;

use serde::Deserialize;

/// The period a budget is counted over: calendar-aligned, in UTC (a `day` budget
/// starts again at 00:00 UTC, a `month` budget on the 1st at 00:00 UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BudgetPer {
    Minute,
    Hour,
    Day,
    Month,
}

impl BudgetPer {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetPer::Minute => "minute",
            BudgetPer::Hour => "hour",
            BudgetPer::Day => "day",
            BudgetPer::Month => "month",
        }
    }
}

impl fmt::Display for BudgetPer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happens to a request once its budget is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnExhausted {
    /// Refused (429) until the period ends.
    #[default]
    Deny,
    /// Held for a human (`gvmctl approve`), like a `hold` rule.
    Hold,
}

/// An amount of money in millionths of the budget's currency (exact sums: `0.02` five
/// times is `0.1`, not `0.09999...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Money(pub u64);

impl Money {
    /// The largest amount a profile may write (a billion).
    pub const MAX: f64 = 1e9;

    /// `None` unless `x` is finite, not negative and at most [`Money::MAX`].
    pub fn from_f64(x: f64) -> Option<Money> {
        (x.is_finite() && (0.0..=Money::MAX).contains(&x)).then(|| Money((x * 1e6).round() as u64))
    }

    pub fn as_f64(self) -> f64 {
        self.0 as f64 / 1e6
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_f64())
    }
}

/// A validated budget: at least one of `requests` and `money`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Budget {
    /// Requests forwarded per period.
    pub requests: Option<u64>,
    /// Money spent per period: the `cost` of each forwarded request.
    pub money: Option<Money>,
    pub per: BudgetPer,
    pub on_exhausted: OnExhausted,
}
