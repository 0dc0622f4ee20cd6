//! `mcp = { tools = [...], deny_tools = [...], filter_list = false }` on a rule: which
//! tools of an MCP server (streamable HTTP or SSE) the agent may call through it.

/// A rule's `mcp` table, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpTools {
    /// Tool names (globs, `*` = any run of characters) the agent may call.
    pub tools: Vec<String>,
    /// Tool names never callable, even when `tools` matches them.
    pub deny_tools: Vec<String>,
    /// Rewrite `tools/list` answers so that only callable tools remain.
    pub filter_list: bool,
}

impl McpTools {
    /// True when `tools/call` of `name` may go through: matched by `tools` and by no
    /// `deny_tools`.
    pub fn allows(&self, name: &str) -> bool {
        self.tools.iter().any(|p| glob(p, name)) && !self.deny_tools.iter().any(|p| glob(p, name))
    }
}

/// Checks a tool-name pattern: printable, no whitespace, `*` the only wildcard.
pub(crate) fn check_pattern(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Err("a tool name is empty".into());
    }
    if p.len() > 128 {
        return Err("a tool name is longer than 128 characters".into());
    }
    if let Some(c) = p.chars().find(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '[' | ']')) {
        return Err(format!("`{}` may not contain {:?} (only `*` is a wildcard)", p.escape_debug(), c));
    }
    Ok(())
}

/// `*` matches any run of characters (also none); everything else matches itself.
pub fn glob(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ni));
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|b| *b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_names() {
        assert!(glob("delete_*", "delete_file"));
        assert!(glob("delete_*", "delete_"));
        assert!(!glob("delete_*", "undelete_file"));
        assert!(glob("*", ""));
        assert!(glob("*_file", "read_file"));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
        assert!(glob("search", "search"));
        assert!(!glob("search", "search2"));
    }

    #[test]
    fn deny_tools_win_over_tools() {
        let m = McpTools { tools: vec!["*".into()], deny_tools: vec!["delete_*".into()], filter_list: false };
        assert!(m.allows("read_file"));
        assert!(!m.allows("delete_file"));
        let m = McpTools { tools: vec!["search".into()], deny_tools: vec![], filter_list: false };
        assert!(!m.allows("read_file"));
    }

    #[test]
    fn patterns_are_checked() {
        assert!(check_pattern("read_file").is_ok());
        assert!(check_pattern("delete_*").is_ok());
        assert!(check_pattern("").is_err());
        assert!(check_pattern("a b").is_err());
        assert!(check_pattern("file?").is_err());
    }
}
