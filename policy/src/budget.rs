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

/// A validated budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Budget {
    /// Requests forwarded per period.
    pub requests: u64,
    pub per: BudgetPer,
    pub on_exhausted: OnExhausted,
}
