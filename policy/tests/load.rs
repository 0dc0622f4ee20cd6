//! Loading profiles from disk, the shipped examples, and `gvmctl policy check`.

use std::path::{Path, PathBuf};

use gvm_policy::{check, load_dir, load_profile, parse_profile, Mode};

#[test]
fn load_dir_keeps_the_good_and_refuses_the_bad() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("good.toml"), "[[network.rule]]\nhost = \"a.com\"\naction = \"allow\"\n").unwrap();
    std::fs::write(d.join("bad.toml"), "[network]\ndefault = \"allow\"\n").unwrap();
    std::fs::write(d.join("notes.txt"), "not a profile").unwrap();
    std::fs::write(d.join("good.toml~"), "garbage").unwrap();
    std::fs::write(d.join("Bad-Name.toml"), "").unwrap();
    std::fs::write(d.join("latin1.toml"), b"# caf\xe9\n").unwrap();
    let out = load_dir(d);
    let names: Vec<&str> = out.profiles.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["good"]);
    assert_eq!(out.profiles[0].file, d.join("good.toml"));
    let refused: Vec<String> = out.refused.iter().map(|r| r.to_string()).collect();
    assert_eq!(refused.len(), 3, "{refused:#?}");
    // Sorted by file name: Bad-Name, bad, latin1.
    assert!(refused[0].contains("`Bad-Name` is not a valid profile name"), "{}", refused[0]);
    assert_eq!(
        refused[1],
        format!(
            "{}:2:11: `network.default`: unknown value `allow` — allowed values: deny, hold",
            d.join("bad.toml").display()
        )
    );
    assert_eq!(
        refused[2],
        format!("{}:1:6: the file is not valid UTF-8 — save it as UTF-8", d.join("latin1.toml").display())
    );
}

#[test]
fn missing_dir_is_no_profiles() {
    let dir = tempfile::tempdir().unwrap();
    let out = load_dir(&dir.path().join("nope"));
    assert!(out.profiles.is_empty() && out.refused.is_empty());
}

#[test]
fn unreadable_file_is_a_refusal() {
    let dir = tempfile::tempdir().unwrap();
    // A directory named like a profile cannot be read as a file.
    std::fs::create_dir(dir.path().join("odd.toml")).unwrap();
    let out = load_dir(dir.path());
    assert!(out.profiles.is_empty());
    assert_eq!(out.refused.len(), 1);
    assert!(out.refused[0].message.starts_with("cannot read the file"), "{}", out.refused[0]);
    assert!(load_profile(&dir.path().join("missing.toml")).is_err());
}

fn shipped() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
    let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    v.sort();
    v
}

#[test]
fn every_shipped_policy_parses_and_compiles() {
    let files = shipped();
    assert!(files.len() >= 3, "{files:?}");
    for f in &files {
        let p = load_profile(f).unwrap_or_else(|d| panic!("{d}"));
        assert_eq!(p.compiled.rules().len(), p.network.rules.len());
        let warnings: Vec<String> = check(&p).iter().map(ToString::to_string).collect();
        if p.agent.mode == Mode::Enforce {
            assert!(warnings.is_empty(), "{}: {warnings:#?}", f.display());
        }
    }
    let out = load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies"));
    assert!(out.refused.is_empty(), "{:?}", out.refused);
    assert_eq!(out.profiles.len(), files.len());
}

#[test]
fn check_warns() {
    let p = parse_profile(
        Path::new("p/c.toml"),
        r#"
[network]
default = "hold"

[[network.rule]]
host = "*.example.com"
action = "deny"

[[network.rule]]
host = "api.example.com"
methods = ["GET"]
action = "allow"

[[network.rule]]
host = "pinned.org"
action = "allow"
intercept = false

[[network.rule]]
host = "pinned.org"
path = "/x"
action = "allow"

[[network.rule]]
host = "*"
action = "allow"

[[network.rule]]
host = "*"
action = "hold"

[secrets]
unused = { file = "/s" }
"#,
    )
    .unwrap();
    let w: Vec<String> = check(&p).iter().map(ToString::to_string).collect();
    let has = |needle: &str| w.iter().any(|x| x.contains(needle));
    assert!(has("p/c.toml:10:8: `network.rule[1]`: this allow rule can never match: network.rule[0] (line 6) denies every request it matches, and deny wins"), "{w:#?}");
    assert!(
        has("`network.rule[3]`: its method and path can never apply: network.rule[2] (line 15) tunnels this host"),
        "{w:#?}"
    );
    assert!(has("`network.rule[4]`: this rule allows every host"), "{w:#?}");
    assert!(has("`network.rule[5]`: matches exactly the same requests as network.rule[4]"), "{w:#?}");
    assert!(has("`network.hold_timeout`: held requests are denied after the default 120s"), "{w:#?}");
    assert!(has("`secrets.unused`: this secret is not used by any rule"), "{w:#?}");
}

#[test]
fn check_warns_about_secrets_a_placeholder_cannot_use() {
    let p = parse_profile(
        Path::new("p/s.toml"),
        "[secrets]\nok = { file = \"/a\", env = \"OK_KEY\", hosts = [\"api.x.com\"] }\n\
         nohosts = { file = \"/b\", env = \"NOHOSTS\" }\nnoenv = { file = \"/c\", hosts = [\"api.x.com\"] }\n",
    )
    .unwrap();
    let w: Vec<String> = check(&p).iter().map(ToString::to_string).collect();
    let has = |needle: &str| w.iter().any(|x| x.contains(needle));
    assert!(!w.iter().any(|x| x.contains("`secrets.ok")), "{w:#?}");
    assert!(has("`secrets.nohosts.env`: this secret's placeholder is bound to no host"), "{w:#?}");
    assert!(has("`secrets.noenv.hosts`: this secret has hosts but no env"), "{w:#?}");
    assert!(!has("`secrets.noenv`: this secret is not used by any rule"), "{w:#?}");
}
