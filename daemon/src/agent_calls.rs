//! How the gateway reaches a port another agent serves (`agent.<name>:<port>`): a TCP
//! connection opened by a thread that entered the callee's network namespace, to
//! `127.0.0.1:<port>` there, marked so that the namespace's nft rules let it through
//! (`Netns::dial`). No route, veth or shared namespace joins two agents; the only path
//! between them is this socket, made after both profiles' rules allowed the call
//! (ARCHITECTURE.md, "Agents calling agents").

use std::io::ErrorKind;
use std::net::TcpStream;
use std::path::PathBuf;

use gvm_sandbox::netns::Netns;

/// gvmd's [`gvm_gateway::AgentDialer`]: the callee's netns under `<runtime>/netns/`.
pub struct NetnsDialer {
    pub runtime_dir: PathBuf,
}

impl gvm_gateway::AgentDialer for NetnsDialer {
    fn dial(&self, profile: &str, port: u16) -> Result<TcpStream, String> {
        let name = gvm_sandbox::ProfileName::parse(profile).map_err(|e| e.to_string())?;
        let netns = Netns::open(&self.runtime_dir, &name).map_err(|_| {
            format!("agent `{profile}` is not running (it has no sandbox): start it with `gvmctl start {profile}`")
        })?;
        netns.dial(port).map_err(|e| match e.kind() {
            ErrorKind::ConnectionRefused => format!(
                "nothing listens on port {port} inside agent `{profile}`'s sandbox: is the agent running \
                 (`gvmctl status`) and its server listening on 127.0.0.1:{port} or 0.0.0.0:{port}?"
            ),
            _ => format!("reaching port {port} of agent `{profile}`: {e}"),
        })
    }
}
