//! ARCHITECTURE.md documents every sandbox rule, entry by entry: an entry added to
//! `src/rules.rs` without its line there fails this test.

use gvm_sandbox::rules;

#[test]
fn every_rule_is_documented_in_architecture_md() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../ARCHITECTURE.md")).unwrap();
    let mut missing = Vec::new();
    let names = rules::SECCOMP.iter().map(|(n, _)| *n);
    let paths = rules::HIDDEN_DIRS
        .iter()
        .chain(rules::HIDDEN_FILES)
        .chain(rules::PROC_READ_ONLY)
        .chain(rules::PROC_MASKED)
        .chain(rules::SYS_MASKED)
        .copied();
    for entry in names.chain(paths) {
        if !doc.contains(&format!("| `{entry}` |")) {
            missing.push(entry);
        }
    }
    assert!(missing.is_empty(), "ARCHITECTURE.md lacks a row for: {missing:?} (see 'Sandbox rules, entry by entry')");
}
