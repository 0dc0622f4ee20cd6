#!/usr/bin/env python3
"""Run one command in a fresh, throwaway gvm sandbox over gvmd's control API.

A program that sandboxes each tool call does what this does: POST /v1/runs with the
profile and the command, read the exit code, the output and the files it changed, then
apply or discard those changes. Standard library only: HTTP/1.1 over the Unix socket.
The JSON contract is in docs/api.md ("Ephemeral runs").

    sudo python3 examples/ephemeral_run.py --profile invoices -- sh -c 'ls; echo done > out.txt'
    sudo python3 examples/ephemeral_run.py --profile invoices --discard -- ./convert.sh

The caller must be root or in the gvm-admin group (gvmd checks the socket's peer).
"""

import argparse
import http.client
import json
import socket
import sys


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a Unix socket (gvmd listens on no TCP port)."""

    def __init__(self, path, timeout):
        super().__init__("gvmd", timeout=timeout)
        self.socket_path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self.socket_path)
        self.sock = s


def call(sock, method, path, body=None, timeout=60):
    """One request; returns the decoded JSON answer or raises with gvmd's error and hint."""
    conn = UnixHTTPConnection(sock, timeout)
    payload = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if payload is not None else {}
    conn.request(method, path, body=payload, headers=headers)
    resp = conn.getresponse()
    data = json.loads(resp.read() or b"null")
    conn.close()
    if resp.status >= 300:
        hint = data.get("hint") if isinstance(data, dict) else None
        error = data.get("error") if isinstance(data, dict) else data
        raise RuntimeError(f"gvmd answered {resp.status}: {error}" + (f" (hint: {hint})" if hint else ""))
    return data


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--socket", default="/run/gvm/gvmd.sock")
    p.add_argument("--profile", required=True)
    p.add_argument("--timeout", type=int, default=60, help="seconds before the sandbox is killed")
    p.add_argument("--workspace", action="append", default=[], metavar="DIR:overlay|ro")
    p.add_argument("--discard", action="store_true", help="drop the run's changes at the end")
    p.add_argument("argv", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    a = p.parse_args()
    argv = a.argv[1:] if a.argv[:1] == ["--"] else a.argv
    if not argv:
        p.error("give the command after --")
    workspaces = []
    for w in a.workspace:
        path, _, mode = w.rpartition(":") if w.endswith((":ro", ":overlay")) else (w, "", "overlay")
        workspaces.append({"path": path, "mode": mode})

    run = call(a.socket, "POST", "/v1/runs",
               {"profile": a.profile, "argv": argv, "timeout_secs": a.timeout, "workspaces": workspaces},
               timeout=a.timeout + 30)
    print(f"run {run['run_id']}: exit {run['exit_code']}"
          + (" (timed out)" if run["timed_out"] else "")
          + f", started in {run['start_ms']} ms, {run['total_ms']} ms in all")
    sys.stdout.write(run["stdout"])
    sys.stderr.write(run["stderr"])
    for c in run["changes"]:
        print(f"changed: {c['kind']} {c['workspace'].rstrip('/')}/{c['path']} ({c['class']})")
    if run["kept"]:
        listed = call(a.socket, "GET", f"/v1/runs/{run['run_id']}/changes")
        assert len(listed["changes"]) == len(run["changes"])
        if a.discard:
            call(a.socket, "POST", f"/v1/runs/{run['run_id']}/discard", {"paths": []})
            print(f"run {run['run_id']}: discarded")
        else:
            print(f"kept for review: gvmctl changes --run {run['run_id']}")
    return run["exit_code"]


if __name__ == "__main__":
    sys.exit(main())
