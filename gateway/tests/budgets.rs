//! Budgets: an agent cannot run up a bill. A spent budget refuses (429, naming the
//! budget, its limit, the spend and when it resets) or holds for a human; watch mode
//! enforces budgets too; a refusal is recorded as decision `limit`.

mod common;

use std::time::Duration;

use common::*;

/// The next 00:00 UTC, as the gateway writes it.
fn next_midnight() -> String {
    let now = time::OffsetDateTime::now_utc();
    let next = (now.date() + time::Duration::DAY).midnight().assume_utc();
    next.format(&time::format_description::well_known::Rfc3339).unwrap()
}

#[tokio::test]
async fn a_rule_budget_of_3_a_day_refuses_the_4th_request_naming_the_budget_and_the_reset() {
    let env = env(r#"
[network]
default = "deny"

[[network.rule]]
host = "api.test.example"
action = "allow"
budget = { requests = 3, per = "day" }
"#)
    .await;
    let mut c = proxy_conn(&env).await;
    let url = format!("http://{HOST}:{}/v1/x", env.up_http);
    let host = format!("{HOST}:{}", env.up_http);
    for i in 1..=3 {
        let r = send(&mut c, "POST", &url, &host, &format!("rule-budget-{i}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let r = send(&mut c, "POST", &url, &host, "rule-budget-4").await;
    assert_eq!(r.status, 429, "{}", r.body);
    let j = r.json();
    assert_eq!(j["error"], "gvm budget spent");
    assert!(j["budget"].as_str().unwrap().starts_with("network.rule[0] ("), "{j}");
    assert!(j["budget"].as_str().unwrap().ends_with("agent.toml:6)"), "{j}");
    assert_eq!(j["limit"], serde_json::json!({ "requests": 3, "per": "day" }));
    assert_eq!(j["spent"]["money"], 0.0);
    assert_eq!(j["spent"]["requests"], 3);
    assert_eq!(j["resets_at"], next_midnight());
    for i in 1..=3 {
        assert!(upstream_saw(format!("rule-budget-{i}").as_bytes()));
    }
    assert!(!upstream_saw(b"rule-budget-4"), "the 4th never reached the upstream");
    // Recorded like a rate limit, with what was spent.
    let ev = wait_event(&env, "http", "\"resets_at\"").await;
    assert_eq!(ev.decision.as_deref(), Some("limit"));
    assert_eq!(ev.details["status"], 429);
    assert_eq!(ev.details["budget"], j["budget"]);
    assert_eq!(ev.details["spent"]["requests"], 3);
    assert_eq!(ev.details["limit"]["requests"], 3);
    assert_eq!(ev.details["resets_at"], next_midnight());
}

#[tokio::test]
async fn a_spent_profile_budget_with_on_exhausted_hold_holds_the_request() {
    let env = env(r#"
[network]
default = "deny"
hold_timeout = "5s"

[[network.rule]]
host = "api.test.example"
action = "allow"

[budget]
requests = 3
per = "month"
on_exhausted = "hold"
"#)
    .await;
    let mut c = proxy_conn(&env).await;
    let url = format!("http://{HOST}:{}/v1/y", env.up_http);
    let host = format!("{HOST}:{}", env.up_http);
    for i in 1..=3 {
        let r = send(&mut c, "POST", &url, &host, &format!("hold-budget-{i}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let gw = env.gw.clone();
    let approver = tokio::spawn(async move {
        loop {
            if let Some(h) = gw.holds().first().cloned() {
                assert!(h.url.ends_with("/v1/y"), "{h:?}");
                gw.resolve_hold(h.id, true).unwrap();
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let r = send(&mut c, "POST", &url, &host, "hold-budget-4").await;
    tokio::time::timeout(Duration::from_secs(5), approver).await.unwrap().unwrap();
    assert_eq!(r.status, 200, "approved by a human: forwarded; {}", r.body);
    assert!(upstream_saw(b"hold-budget-4"));
    let all = events(&env);
    let held = all.iter().find(|e| e.decision.as_deref() == Some("hold")).expect("a hold event");
    assert_eq!(held.details["budget_exhausted"], "profile", "it names the spent budget");
    assert_eq!(all.iter().filter(|e| e.decision.as_deref() == Some("hold")).count(), 1);
}

#[tokio::test]
async fn watch_mode_enforces_budgets_too() {
    let env = env(r#"
[agent]
mode = "watch"

[network]
default = "deny"

[budget]
requests = 2
per = "day"
"#)
    .await;
    let mut c = proxy_conn(&env).await;
    let url = format!("http://{HOST}:{}/w", env.up_http);
    let host = format!("{HOST}:{}", env.up_http);
    for i in 1..=2 {
        let r = send(&mut c, "POST", &url, &host, &format!("watch-budget-{i}")).await;
        assert_eq!(r.status, 200, "watch mode lets it through: {}", r.body);
    }
    let r = send(&mut c, "POST", &url, &host, "watch-budget-3").await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.json()["budget"], "profile");
    assert!(!upstream_saw(b"watch-budget-3"));
}

#[tokio::test]
async fn a_money_budget_with_a_cost_per_request_is_spent_after_n() {
    let env = env(r#"
[network]
default = "deny"

[[network.rule]]
host = "api.test.example"
action = "allow"
cost = 0.02

[budget]
money = 0.1
per = "day"
"#)
    .await;
    let mut c = proxy_conn(&env).await;
    let url = format!("http://{HOST}:{}/m", env.up_http);
    let host = format!("{HOST}:{}", env.up_http);
    for i in 1..=5 {
        let r = send(&mut c, "POST", &url, &host, &format!("money-budget-{i}")).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
    }
    let r = send(&mut c, "POST", &url, &host, "money-budget-6").await;
    assert_eq!(r.status, 429, "{}", r.body);
    let j = r.json();
    assert_eq!(j["budget"], "profile");
    assert_eq!(j["limit"], serde_json::json!({ "money": 0.1, "per": "day" }));
    assert_eq!(j["spent"], serde_json::json!({ "requests": 5, "money": 0.1 }));
    assert!(!upstream_saw(b"money-budget-6"));
}

/// Spend is written to the store and read back by the next gateway (gvmd restarted).
#[tokio::test]
async fn spend_is_kept_across_a_restart_of_the_store() {
    const POLICY: &str = r#"
[network]
default = "deny"

[[network.rule]]
host = "api.test.example"
action = "allow"
budget = { requests = 3, per = "month" }
"#;
    let db = tempfile::tempdir().unwrap();
    let path = db.path().join("spend.db");
    {
        let env = env(POLICY).await;
        env.gw.open_spend(&path).unwrap();
        let mut c = proxy_conn(&env).await;
        let url = format!("http://{HOST}:{}/r", env.up_http);
        let host = format!("{HOST}:{}", env.up_http);
        for i in 1..=2 {
            let r = send(&mut c, "POST", &url, &host, &format!("restart-budget-{i}")).await;
            assert_eq!(r.status, 200, "{}", r.body);
        }
        env.gw.flush().await; // what gvmd does when it stops
    }
    let env = env(POLICY).await;
    env.gw.open_spend(&path).unwrap();
    let mut c = proxy_conn(&env).await;
    let url = format!("http://{HOST}:{}/r", env.up_http);
    let host = format!("{HOST}:{}", env.up_http);
    let r = send(&mut c, "POST", &url, &host, "restart-budget-3").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = send(&mut c, "POST", &url, &host, "restart-budget-4").await;
    assert_eq!(r.status, 429, "the two before the restart count: {}", r.body);
    assert_eq!(r.json()["spent"]["requests"], 3);
    // The write-behind (every second) stores the third without a flush: a gateway
    // started after that (gvmd after a crash) finds the budget spent.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = env_named("agent", POLICY).await;
    after.gw.open_spend(&path).unwrap();
    let mut c = proxy_conn(&after).await;
    let url = format!("http://{HOST}:{}/r", after.up_http);
    let r = send(&mut c, "POST", &url, &format!("{HOST}:{}", after.up_http), "restart-budget-5").await;
    assert_eq!(r.status, 429, "{}", r.body);
    drop(env);
}

/// `gvmctl status` reads spend from the gateway; crossing 80 % is told to the sink.
#[tokio::test]
async fn status_shows_spend_and_crossing_80_percent_is_announced() {
    struct Heard(std::sync::Mutex<Vec<gvm_gateway::BudgetNotice>>);
    impl gvm_gateway::BudgetSink for Heard {
        fn budget_notice(&self, n: &gvm_gateway::BudgetNotice) {
            self.0.lock().unwrap().push(n.clone());
        }
    }
    let env = env(r#"
[network]
default = "deny"

[[network.rule]]
host = "api.test.example"
action = "allow"
cost = 0.5
budget = { requests = 5, per = "hour" }

[budget]
money = 10
per = "month"
"#)
    .await;
    let heard = std::sync::Arc::new(Heard(std::sync::Mutex::new(Vec::new())));
    env.gw.set_budget_sink(heard.clone());
    let mut c = proxy_conn(&env).await;
    let url = format!("http://{HOST}:{}/s", env.up_http);
    let host = format!("{HOST}:{}", env.up_http);
    for i in 1..=4 {
        let r = send(&mut c, "POST", &url, &host, &format!("status-budget-{i}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let st = env.gw.budgets("agent");
    assert_eq!(st.len(), 2, "{st:?}");
    assert_eq!((st[0].budget.as_str(), st[0].money, st[0].money_spent), ("profile", Some(10.0), 2.0));
    assert!(st[1].budget.starts_with("network.rule[0] ("), "{st:?}");
    assert_eq!((st[1].requests, st[1].requests_spent, st[1].per.as_str()), (Some(5), 4, "hour"));
    assert_eq!(st[1].on_exhausted, "deny");
    let heard = heard.0.lock().unwrap().clone();
    assert_eq!(heard.len(), 1, "4 of 5 requests crossed 80 %: {heard:?}");
    assert_eq!((heard[0].of, heard[0].spent, heard[0].limit), ("requests", 4.0, 5.0));
    assert_eq!(heard[0].budget, st[1].budget);
}

/// Responses from a priced host are charged their LLM usage; unreadable usage is
/// charged 100,000 tokens at the host's highest price, never nothing.
#[tokio::test]
async fn llm_usage_is_charged_from_json_and_streams_and_unreadable_usage_is_not_free() {
    let env = env(r#"
[network]
default = "deny"

[[network.rule]]
host = "api.test.example"
action = "allow"

[budget]
money = 1.0
per = "day"
"#)
    .await;
    let table = std::collections::HashMap::from([
        ("gpt-4o".to_string(), gvm_gateway::Price { input: 2.5, output: 10.0 }),
        ("gpt-4o-mini".to_string(), gvm_gateway::Price { input: 0.15, output: 0.6 }),
    ]);
    env.gw.set_prices(std::collections::HashMap::from([(HOST.to_string(), table)]));
    let spent = || env.gw.budgets("agent")[0].money_spent;
    let mut c = proxy_conn(&env).await;
    let host = format!("{HOST}:{}", env.up_http);
    let url = |p: &str| format!("http://{HOST}:{}{p}", env.up_http);

    let r = send(&mut c, "POST", &url("/llm/json"), &host, "{}").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("prompt_tokens"), "the body reaches the agent unchanged");
    wait_for_spend(&spent, 0.0045).await; // 1000 × 2.5 + 200 × 10 per million

    let r = send(&mut c, "POST", &url("/llm/sse"), &host, "{}").await;
    assert_eq!(r.status, 200);
    assert!(r.body.contains("[DONE]"));
    wait_for_spend(&spent, 0.0045 + 0.00075).await; // 100 × 2.5 + 50 × 10 per million

    // No usage in the answer: 100,000 tokens at 10.0 per million = 1.0. The request
    // also went without Accept-Encoding, so that usage could be read.
    let r = send_with(&mut c, "GET", &url("/plain"), &host, &[("accept-encoding", "gzip")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["headers"].get("accept-encoding"), None, "{}", r.body);
    wait_for_spend(&spent, 1.00525).await;
    let r = send(&mut c, "POST", &url("/llm/json"), &host, "{}").await;
    assert_eq!(r.status, 429, "the money budget is spent: {}", r.body);
    // The completion records say what each response cost.
    let done = wait_event(&env, "http_done", "\"input_tokens\":1000").await;
    assert_eq!(
        done.details["usage"],
        serde_json::json!({ "model": "gpt-4o", "input_tokens": 1000, "output_tokens": 200, "cost": 0.0045 })
    );
    let unread = wait_event(&env, "http_done", "\"unread\"").await;
    assert_eq!(unread.details["usage"]["cost"], 1.0);
}

async fn wait_for_spend(spent: &impl Fn() -> f64, want: f64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let got = spent();
        if (got - want).abs() < 1e-9 {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "spent {got}, expected {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A host-level allow would be a tunnel carrying any number of requests: with a budget
/// the gateway looks inside and counts each request.
#[tokio::test]
async fn requests_inside_a_tunnel_are_counted_one_by_one() {
    let env = env(r#"
[network]
default = "deny"

[[network.rule]]
host = "api.test.example"
action = "allow"

[budget]
requests = 3
per = "day"
"#)
    .await;
    let target = format!("{HOST}:{}", env.up_https);
    let mut c = connect_tls(&env, &target, HOST).await.unwrap();
    for i in 1..=3 {
        let r = send(&mut c, "POST", &format!("/t/{i}"), &target, &format!("tunnel-budget-{i}")).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    let r = send(&mut c, "POST", "/t/4", &target, "tunnel-budget-4").await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(!upstream_saw(b"tunnel-budget-4"));
}
