//! `gvmctl reload`: re-read the profiles now (the same as `systemctl reload gvmd`).

use std::process::ExitCode;

use gvm_api::{paths, ReloadResponse};

use crate::output;
use gvm_api::client::Client;

pub fn run(client: &Client, json: bool) -> anyhow::Result<ExitCode> {
    let r: ReloadResponse = client.post(paths::RELOAD, None)?;
    let code = if r.refused.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) };
    if json {
        output::json(&r)?;
        return Ok(code);
    }
    println!("{} profiles in force: {}", r.loaded.len(), r.loaded.join(", "));
    for refusal in &r.refused {
        eprintln!("refused: {refusal}");
    }
    Ok(code)
}
