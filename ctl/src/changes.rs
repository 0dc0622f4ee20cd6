//! `gvmctl changes|diff|apply|discard|rollback|checkpoint|checkpoints|applied`: what an
//! agent wrote in its overlay workspaces, reviewed, brought into the real workspace,
//! and undone. gvmd does the work (it is root and holds the agent still meanwhile);
//! gvmctl shows it.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use gvm_api::client::Client;
use gvm_api::review::{
    AppliedRecord, ApplyReport, ApplyRequest, ChangesResponse, Checkpoint, CheckpointRequest, DiffResponse, FileClass,
    PathRequest, RollbackReport, RollbackRequest,
};

use crate::audit::percent_encode;
use crate::output;

fn base(profile: &str) -> String {
    format!("/v1/agents/{}", percent_encode(profile))
}

/// Whose changes: a profile's agent, or an ephemeral run (`--run ID`). Displayed as the
/// words that name it on gvmctl's command line (`invoices`, `--run 3fa9c2d17b40`), so
/// every hint below reads right for both.
#[derive(Debug, Clone)]
pub enum Target {
    Profile(String),
    Run(String),
}

impl Target {
    /// From the command line; clap makes sure one of the two is there.
    pub fn of(profile: Option<String>, run: Option<String>) -> Target {
        match run {
            Some(id) => Target::Run(id),
            None => Target::Profile(profile.unwrap_or_default()),
        }
    }

    /// With `--run`, the first positional word clap took for PROFILE is a PATH.
    pub fn with_paths(profile: Option<String>, run: Option<String>, mut paths: Vec<String>) -> (Target, Vec<String>) {
        match run {
            Some(id) => {
                if let Some(p) = profile {
                    paths.insert(0, p);
                }
                (Target::Run(id), paths)
            }
            None => (Target::Profile(profile.unwrap_or_default()), paths),
        }
    }

    fn base(&self) -> String {
        match self {
            Target::Profile(p) => base(p),
            Target::Run(id) => format!("/v1/runs/{}", percent_encode(id)),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Profile(p) => f.write_str(p),
            Target::Run(id) => write!(f, "--run {id}"),
        }
    }
}

pub fn changes(client: &Client, profile: &Target, json: bool) -> anyhow::Result<ExitCode> {
    let r: ChangesResponse = client.get(&format!("{}/changes", profile.base()))?;
    if json {
        output::json(&r.changes)?;
        return Ok(ExitCode::SUCCESS);
    }
    if r.changes.is_empty() {
        println!("{profile}: no changes waiting; the agent's overlays match the real workspaces.");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = r
        .changes
        .iter()
        .map(|c| {
            vec![
                c.class.label().to_string(),
                c.kind.describe(),
                c.file_type.clone(),
                c.size.map(output::bytes).unwrap_or_default(),
                output::safe(&format!("{}/{}", c.workspace.trim_end_matches('/'), c.path)),
                output::safe(c.reason.as_deref().unwrap_or_default()),
            ]
        })
        .collect();
    output::table(&["CLASS", "CHANGE", "TYPE", "SIZE", "PATH", "WHY"], &rows);
    let count = |class: FileClass| r.changes.iter().filter(|c| c.class == class).count();
    println!();
    if count(FileClass::Review) > 0 {
        println!("Review:  gvmctl diff {profile} [PATH]   then   gvmctl apply {profile} PATH...   (or --all)");
    }
    if count(FileClass::AutoApply) > 0 {
        println!("New files matching [files] auto_apply:   gvmctl apply {profile}");
    }
    if count(FileClass::Refused) > 0 {
        println!("Refused entries are never applied (links, devices, setuid...): gvmctl discard {profile} PATH");
    }
    match profile {
        Target::Profile(_) => println!("Drop all unapplied changes:              gvmctl rollback {profile}"),
        Target::Run(_) => println!("Drop the run and all its changes:        gvmctl discard {profile}"),
    }
    Ok(ExitCode::SUCCESS)
}

pub fn diff(client: &Client, profile: &Target, path: Option<&str>) -> anyhow::Result<ExitCode> {
    let mut target = format!("{}/diff", profile.base());
    if let Some(p) = path {
        target.push_str(&format!("?path={}", percent_encode(p)));
    }
    let r: DiffResponse = client.get(&target)?;
    page(&output::safe_lines(&r.diff))?;
    Ok(ExitCode::SUCCESS)
}

/// Shows text through `$PAGER` (default `less -FRX`) when stdout is a terminal, as git does.
fn page(text: &str) -> anyhow::Result<()> {
    if !std::io::stdout().is_terminal() {
        print!("{text}");
        return Ok(());
    }
    let pager = std::env::var("PAGER").ok().filter(|p| !p.trim().is_empty()).unwrap_or_else(|| "less -FRX".into());
    let spawned = std::process::Command::new("sh").args(["-c", &pager]).stdin(std::process::Stdio::piped()).spawn();
    match spawned {
        Ok(mut child) => {
            if let Some(mut stdin) = child.stdin.take() {
                // A pager quit early closes the pipe: not an error.
                let _ = stdin.write_all(text.as_bytes());
            }
            child.wait()?;
        }
        Err(_) => print!("{text}"),
    }
    Ok(())
}

pub struct ApplyArgs<'a> {
    pub target: &'a Target,
    pub paths: Vec<String>,
    pub all: bool,
    pub dry_run: bool,
    pub json: bool,
}

pub fn apply(client: &Client, a: ApplyArgs) -> anyhow::Result<ExitCode> {
    let explicit = !a.paths.is_empty();
    let req = ApplyRequest {
        paths: a.paths.into_iter().map(|path| PathRequest { path, hash: None }).collect(),
        all: a.all,
        dry_run: a.dry_run,
    };
    let r: ApplyReport = client.post(&format!("{}/apply", a.target.base()), Some(&serde_json::to_value(&req)?))?;
    if a.json {
        output::json(&r)?;
    } else {
        print_report(a.target, &r, ("apply", "applied"));
    }
    Ok(if explicit && !r.refused.is_empty() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

pub fn discard(client: &Client, profile: &Target, paths: Vec<String>, json: bool) -> anyhow::Result<ExitCode> {
    let whole = paths.is_empty();
    let req = ApplyRequest {
        paths: paths.into_iter().map(|path| PathRequest { path, hash: None }).collect(),
        all: false,
        dry_run: false,
    };
    let r: ApplyReport = client.post(&format!("{}/discard", profile.base()), Some(&serde_json::to_value(&req)?))?;
    if json {
        output::json(&r)?;
    } else if whole {
        println!(
            "run {}: discarded with its {} unapplied {}.",
            profile.to_string().trim_start_matches("--run "),
            r.applied.len(),
            files(r.applied.len())
        );
    } else {
        print_report(profile, &r, ("discard", "discarded"));
    }
    Ok(ExitCode::SUCCESS)
}

fn print_report(profile: &Target, r: &ApplyReport, (infinitive, verb): (&str, &str)) {
    let would = if r.dry_run { format!("would be {verb}") } else { verb.to_string() };
    for c in &r.applied {
        let path = format!("{}/{}", c.workspace.trim_end_matches('/'), c.path);
        println!("{would}: {} {}", output::safe(&c.kind.describe()), output::safe(&path));
    }
    for f in &r.refused {
        let path = format!("{}/{}", f.workspace.trim_end_matches('/'), f.path);
        println!("NOT {verb}: {}: {}", output::safe(&path), output::safe(&f.reason));
    }
    match (&r.id, r.applied.len()) {
        (_, 0) if r.refused.is_empty() => println!("{profile}: nothing to {infinitive}."),
        (Some(id), n) => {
            println!("{profile}: {n} {} {verb} (apply {id}; undo: gvmctl rollback {profile} --applied {id})", files(n))
        }
        (None, n) => println!("{profile}: {n} {} {would}.", files(n)),
    }
}

fn files(n: usize) -> &'static str {
    if n == 1 {
        "change"
    } else {
        "changes"
    }
}

pub fn rollback(
    client: &Client,
    profile: &Target,
    applied: Option<String>,
    to: Option<String>,
    force: bool,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let req = RollbackRequest { applied: applied.clone(), to: to.clone(), force };
    let r: RollbackReport = client.post(&format!("{}/rollback", profile.base()), Some(&serde_json::to_value(&req)?))?;
    if json {
        output::json(&r)?;
        return Ok(if r.refused.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    for p in &r.restored {
        println!("restored: {}", output::safe(p));
    }
    for p in &r.removed {
        println!("removed: {}", output::safe(p));
    }
    for f in &r.refused {
        let path = format!("{}/{}", f.workspace.trim_end_matches('/'), f.path);
        println!("NOT restored: {}: {}", output::safe(&path), output::safe(&f.reason));
    }
    let what = match (&applied, &to) {
        (Some(id), _) => format!("apply {id} undone in the real workspace"),
        (None, Some(cp)) => format!("the agent's overlay is back at checkpoint {cp}"),
        (None, None) => "the agent's unapplied changes are discarded".to_string(),
    };
    println!("{profile}: {what} ({} restored, {} removed).", r.restored.len(), r.removed.len());
    if !r.refused.is_empty() {
        println!("Files changed since the apply were left alone; --force restores them anyway.");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn checkpoint(client: &Client, profile: &str, name: Option<String>, json: bool) -> anyhow::Result<ExitCode> {
    let req = CheckpointRequest { name };
    let c: Checkpoint = client.post(&format!("{}/checkpoint", base(profile)), Some(&serde_json::to_value(&req)?))?;
    if json {
        output::json(&c)?;
    } else {
        println!(
            "{profile}: checkpoint {}{} of {} {} ({}); back to it: gvmctl rollback {profile} --to {}",
            c.id,
            c.name.as_deref().map(|n| format!(" ({n})")).unwrap_or_default(),
            c.files,
            if c.files == 1 { "entry" } else { "entries" },
            output::bytes(c.bytes),
            c.name.as_deref().unwrap_or(&c.id),
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn checkpoints(client: &Client, profile: &str, json: bool) -> anyhow::Result<ExitCode> {
    let list: Vec<Checkpoint> = client.get(&format!("{}/checkpoints", base(profile)))?;
    if json {
        output::json(&list)?;
        return Ok(ExitCode::SUCCESS);
    }
    if list.is_empty() {
        println!("{profile}: no checkpoints; make one with `gvmctl checkpoint {profile} [--name N]`.");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|c| {
            vec![
                c.id.clone(),
                c.name.clone().unwrap_or_default(),
                output::short_time(&c.at),
                c.files.to_string(),
                output::bytes(c.bytes),
            ]
        })
        .collect();
    output::table(&["ID", "NAME", "AT", "ENTRIES", "SIZE"], &rows);
    Ok(ExitCode::SUCCESS)
}

pub fn applied(client: &Client, profile: &Target, json: bool) -> anyhow::Result<ExitCode> {
    let list: Vec<AppliedRecord> = client.get(&format!("{}/applied", profile.base()))?;
    if json {
        output::json(&list)?;
        return Ok(ExitCode::SUCCESS);
    }
    if list.is_empty() {
        println!("{profile}: nothing applied yet.");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|a| {
            let paths: Vec<String> = a.entries.iter().map(|e| output::safe(&e.path)).collect();
            let mut shown = paths.iter().take(3).cloned().collect::<Vec<_>>().join(", ");
            if paths.len() > 3 {
                shown.push_str(&format!(" and {} more", paths.len() - 3));
            }
            vec![a.id.clone(), output::short_time(&a.at), a.entries.len().to_string(), shown]
        })
        .collect();
    output::table(&["ID", "AT", "FILES", "PATHS"], &rows);
    println!("\nUndo one: gvmctl rollback {profile} --applied ID");
    Ok(ExitCode::SUCCESS)
}
