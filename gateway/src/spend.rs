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
//! A request is charged 1 to `requests` and its rule's `cost` to `money`, in exact
//! millionths ([`Money`]). A money budget is spent once the spend reaches its limit, or
//! when the next request's cost would take it past the limit.
//!
//! Counters live in memory; with a store ([`SpendStore`], gvmd's `<state>/spend.db`)
//! they are loaded at start and written behind every second and at shutdown
//! ([`crate::Gateway::flush`]). **Crash window**: a crash (not a clean stop) loses up
//! to the last second of charges, so after it an agent may spend up to one second's
//! worth of requests again. A clean stop loses nothing.
//!
//! **Identity.** A rule's budget is counted under the rule's match ([`rule_keys`]:
//! host, ports, methods, path), not its position: reordering rules, or adding rules
//! before it, leaves its spend where it was; changing what it matches makes it another
//! budget. The profile's `[budget]` is counted under `profile`.
//!
//! **Reload.** A reload never gives spend back. A changed limit is compared with the
//! spend so far (lowering it below the spend exhausts the budget at once). A changed
//! `per` carries the spend of the period in force when the reload happened into the
//! new period that contains now: `per = "month"` → `"day"` makes today start with the
//! month's spend so far; `"day"` → `"month"` makes the month start with today's. The
//! counter then resets at the end of the new period.

use std::collections::HashMap;
use std::sync::Mutex;

use gvm_policy::{Budget, BudgetPer, Money};
use time::{Duration, OffsetDateTime};

/// The counter key of each rule's budget, by rule index: `match <host> ports=… methods=…
/// path=…` (ports and methods sorted, absent parts left out). A second rule with the same
/// match (which never decides anything) gets ` #2`, and so on.
pub(crate) fn rule_keys(rules: &[gvm_policy::Rule]) -> Vec<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    rules
        .iter()
        .map(|r| {
            if let Some(name) = &r.name {
                return format!("name {name}"); // unique in the profile
            }
            let mut k = format!("match {}", r.host);
            if !r.ports.is_empty() {
                let mut ports = r.ports.clone();
                ports.sort_unstable();
                ports.dedup();
                let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
                k.push_str(&format!(" ports={}", ports.join(",")));
            }
            if !r.methods.is_empty() {
                let mut methods = r.methods.clone();
                methods.sort();
                methods.dedup();
                k.push_str(&format!(" methods={}", methods.join(",")));
            }
            if let Some(p) = &r.path {
                k.push_str(&format!(" path={p}"));
            }
            let n = seen.entry(k.clone()).or_default();
            *n += 1;
            if *n > 1 {
                k.push_str(&format!(" #{n}"));
            }
            k
        })
        .collect()
}

/// One budget that applies to a request.
#[derive(Debug, Clone)]
pub(crate) struct Applies {
    /// The counter's key: `profile` or the rule's [`rule_keys`] entry.
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
    pub spent: Spent,
    pub resets_at: OffsetDateTime,
}

/// A budget whose spend just crossed [`NOTICE_AT`] of one of its limits: gvm writes a
/// journald NOTICE and hands it to the [`BudgetSink`] (gvmd's webhook).
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetNotice {
    pub profile: String,
    /// `profile` or `network.rule[i] (file:line)`.
    pub budget: String,
    /// `requests` or `money`.
    pub of: &'static str,
    pub spent: f64,
    pub limit: f64,
    pub per: &'static str,
    /// RFC 3339 UTC.
    pub resets_at: String,
}

/// Who else hears of a budget crossing 80 % (gvmd: the `[notify]` webhook).
pub trait BudgetSink: Send + Sync {
    /// Must not block: called on the request path.
    fn budget_notice(&self, notice: &BudgetNotice);
}

/// The share of a limit whose crossing is announced: 80 %, as a fraction (4/5).
pub const NOTICE_AT: (u64, u64) = (4, 5);

/// True when `before` → `after` crosses 80 % of `limit`.
fn crosses(before: u64, after: u64, limit: u64) -> bool {
    let at = |v: u64| u128::from(v) * u128::from(NOTICE_AT.1) >= u128::from(limit) * u128::from(NOTICE_AT.0);
    !at(before) && at(after)
}

/// What a budget's period has spent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Spent {
    pub requests: u64,
    pub money: Money,
}

impl Spent {
    /// True when one more request costing `cost` may not be charged to `b`.
    fn exhausts(&self, b: &Budget, cost: Money) -> bool {
        b.requests.is_some_and(|n| self.requests >= n)
            || b.money.is_some_and(|m| self.money >= m || self.money.0.saturating_add(cost.0) > m.0)
    }
}

impl Exhausted {
    /// `{"requests": N, "money": M, "per": "day"}` (only the fields the budget sets).
    pub(crate) fn limit_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({ "per": self.budget.per.as_str() });
        if let Some(n) = self.budget.requests {
            v["requests"] = n.into();
        }
        if let Some(m) = self.budget.money {
            v["money"] = m.as_f64().into();
        }
        v
    }

    pub(crate) fn spent_json(&self) -> serde_json::Value {
        serde_json::json!({ "requests": self.spent.requests, "money": self.spent.money.as_f64() })
    }

    pub(crate) fn resets_at_rfc3339(&self) -> String {
        self.resets_at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
    }
}

struct Counter {
    /// Start of the period counted (Unix seconds).
    period: i64,
    /// Its end (Unix seconds); 0 when unknown (a row written before gvm kept it).
    end: i64,
    spent: Spent,
    /// Charged since the last write to the store.
    dirty: bool,
}

type Key = (String, String);

/// The spend counters of all profiles.
#[derive(Default)]
pub(crate) struct Spend {
    counters: Mutex<HashMap<Key, Counter>>,
    /// Counters moved to another key, to delete from the store at the next flush.
    gone: Mutex<Vec<Key>>,
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

impl Counter {
    /// Does this counter's spend count in the period starting at `start`, at `now`? Yes
    /// for that very period, and for any period still running at `now` (its `per` was
    /// changed by a reload: the spend carries over, never given back).
    fn counts(&self, start: i64, now: i64) -> bool {
        self.period == start || (self.period <= now && now < self.end)
    }
}

impl Spend {
    fn spent(
        map: &HashMap<Key, Counter>,
        profile: &str,
        a: &Applies,
        start: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Spent {
        map.get(&(profile.to_string(), a.key.clone()))
            .filter(|c| c.counts(start.unix_timestamp(), now.unix_timestamp()))
            .map_or_else(Spent::default, |c| c.spent)
    }

    fn first_exhausted(
        map: &HashMap<Key, Counter>,
        profile: &str,
        budgets: &[Applies],
        cost: Money,
        now: OffsetDateTime,
    ) -> Option<Exhausted> {
        budgets.iter().find_map(|a| {
            let (start, end) = period(a.budget.per, now);
            let spent = Spend::spent(map, profile, a, start, now);
            spent.exhausts(&a.budget, cost).then(|| Exhausted {
                name: a.name.clone(),
                budget: a.budget,
                spent,
                resets_at: end,
            })
        })
    }

    /// The first of `budgets` that cannot take one more request costing `cost` at
    /// `now`, without charging anything.
    pub(crate) fn exhausted(
        &self,
        profile: &str,
        budgets: &[Applies],
        cost: Money,
        now: OffsetDateTime,
    ) -> Option<Exhausted> {
        if budgets.is_empty() {
            return None; // the common case: no lock shared by every profile's requests
        }
        let map = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        Spend::first_exhausted(&map, profile, budgets, cost, now)
    }

    /// Charges one request costing `cost` to every budget of `budgets`, or to none:
    /// `Err` names the first spent one. `force` charges even past a limit (a request a
    /// human approved). `Ok` lists the limits this charge took past 80 %.
    pub(crate) fn charge(
        &self,
        profile: &str,
        budgets: &[Applies],
        cost: Money,
        now: OffsetDateTime,
        force: bool,
    ) -> Result<Vec<BudgetNotice>, Exhausted> {
        self.charge_n(profile, budgets, 1, cost, now, force)
    }

    /// Adds what a forwarded request turned out to cost (its LLM usage, known when the
    /// response ends) to its budgets, past their limits if need be: it was spent.
    pub(crate) fn add_money(
        &self,
        profile: &str,
        budgets: &[Applies],
        cost: Money,
        now: OffsetDateTime,
    ) -> Vec<BudgetNotice> {
        self.charge_n(profile, budgets, 0, cost, now, true).unwrap_or_default()
    }

    fn charge_n(
        &self,
        profile: &str,
        budgets: &[Applies],
        requests: u64,
        cost: Money,
        now: OffsetDateTime,
        force: bool,
    ) -> Result<Vec<BudgetNotice>, Exhausted> {
        if budgets.is_empty() {
            return Ok(Vec::new());
        }
        let mut map = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        if !force {
            if let Some(ex) = Spend::first_exhausted(&map, profile, budgets, cost, now) {
                return Err(ex);
            }
        }
        let mut crossed = Vec::new();
        for a in budgets {
            let (start, end) = period(a.budget.per, now);
            let (s, e) = (start.unix_timestamp(), end.unix_timestamp());
            let c = map.entry((profile.to_string(), a.key.clone())).or_insert(Counter {
                period: s,
                end: e,
                spent: Spent::default(),
                dirty: false,
            });
            if !c.counts(s, now.unix_timestamp()) {
                c.spent = Spent::default();
            }
            (c.period, c.end) = (s, e);
            let before = c.spent;
            c.spent.requests += requests;
            c.spent.money = Money(c.spent.money.0.saturating_add(cost.0));
            c.dirty = true;
            let notice = |of, spent: f64, limit: f64| BudgetNotice {
                profile: profile.to_string(),
                budget: a.name.clone(),
                of,
                spent,
                limit,
                per: a.budget.per.as_str(),
                resets_at: end.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
            };
            if let Some(n) = a.budget.requests.filter(|n| crosses(before.requests, c.spent.requests, *n)) {
                crossed.push(notice("requests", c.spent.requests as f64, n as f64));
            }
            if let Some(m) = a.budget.money.filter(|m| crosses(before.money.0, c.spent.money.0, m.0)) {
                crossed.push(notice("money", c.spent.money.as_f64(), m.as_f64()));
            }
        }
        Ok(crossed)
    }

    /// What `budgets` have spent in their current periods (for `gvmctl status`).
    pub(crate) fn report(
        &self,
        profile: &str,
        budgets: &[Applies],
        now: OffsetDateTime,
    ) -> Vec<(Spent, OffsetDateTime)> {
        let map = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        budgets
            .iter()
            .map(|a| {
                let (start, end) = period(a.budget.per, now);
                (Spend::spent(&map, profile, a, start, now), end)
            })
            .collect()
    }

    /// Moves the counters gvm kept by rule position before rule budgets were keyed by
    /// their match (`network.rule[i]` → [`rule_keys`]`[i]`, as `moves` says), once, so an
    /// upgrade gives no spend back. A counter already under the new key wins.
    pub(crate) fn adopt_positions(&self, profile: &str, moves: &[(String, String)]) {
        let mut map = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        let mut gone = Vec::new();
        for (old, new) in moves {
            let Some(mut c) = map.remove(&(profile.to_string(), old.clone())) else { continue };
            c.dirty = true;
            map.entry((profile.to_string(), new.clone())).or_insert(c);
            gone.push((profile.to_string(), old.clone()));
        }
        drop(map);
        if !gone.is_empty() {
            self.gone.lock().unwrap_or_else(|e| e.into_inner()).extend(gone);
        }
    }

    /// Takes the counters charged since the last call (to write them to the store).
    fn take_dirty(&self) -> Vec<Row> {
        let mut map = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        map.iter_mut()
            .filter(|(_, c)| c.dirty)
            .map(|((p, k), c)| {
                c.dirty = false;
                Row { profile: p.clone(), key: k.clone(), period: c.period, end: c.end, spent: c.spent }
            })
            .collect()
    }

    /// Marks rows that could not be written as still to write.
    fn redirty(&self, rows: &[Row]) {
        let mut map = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        for r in rows {
            if let Some(c) = map.get_mut(&(r.profile.clone(), r.key.clone())) {
                if c.period == r.period {
                    c.dirty = true;
                }
            }
        }
    }

    /// Puts loaded rows in place (at start, before any request), oldest written first:
    /// the last row of a counter is its state.
    fn load(&self, rows: Vec<Row>) {
        let mut map = self.counters.lock().unwrap_or_else(|e| e.into_inner());
        for r in rows {
            map.insert((r.profile, r.key), Counter { period: r.period, end: r.end, spent: r.spent, dirty: false });
        }
    }

    /// Writes what was charged since the last flush to `store`.
    pub(crate) fn flush(&self, store: &SpendStore) {
        let rows = self.take_dirty();
        let gone = std::mem::take(&mut *self.gone.lock().unwrap_or_else(|e| e.into_inner()));
        if rows.is_empty() && gone.is_empty() {
            return;
        }
        // The moved counters' new rows first, then the old ones go, in one transaction.
        if let Err(e) = store.write(&rows, &gone) {
            tracing::error!("cannot write budget spend to {}: {e}", store.path.display());
            self.redirty(&rows);
            self.gone.lock().unwrap_or_else(|e| e.into_inner()).extend(gone);
        }
    }
}

/// One counter as the store keeps it.
#[derive(Debug, Clone)]
struct Row {
    profile: String,
    key: String,
    period: i64,
    end: i64,
    spent: Spent,
}

/// Why the spend store could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum SpendStoreError {
    #[error("cannot create {path}: {source} — gvmd keeps budget spend there; check the state directory")]
    Create { path: std::path::PathBuf, source: std::io::Error },
    #[error("budget spend store {path}: {source} — move the damaged file aside to start the periods' spend from zero")]
    Sqlite { path: std::path::PathBuf, source: rusqlite::Error },
}

/// Rows of periods that began this long ago are deleted when the store opens.
const PRUNE_AFTER_SECS: i64 = 40 * 86_400;

/// The SQLite file that keeps spend across gvmd restarts: one row per (profile,
/// budget, period start), WAL, mode 0600.
pub struct SpendStore {
    path: std::path::PathBuf,
    conn: Mutex<rusqlite::Connection>,
}

impl SpendStore {
    /// Opens (creating it 0600) the store at `path`.
    pub fn open(path: &std::path::Path) -> Result<SpendStore, SpendStoreError> {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| SpendStoreError::Create { path: path.to_path_buf(), source })?;
        // An older file keeps whatever mode it had: spend is gvmd's alone.
        std::fs::set_permissions(path, <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o600))
            .map_err(|source| SpendStoreError::Create { path: path.to_path_buf(), source })?;
        let sql = |source| SpendStoreError::Sqlite { path: path.to_path_buf(), source };
        let conn = rusqlite::Connection::open(path).map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(sql)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(sql)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS spend (
                profile TEXT NOT NULL,
                budget TEXT NOT NULL,
                period INTEGER NOT NULL,
                requests INTEGER NOT NULL,
                micros INTEGER NOT NULL,
                PRIMARY KEY (profile, budget, period)
            );",
        )
        .map_err(sql)?;
        // Columns added later: the period's end (a reload may change `per`) and the
        // order rows were written in (the last written is the counter's state).
        let cols: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info('spend')")
            .and_then(|mut st| st.query_map([], |r| r.get(0))?.collect())
            .map_err(sql)?;
        for (col, ddl) in [
            ("ends", "ALTER TABLE spend ADD COLUMN ends INTEGER NOT NULL DEFAULT 0"),
            ("written", "ALTER TABLE spend ADD COLUMN written INTEGER NOT NULL DEFAULT 0"),
        ] {
            if !cols.iter().any(|c| c == col) {
                conn.execute_batch(ddl).map_err(sql)?;
            }
        }
        // Periods that ended long ago are history nobody reads: the longest period is a
        // month, so 40 days back is always past.
        let past = OffsetDateTime::now_utc().unix_timestamp() - PRUNE_AFTER_SECS;
        conn.execute("DELETE FROM spend WHERE period < ?1", [past]).map_err(sql)?;
        Ok(SpendStore { path: path.to_path_buf(), conn: Mutex::new(conn) })
    }

    /// Every row, in the order they were last written.
    fn latest(&self) -> Result<Vec<Row>, rusqlite::Error> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let mut st =
            conn.prepare("SELECT profile, budget, period, ends, requests, micros FROM spend ORDER BY written, period")?;
        let rows = st.query_map([], |r| {
            Ok(Row {
                profile: r.get(0)?,
                key: r.get(1)?,
                period: r.get(2)?,
                end: r.get(3)?,
                spent: Spent {
                    requests: r.get::<_, i64>(4)?.max(0) as u64,
                    money: Money(r.get::<_, i64>(5)?.max(0) as u64),
                },
            })
        })?;
        rows.collect()
    }

    fn write(&self, rows: &[Row], gone: &[Key]) -> Result<(), rusqlite::Error> {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction()?;
        {
            let written: i64 = tx.query_row("SELECT COALESCE(MAX(written), 0) + 1 FROM spend", [], |r| r.get(0))?;
            let mut st = tx.prepare_cached(
                "INSERT INTO spend (profile, budget, period, ends, requests, micros, written)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (profile, budget, period) DO UPDATE SET ends = ?4, requests = ?5, micros = ?6, written = ?7",
            )?;
            for r in rows {
                let n = i64::try_from(r.spent.requests).unwrap_or(i64::MAX);
                let m = i64::try_from(r.spent.money.0).unwrap_or(i64::MAX);
                st.execute(rusqlite::params![r.profile, r.key, r.period, r.end, n, m, written])?;
            }
            let mut del = tx.prepare_cached("DELETE FROM spend WHERE profile = ?1 AND budget = ?2")?;
            for (profile, key) in gone {
                del.execute(rusqlite::params![profile, key])?;
            }
        }
        tx.commit()
    }
}

impl Spend {
    /// Loads the latest counters from `store`.
    pub(crate) fn load_from(&self, store: &SpendStore) -> Result<(), SpendStoreError> {
        let rows = store.latest().map_err(|source| SpendStoreError::Sqlite { path: store.path.clone(), source })?;
        self.load(rows);
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
        let b = |requests, per| Budget { requests: Some(requests), money: None, per, on_exhausted: OnExhausted::Deny };
        let free = Money(0);
        let both = [
            Applies { key: "profile".into(), name: "profile".into(), budget: b(3, BudgetPer::Day) },
            Applies { key: "r0".into(), name: "r0".into(), budget: b(2, BudgetPer::Hour) },
        ];
        let t = datetime!(2026-05-05 10:15 UTC);
        assert!(s.charge("p", &both, free, t, false).is_ok());
        assert!(s.charge("p", &both, free, t, false).is_ok());
        let e = s.charge("p", &both, free, t, false).unwrap_err();
        assert_eq!((e.name.as_str(), e.spent.requests, e.resets_at), ("r0", 2, datetime!(2026-05-05 11:00 UTC)));
        // Refused: the profile's counter was not charged either.
        assert!(s.charge("p", &both[..1], free, t, false).is_ok());
        assert_eq!(s.exhausted("p", &both[..1], free, t).unwrap().spent.requests, 3);
        assert!(s.exhausted("other", &both, free, t).is_none());
        // A human's approval is charged past the limit.
        assert!(s.charge("p", &both[..1], free, t, true).is_ok());
        assert_eq!(s.exhausted("p", &both[..1], free, t).unwrap().spent.requests, 4);
        // The next day starts again.
        assert!(s.exhausted("p", &both, free, datetime!(2026-05-06 0:00 UTC)).is_none());
    }

    #[test]
    fn crossing_80_percent_is_announced_once() {
        let s = Spend::default();
        let b = [Applies {
            key: "profile".into(),
            name: "profile".into(),
            budget: Budget {
                requests: Some(10),
                money: Money::from_f64(1.0),
                per: BudgetPer::Day,
                on_exhausted: OnExhausted::Deny,
            },
        }];
        let t = datetime!(2026-05-05 10:15 UTC);
        let cost = Money::from_f64(0.3).unwrap();
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(s.charge("p", &b, cost, t, false).unwrap());
        }
        // 0.3, 0.6, 0.9: the third crosses 0.8 of the money; requests are at 3/10.
        assert!(seen[0].is_empty() && seen[1].is_empty());
        assert_eq!(seen[2].len(), 1);
        assert_eq!((seen[2][0].of, seen[2][0].spent, seen[2][0].limit), ("money", 0.9, 1.0));
        assert_eq!(seen[2][0].resets_at, "2026-05-06T00:00:00Z");
        let free = Money(0);
        let mut later = Vec::new();
        for _ in 0..7 {
            later.extend(s.charge("p", &b, free, t, true).unwrap());
        }
        // Requests 4..=10: 8/10 is the crossing, once.
        assert_eq!(later.iter().map(|n| (n.of, n.spent)).collect::<Vec<_>>(), [("requests", 8.0)]);
        assert!(crosses(7, 8, 10) && !crosses(8, 9, 10) && crosses(0, 1, 1));
    }

    #[test]
    fn money_is_exact_and_a_request_that_would_overspend_is_refused() {
        let s = Spend::default();
        let cents = Money::from_f64(0.02).unwrap();
        let b = [Applies {
            key: "profile".into(),
            name: "profile".into(),
            budget: Budget {
                requests: None,
                money: Money::from_f64(0.1),
                per: BudgetPer::Day,
                on_exhausted: OnExhausted::Deny,
            },
        }];
        let t = datetime!(2026-05-05 10:15 UTC);
        for _ in 0..5 {
            assert!(s.charge("p", &b, cents, t, false).is_ok());
        }
        let e = s.charge("p", &b, cents, t, false).unwrap_err();
        assert_eq!(e.spent, Spent { requests: 5, money: Money(100_000) });
        // At the limit even a free request is refused.
        assert!(s.exhausted("p", &b, Money(0), t).is_some());
    }

    #[test]
    fn a_changed_per_carries_the_spend_into_the_period_that_contains_now() {
        let s = Spend::default();
        let b = |per| {
            [Applies {
                key: "profile".into(),
                name: "profile".into(),
                budget: Budget { requests: Some(10), money: None, per, on_exhausted: OnExhausted::Deny },
            }]
        };
        let t = datetime!(2026-05-05 10:15 UTC);
        for _ in 0..4 {
            s.charge("p", &b(BudgetPer::Month), Money(0), t, false).unwrap();
        }
        // month → day: today starts with the month's 4, and resets tomorrow.
        assert_eq!(s.report("p", &b(BudgetPer::Day), t)[0].0.requests, 4);
        s.charge("p", &b(BudgetPer::Day), Money(0), t, false).unwrap();
        assert_eq!(s.report("p", &b(BudgetPer::Day), t)[0].0.requests, 5);
        assert_eq!(s.report("p", &b(BudgetPer::Day), datetime!(2026-05-06 0:00 UTC))[0].0.requests, 0);
        // day → month: the month starts with today's 5, kept to the month's end.
        s.charge("p", &b(BudgetPer::Month), Money(0), t, false).unwrap();
        assert_eq!(s.report("p", &b(BudgetPer::Month), datetime!(2026-05-31 23:00 UTC))[0].0.requests, 6);
        assert_eq!(s.report("p", &b(BudgetPer::Month), datetime!(2026-06-01 0:00 UTC))[0].0.requests, 0);
        // A lower limit is compared with the spend so far: exhausted at once.
        let mut low = b(BudgetPer::Month);
        low[0].budget.requests = Some(6);
        assert_eq!(s.exhausted("p", &low, Money(0), t).unwrap().spent.requests, 6);
    }

    #[test]
    fn a_rule_budget_is_keyed_by_its_match_not_its_position() {
        let text = |rules: &str| format!("[network]\ndefault = \"deny\"\n{rules}");
        let a = "[[network.rule]]\nhost = \"a.example\"\nports = [443, 80]\nmethods = [\"POST\", \"GET\"]\npath = \"/v1/*\"\naction = \"allow\"\n";
        let a2 = "[[network.rule]]\nhost = \"a.example\"\nports = [80, 443]\nmethods = [\"GET\", \"POST\"]\npath = \"/v1/*\"\naction = \"hold\"\n";
        let b = "[[network.rule]]\nhost = \"b.example\"\naction = \"allow\"\n";
        let keys = |t: String| {
            let p = gvm_policy::parse_profile(std::path::Path::new("/x/p.toml"), &t).unwrap();
            rule_keys(&p.network.rules)
        };
        let one = keys(text(&format!("{a}{b}")));
        let two = keys(text(&format!("{b}{a2}")));
        assert_eq!(one[0], "match a.example ports=80,443 methods=GET,POST path=/v1/*");
        assert_eq!((one[0].as_str(), one[1].as_str()), (two[1].as_str(), two[0].as_str()), "same match, same key");
        let dup = keys(text(&format!("{b}{b}")));
        assert_ne!(dup[0], dup[1]);
        // A named rule keeps its key when its match changes.
        let named = |host: &str| {
            keys(text(&format!("[[network.rule]]\nhost = \"{host}\"\nname = \"llm\"\naction = \"allow\"\n")))
        };
        assert_eq!(named("a.example"), ["name llm"]);
        assert_eq!(named("a.example"), named("b.example"));
    }

    #[test]
    fn spend_kept_by_rule_position_moves_to_the_rules_match_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spend.db");
        let budget = Budget { requests: Some(3), money: None, per: BudgetPer::Month, on_exhausted: OnExhausted::Deny };
        let at = |key: &str| [Applies { key: key.into(), name: "r".into(), budget }];
        let now = OffsetDateTime::now_utc();
        {
            // What an older gvm wrote: the counter under the rule's position.
            let store = SpendStore::open(&path).unwrap();
            let s = Spend::default();
            s.charge("p", &at("network.rule[0]"), Money(0), now, false).unwrap();
            s.charge("p", &at("network.rule[0]"), Money(0), now, false).unwrap();
            s.flush(&store);
        }
        let moves = [("network.rule[0]".to_string(), "match a.example".to_string())];
        {
            let store = SpendStore::open(&path).unwrap();
            let s = Spend::default();
            s.load_from(&store).unwrap();
            s.adopt_positions("p", &moves);
            assert_eq!(s.report("p", &at("match a.example"), now)[0].0.requests, 2);
            assert_eq!(s.report("p", &at("network.rule[0]"), now)[0].0.requests, 0);
            s.flush(&store);
        }
        let store = SpendStore::open(&path).unwrap();
        let s = Spend::default();
        s.load_from(&store).unwrap();
        assert_eq!(s.report("p", &at("network.rule[0]"), now)[0].0.requests, 0, "the old row is gone");
        s.adopt_positions("p", &[("network.rule[0]".to_string(), "match b.example".to_string())]);
        assert_eq!(s.report("p", &at("match b.example"), now)[0].0.requests, 0, "moved once, not again");
        assert_eq!(s.report("p", &at("match a.example"), now)[0].0.requests, 2);
    }

    #[test]
    fn a_store_of_an_older_gvm_gets_its_new_columns_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spend.db");
        let now = OffsetDateTime::now_utc();
        let start = period(BudgetPer::Day, now).0.unix_timestamp();
        {
            let c = rusqlite::Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE spend (profile TEXT NOT NULL, budget TEXT NOT NULL, period INTEGER NOT NULL,
                 requests INTEGER NOT NULL, micros INTEGER NOT NULL, PRIMARY KEY (profile, budget, period));",
            )
            .unwrap();
            c.execute("INSERT INTO spend VALUES ('p', 'profile', ?1, 4, 0)", [start]).unwrap();
        }
        let store = SpendStore::open(&path).unwrap();
        let s = Spend::default();
        s.load_from(&store).unwrap();
        let b = [Applies {
            key: "profile".into(),
            name: "profile".into(),
            budget: Budget { requests: Some(5), money: None, per: BudgetPer::Day, on_exhausted: OnExhausted::Deny },
        }];
        assert_eq!(s.report("p", &b, now)[0].0.requests, 4);
        s.charge("p", &b, Money(0), now, false).unwrap();
        s.flush(&store);
        assert!(s.charge("p", &b, Money(0), now, false).is_err());
    }

    #[test]
    fn the_store_keeps_spend_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spend.db");
        let b = [Applies {
            key: "network.rule[0]".into(),
            name: "network.rule[0] (x.toml:3)".into(),
            budget: Budget { requests: Some(3), money: None, per: BudgetPer::Month, on_exhausted: OnExhausted::Deny },
        }];
        let now = OffsetDateTime::now_utc();
        {
            let store = SpendStore::open(&path).unwrap();
            let s = Spend::default();
            s.load_from(&store).unwrap();
            s.charge("p", &b, Money(7), now, false).unwrap();
            s.charge("p", &b, Money(7), now, false).unwrap();
            s.flush(&store);
            s.charge("p", &b, Money(7), now, false).unwrap();
            s.flush(&store);
        }
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let store = SpendStore::open(&path).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600, "made 0600 again");
        let s = Spend::default();
        s.load_from(&store).unwrap();
        let e = s.charge("p", &b, Money(7), now, false).unwrap_err();
        assert_eq!(e.spent, Spent { requests: 3, money: Money(21) });
        assert_eq!(s.report("p", &b, now)[0].0.requests, 3);
    }
}
