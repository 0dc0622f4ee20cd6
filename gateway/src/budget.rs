//! What one agent may cost gvmd: audit events, DNS queries, held requests, request body
//! bandwidth (ATTACKS.md class 17). Connections are counted in `limit.rs`.
//!
//! **Every decision stays accounted for; not every decision gets an event of its own.**
//! A decision that forwards nothing (a refusal, a rate limit, a DNS answer, the
//! `intercept` step of a CONNECT) is *foldable*: when an identical one (same kind,
//! decision, rule and details) was recorded by the same profile in the last
//! [`HOT_TTL`], it is only counted, and every [`FOLD_TICK`] the counts are written as one
//! event of the same kind and decision with `details.folded = N`, `first`, `last` and
//! `of_seq` (the event it repeats). The count is part of the hashed details, so the chain
//! stays exact. The first occurrence is always recorded before the agent gets its answer;
//! what a crash can lose is the count of repeats of the last tick — repeats of a refusal
//! that was recorded, never anything forwarded.
//!
//! Each profile also has a budget of individually recorded decisions
//! (`[limits] decisions`). Past it, a foldable decision is counted into a
//! `limits_exceeded` event instead, and a decision that would forward something is
//! refused (429): nothing ever leaves unrecorded. DNS queries past `[limits]
//! dns_queries`, held requests past `held_requests` and connections past `connections`
//! are refused and counted the same way. A `limits_exceeded` event (one per limit and
//! kind per tick, with a few samples) is written while the refusals go on, and the
//! profile shows as *noisy* in `gvmctl status` for [`NOISY_FOR`] after the last one.
//!
//! Journald sees what the audit log sees: one line per recorded event, so the same
//! bounds hold for the log.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use gvm_policy::Limits;
use serde_json::{json, Value};

/// How often folded counts and `limits_exceeded` events are written.
pub(crate) const FOLD_TICK: Duration = Duration::from_secs(2);
/// How long a recorded refusal keeps folding its identical repeats.
pub(crate) const HOT_TTL: Duration = Duration::from_secs(10);
/// How many distinct refusals per profile fold at once (bounds the events one tick
/// writes); past it, a new distinct refusal is recorded on its own, within budget.
const MAX_HOT: usize = 64;
/// Samples kept in one `limits_exceeded` event.
const SAMPLES: usize = 3;
/// A profile shows as noisy this long after it last hit a limit.
pub(crate) const NOISY_FOR: Duration = Duration::from_secs(300);
/// Folded repeats within [`NOISY_FOR`] that make a profile noisy without a limit.
const NOISY_REPEATS: u64 = 1000;

/// A token bucket: `cap` tokens, refilled at `rate` per second. May go into debt
/// (bytes of a body frame already read), which delays the next take.
#[derive(Debug, Clone)]
pub(crate) struct Bucket {
    tokens: f64,
    cap: f64,
    rate: f64,
    last: Instant,
}

impl Bucket {
    pub(crate) fn new(cap: f64, per: Duration, now: Instant) -> Bucket {
        let cap = cap.max(1.0);
        Bucket { tokens: cap, cap, rate: cap / per.as_secs_f64().max(1e-6), last: now }
    }

    fn rate(r: gvm_policy::Rate, now: Instant) -> Bucket {
        Bucket::new(f64::from(r.count), r.per.as_duration(), now)
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.cap);
        self.last = now;
    }

    /// Takes one token if there is one.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Takes `n` tokens, going into debt if needed; returns how long until the bucket
    /// is out of debt (zero when it is not in debt).
    pub(crate) fn spend(&mut self, n: f64, now: Instant) -> Duration {
        self.refill(now);
        self.tokens -= n;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// What to do with a decision about to be recorded.
pub(crate) enum Admit {
    /// Record it; for a foldable one, `Some(key)` to fold its repeats afterwards.
    Record(Option<String>),
    /// Counted (a repeat, or past the budget): answer without waiting for the store.
    Folded,
    /// A decision that would forward something is past the budget: refuse it.
    OverBudget { limit: &'static str, value: String },
}

/// A recorded refusal whose identical repeats are being counted.
struct Hot {
    /// The profile the event is about when it is not the one charged: a callee's
    /// `ingress` event is charged to its caller (agents.rs).
    about: Option<String>,
    kind: String,
    decision: String,
    rule: Option<String>,
    details: Value,
    of_seq: u64,
    repeats: u64,
    first: Option<SystemTime>,
    last: SystemTime,
    seen: Instant,
}

/// Refusals past a limit, counted until the next tick.
struct Over {
    value: String,
    count: u64,
    first: SystemTime,
    last: SystemTime,
    samples: Vec<Value>,
}

/// Why a profile is noisy (for `gvmctl status`).
#[derive(Default)]
struct Noise {
    since: Option<SystemTime>,
    last: Option<Instant>,
    folded: u64,
    refused: BTreeMap<&'static str, u64>,
}

struct ProfileBudget {
    limits: Limits,
    decisions: Bucket,
    /// Refused tunnels answered inside TLS (each a handshake): `decisions`' rate.
    handshakes: Bucket,
    dns: Bucket,
    body: Arc<Mutex<Bucket>>,
    held: usize,
    hot: HashMap<String, Hot>,
    over: BTreeMap<(&'static str, String), Over>,
    noise: Noise,
}

impl ProfileBudget {
    fn new(limits: Limits, now: Instant) -> Self {
        ProfileBudget {
            limits,
            decisions: Bucket::rate(limits.decisions, now),
            handshakes: Bucket::rate(limits.decisions, now),
            dns: Bucket::rate(limits.dns_queries, now),
            body: Arc::new(Mutex::new(body_bucket(limits.request_body_per_sec, now))),
            held: 0,
            hot: HashMap::new(),
            over: BTreeMap::new(),
            noise: Noise::default(),
        }
    }

    /// The profile is noisy now: a stretch begins, or goes on.
    fn noisy(&mut self, now: Instant) {
        if self.noise.last.is_some_and(|l| now.duration_since(l) > NOISY_FOR) {
            self.noise = Noise::default(); // the last stretch is over: count afresh
        }
        self.noise.since.get_or_insert_with(SystemTime::now);
        self.noise.last = Some(now);
    }

    fn over(&mut self, limit: &'static str, kind: &str, sample: impl FnOnce() -> Value, now: Instant) {
        let value = match limit {
            "decisions" => self.limits.decisions.to_string(),
            "dns_queries" => self.limits.dns_queries.to_string(),
            "held_requests" => self.limits.held_requests.to_string(),
            "connections" => self.limits.connections.to_string(),
            _ => String::new(),
        };
        let t = SystemTime::now();
        let o = self.over.entry((limit, kind.to_string())).or_insert_with(|| Over {
            value,
            count: 0,
            first: t,
            last: t,
            samples: Vec::new(),
        });
        o.count += 1;
        o.last = t;
        if o.samples.len() < SAMPLES {
            o.samples.push(sample());
        }
        self.noisy(now);
        *self.noise.refused.entry(limit).or_default() += 1;
    }
}

/// A body bucket holds one second of bandwidth.
fn body_bucket(per_sec: u64, now: Instant) -> Bucket {
    Bucket::new(per_sec as f64, Duration::from_secs(1), now)
}

/// Does this decision forward anything? Those that do are never folded.
pub(crate) fn foldable(kind: &str, decision: &str) -> bool {
    kind == "dns" || matches!(decision, "deny" | "limit" | "intercept")
}

/// One event to write at a tick (built under the lock, written after it).
pub(crate) struct Pending {
    pub profile: String,
    pub kind: String,
    pub decision: String,
    pub rule: Option<String>,
    pub details: Value,
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t).format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}

/// Every profile's budget.
#[derive(Default)]
pub(crate) struct Budgets {
    map: Mutex<HashMap<String, ProfileBudget>>,
}

impl Budgets {
    fn with<R>(&self, profile: &str, f: impl FnOnce(&mut ProfileBudget, Instant) -> R) -> R {
        let now = Instant::now();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        // (No allocation on the request path once the profile has an entry.)
        if !map.contains_key(profile) {
            map.insert(profile.to_string(), ProfileBudget::new(Limits::default(), now));
        }
        let b = map.get_mut(profile).expect("inserted above");
        f(b, now)
    }

    /// Puts a profile's `[limits]` in force (counts and folds carry over).
    pub(crate) fn set_limits(&self, profile: &str, limits: Limits) {
        self.with(profile, |b, now| {
            if b.limits != limits {
                b.limits = limits;
                b.decisions = Bucket::rate(limits.decisions, now);
                b.handshakes = Bucket::rate(limits.decisions, now);
                b.dns = Bucket::rate(limits.dns_queries, now);
                *b.body.lock().unwrap_or_else(|e| e.into_inner()) = body_bucket(limits.request_body_per_sec, now);
            }
        });
    }

    /// Before recording a decision: record it, fold it, or refuse it.
    pub(crate) fn admit(
        &self,
        profile: &str,
        kind: &str,
        decision: &str,
        rule: Option<&str>,
        details: &Value,
    ) -> Admit {
        let fold = foldable(kind, decision);
        let key = fold.then(|| format!("{kind}\0{decision}\0{}\0{details}", rule.unwrap_or("")));
        self.with(profile, |b, now| {
            if let Some(h) = key.as_ref().and_then(|k| b.hot.get_mut(k)) {
                // (Counts not yet written keep folding, however late the tick is.)
                if now.duration_since(h.seen) <= HOT_TTL || h.repeats > 0 {
                    let t = SystemTime::now();
                    h.repeats += 1;
                    h.first.get_or_insert(t);
                    h.last = t;
                    h.seen = now;
                    b.noise.folded += 1;
                    if b.noise.folded >= NOISY_REPEATS {
                        b.noisy(now);
                    }
                    return Admit::Folded;
                }
            }
            if b.decisions.take(now) {
                return Admit::Record(key);
            }
            let sample = || json!({"decision": decision, "rule": rule, "details": details});
            b.over("decisions", kind, sample, now);
            if fold {
                Admit::Folded
            } else {
                Admit::OverBudget { limit: "decisions", value: b.limits.decisions.to_string() }
            }
        })
    }

    /// After a foldable decision was recorded as `seq`: fold its repeats from now on.
    /// `about`: the profile the event is about when it is not the one charged (its
    /// folded repeats are written under it).
    pub(crate) fn recorded_about(
        &self,
        profile: &str,
        about: Option<&str>,
        key: String,
        seq: u64,
        ev: (&str, &str, Option<&str>, &Value),
    ) {
        self.with(profile, |b, now| {
            if b.hot.len() >= MAX_HOT && !b.hot.contains_key(&key) {
                b.hot.retain(|_, h| h.repeats > 0 || now.duration_since(h.seen) <= HOT_TTL);
                if b.hot.len() >= MAX_HOT {
                    return;
                }
            }
            let (kind, decision, rule, details) = ev;
            b.hot.insert(
                key,
                Hot {
                    about: about.map(str::to_string),
                    kind: kind.to_string(),
                    decision: decision.to_string(),
                    rule: rule.map(str::to_string),
                    details: details.clone(),
                    of_seq: seq,
                    repeats: 0,
                    first: None,
                    last: SystemTime::now(),
                    seen: now,
                },
            );
        });
    }

    /// May one more refused tunnel be answered inside TLS? A handshake costs gvmd CPU,
    /// so no while the profile is past its `[limits] decisions` (its refusals are only
    /// counted), nor past that many handshakes per period of its own; the refusal then
    /// stays at CONNECT level, as recorded.
    pub(crate) fn refusal_handshake(&self, profile: &str) -> bool {
        self.with(profile, |b, now| {
            b.decisions.refill(now);
            b.decisions.tokens >= 1.0 && b.handshakes.take(now)
        })
    }

    /// One DNS query: within `[limits] dns_queries`? Counts the refusal when not.
    pub(crate) fn dns_query(&self, profile: &str, name: impl FnOnce() -> Value) -> bool {
        self.with(profile, |b, now| {
            if b.dns.take(now) {
                return true;
            }
            b.over("dns_queries", "dns", name, now);
            false
        })
    }

    /// One more held request, if `[limits] held_requests` allows it: `Ok` holds a place
    /// until dropped; `Err(limit)` counts the refusal.
    pub(crate) fn hold(self: &Arc<Self>, profile: &str, what: impl FnOnce() -> Value) -> Result<HeldPlace, String> {
        self.with(profile, |b, now| {
            if b.held < b.limits.held_requests as usize {
                b.held += 1;
                return Ok(HeldPlace { budgets: self.clone(), profile: profile.to_string() });
            }
            b.over("held_requests", "http", what, now);
            Err(b.limits.held_requests.to_string())
        })
    }

    /// A connection refused at accept (`[limits] connections` or gvmd's share).
    pub(crate) fn connection_refused(&self, profile: &str, listener: &'static str, cap: usize) {
        self.with(profile, |b, now| {
            b.over("connections", "connect", || json!({"listener": listener, "cap": cap}), now)
        });
    }

    /// The profile's request-body bucket (the same one for as long as gvmd runs: new
    /// limits refill it in place), kept by the gateway's `ProfileState`.
    pub(crate) fn body(&self, profile: &str) -> Arc<Mutex<Bucket>> {
        self.with(profile, |b, _| b.body.clone())
    }

    /// Why `profile` is noisy, if it is.
    pub(crate) fn noisy(&self, profile: &str) -> Option<gvm_api::Noisy> {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let b = map.get(profile)?;
        let last = b.noise.last?;
        if last.elapsed() > NOISY_FOR {
            return None;
        }
        Some(gvm_api::Noisy {
            since: b.noise.since.map(rfc3339).unwrap_or_default(),
            folded: b.noise.folded,
            refused: b.noise.refused.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        })
    }

    /// The events a tick writes: folded repeats and `limits_exceeded`. Forgets refusals
    /// that stopped repeating.
    pub(crate) fn take_pending(&self) -> Vec<Pending> {
        let now = Instant::now();
        let mut out = Vec::new();
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        for (profile, b) in map.iter_mut() {
            for h in b.hot.values_mut() {
                if h.repeats == 0 {
                    continue;
                }
                let mut details = h.details.clone();
                if let Value::Object(m) = &mut details {
                    m.insert("folded".into(), json!(h.repeats));
                    m.insert("first".into(), json!(h.first.map(rfc3339)));
                    m.insert("last".into(), json!(rfc3339(h.last)));
                    m.insert("of_seq".into(), json!(h.of_seq));
                }
                out.push(Pending {
                    profile: h.about.clone().unwrap_or_else(|| profile.clone()),
                    kind: h.kind.clone(),
                    decision: h.decision.clone(),
                    rule: h.rule.clone(),
                    details,
                });
                h.repeats = 0;
                h.first = None;
            }
            b.hot.retain(|_, h| now.duration_since(h.seen) <= HOT_TTL);
            for ((limit, of), o) in std::mem::take(&mut b.over) {
                out.push(Pending {
                    profile: profile.clone(),
                    kind: "limits_exceeded".into(),
                    decision: "limit".into(),
                    rule: Some(format!("limits.{limit}")),
                    details: json!({
                        "limit": limit, "value": o.value, "of": of, "folded": o.count,
                        "first": rfc3339(o.first), "last": rfc3339(o.last), "samples": o.samples,
                    }),
                });
            }
        }
        out
    }
}

/// A held request's place in `[limits] held_requests`, given back when dropped.
pub(crate) struct HeldPlace {
    budgets: Arc<Budgets>,
    profile: String,
}

impl Drop for HeldPlace {
    fn drop(&mut self) {
        self.budgets.with(&self.profile, |b, _| b.held = b.held.saturating_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gvm_policy::{Rate, RatePer};

    fn limits(decisions: u32) -> Limits {
        Limits { decisions: Rate { count: decisions, per: RatePer::Min }, ..Limits::default() }
    }

    #[test]
    fn a_folded_event_never_spans_two_policy_versions() {
        let b = Budgets::default();
        b.set_limits("p", limits(100));
        let under = |v: &str| json!({"host": "evil.example", "method": "GET", "policy_version": v});
        let Admit::Record(Some(key)) = b.admit("p", "http", "deny", None, &under("a")) else { panic!("recorded") };
        b.recorded_about("p", None, key, 7, ("http", "deny", None, &under("a")));
        assert!(matches!(b.admit("p", "http", "deny", None, &under("a")), Admit::Folded));
        assert!(
            matches!(b.admit("p", "http", "deny", None, &under("b")), Admit::Record(Some(_))),
            "the same refusal under a new version is an event of its own"
        );
    }

    #[test]
    fn identical_refusals_fold_into_one_counted_event() {
        let b = Budgets::default();
        b.set_limits("p", limits(100));
        let d = json!({"host": "evil.example", "method": "GET"});
        let Admit::Record(Some(key)) = b.admit("p", "http", "deny", None, &d) else { panic!("first is recorded") };
        b.recorded_about("p", None, key, 7, ("http", "deny", None, &d));
        for _ in 0..500 {
            assert!(matches!(b.admit("p", "http", "deny", None, &d), Admit::Folded));
        }
        let other = json!({"host": "other.example", "method": "GET"});
        assert!(matches!(b.admit("p", "http", "deny", None, &other), Admit::Record(Some(_))), "a different refusal");
        let pending = b.take_pending();
        assert_eq!(pending.len(), 1, "one event for 500 repeats");
        let ev = &pending[0].details;
        assert_eq!((ev["folded"].as_u64(), ev["of_seq"].as_u64()), (Some(500), Some(7)));
        assert_eq!(ev["host"], "evil.example");
        assert!(b.take_pending().is_empty(), "nothing new, nothing written");
    }

    #[test]
    fn past_the_budget_refusals_are_counted_and_forwarding_is_refused() {
        let b = Budgets::default();
        b.set_limits("p", limits(10));
        for i in 0..10 {
            let d = json!({ "name": format!("{i}.exfil.example") });
            assert!(matches!(b.admit("p", "dns", "deny", None, &d), Admit::Record(_)));
        }
        for i in 10..1000 {
            let d = json!({ "name": format!("{i}.exfil.example") });
            assert!(matches!(b.admit("p", "dns", "deny", None, &d), Admit::Folded));
        }
        assert!(matches!(b.admit("p", "http", "allow", None, &json!({})), Admit::OverBudget { .. }));
        assert!(matches!(b.admit("q", "http", "allow", None, &json!({})), Admit::Record(None)), "others unaffected");
        let pending = b.take_pending();
        let counts: Vec<(String, u64)> = pending
            .iter()
            .map(|p| (p.details["of"].as_str().unwrap().to_string(), p.details["folded"].as_u64().unwrap()))
            .collect();
        assert_eq!(counts, [("dns".to_string(), 990), ("http".to_string(), 1)]);
        assert_eq!(pending[0].kind, "limits_exceeded");
        assert_eq!(pending[0].details["samples"].as_array().unwrap().len(), SAMPLES);
        let noisy = b.noisy("p").expect("noisy");
        assert_eq!(noisy.refused.get("decisions"), Some(&991));
        assert!(b.noisy("q").is_none());
    }

    #[test]
    fn refusal_handshakes_stop_past_either_budget() {
        let b = Budgets::default();
        b.set_limits("p", limits(3));
        assert!((0..3).all(|_| b.refusal_handshake("p")), "within the rate");
        assert!(!b.refusal_handshake("p"), "past its own bucket");
        b.set_limits("q", limits(3));
        for i in 0..3 {
            assert!(matches!(b.admit("q", "connect", "deny", None, &json!({ "i": i })), Admit::Record(_)));
        }
        assert!(!b.refusal_handshake("q"), "past the decisions budget: refusals are only counted");
    }

    #[test]
    fn held_places_are_limited_and_given_back() {
        let b = Arc::new(Budgets::default());
        b.set_limits("p", Limits { held_requests: 2, ..Limits::default() });
        let one = b.hold("p", || json!(1)).unwrap();
        let _two = b.hold("p", || json!(2)).unwrap();
        assert!(b.hold("p", || json!(3)).is_err());
        drop(one);
        assert!(b.hold("p", || json!(4)).is_ok());
    }

    #[test]
    fn a_body_bucket_in_debt_says_how_long_to_wait() {
        let t = Instant::now();
        let mut k = body_bucket(1000, t);
        assert_eq!(k.spend(1000.0, t), Duration::ZERO);
        let wait = k.spend(500.0, t);
        assert!(wait > Duration::from_millis(490) && wait <= Duration::from_millis(500), "{wait:?}");
        assert_eq!(k.spend(0.0, t + Duration::from_secs(1)), Duration::ZERO);
    }
}
