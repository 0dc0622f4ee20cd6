//! The words every crate shares: profile names, workspace modes, agent verbs and states,
//! decisions and audit event kinds. Each is checked once, where it enters (a file, a
//! request, the audit log), and travels as a type afterwards.
//!
//! Spellings: every enum is written in `snake_case`, on the wire and in the audit log.
//! Older logs spell the two completion events `http.done` and `connect.done`; they are
//! still read (see [`EventKind::parse`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The longest profile name (`gvm-` + name ≤ 31 bytes).
pub const MAX_PROFILE_NAME: usize = 27;

/// A validated profile name: `^[a-z0-9][a-z0-9_-]{0,26}$`.
///
/// It becomes the Linux user `gvm-<name>` and the systemd instance
/// `gvm-agent@<name>.service`, and names directories, a cgroup and a network namespace.
/// A system user name must stay under 32 bytes (utmp and `useradd` limits, 31 for
/// systemd-sysusers), so `gvm-` plus at most 27 characters; upper case, dots, `/` and
/// `@` are refused because systemd would escape them and tools disagree on how, and
/// because the name is part of paths.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProfileName(Box<str>);

/// A string that is not a valid [`ProfileName`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileNameError {
    /// The refused name, escaped for printing.
    pub name: String,
}

impl fmt::Display for ProfileNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` is not a valid profile name: use 1 to {MAX_PROFILE_NAME} characters from a-z, 0-9, `_` and `-`, \
             starting with a letter or digit (it becomes the Linux user `gvm-<name>` and the unit `gvm-agent@<name>`)",
            self.name
        )
    }
}

impl std::error::Error for ProfileNameError {}

impl ProfileName {
    pub fn parse(s: &str) -> Result<ProfileName, ProfileNameError> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= MAX_PROFILE_NAME
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter().all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-');
        if ok {
            Ok(ProfileName(s.into()))
        } else {
            Err(ProfileNameError { name: s.escape_debug().to_string() })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The Linux user the agent runs as: `gvm-<name>`.
    pub fn unix_user(&self) -> String {
        format!("gvm-{}", self.0)
    }
}

impl fmt::Display for ProfileName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ProfileName {
    type Err = ProfileNameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ProfileName::parse(s)
    }
}

impl TryFrom<String> for ProfileName {
    type Error = ProfileNameError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        ProfileName::parse(&s)
    }
}

impl From<ProfileName> for String {
    fn from(p: ProfileName) -> String {
        p.0.into()
    }
}

impl AsRef<str> for ProfileName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for ProfileName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for ProfileName {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for ProfileName {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

/// Declares a `snake_case` enum with `as_str`, `Display`, `FromStr` and serde that all
/// agree on one spelling per variant (plus the old spellings that are still read).
macro_rules! words {
    (
        $(#[$meta:meta])*
        $name:ident, $what:literal $(, default = $default:ident)? {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal $(| $old:literal)* ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $text $(, alias = $old)*)] $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The one spelling written on the wire and in the audit log.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text, )+
                }
            }

            /// Reads the current spelling and any older one; `None` for anything else.
            pub fn parse(s: &str) -> Option<$name> {
                match s {
                    $( $text $(| $old)* => Some($name::$variant), )+
                    _ => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = UnknownWord;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                $name::parse(s).ok_or_else(|| UnknownWord {
                    what: $what,
                    got: s.escape_debug().to_string(),
                    expected: $name::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", "),
                })
            }
        }

        $(
            impl Default for $name {
                fn default() -> Self {
                    $name::$default
                }
            }
        )?

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.as_str().to_owned()
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                $name::parse(other) == Some(*self)
            }
        }
    };
}

/// A string that is none of an enum's spellings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownWord {
    /// What was expected, e.g. `agent action`.
    pub what: &'static str,
    pub got: String,
    /// The accepted spellings, comma-separated.
    pub expected: String,
}

impl fmt::Display for UnknownWord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` is not a known {}: use one of {}", self.got, self.what, self.expected)
    }
}

impl std::error::Error for UnknownWord {}

words! {
    /// How a workspace appears inside a sandbox (`[agent] workspaces = [{ mode = ... }]`).
    WorkspaceMode, "workspace mode", default = Overlay {
        /// Writes go to an upper directory and wait for review (`gvmctl changes`).
        Overlay = "overlay",
        /// Read-only.
        Ro = "ro",
        /// Read-write: the agent writes the real directory.
        Rw = "rw",
    }
}

words! {
    /// How a profile's network decisions are applied (`[agent] mode`, `gvmctl watch`).
    Mode, "mode", default = Enforce {
        /// The rules decide.
        Enforce = "enforce",
        /// Everything is allowed; what enforce mode would have done is recorded.
        Watch = "watch",
    }
}

words! {
    /// What `gvmctl agents start|stop|restart P` asks of an agent.
    AgentVerb, "agent action" {
        Start = "start",
        Stop = "stop",
        Restart = "restart",
    }
}

impl AgentVerb {
    /// The audit event recording this action.
    pub const fn event(self) -> EventKind {
        match self {
            AgentVerb::Start => EventKind::AgentStart,
            AgentVerb::Stop => EventKind::AgentStop,
            AgentVerb::Restart => EventKind::AgentRestart,
        }
    }
}

words! {
    /// Where an agent is in its life, as `gvmctl status` shows it.
    AgentState, "agent state", default = Stopped {
        Running = "running",
        Starting = "starting",
        Stopping = "stopping",
        Stopped = "stopped",
        Failed = "failed",
        Restarting = "restarting",
    }
}

words! {
    /// What the gateway did with a request, query or connection (an audit event's
    /// `decision`).
    Decision, "decision" {
        Allow = "allow",
        Deny = "deny",
        /// Waits for a human (`gvmctl approve`).
        Hold = "hold",
        /// Allowed in watch mode; `details` say what enforce mode would have done.
        Watch = "watch",
        /// A tunnel allowed to be opened and read by the gateway (its requests follow
        /// as `http` events, each decided on its own).
        Intercept = "intercept",
        /// Refused by the profile's `[limits]` (too many requests, queries or
        /// connections), before the rules were asked.
        Limit = "limit",
    }
}

words! {
    /// What an audit event records (its `kind`).
    EventKind, "event kind" {
        // The gateway.
        /// An HTTP request decided (plain or intercepted inside a tunnel).
        Http = "http",
        /// A CONNECT or transparent connection decided.
        Connect = "connect",
        /// A DNS question answered or refused.
        Dns = "dns",
        /// An allowed request finished: status, bytes, duration; `details.decision_seq`
        /// points at its `http` event.
        HttpDone = "http_done" | "http.done",
        /// A tunnel closed; `details.decision_seq` points at its `connect` event.
        ConnectDone = "connect_done" | "connect.done",
        /// Refusals by `[limits]` folded into one counting event.
        LimitsExceeded = "limits_exceeded",
        /// A request refused because it carried a secret's value or a masked file's
        /// value (any encoding), named by key, never by value.
        Exfiltration = "exfiltration",
        /// A request refused because it carried a secret's placeholder somewhere the
        /// placeholder is not swapped (another host, plain HTTP, a URL or body).
        SecretEgress = "secret_egress",
        /// Another agent's call of a port this profile serves, decided by its
        /// `[ingress]`; `details.caller` names the calling profile (whose own `http`
        /// event names this one as `details.callee`).
        Ingress = "ingress",
        // gvmd.
        DaemonStart = "daemon_start",
        DaemonStop = "daemon_stop",
        /// A control connection refused (not root, not in `gvm-admin`).
        ControlRefused = "control_refused",
        ProfileLoaded = "profile_loaded",
        ProfileRefused = "profile_refused",
        ProfileRemoved = "profile_removed",
        /// `gvmd.toml` refused on reload (the settings in force stay).
        ConfigRefused = "config_refused",
        PolicyRollback = "policy_rollback",
        /// A rule written to a profile file (`--always`, `suggest --apply`).
        RuleAdded = "rule_added",
        WatchOn = "watch_on",
        WatchOff = "watch_off",
        // Agents and runs.
        AgentStart = "agent_start",
        AgentStop = "agent_stop",
        AgentRestart = "agent_restart",
        RunStarted = "run_started",
        RunFinished = "run_finished",
        // Approvals and file review.
        /// A human answered a held request.
        HoldAnswered = "hold_answered",
        FileApply = "file_apply",
        FileDiscard = "file_discard",
        FileRollback = "file_rollback",
        FileCheckpoint = "file_checkpoint",
    }
}

impl EventKind {
    /// The completion event that follows a decision of this kind, if any.
    pub const fn completion(self) -> Option<EventKind> {
        match self {
            EventKind::Http => Some(EventKind::HttpDone),
            EventKind::Connect => Some(EventKind::ConnectDone),
            _ => None,
        }
    }

    /// A network decision (`http`, `connect`, `dns`): what `gvmctl suggest` learns from.
    pub const fn is_decision(self) -> bool {
        matches!(self, EventKind::Http | EventKind::Connect | EventKind::Dns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_names() {
        for ok in ["a", "invoices", "0day", "my_agent-2", &"a".repeat(27)] {
            assert!(ProfileName::parse(ok).is_ok(), "{ok}");
        }
        for bad in
            ["", "-a", "_a", "Invoices", "a.b", "a@b", "a b", "é", &"a".repeat(28), "a/b", "a\0", "../x", "Coder"]
        {
            assert!(ProfileName::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(ProfileName::parse("x").unwrap().unix_user(), "gvm-x");
        assert!(ProfileName::parse("Bad").unwrap_err().to_string().contains("gvm-<name>"));
    }

    #[test]
    fn profile_name_serde_validates() {
        let p: ProfileName = serde_json::from_str("\"coder\"").unwrap();
        assert_eq!(p, "coder");
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"coder\"");
        let e = serde_json::from_str::<ProfileName>("\"../etc\"").unwrap_err().to_string();
        assert!(e.contains("not a valid profile name"), "{e}");
    }

    fn round_trip<T>(all: &[T])
    where
        T: Copy + fmt::Debug + PartialEq + fmt::Display + FromStr + Serialize + for<'de> Deserialize<'de>,
        T::Err: fmt::Debug,
    {
        for &v in all {
            let json = serde_json::to_string(&v).unwrap();
            assert_eq!(json, format!("\"{v}\""), "serde and Display spell {v:?} alike");
            assert_eq!(serde_json::from_str::<T>(&json).unwrap(), v);
            assert_eq!(v.to_string().parse::<T>().unwrap(), v);
            let s = v.to_string();
            assert!(s.bytes().all(|c| c.is_ascii_lowercase() || c == b'_'), "{s} is snake_case");
        }
    }

    #[test]
    fn enums_round_trip_in_one_spelling() {
        round_trip(WorkspaceMode::ALL);
        round_trip(Mode::ALL);
        round_trip(AgentVerb::ALL);
        round_trip(AgentState::ALL);
        round_trip(Decision::ALL);
        round_trip(EventKind::ALL);
    }

    #[test]
    fn old_spellings_still_read() {
        assert_eq!(EventKind::parse("http.done"), Some(EventKind::HttpDone));
        assert_eq!(EventKind::parse("connect.done"), Some(EventKind::ConnectDone));
        assert_eq!(serde_json::from_str::<EventKind>("\"http.done\"").unwrap(), EventKind::HttpDone);
        assert_eq!(EventKind::HttpDone.as_str(), "http_done");
        assert_eq!(EventKind::Http.completion(), Some(EventKind::HttpDone));
        assert!(EventKind::HttpDone == *"http.done");
    }

    #[test]
    fn unknown_words_name_the_choices() {
        let e = "halt".parse::<AgentVerb>().unwrap_err().to_string();
        assert_eq!(e, "`halt` is not a known agent action: use one of start, stop, restart");
        assert!(serde_json::from_str::<WorkspaceMode>("\"overlay2\"").is_err());
        assert_eq!(AgentVerb::Restart.event(), EventKind::AgentRestart);
    }

    #[test]
    fn defaults_are_the_safe_ones() {
        // A profile without `mode` enforces; a workspace without `mode` is reviewed.
        assert_eq!(Mode::default(), Mode::Enforce);
        assert_eq!(WorkspaceMode::default(), WorkspaceMode::Overlay);
        assert_eq!(AgentState::default(), AgentState::Stopped);
    }
}
