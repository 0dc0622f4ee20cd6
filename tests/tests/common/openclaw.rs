//! OpenClaw (npm `openclaw`) and the Node 24 it needs (npm `node@24`), installed from the
//! npm registry once per version into a cache every agent user can read, for the OpenClaw
//! tests and bench.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::agent::output_within;

pub const OPENCLAW_VERSION: &str = "2026.9.6";
/// OpenClaw needs Node >=24.16 <25.
pub const NODE_VERSION: &str = "24.21.0";
/// Where the install is cached between runs (readable by every agent user).
pub const CACHE: &str = "/var/cache/gvm-test-agents";
/// How long a fresh install may take before the test fails.
pub const INSTALL_LIMIT: Duration = Duration::from_secs(900);

/// OpenClaw and its Node, installed once per version under [`CACHE`]: npm installs into a
/// temporary directory that is renamed into place when complete, under `flock` (parallel
/// tests wait for one install instead of racing), bounded by `timeout`.
pub fn install() -> PathBuf {
    let dir = Path::new(CACHE).join(format!("openclaw-{OPENCLAW_VERSION}-node-{NODE_VERSION}"));
    if dir.join("node_modules/.bin/openclaw").exists() {
        return dir;
    }
    std::fs::create_dir_all(CACHE).unwrap();
    let d = dir.display();
    // Node first: OpenClaw's own install scripts refuse an older node on PATH.
    let script = format!(
        "set -eu\n\
         [ -e '{d}/node_modules/.bin/openclaw' ] && exit 0\n\
         rm -rf '{d}.partial'\n\
         mkdir -p '{d}.partial'\n\
         npm install --no-audit --no-fund --loglevel=error --prefix '{d}.partial' node@{NODE_VERSION}\n\
         PATH='{d}.partial/node_modules/.bin':\"$PATH\" npm install --no-audit --no-fund --loglevel=error \
             --prefix '{d}.partial' openclaw@{OPENCLAW_VERSION}\n\
         chmod -R a+rX '{d}.partial'\n\
         mv '{d}.partial' '{d}'\n"
    );
    let mut cmd = Command::new("flock");
    cmd.arg(format!("{d}.lock")).args(["timeout", &INSTALL_LIMIT.as_secs().to_string(), "sh", "-c", &script]);
    let ran = output_within(cmd, INSTALL_LIMIT + Duration::from_secs(60));
    assert_eq!(
        ran.code,
        Some(0),
        "installing openclaw@{OPENCLAW_VERSION} with node@{NODE_VERSION} from npm failed: {ran:#?}"
    );
    let version = Command::new(dir.join("node_modules/.bin/node")).arg("--version").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&version.stdout).trim(), format!("v{NODE_VERSION}"));
    dir
}
