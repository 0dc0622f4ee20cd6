//! What a user sees when a profile is refused: exact file:line:column texts.

use std::path::Path;

use gvm_policy::{parse_profile, Diagnostic};

fn refuse(text: &str) -> Diagnostic {
    match parse_profile(Path::new("profiles/inv.toml"), text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(d) => d,
    }
}

fn says(text: &str) -> String {
    refuse(text).to_string()
}

#[test]
fn toml_syntax_error_has_position() {
    let d = refuse("[network]\ndefault = \"deny\n");
    assert_eq!((d.line, d.column), (Some(2), Some(16)));
    assert_eq!(d.to_string(), "profiles/inv.toml:2:16: invalid basic string, expected `\"`");
    // The message is the TOML parser's, on one line, not repeated.
    assert!(!d.message.contains('\n'));
    assert_eq!(d.message.matches("invalid").count(), 1);
}

#[test]
fn unknown_field_lists_the_accepted_fields() {
    assert_eq!(
        says("[[network.rule]]\nhost = \"a.com\"\naction = \"allow\"\n\n[[network.rule]]\nhost = \"b.com\"\nacton = \"allow\"\n"),
        "profiles/inv.toml:7:1: `network.rule[1].acton`: unknown field `acton` — accepted fields: host, port, ports, methods, path, action, rate, budget, cost, inject, intercept, comment, name, mcp"
    );
    assert_eq!(
        says("bogus = 1\n"),
        "profiles/inv.toml:1:1: `bogus`: unknown field `bogus` — accepted fields: agent, network, secrets, files, limits, budget, ingress"
    );
    assert_eq!(
        says("[secrets]\nx = { file = \"/a\", foo = 1 }\n"),
        "profiles/inv.toml:2:20: `secrets.x.foo`: unknown field `foo` — accepted fields: file, credential, env, hosts, body"
    );
}

#[test]
fn bad_enum_value_lists_allowed_values() {
    assert_eq!(
        says("[network]\ndefault = \"allow\"\n"),
        "profiles/inv.toml:2:11: `network.default`: unknown value `allow` — allowed values: deny, hold"
    );
    assert_eq!(
        says("[[network.rule]]\nhost = \"a.com\"\naction = \"alow\"\n"),
        "profiles/inv.toml:3:10: `network.rule[0].action`: unknown value `alow` — allowed values: allow, deny, hold"
    );
    assert_eq!(
        says("[agent]\nmode = \"audit\"\n"),
        "profiles/inv.toml:2:8: `agent.mode`: unknown value `audit` — allowed values: enforce, watch"
    );
    assert_eq!(
        says("[agent]\nworkspaces = [{ path = \"/a\", mode = \"rx\" }]\n"),
        "profiles/inv.toml:2:37: `agent.workspaces[0].mode`: unknown value `rx` — allowed values: overlay, ro, rw"
    );
}

#[test]
fn missing_and_mistyped_fields() {
    assert_eq!(
        says("[[network.rule]]\nhost = \"a.com\"\n"),
        "profiles/inv.toml:1:1: `network.rule[0]`: missing field `action` — add `action = ...` to this table"
    );
    assert_eq!(
        says("[agent]\ntasks_max = \"x\"\n"),
        "profiles/inv.toml:2:13: `agent.tasks_max`: invalid type: string \"x\", expected an integer"
    );
}

#[test]
fn bad_host_points_at_the_host() {
    assert_eq!(
        says("[[network.rule]]\nhost = \"a.com:443\"\naction = \"allow\"\n"),
        "profiles/inv.toml:2:8: `network.rule[0].host`: host contains a port; write the port in the rule's `port` field — remove `:PORT` and write `port = PORT` in the rule"
    );
    let d = refuse("[[network.rule]]\naction = \"allow\"\nhost = \"0x7f.1\"\n");
    assert_eq!((d.line, d.column, d.field.as_deref()), (Some(3), Some(8), Some("network.rule[0].host")));
    assert!(d.message.contains("not a canonical IPv4"), "{d}");
    let d = refuse("[[network.rule]]\naction = \"allow\"\nhost = \"allowed.com@evil.com\"\n");
    assert_eq!((d.line, d.column), (Some(3), Some(8)));
    let d = refuse("[[network.rule]]\naction = \"allow\"\nhost = \"10.0.0.1/8\"\n");
    assert_eq!(d.message, "host bits are set; the network is `10.0.0.0/8`");
}

#[test]
fn undefined_secret_points_at_the_placeholder() {
    let text = "[secrets]\nopenai = { file = \"/etc/gvm/secrets/openai\" }\n\n[[network.rule]]\nhost = \"a.com\"\naction = \"allow\"\ninject = { header = \"Authorization\", value = \"Bearer {secret:openia}\" }\n";
    assert_eq!(
        says(text),
        "profiles/inv.toml:7:54: `network.rule[0].inject.value`: secret `openia` is not defined in [secrets] — defined secrets: openai"
    );
}

#[test]
fn bad_rate_and_duration_point_at_the_value() {
    assert_eq!(
        says("[[network.rule]]\nhost = \"a.com\"\naction = \"allow\"\nrate = \"5/minute\"\n"),
        "profiles/inv.toml:4:8: `network.rule[0].rate`: `5/minute` is not a rate; write N/sec, N/min, N/hour or N/day, e.g. \"60/min\""
    );
    assert_eq!(
        says("[network]\nhold_timeout = \"2 min\"\n"),
        "profiles/inv.toml:2:16: `network.hold_timeout`: `2 min` is not a duration; write a whole number and s, m, h or d, e.g. \"30s\" or \"2m\""
    );
}

#[test]
fn bad_mcp_tool_names_point_at_the_name_with_a_fix() {
    assert_eq!(
        says("[[network.rule]]\nhost = \"a.com\"\naction = \"allow\"\nmcp = { tools = [\"search\", \"read file\"] }\n"),
        "profiles/inv.toml:4:28: `network.rule[0].mcp.tools[1]`: `read file` may not contain ' ' (only `*` is a wildcard) — write a tool name as the server lists it, e.g. \"read_file\" or \"delete_*\""
    );
}

#[test]
fn semantic_errors() {
    let cases: &[(&str, &str, &str)] = &[
        ("[agent]\nenv = { PATH = \"/x\" }\n", "agent.env.PATH", "cannot be overridden"),
        ("[agent]\nenv = { https_proxy = \"http://evil\" }\n", "agent.env.https_proxy", "cannot be overridden"),
        ("[agent]\nenv = { \"A=B\" = \"x\" }\n", "agent.env.A=B", "no `=`"),
        ("[agent]\nworkspaces = [{ path = \"rel\" }]\n", "agent.workspaces[0].path", "absolute"),
        ("[agent]\nworkspaces = [{ path = \"/a/../b\" }]\n", "agent.workspaces[0].path", "`..`"),
        ("[agent]\nmemory_max = \"2GB\"\n", "agent.memory_max", "not a size"),
        ("[agent]\ncpu_quota = \"50\"\n", "agent.cpu_quota", "not a CPU quota"),
        ("[agent]\ntasks_max = 0\n", "agent.tasks_max", "positive"),
        ("[agent]\ncommand = []\n", "agent.command", "empty"),
        ("[[network.rule]]\nhost = \"a.com\"\naction = \"allow\"\nmethods = [\"post\"]\n", "network.rule[0].methods[0]", "not an HTTP method"),
        ("[[network.rule]]\nhost = \"a.com\"\naction = \"allow\"\npath = \"/v1/../x\"\n", "network.rule[0].path", "`..`"),
        ("[[network.rule]]\nhost = \"a.com\"\naction = \"allow\"\nport = 0\n", "network.rule[0].port", "between 1 and 65535"),
        ("[[network.rule]]\nhost = \"a.com\"\naction = \"allow\"\nport = 1\nports = [2]\n", "network.rule[0].ports", "both set"),
        ("[[network.rule]]\nhost = \"a.com\"\naction = \"deny\"\nrate = \"1/sec\"\n", "network.rule[0].rate", "deny rule"),
        ("[[network.rule]]\nhost = \"a.com\"\naction = \"allow\"\nintercept = false\npath = \"/x\"\n", "network.rule[0].intercept", "`path`"),
        ("[secrets]\nk = { file = \"/a\" }\n[[network.rule]]\nhost = \"a.com\"\naction = \"allow\"\ninject = { header = \"Host\", value = \"{secret:k}\" }\n", "network.rule[0].inject.header", "cannot be injected"),
        ("[secrets]\nk = { file = \"/a\" }\n[[network.rule]]\nhost = \"a.com\"\naction = \"allow\"\ninject = { header = \"X\", value = \"a\\r\\nB: {secret:k}\" }\n", "network.rule[0].inject.value", "control characters"),
        ("[secrets]\nk = { file = \"rel\" }\n", "secrets.k.file", "absolute"),
        ("[secrets]\nk = { file = \"/a\", credential = \"b\" }\n", "secrets.k", "exactly one"),
        ("[files]\nreview = [\"src/**x\"]\n", "files.review[0]", "`**`"),
        ("[files]\ndeny_read = [\"[abc\"]\n", "files.deny_read[0]", "never closed"),
        ("[[network.rule]]\nhost = \"a.com\"\naction = \"allow\"\nmcp = { deny_tools = [\"x\"] }\n", "network.rule[0].mcp.tools", "no tool may be called"),
        ("[[network.rule]]\nhost = \"a.com\"\naction = \"allow\"\nmcp = { tools = [\"read file\"] }\n", "network.rule[0].mcp.tools[0]", "only `*` is a wildcard"),
        ("[[network.rule]]\nhost = \"a.com\"\naction = \"allow\"\nmcp = { tools = [\"a\"], deny_tools = [\"b?\"] }\n", "network.rule[0].mcp.deny_tools[0]", "only `*`"),
        ("[[network.rule]]\nhost = \"a.com\"\naction = \"deny\"\nmcp = { tools = [\"a\"] }\n", "network.rule[0].mcp", "deny rule"),
        ("[[network.rule]]\nhost = \"a.com\"\naction = \"allow\"\nintercept = false\nmcp = { tools = [\"a\"] }\n", "network.rule[0].intercept", "`mcp`"),
        ("[[network.rule]]\nhost = \"a.com\"\naction = \"allow\"\nmcp = { tools = [\"a\"], filter = true }\n", "network.rule[0].mcp.filter", "unknown field `filter`"),

    ];
    for (text, field, needle) in cases {
        let d = refuse(text);
        assert_eq!(d.field.as_deref(), Some(*field), "{d}");
        assert!(d.line.is_some() && d.column.is_some(), "{d}");
        assert!(d.message.contains(needle), "{d} does not say {needle:?}");
    }
}

#[test]
fn profile_name_comes_from_the_file_name() {
    let d = parse_profile(Path::new("profiles/Bad.Name.toml"), "").unwrap_err();
    assert_eq!(d.line, None);
    assert!(d.to_string().starts_with("profiles/Bad.Name.toml: `Bad.Name` is not a valid profile name"), "{d}");
    assert!(d.to_string().contains("gvm-<name>"));
    let p = parse_profile(Path::new("/etc/gvm/profiles/ok-1.toml"), "").unwrap();
    assert_eq!(p.name.as_str(), "ok-1");
}

#[test]
fn wire_refusal_prints_the_same() {
    let d = refuse("[network]\ndefault = \"allow\"\n");
    assert_eq!(gvm_api::ProfileRefusal::from(&d).to_string(), d.to_string());
}

#[test]
fn limits_have_defaults_and_say_what_is_wrong() {
    let p = parse_profile(Path::new("profiles/inv.toml"), "").unwrap();
    assert_eq!(p.limits, gvm_policy::Limits::default());
    assert_eq!((p.limits.connections, p.limits.held_requests), (1024, 32));
    assert_eq!(p.limits.dns_queries.to_string(), "3000/min");
    assert_eq!(p.limits.decisions.to_string(), "6000/min");
    assert_eq!(p.limits.request_body_per_sec, 32 << 20);
    let text = "[limits]\nconnections = 64\nheld_requests = 4\ndns_queries = \"20/sec\"\ndecisions = \"100/min\"\nrequest_body_per_sec = \"1M\"\n";
    let l = parse_profile(Path::new("profiles/inv.toml"), text).unwrap().limits;
    assert_eq!((l.connections, l.held_requests, l.request_body_per_sec), (64, 4, 1 << 20));
    assert_eq!((l.dns_queries.to_string(), l.decisions.to_string()), ("20/sec".into(), "100/min".into()));

    assert_eq!(
        says("[limits]\nconnections = 0\n"),
        "profiles/inv.toml:2:15: `limits.connections`: must be a whole number from 1 to 1048576 — remove `connections` to get the default, or write a number such as 64"
    );
    assert_eq!(
        says("[limits]\ndns_queries = \"50/s\"\n"),
        "profiles/inv.toml:2:15: `limits.dns_queries`: `50/s` is not a rate; write N/sec, N/min, N/hour or N/day, e.g. \"60/min\""
    );
    assert!(says("[limits]\nrequest_body_per_sec = -1\n")
        .contains("`limits.request_body_per_sec`: must be a positive size"));
    assert!(says("[limits]\nconnection = 5\n").contains(
        "unknown field `connection` — accepted fields: connections, held_requests, dns_queries, decisions, request_body_per_sec"
    ));
}

#[test]
fn secret_env_and_hosts_are_validated() {
    assert_eq!(
        says("[secrets]\nx = { file = \"/a\", env = \"HTTPS_PROXY\" }\n"),
        "profiles/inv.toml:2:26: `secrets.x.env`: `HTTPS_PROXY` is set by the launcher and cannot be overridden — choose another name"
    );
    assert!(says("[agent]\nenv = { K = \"v\" }\n[secrets]\nx = { file = \"/a\", env = \"K\" }\n")
        .contains("`K` is already set by [agent] env or another secret"));
    assert!(says("[secrets]\nx = { file = \"/a\", env = \"1X\" }\n").contains("may not start with a digit"));
    assert!(says("[secrets]\nx = { file = \"/a\", hosts = [\"*\"] }\n").contains("cannot be bound to every host"));
    assert!(says("[secrets]\nx = { file = \"/a\", hosts = [\"a.com:443\"] }\n").contains("`secrets.x.hosts[0]`"));
    let p = gvm_policy::parse_profile(
        std::path::Path::new("profiles/ok.toml"),
        "[secrets]\nx = { file = \"/a\", env = \"X_KEY\", hosts = [\"api.x.com\", \"*.y.com\"] }\n",
    )
    .unwrap();
    let u = &p.secret_use["x"];
    assert_eq!(u.env.as_deref(), Some("X_KEY"));
    assert_eq!(u.hosts.len(), 2);
    assert_eq!((u.at.line, u.at.column), (Some(2), Some(14)), "points at the file");
}

#[test]
fn budgets_are_parsed() {
    let p = parse_profile(
        Path::new("profiles/b.toml"),
        "[budget]\nrequests = 1000\nper = \"day\"\n[[network.rule]]\nhost = \"a.com\"\naction = \"allow\"\n\
         budget = { requests = 100, per = \"hour\", on_exhausted = \"hold\" }\n",
    )
    .unwrap();
    let b = p.budget.unwrap();
    assert_eq!(
        (b.requests, b.per, b.on_exhausted),
        (Some(1000), gvm_policy::BudgetPer::Day, gvm_policy::OnExhausted::Deny)
    );
    let r = p.network.rules[0].budget.unwrap();
    assert_eq!(
        (r.requests, r.per, r.on_exhausted),
        (Some(100), gvm_policy::BudgetPer::Hour, gvm_policy::OnExhausted::Hold)
    );
}

#[test]
fn bad_budgets_say_what_to_write() {
    assert_eq!(
        says("[budget]\nrequests = 10\nper = \"week\"\n"),
        "profiles/inv.toml:3:7: `budget.per`: unknown value `week` — allowed values: minute, hour, day, month"
    );
    assert_eq!(
        says("[budget]\nrequests = 0\nper = \"day\"\n"),
        "profiles/inv.toml:2:12: `budget.requests`: must be a whole number of requests, 1 or more — write e.g. \
         requests = 1000; to forbid requests altogether, use a deny rule"
    );
    assert_eq!(
        says("[budget]\nper = \"day\"\n"),
        "profiles/inv.toml:1:1: `budget`: a budget needs something to count — write `requests = N` and/or \
         `money = AMOUNT`, e.g. requests = 1000, per = \"day\""
    );
    assert_eq!(
        says("[[network.rule]]\nhost = \"a.com\"\naction = \"deny\"\nbudget = { requests = 1, per = \"day\" }\n"),
        "profiles/inv.toml:4:10: `network.rule[0].budget`: a deny rule forwards nothing, so it has no budget — \
         remove `budget`"
    );
    let d = refuse("[[network.rule]]\nhost = \"a.com\"\naction = \"allow\"\nbudget = { requests = 1 }\n");
    assert!(d.to_string().contains("missing field `per`"), "{d}");
    let d = refuse(
        "[[network.rule]]\nhost = \"a.com\"\naction = \"allow\"\n\
         budget = { requests = 1, per = \"day\", on_exhausted = \"wait\" }\n",
    );
    assert!(d.to_string().contains("allowed values: deny, hold"), "{d}");
}

#[test]
fn money_budgets_and_costs() {
    let p = parse_profile(
        Path::new("profiles/m.toml"),
        "[budget]\nmoney = 5\nper = \"month\"\n[[network.rule]]\nhost = \"a.com\"\naction = \"allow\"\ncost = 0.02\n\
         budget = { money = 1.0, requests = 10, per = \"day\" }\n",
    )
    .unwrap();
    assert_eq!(p.budget.unwrap().money, Some(gvm_policy::Money(5_000_000)));
    assert_eq!(p.budget.unwrap().requests, None);
    let r = &p.network.rules[0];
    assert_eq!(r.cost, Some(gvm_policy::Money(20_000)));
    assert_eq!(r.budget.unwrap().money, Some(gvm_policy::Money(1_000_000)));
    assert_eq!(
        says("[budget]\nmoney = -1.0\nper = \"day\"\n"),
        "profiles/inv.toml:2:9: `budget.money`: must be an amount above 0 — write e.g. money = 5.0 (in the currency \
         of the rules' `cost`)"
    );
    assert_eq!(
        says("[[network.rule]]\nhost = \"a.com\"\naction = \"allow\"\ncost = -0.5\n"),
        "profiles/inv.toml:4:8: `network.rule[0].cost`: must be an amount of 0 or more — write what one request \
         costs, e.g. cost = 0.02"
    );
    assert_eq!(
        says("[[network.rule]]\nhost = \"a.com\"\naction = \"deny\"\ncost = 1\n"),
        "profiles/inv.toml:4:8: `network.rule[0].cost`: a deny rule forwards nothing, so it costs nothing — remove `cost`"
    );
    assert!(says("[budget]\nmoney = nan\nper = \"day\"\n").contains("must be an amount above 0"));
}
