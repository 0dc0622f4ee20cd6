//! `gvmctl init PROFILE --from TEMPLATE [--workspace DIR]`: writes a profile file from
//! one of the shipped templates (`policies/*.toml`, embedded in the binary), validated
//! before it is written, and prints the next commands. Offline: gvmd is not asked.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};

use crate::output;

/// The shipped templates: the name `--from` takes, the file in `policies/`, its text.
/// Adding one is one line here.
pub const TEMPLATES: &[(&str, &str, &str)] = &[
    ("hermes", "hermes.toml", include_str!("../../policies/hermes.toml")),
    ("generic", "openai-compatible-agent.toml", include_str!("../../policies/openai-compatible-agent.toml")),
    ("openclaw", "openclaw.toml", include_str!("../../policies/openclaw.toml")),
];

pub struct Args {
    pub profile: String,
    pub from: String,
    pub workspace: Option<PathBuf>,
    pub force: bool,
    pub config_dir: PathBuf,
    pub json: bool,
}

#[derive(serde::Serialize)]
struct Report {
    profile: String,
    file: String,
    template: String,
    workspace: Option<String>,
    rules: usize,
    warnings: Vec<gvm_api::ProfileRefusal>,
    /// Secret files the profile names that do not exist yet (gvmd refuses the profile
    /// until they do).
    missing_secrets: Vec<String>,
    next: Vec<String>,
}

pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    gvm_policy::ProfileName::parse(&a.profile).map_err(|e| anyhow::anyhow!("profile name {:?}: {e}", a.profile))?;
    let Some(&(_, file_name, template)) = TEMPLATES.iter().find(|(n, _, _)| *n == a.from) else {
        let names: Vec<&str> = TEMPLATES.iter().map(|(n, _, _)| *n).collect();
        bail!("no template {:?}: --from takes one of {}", a.from, names.join(", "));
    };
    let interactive = std::io::stdin().is_terminal() && !a.json;
    let default_ws = template_workspace(template);
    let workspace = match (&a.workspace, interactive, &default_ws) {
        (Some(w), _, _) => Some(w.clone()),
        (None, true, Some(d)) => {
            let answer = ask(&format!("Workspace directory the agent works in [{d}]: "))?;
            Some(PathBuf::from(if answer.is_empty() { d.clone() } else { answer }))
        }
        _ => None,
    };
    if let Some(w) = &workspace {
        if !w.is_absolute() {
            bail!("--workspace {}: give an absolute path (e.g. /srv/{})", w.display(), a.profile);
        }
    }

    let dir = a.config_dir.join("profiles");
    let path = dir.join(format!("{}.toml", a.profile));
    if path.exists() && !a.force {
        let overwrite =
            interactive && ask(&format!("{} exists. Overwrite it? [y/N] ", path.display()))?.eq_ignore_ascii_case("y");
        if !overwrite {
            bail!("{} exists: keep it, or write over it with --force", path.display());
        }
    }

    let text = render(template, &a, file_name, workspace.as_deref())?;
    // Validate before writing: a file gvmd would refuse is never written.
    let profile = gvm_policy::parse_profile(&path, &text)
        .map_err(|d| anyhow::anyhow!("the template {file_name} does not make a valid profile: {d}"))?;
    let warnings: Vec<gvm_api::ProfileRefusal> = gvm_policy::check(&profile).iter().map(Into::into).collect();

    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let tmp = dir.join(format!(".{}.toml.tmp", a.profile));
    std::fs::write(&tmp, &text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("cannot move {} to {}", tmp.display(), path.display()))?;

    let missing_secrets: Vec<String> = profile
        .secrets
        .values()
        .filter_map(|s| match s {
            gvm_policy::SecretSource::File(f) if !f.exists() => Some(f.display().to_string()),
            _ => None,
        })
        .collect();
    let p = &a.profile;
    let next = vec![
        format!("gvmctl reload && gvmctl start {p}"),
        format!("journalctl -fu gvm-agent@{p}"),
        "gvmctl approvals --follow".to_string(),
    ];
    let report = Report {
        profile: p.clone(),
        file: path.display().to_string(),
        template: file_name.to_string(),
        workspace: workspace.map(|w| w.display().to_string()),
        rules: profile.network.rules.len(),
        warnings,
        missing_secrets,
        next,
    };
    if a.json {
        output::json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!("wrote {} from {} ({} rules)", report.file, report.template, report.rules);
    for w in &report.warnings {
        println!("warning: {w}");
    }
    if let Some(w) = &report.workspace {
        if !Path::new(w).is_dir() {
            println!("note: the workspace {w} does not exist yet: create it before starting the agent");
        }
    }
    for s in &report.missing_secrets {
        println!("note: create the secret file {s} (root, mode 0600, only the key) before starting: gvmd refuses the profile without it");
    }
    println!("Review the file (agent command, hosts, secrets), then:");
    for n in &report.next {
        println!("  {n}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The template with its workspace and header set for this profile.
fn render(template: &str, a: &Args, file_name: &str, workspace: Option<&Path>) -> anyhow::Result<String> {
    let mut text = format!(
        "# Written by `gvmctl init {} --from {}` from gvm {}'s policies/{file_name}.\n",
        a.profile,
        a.from,
        env!("CARGO_PKG_VERSION")
    );
    let stem = file_name.trim_end_matches(".toml");
    let body = template
        .replace(&format!("--profile {stem} "), &format!("--profile {} ", a.profile))
        .replace(&format!("gvm-agent@{stem}"), &format!("gvm-agent@{}", a.profile))
        .replace(&format!("agents/{stem}/"), &format!("agents/{}/", a.profile))
        .replace(&format!("profiles/{stem}.toml"), &format!("profiles/{}.toml", a.profile))
        .replace(&format!("user gvm-{stem}"), &format!("user gvm-{}", a.profile));
    let mut replaced = workspace.is_none();
    for line in body.lines() {
        match (workspace, line.trim_start().starts_with("workspaces = ")) {
            (Some(w), true) if !replaced => {
                let w = w.to_str().context("--workspace is not UTF-8")?;
                if w.contains(['"', '\\']) || w.chars().any(char::is_control) {
                    bail!("--workspace {w:?}: quotes, backslashes and control characters are not allowed");
                }
                let comment = line.split_once('#').map(|(_, c)| format!("   #{c}")).unwrap_or_default();
                text.push_str(&format!("workspaces = [{{ path = \"{w}\", mode = \"overlay\" }}]{comment}\n"));
                replaced = true;
            }
            _ => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    if !replaced {
        bail!("the template {file_name} has no `workspaces = ` line to set --workspace in");
    }
    Ok(text)
}

/// The first workspace path of a template (`workspaces = [{ path = "..."`).
fn template_workspace(template: &str) -> Option<String> {
    let line = template.lines().find(|l| l.trim_start().starts_with("workspaces = "))?;
    let rest = line.split_once("path = \"")?.1;
    Some(rest.split('"').next()?.to_string())
}

fn ask(question: &str) -> anyhow::Result<String> {
    print!("{question}");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(ws: Option<&str>) -> Args {
        Args {
            profile: "mybot".into(),
            from: "hermes".into(),
            workspace: ws.map(PathBuf::from),
            force: false,
            config_dir: PathBuf::from("/etc/gvm"),
            json: false,
        }
    }

    #[test]
    fn every_template_renders_a_valid_profile_with_the_workspace_set() {
        for (name, file, text) in TEMPLATES {
            let mut a = args(Some("/srv/my work"));
            a.from = name.to_string();
            let out = render(text, &a, file, a.workspace.as_deref()).unwrap();
            let p = gvm_policy::parse_profile(Path::new("/etc/gvm/profiles/mybot.toml"), &out).unwrap();
            assert_eq!(p.agent.workspaces[0].path, Path::new("/srv/my work"), "{name}");
            assert!(out.starts_with(&format!("# Written by `gvmctl init mybot --from {name}`")), "{out}");
        }
    }

    #[test]
    fn the_profile_name_replaces_the_templates_in_its_comments() {
        let (_, file, text) = TEMPLATES[0];
        let out = render(text, &args(None), file, None).unwrap();
        assert!(out.contains("gvm-agent@mybot") && !out.contains("gvm-agent@hermes"), "{out}");
        assert_eq!(template_workspace(text).as_deref(), Some("/srv/hermes"));
        let (_, file, text) = TEMPLATES.iter().find(|t| t.0 == "openclaw").unwrap();
        let mut a = args(None);
        a.from = "openclaw".into();
        let out = render(text, &a, file, None).unwrap();
        assert!(out.contains("Linux user gvm-mybot") && out.contains("profiles/mybot.toml"), "{out}");
        assert!(!out.contains("gvm-openclaw") && !out.contains("profiles/openclaw.toml"), "{out}");
    }

    #[test]
    fn a_workspace_that_would_break_the_toml_is_refused() {
        let (_, file, text) = TEMPLATES[0];
        let a = args(Some("/srv/a\"b"));
        assert!(render(text, &a, file, a.workspace.as_deref()).unwrap_err().to_string().contains("quotes"));
    }
}
