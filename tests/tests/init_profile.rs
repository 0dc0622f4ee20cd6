//! `gvmctl init PROFILE --from TEMPLATE`: writes a checked profile from a shipped
//! template into the config dir, asks nothing without a terminal, never writes over a
//! profile without --force, and tells the user the next commands.

mod common;

use common::*;

fn init(dirs: &Dirs, args: &[&str]) -> std::process::Output {
    let mut all = vec!["init"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--config-dir", dirs.config.to_str().unwrap()]);
    gvmctl(dirs, &all)
}

#[test]
fn init_writes_a_valid_profile_from_each_template_and_prints_the_next_commands() {
    let dirs = Dirs::new();
    let ws = dirs.root.path().join("work");
    std::fs::create_dir_all(&ws).unwrap();
    for (name, from) in [("myhermes", "hermes"), ("mybot", "generic")] {
        let out = init(&dirs, &[name, "--from", from, "--workspace", ws.to_str().unwrap()]);
        assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
        let text = stdout(&out);
        let file = dirs.config.join("profiles").join(format!("{name}.toml"));
        assert!(text.starts_with(&format!("wrote {} from ", file.display())), "{text}");
        for next in [
            format!("gvmctl reload && gvmctl start {name}"),
            format!("journalctl -fu gvm-agent@{name}"),
            "gvmctl approvals --follow".to_string(),
        ] {
            assert!(text.contains(&next), "{next} missing from:\n{text}");
        }
        // The secret file of the template does not exist here: the user is told.
        assert!(text.contains("note: create the secret file /etc/gvm/secrets/"), "{text}");
        let written = std::fs::read_to_string(&file).unwrap();
        assert!(written.contains(&format!("workspaces = [{{ path = \"{}\", mode = \"overlay\" }}]", ws.display())));
        let check = gvmctl(&dirs, &["policy", "check", file.to_str().unwrap()]);
        assert!(check.status.success(), "{}", stdout(&check));
    }
    let hermes = std::fs::read_to_string(dirs.config.join("profiles/myhermes.toml")).unwrap();
    assert!(hermes.contains("gvm-agent@myhermes") && hermes.contains("\"**/.env\""), "{hermes}");
}

#[test]
fn init_refuses_to_overwrite_without_force_and_names_the_templates() {
    let dirs = Dirs::new();
    let first = init(&dirs, &["agent1", "--from", "hermes"]);
    assert!(first.status.success(), "{}", stderr(&first));
    let file = dirs.config.join("profiles/agent1.toml");
    std::fs::write(&file, "# mine\n").unwrap();

    let again = init(&dirs, &["agent1", "--from", "hermes"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(stderr(&again).contains("exists: keep it, or write over it with --force"), "{}", stderr(&again));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "# mine\n", "the user's file is untouched");

    let forced = init(&dirs, &["agent1", "--from", "generic", "--force", "--json"]);
    assert!(forced.status.success(), "{}", stderr(&forced));
    let report: serde_json::Value = serde_json::from_slice(&forced.stdout).unwrap();
    assert_eq!(report["template"], "openai-compatible-agent.toml");
    assert_eq!(report["next"].as_array().unwrap().len(), 3);
    assert!(std::fs::read_to_string(&file).unwrap().contains("--from generic"));

    let bad = init(&dirs, &["agent2", "--from", "openclaww"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("[possible values: hermes, generic"), "{}", stderr(&bad));
    let rel = init(&dirs, &["agent2", "--from", "hermes", "--workspace", "work"]);
    assert!(stderr(&rel).contains("give an absolute path"), "{}", stderr(&rel));
    let name = init(&dirs, &["Bad Name", "--from", "hermes"]);
    assert!(stderr(&name).contains("profile name"), "{}", stderr(&name));
    assert!(!dirs.config.join("profiles/agent2.toml").exists());
}
