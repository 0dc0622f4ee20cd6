//! The sandbox's rules, as data: what seccomp refuses, what the agent's filesystem view
//! hides, masks and mounts, and what the network namespace lets out. `build.rs` and
//! `netns.rs` apply these tables and contain no list of their own; review them here.
//!
//! Every entry carries a one-line comment naming what it defends against, on its own line:
//! ARCHITECTURE.md's "Sandbox rules, entry by entry" is generated from these lines
//! (`GVM_BLESS=1 cargo test -p gvm-sandbox --test docs`), and the test fails when the two
//! differ.

/// How seccomp treats a system call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SysRule {
    /// Always fails with `EPERM`.
    Deny,
    /// Always fails with `ENOSYS`, so libc falls back to an older call we can filter.
    NoSys,
    /// Fails with `EPERM` when argument `arg` has any of `bits` set.
    DenyIfAnyBit { arg: u32, bits: &'static [u64] },
    /// Fails with `EPERM` when argument `arg`, masked with `mask`, equals one of `values`.
    DenyIfMasked { arg: u32, mask: u64, values: &'static [u64] },
    /// Fails with `EPERM` unless argument `arg` equals `allowed`.
    DenyUnless { arg: u32, allowed: u64 },
}

const NS_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWCGROUP as u64,
];

/// The seccomp filter: default allow, these refused. (An allow-list would be tighter but
/// breaks arbitrary agent runtimes — Node, Python, the JVM — on every new libc; the
/// namespaces, the uid, the missing capabilities and the read-only view carry the rest.)
/// Non-native architectures (i386 `int 0x80`, x32) are killed by libseccomp's bad-arch action.
pub const SECCOMP: &[(&str, SysRule)] = &[
    ("mount", SysRule::Deny),             // remounting masks away, mounting over the view
    ("umount2", SysRule::Deny),           // unmounting a mask to reveal what it hides (class 12)
    ("pivot_root", SysRule::Deny),        // swapping the root of the view
    ("chroot", SysRule::Deny),            // chroot-based escapes from the view
    ("move_mount", SysRule::Deny),        // new mount API: moving masks
    ("open_tree", SysRule::Deny),         // new mount API: cloning hidden trees
    ("fsopen", SysRule::Deny),            // new mount API: new superblocks
    ("fsconfig", SysRule::Deny),          // new mount API
    ("fsmount", SysRule::Deny),           // new mount API
    ("fspick", SysRule::Deny),            // new mount API: reconfiguring mounts
    ("mount_setattr", SysRule::Deny),     // clearing read-only on the view
    ("ptrace", SysRule::Deny),            // reading/steering a sibling's memory (class 13)
    ("process_vm_readv", SysRule::Deny),  // reading another process's memory
    ("process_vm_writev", SysRule::Deny), // writing another process's memory
    ("bpf", SysRule::Deny),               // kernel attack surface, socket filters bypassing nft
    ("perf_event_open", SysRule::Deny),   // side channels, kernel attack surface
    ("kexec_load", SysRule::Deny),        // replacing the kernel
    ("kexec_file_load", SysRule::Deny),   // replacing the kernel
    ("init_module", SysRule::Deny),       // loading kernel code
    ("finit_module", SysRule::Deny),      // loading kernel code
    ("delete_module", SysRule::Deny),     // unloading kernel defences
    ("keyctl", SysRule::Deny),            // kernel keyrings are not namespaced: other users' keys
    ("add_key", SysRule::Deny),           // kernel keyrings
    ("request_key", SysRule::Deny),       // kernel keyrings, upcalls to host helpers
    ("userfaultfd", SysRule::Deny),       // stalling the kernel to win races (exploit primitive)
    ("io_uring_setup", SysRule::Deny),    // socket/file ops that never pass seccomp (class 13)
    ("io_uring_enter", SysRule::Deny),    // same
    ("io_uring_register", SysRule::Deny), // same
    ("unshare", SysRule::Deny),           // new namespaces: leaving the netns rules, user ns root
    ("setns", SysRule::Deny),             // joining another namespace
    ("clone", SysRule::DenyIfAnyBit { arg: 0, bits: NS_FLAGS }), // namespaces via clone flags
    ("clone3", SysRule::NoSys),           // flags hidden in a struct seccomp cannot read; libc falls back to clone
    // The 0xffffffff query is refused too: libseccomp cannot test one argument against two
    // values in one rule.
    ("personality", SysRule::DenyUnless { arg: 0, allowed: 0 }), // execution domains that weaken ASLR or imply exec (ADDR_NO_RANDOMIZE, READ_IMPLIES_EXEC): only PER_LINUX (0) passes
    ("socket", SysRule::DenyIfMasked { arg: 0, mask: 0xffff_ffff, values: &[libc::AF_PACKET as u64] }), // packet sockets: raw frames past nft
    ("socket", SysRule::DenyIfMasked { arg: 1, mask: 0xf, values: &[libc::SOCK_RAW as u64, 10 /* SOCK_PACKET */] }), // raw IP/ICMP past the redirect (class 4)
    ("ioctl", SysRule::DenyIfMasked { arg: 1, mask: 0xffff_ffff, values: &[libc::TIOCSTI, libc::TIOCLINUX] }), // typing into the operator's terminal (class 15)
    ("acct", SysRule::Deny),              // writing process accounting to a chosen file
    ("swapon", SysRule::Deny),            // host memory configuration
    ("swapoff", SysRule::Deny),           // host memory configuration
    ("reboot", SysRule::Deny),            // host availability
    ("syslog", SysRule::Deny),            // kernel log: addresses, other tenants' messages
    ("open_by_handle_at", SysRule::Deny), // opening files by handle past the view (shocker)
    ("name_to_handle_at", SysRule::Deny), // handles for the above
    ("quotactl", SysRule::Deny),          // host filesystem configuration
    ("lookup_dcookie", SysRule::Deny),    // kernel address leaks
    ("vhangup", SysRule::Deny),           // hanging up the operator's terminal
    ("settimeofday", SysRule::Deny),      // the host clock (audit timestamps)
    ("clock_settime", SysRule::Deny),     // the host clock
    ("clock_adjtime", SysRule::Deny),     // the host clock
    ("adjtimex", SysRule::Deny),          // the host clock
    ("sethostname", SysRule::Deny),       // (own uts ns already) keeps the name the audit shows
    ("setdomainname", SysRule::Deny),     // same
    ("fanotify_init", SysRule::Deny),     // watching the filesystem of others
    ("iopl", SysRule::Deny),              // raw port I/O
    ("ioperm", SysRule::Deny),            // raw port I/O
    ("uselib", SysRule::Deny),            // obsolete loader path
    ("nfsservctl", SysRule::Deny),        // obsolete
];

/// Host paths hidden behind an empty read-only tmpfs, in this order (the state and runtime
/// directories from the spec are added to these). The agent's own home is then bound back.
pub const HIDDEN_DIRS: &[&str] = &[
    "/home",        // other users' files, dotfiles, ~/.ssh, ~/.aws (class 8)
    "/root",        // root's secrets
    "/etc/gvm",     // the policy the agent runs under: cannot read what it may not change
    "/var/lib/gvm", // gvmd's CA key, audit database, other agents' homes and upper dirs (class 8)
    "/run",         // gvmd's control socket, D-Bus and systemd sockets, other netns binds (class 4, 16)
    "/var/run",     // same, where it is not a symlink to /run
    "/mnt",         // removable/other host mounts
    "/media",       // removable media
];

/// Files masked with `/dev/null` when they exist on the host.
pub const HIDDEN_FILES: &[&str] = &[
    "/etc/shadow",                   // password hashes (also mode 0640 root)
    "/etc/gshadow",                  // group password hashes
    "/etc/sudoers",                  // the host's privilege map
    "/etc/ssh/ssh_host_rsa_key",     // host identity keys
    "/etc/ssh/ssh_host_ecdsa_key",   // host identity keys
    "/etc/ssh/ssh_host_ed25519_key", // host identity keys
];

/// Under the fresh `/proc`: made read-only (bound onto themselves).
pub const PROC_READ_ONLY: &[&str] = &[
    "/proc/sys",           // core_pattern, modprobe path, sysrq: host-wide knobs (class 14)
    "/proc/sysrq-trigger", // rebooting or crashing the host
    "/proc/irq",           // IRQ affinity
    "/proc/bus",           // PCI config space
    "/proc/fs",            // filesystem knobs
];

/// Under the fresh `/proc`: masked (files by `/dev/null`, directories by an empty tmpfs).
pub const PROC_MASKED: &[&str] = &[
    "/proc/kcore",         // physical memory
    "/proc/kallsyms",      // kernel addresses (KASLR)
    "/proc/keys",          // keyrings of the host
    "/proc/key-users",     // keyring users of the host
    "/proc/timer_list",    // timing side channel, host task names
    "/proc/sched_debug",   // host task names
    "/proc/latency_stats", // host task names and timing
    "/proc/acpi",          // firmware interfaces
    "/proc/scsi",          // device rescans
    "/proc/asound",        // device interfaces
];

/// Under the fresh read-only `/sys`: masked.
pub const SYS_MASKED: &[&str] = &[
    "/sys/firmware",        // ACPI tables, EFI variables
    "/sys/kernel/security", // LSM policy interfaces
    "/sys/kernel/debug",    // debugfs
    "/sys/fs/cgroup",       // other tenants' cgroups (the agent sees none)
];

/// Device nodes bound from the host into the private `/dev`; nothing else is there.
pub const DEV_NODES: &[&str] = &[
    "null", // the usual sinks and sources; no disks, no /dev/mem, no kmsg
    "zero", "full", "random", "urandom",
    "tty", // the controlling terminal only (the agent has none unless given a pty)
];

/// Symlinks created in the private `/dev`.
pub const DEV_LINKS: &[(&str, &str)] = &[
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
    ("ptmx", "pts/ptmx"), // the agent's own devpts instance: cannot reach the host's ptys
];

/// Where the CA bundle is bound inside the sandbox, when the path exists on the host (the
/// first existing one is what the CA variables name): gvmd's interception CA must be
/// trusted by every TLS stack the agent runs, or the agent learns to disable verification.
pub const CA_TARGETS: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",                // Debian, Ubuntu, Alpine, Arch
    "/etc/pki/tls/certs/ca-bundle.crt",                  // Fedora, RHEL
    "/etc/ssl/ca-bundle.pem",                            // openSUSE
    "/etc/ssl/cert.pem",                                 // Alpine, macOS-style tools
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", // RHEL
];

/// Variables that must point at the CA bundle.
pub const CA_ENV: &[&str] =
    &["SSL_CERT_FILE", "NODE_EXTRA_CA_CERTS", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO"];

/// Variables that must point at the explicit proxy (`http://127.0.0.1:<proxy>`).
pub const PROXY_ENV: &[&str] = &["HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"];

/// Variables set empty: nothing bypasses the proxy by name.
pub const NO_PROXY_ENV: &[&str] = &["NO_PROXY", "no_proxy"];

/// PATH given to the agent when its profile does not set one.
pub const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin";

/// The agent's `/etc/resolv.conf`: gvmd's resolver inside the netns (DNS is egress, class 5).
pub const RESOLV_CONF: &str = "nameserver 127.0.0.1\noptions edns0\n";

/// The mark (`SO_MARK`) of the sockets gvmd opens inside a callee's netns to reach a
/// port it serves (`Netns::dial`); the ruleset lets exactly these through to loopback.
pub const DIAL_MARK: u32 = 0x6776_6d61;

/// The nft ruleset loaded inside each profile's network namespace. `{proxy}`,
/// `{transparent}` and `{dns}` are the gateway's ports. The netns has only `lo`, which
/// also carries the default route (so that locally generated packets reach the nat/output
/// hook at all); nothing in it is routable to the outside.
pub const NFT_RULESET: &str = r#"table inet gvm {
	chain nat_output {
		type nat hook output priority -100; policy accept;
		# gvmd calling a port this agent serves, for another agent ([agent] serve): only a
		# socket gvmd marked (SO_MARK needs CAP_NET_ADMIN, which no agent has) is not redirected
		meta mark {mark} ip daddr 127.0.0.1 meta l4proto tcp accept
		# DNS to any resolver, hard-coded ones included, goes to gvmd's resolver (class 5)
		meta nfproto ipv4 udp dport 53 redirect to :{dns}
		meta nfproto ipv4 tcp dport 53 redirect to :{dns}
		# the gateway's own ports on loopback are reached as they are
		ip daddr 127.0.0.1 tcp dport { {proxy}, {transparent}, {dns} } accept
		# every other TCP connection goes to the transparent listener (class 1, 4, 16)
		meta nfproto ipv4 meta l4proto tcp redirect to :{transparent}
	}
	chain filter_output {
		type filter hook output priority 0; policy drop;
		# replies of connections accepted below (and the RST when no listener is there).
		# (No `oifname "lo"`: the hook's output device is the one routed *before* the
		# redirect, e.g. a veth, while the packet itself now goes to 127.0.0.1.)
		ct state established,related accept
		meta mark {mark} ip daddr 127.0.0.1 meta l4proto tcp accept
		# after the redirect, only the gateway's listeners on loopback are reachable
		ip daddr 127.0.0.1 tcp dport { {proxy}, {transparent}, {dns} } accept
		ip daddr 127.0.0.1 udp dport {dns} accept
		ip6 daddr ::1 tcp dport { {proxy}, {transparent}, {dns} } accept
		# everything else — other UDP, ICMP, IPv6, anything that escaped the redirect — drops (class 4)
	}
}
"#;
