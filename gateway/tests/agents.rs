//! Agents calling agents through the gateway: `agent.<name>:<port>` is decided by the
//! caller's rules, then by the callee's `[ingress]`; both are audited naming both
//! profiles; the callee is reached only through the dialer gvmd provides (here: the
//! test's local upstream stands for the port the callee serves in its netns).

mod common;

use std::sync::Arc;

use common::*;
use gvm_gateway::AgentDialer;

/// Reaches "researcher" at 127.0.0.1:<port> (the test upstream); every other agent is
/// "not running", as gvmd's dialer says when a profile has no netns.
struct TestDialer;

impl AgentDialer for TestDialer {
    fn dial(&self, profile: &str, port: u16) -> Result<std::net::TcpStream, String> {
        match profile {
            "researcher" => std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string()),
            other => Err(format!("agent `{other}` is not running: start it with `gvmctl start {other}`")),
        }
    }
}

const CALLER: &str = r#"
[[network.rule]]
host = "agent.researcher"
action = "allow"

[[network.rule]]
host = "agent.sleeper"
action = "allow"

[[network.rule]]
host = "agent.ghost"
action = "allow"
"#;

/// Loads another profile into the same gateway and gives it its own proxy listener.
async fn add_profile(env: &Env, name: &str, text: &str) -> std::net::SocketAddr {
    let text = text.replace("{HTTP}", &env.up_http.to_string());
    let file = env.dir.path().join(format!("{name}.toml"));
    let p = gvm_policy::parse_profile(&file, &text).unwrap_or_else(|d| panic!("{d}"));
    env.gw.set_profile(&p);
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    env.gw.serve_proxy(l, &gvm_api::ProfileName::parse(name).unwrap());
    addr
}

async fn conn(addr: std::net::SocketAddr) -> Sender {
    handshake(tokio::net::TcpStream::connect(addr).await.unwrap()).await
}

fn of(env: &Env, profile: &str, kind: &str) -> Vec<gvm_audit::AuditEvent> {
    events(env).into_iter().filter(|e| e.kind == kind && e.profile.as_deref() == Some(profile)).collect()
}

#[tokio::test]
async fn a_call_is_decided_by_both_sides_and_audited_on_both() {
    let env = env_named("planner", CALLER).await;
    env.gw.set_agent_dialer(Arc::new(TestDialer));
    add_profile(
        &env,
        "researcher",
        "[agent]\nserve = [{HTTP}]\n\n[[ingress.allow]]\nfrom = \"planner\"\nport = {HTTP}\nmethods = [\"POST\"]\npath = \"/tasks/**\"\n",
    )
    .await;
    let intruder = add_profile(&env, "intruder", CALLER).await;
    add_profile(&env, "sleeper", "[agent]\nserve = [{HTTP}]\n\n[[ingress.allow]]\nfrom = \"*\"\n").await;
    let port = env.up_http;
    let url = |p: &str| format!("http://agent.researcher:{port}{p}");
    let host = format!("agent.researcher:{port}");

    // Allowed by both: the callee answers, in plain HTTP, with the Host the caller named.
    let mut s = proxy_conn(&env).await;
    let r = send(&mut s, "POST", &url("/tasks/1"), &host, "do it").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["path"], "/tasks/1");
    assert_eq!(r.json()["host"], host.as_str());
    let ing = of(&env, "researcher", "ingress");
    assert_eq!(ing.len(), 1, "{ing:?}");
    assert_eq!(ing[0].decision.as_deref(), Some("allow"));
    assert!(ing[0].rule.as_deref().unwrap().starts_with("ingress.allow[0] ("), "{:?}", ing[0].rule);
    assert_eq!(
        (ing[0].details["caller"].as_str(), ing[0].details["callee"].as_str()),
        (Some("planner"), Some("researcher"))
    );
    let http = of(&env, "planner", "http");
    let d = &http.last().unwrap().details;
    assert_eq!(http.last().unwrap().decision.as_deref(), Some("allow"));
    assert_eq!((d["caller"].as_str(), d["callee"].as_str()), (Some("planner"), Some("researcher")));
    assert_eq!(d["ingress_seq"], serde_json::json!(ing[0].seq));

    // The caller may, the callee's [ingress] does not: 403 naming the callee's default and the fix.
    let r = send(&mut s, "GET", &url("/tasks/1"), &host, "").await;
    assert_eq!(r.status, 403, "{}", r.body);
    let j = r.json();
    assert_eq!(j["callee"], "researcher");
    assert_eq!(j["rule"], "ingress of researcher (default: nobody may call)");
    assert!(j["reason"].as_str().unwrap().contains("[[ingress.allow]]"), "{j}");
    assert!(j["how_to_get_access"].as_str().unwrap().contains("researcher.toml"), "{j}");
    let ing = of(&env, "researcher", "ingress");
    assert_eq!(ing.last().unwrap().decision.as_deref(), Some("deny"));
    assert_eq!(ing.last().unwrap().details["method"], "GET");
    let last = of(&env, "planner", "http").pop().unwrap();
    assert_eq!((last.decision.as_deref(), last.details["callee"].as_str()), (Some("deny"), Some("researcher")));

    // Another caller, same rules of its own: refused by the callee, audited on both sides.
    let mut s2 = conn(intruder).await;
    let r = send(&mut s2, "POST", &url("/tasks/1"), &host, "").await;
    assert_eq!(r.status, 403, "{}", r.body);
    let ing = of(&env, "researcher", "ingress").pop().unwrap();
    assert_eq!((ing.decision.as_deref(), ing.details["caller"].as_str()), (Some("deny"), Some("intruder")));
    let http = of(&env, "intruder", "http").pop().unwrap();
    assert_eq!((http.decision.as_deref(), http.details["callee"].as_str()), (Some("deny"), Some("researcher")));

    // HTTPS to an agent: gvm's leaf for agent.researcher, then plain HTTP to the callee.
    let mut t = connect_tls(&env, &host, "agent.researcher").await.unwrap();
    let r = send(&mut t, "POST", "/tasks/2", &host, "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["path"], "/tasks/2");

    // A served port the callee's ingress names, but nobody listens / the agent is down: 502.
    let r = send(&mut s, "GET", &format!("http://agent.sleeper:{port}/"), &format!("agent.sleeper:{port}"), "").await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(r.json()["reason"].as_str().unwrap().contains("gvmctl start sleeper"), "{}", r.body);
    // A port the callee does not serve: 403 naming `serve`.
    let r = send(&mut s, "GET", "http://agent.researcher:1/tasks/1", "agent.researcher:1", "").await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.json()["reason"].as_str().unwrap().contains("[agent] serve"), "{}", r.body);
    // No such profile: refused, never resolved.
    let r = send(&mut s, "GET", "http://agent.ghost:80/", "agent.ghost", "").await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.json()["reason"].as_str().unwrap().contains("no profile named `ghost`"), "{}", r.body);
    // The caller's own rules come first: no rule for agent.other, no ingress decision.
    let before = of(&env, "researcher", "ingress").len();
    let r = send(&mut s2, "GET", &url("/tasks/1").replace("researcher", "nobody"), "agent.nobody", "").await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(of(&env, "researcher", "ingress").len(), before);
}

#[tokio::test]
async fn without_a_dialer_agents_are_unreachable() {
    let env = env_named("lonely", CALLER).await;
    add_profile(&env, "researcher", "[agent]\nserve = [{HTTP}]\n\n[[ingress.allow]]\nfrom = \"lonely\"\n").await;
    let mut s = proxy_conn(&env).await;
    let port = env.up_http;
    let r =
        send(&mut s, "GET", &format!("http://agent.researcher:{port}/"), &format!("agent.researcher:{port}"), "").await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(r.json()["reason"].as_str().unwrap().contains("need gvmd"), "{}", r.body);
}

/// A caller flooding a callee with calls it refuses spends the caller's `[limits]
/// decisions`, not the callee's: the callee's own requests still go out, and every
/// refusal is in the callee's log.
#[tokio::test]
async fn refused_calls_are_charged_to_the_caller_not_the_callee() {
    let env = env_named("noisy", CALLER).await;
    env.gw.set_agent_dialer(Arc::new(TestDialer));
    let callee = add_profile(
        &env,
        "researcher",
        "[agent]\nserve = [{HTTP}]\n\n[limits]\ndecisions = \"3/min\"\n\n[[network.rule]]\nhost = \"api.test.example\"\naction = \"allow\"\n",
    )
    .await;
    let port = env.up_http;
    let mut s = proxy_conn(&env).await;
    for i in 0..6 {
        let r = send(&mut s, "GET", &format!("http://agent.researcher:{port}/p{i}"), "agent.researcher", "").await;
        assert_eq!(r.status, 403, "{}", r.body);
    }
    assert_eq!(of(&env, "researcher", "ingress").len(), 6, "every refusal is in the callee's log");
    let mut own = conn(callee).await;
    let r = send(&mut own, "GET", &format!("http://{HOST}:{port}/mine"), HOST, "").await;
    assert_eq!(r.status, 200, "the callee's budget was spent by its caller: {}", r.body);
}

/// A credential never goes to another agent: a rule that injects one refuses the call,
/// and a placeholder bound to `agent.<name>` is never swapped for its value.
#[tokio::test]
async fn credentials_never_go_to_another_agent() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "sk-the-real-value-0123456789").unwrap();
    let policy = format!(
        r#"[secrets]
k = {{ file = "{}", env = "K", hosts = ["agent.researcher"] }}

[[network.rule]]
host = "agent.researcher"
path = "/inject/**"
inject = {{ header = "Authorization", value = "Bearer {{secret:k}}" }}
action = "allow"

[[network.rule]]
host = "agent.researcher"
action = "allow"
"#,
        key.display()
    );
    let env = env_named("keyholder", &policy).await;
    env.gw.set_agent_dialer(Arc::new(TestDialer));
    add_profile(&env, "researcher", "[agent]\nserve = [{HTTP}]\n\n[[ingress.allow]]\nfrom = \"keyholder\"\n").await;
    let host = format!("agent.researcher:{}", env.up_http);
    let mut t = connect_tls(&env, &host, "agent.researcher").await.unwrap();
    let r = send(&mut t, "GET", "/inject/x", &host, "").await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert!(r.json()["reason"].as_str().unwrap().contains("never goes to another agent"), "{}", r.body);
    let profile = gvm_policy::parse_profile(&env.dir.path().join("keyholder.toml"), &policy).unwrap();
    let placeholder = env.gw.agent_env(&profile).into_iter().find(|(k, _)| k == "K").unwrap().1;
    let bearer = format!("Bearer {placeholder}");
    let r = send_with(&mut t, "GET", "/plain", &host, &[("authorization", &bearer)]).await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_eq!(r.json()["secret_egress"], "placeholder of secret k", "{}", r.body);
}
