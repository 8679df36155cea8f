#!/usr/bin/python3
"""Runs a program under the system call filter, NoNewPrivileges, user and umask that a
systemd unit declares, read from the unit file, the way systemd (252) builds them; and
drives switchboard through a short workload under that sandbox. Used by .ci/check-unit.

  seccomp-run.py plan UNIT               print the filter the unit declares
  seccomp-run.py check UNIT BINARY       start BINARY sandboxed and run the workload
  seccomp-run.py exec PLAN.json          (internal) the sandboxed child: drop to the
                                         user, set umask and no_new_privs, load the
                                         filter, execve the program

Needs root (it drops to the unit's user), Debian's python3-seccomp (libseccomp's own
bindings, the library systemd uses too) and systemd-analyze (for the groups' contents).

Semantics mirrored from systemd.exec(5) and systemd's own code:
- The first non-empty SystemCallFilter= decides the mode: without "~" an allow list
  (and @default is added to it implicitly), with "~" a deny list. Later lines add to or
  remove from that one set, in order; an empty assignment resets everything.
- Groups are expanded recursively (a group may list groups), including in "~" lines,
  so "~@privileged" also removes @chown's calls.
- "name:ERRNO" / "name:kill" on "~" lines pick that call's own action.
- SystemCallErrorNumber= replaces the kill for every call the filter refuses: the
  default action of an allow list, the listed calls of a deny list. Unset, empty or
  "kill" means SCMP_ACT_KILL_PROCESS (the process dies with SIGSYS).
- Names that libseccomp cannot resolve, or that do not exist on this architecture
  (mmap2 on x86-64), are skipped, as systemd skips them.
- SystemCallArchitectures=native: the filter covers only the native ABI and a call
  from any other ABI hits libseccomp's bad-architecture action (kill).
- NoNewPrivileges= is also implied by SystemCallFilter=, DynamicUser= and the other
  settings systemd.exec(5) lists; a non-root user cannot load a filter without it.

Not reproduced: the unit's other sandboxing (mount namespaces, capabilities, limits and
the smaller seccomp filters of RestrictRealtime=, RestrictAddressFamilies=,
MemoryDenyWriteExecute= and the like). Those refuse with an error; none of them kills.
"""

import base64
import ctypes
import errno
import hashlib
import hmac
import http.client
import json
import os
import pwd
import grp
import re
import secrets
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time

import seccomp

PR_SET_NO_NEW_PRIVS = 38
PR_GET_NO_NEW_PRIVS = 39
KILL = "kill"  # an action name, next to "allow" and errno numbers
NATIVE = seccomp.Arch.NATIVE
# Settings that make systemd imply NoNewPrivileges=yes (systemd.exec(5), NoNewPrivileges=).
NNP_IMPLIED_BY_BOOL = ("DynamicUser", "LockPersonality", "MemoryDenyWriteExecute", "PrivateDevices",
                       "ProtectClock", "ProtectHostname", "ProtectKernelLogs", "ProtectKernelModules",
                       "ProtectKernelTunables", "RestrictRealtime", "RestrictSUIDSGID")
NNP_IMPLIED_BY_LIST = ("RestrictAddressFamilies", "RestrictNamespaces", "SystemCallArchitectures",
                       "SystemCallFilter", "SystemCallLog")
STOP_TIMEOUT = 15  # the unit's TimeoutStopSec


def say(line):
    print(f"check-unit: {line}", flush=True)


class Failure(Exception):
    pass


# ---------------------------------------------------------------------------- the unit

def read_unit(path):
    """The [Service] section as an ordered list of (key, value); continuation lines joined."""
    entries, section, pending = [], None, ""
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.rstrip("\n")
            if pending:
                line, pending = pending + line.lstrip(), ""
            stripped = line.strip()
            if not stripped or stripped[0] in "#;":
                continue
            if stripped.endswith("\\"):
                pending = stripped[:-1] + " "
                continue
            if stripped.startswith("[") and stripped.endswith("]"):
                section = stripped[1:-1]
                continue
            if section == "Service" and "=" in stripped:
                key, value = stripped.split("=", 1)
                entries.append((key.strip(), value.strip()))
    return entries


def last(entries, key, default=None):
    values = [v for k, v in entries if k == key]
    return values[-1] if values else default


def boolean(value):
    return value is not None and value.lower() in ("1", "yes", "y", "true", "t", "on")


def parse_errno(text):
    """systemd's parse_errno(): a number 0..4095 or a name such as EPERM; 'kill' too."""
    if text == "kill":
        return KILL
    if text.isdigit() and int(text) <= 4095:
        return int(text)
    value = getattr(errno, text, None)
    if isinstance(value, int) and text.startswith("E"):
        return value
    raise Failure(f"not an errno: {text!r}")


# ------------------------------------------------------------------------ the filter

class Groups:
    """Syscall groups as this machine's systemd defines them, expanded recursively."""

    def __init__(self):
        self.cache = {}

    def members(self, group):
        if group not in self.cache:
            run = subprocess.run(["systemd-analyze", "syscall-filter", group],
                                 capture_output=True, text=True, timeout=20)
            if run.returncode != 0:
                self.cache[group] = None
            else:
                # "@group", then "    # description", then one member per line.
                names = [l.strip() for l in run.stdout.splitlines()[1:]]
                self.cache[group] = [n for n in names if n and not n.startswith("#")]
        return self.cache[group]


def build_filter(entries):
    """Merges the SystemCallFilter= lines in order, as systemd's config parser does."""
    groups, warnings = Groups(), []
    state = {"allow_list": None, "calls": None, "removed": set()}

    def apply(name, num, invert):
        if name.startswith("@"):
            members = groups.members(name)
            if members is None:
                warnings.append(f"unknown group {name}, ignored (as systemd does)")
                return
            for member in members:
                apply(member, num, invert)
            return
        allow_list, calls = state["allow_list"], state["calls"]
        # Same test as seccomp_parse_syscall_filter(): keep the call in the set when the
        # line's kind matches the mode, or for a "~name:errno" on an allow list.
        if (not invert) == allow_list or (invert and allow_list and num != -1):
            calls[name] = num
            state["removed"].discard(name)
        elif name in calls:
            del calls[name]
            state["removed"].add(name)

    lines = []
    for key, value in entries:
        if key != "SystemCallFilter":
            continue
        lines.append(value)
        if not value:
            state.update(allow_list=None, calls=None, removed=set())
            continue
        invert = value.startswith("~")
        words = value[1:].split() if invert else value.split()
        if state["calls"] is None:
            state["calls"] = {}
            state["allow_list"] = not invert
            if not invert:
                apply("@default", -1, False)  # "implicitly allow-listed", systemd.exec(5)
        for word in words:
            name, _, err = word.partition(":")
            num = parse_errno(err) if err else -1
            if not invert and num != -1:
                warnings.append(f"allow-listed {word} cannot take an error number, ignored")
                continue
            apply(name, num, invert)

    error_number = last(entries, "SystemCallErrorNumber", "")
    negative = KILL if error_number in ("", "kill") else parse_errno(error_number)
    if negative == 0:
        raise Failure("SystemCallErrorNumber=0 is not valid")
    archs = " ".join(v for k, v in entries if k == "SystemCallArchitectures").split()
    return {
        "lines": lines,
        "allow_list": state["allow_list"],
        "calls": state["calls"] or {},
        "removed": sorted(state["removed"]),
        "negative": negative,
        "native_only": archs != [] and set(archs) <= {"native", seccomp_arch_name()},
        "archs": archs,
        "warnings": warnings,
    }


def seccomp_arch_name():
    """systemd's name for the native architecture (the tokens are signed in the bindings)."""
    names = {seccomp.Arch.X86_64: "x86-64", seccomp.Arch.X86: "x86", seccomp.Arch.AARCH64: "arm64"}
    native = seccomp.system_arch() & 0xFFFFFFFF
    return next((n for a, n in names.items() if a & 0xFFFFFFFF == native), str(native))


def native_calls():
    """Every call libseccomp knows on this architecture, by number."""
    known = {}
    for nr in range(0, 1024):
        try:
            known[nr] = seccomp.resolve_syscall(NATIVE, nr).decode()
        except ValueError:
            pass
    return known


def rules_of(spec):
    """(rules, default, skipped): libseccomp rules for the native ABI, as systemd adds them."""
    default = spec["negative"] if spec["allow_list"] else "allow"
    rules, not_here, unknown = {}, [], []
    for name, num in spec["calls"].items():
        nr = seccomp.resolve_syscall(NATIVE, name)
        if nr == -1:
            unknown.append(name)
            continue
        if nr < 0:  # a pseudo number: the call exists on other architectures only
            not_here.append(name)
            continue
        if num == -1:
            action = "allow" if spec["allow_list"] else spec["negative"]
        else:
            action = num  # "~name:errno" or "~name:kill"
        rules[name] = action
    if spec["allow_list"] is None:  # no SystemCallFilter= at all
        default = "allow"
    return rules, default, sorted(not_here), sorted(unknown)


def action_text(action):
    if action == "allow":
        return "ALLOW"
    if action == KILL:
        return "KILL_PROCESS (SIGSYS)"
    return f"ERRNO({errno.errorcode.get(action, action)})"


def describe(spec):
    rules, default, not_here, unknown = rules_of(spec)
    known = set(native_calls().values())
    for line in spec["lines"]:
        say(f"  SystemCallFilter={line}")
    neg = spec["negative"]
    say(f"  SystemCallErrorNumber -> a refused call gets {action_text(neg)}")
    if spec["allow_list"] is None:
        say("filter: none (no SystemCallFilter=)")
        return
    allowed = sorted(n for n, a in rules.items() if a == "allow")
    refused = {}  # action -> calls with a rule of their own that is not ALLOW
    for name, action in sorted(rules.items()):
        if action != "allow":
            refused.setdefault(action, []).append(name)
    if spec["allow_list"]:
        denied = len(known - set(rules))
        say(f"filter ({seccomp_arch_name()}): allow list of {len(allowed)} calls (@default included "
            f"implicitly); the other {denied} calls known to libseccomp here, and any call it does "
            f"not know -> {action_text(default)}")
    else:
        say(f"filter ({seccomp_arch_name()}): deny list of {len(rules)} calls; the other "
            f"{len(known - set(rules))} known calls -> ALLOW")
    for action, names in refused.items():
        say(f"  {action_text(action)} ({len(names)}): {' '.join(names)}")
    # Calls a later line took back out of the set: refused on an allow list (they fall to
    # the default action), allowed again on a deny list.
    removed = [n for n in spec["removed"] if n in known]
    if removed:
        what = "taken out of the allow list by ~ lines" if spec["allow_list"] else "allowed again by later lines"
        say(f"  {what} ({len(removed)}): {' '.join(removed)}")
    probe = "sched_setscheduler"
    probe_action = rules.get(probe, default)
    say(f"  {probe} -> {action_text(probe_action)}")
    if not_here or unknown:
        say(f"  skipped as systemd does: {len(not_here)} names of other architectures "
            f"(e.g. {' '.join(not_here[:3])}), {len(unknown)} unknown to libseccomp "
            f"{'.'.join(map(str, libseccomp_version()))}: {' '.join(unknown)}")
    if spec["native_only"]:
        say("  SystemCallArchitectures=native: calls from other ABIs are killed")
    elif spec["archs"]:
        say(f"  SystemCallArchitectures={' '.join(spec['archs'])}: only the native ABI is filtered here")
    for warning in spec["warnings"]:
        say(f"  warning: {warning}")


def libseccomp_version():
    try:
        lib = ctypes.CDLL("libseccomp.so.2")
        lib.seccomp_version.restype = ctypes.POINTER(ctypes.c_uint * 3)
        return tuple(lib.seccomp_version().contents)
    except (OSError, AttributeError):
        return ("?",)


def seccomp_action(action):
    if action == "allow":
        return seccomp.ALLOW
    if action == KILL:
        return seccomp.KILL_PROCESS
    return seccomp.ERRNO(action)


# --------------------------------------------------------------- user, umask, sandbox

def identity(entries):
    """(uid, gid, text) for the unit's DynamicUser= or User=/Group=; root otherwise."""
    if boolean(last(entries, "DynamicUser")):
        # A dynamic uid exists only while the service runs; nobody stands in for it.
        try:
            uid, gid = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
        except KeyError:
            uid = gid = 65534
        return uid, gid, f"uid {uid} gid {gid} (nobody, standing in for DynamicUser=yes)"
    user = last(entries, "User")
    if not user:
        return 0, 0, "root (the unit sets neither User= nor DynamicUser=)"
    try:
        entry = pwd.getpwnam(user) if not user.isdigit() else pwd.getpwuid(int(user))
        uid, gid, text = entry.pw_uid, entry.pw_gid, f"User={user} (uid {entry.pw_uid})"
    except KeyError:
        uid = gid = 65534
        text = f"uid 65534 (User={user} does not exist on this machine)"
    group = last(entries, "Group")
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid if not group.isdigit() else int(group)
        except KeyError:
            pass
    return uid, gid, f"{text} gid {gid}"


def no_new_privileges(entries):
    explicit = last(entries, "NoNewPrivileges")
    if boolean(explicit):
        return True, "NoNewPrivileges=yes"
    implied = [k for k in NNP_IMPLIED_BY_BOOL if boolean(last(entries, k))]
    implied += [k for k in NNP_IMPLIED_BY_LIST if last(entries, k)]
    if implied:
        return True, f"NoNewPrivileges implied by {implied[0]}="
    return False, "NoNewPrivileges=no"


def exec_sandboxed(plan_path):
    """The child: runs as root until the filter is loaded, then becomes the program."""
    with open(plan_path, encoding="utf-8") as f:
        plan = json.load(f)
    filt = None
    if plan["filter"] is not None:
        rules, default = plan["filter"]["rules"], plan["filter"]["default"]
        filt = seccomp.SyscallFilter(seccomp_action(default))
        filt.set_attr(seccomp.Attr.CTL_NNP, 0)  # no_new_privs is set below, from the unit
        if not plan["filter"]["native_only"]:
            filt.set_attr(seccomp.Attr.ACT_BADARCH, seccomp.ALLOW)
        for name, action in rules.items():
            if action != default:  # libseccomp refuses a rule that repeats the default
                filt.add_rule_exactly(seccomp_action(action), name)
    os.chdir(plan["cwd"])
    if plan["uid"] != os.getuid():
        os.setgroups([])
        os.setresgid(plan["gid"], plan["gid"], plan["gid"])
        os.setresuid(plan["uid"], plan["uid"], plan["uid"])
    os.umask(plan["umask"])
    if plan["nnp"]:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 or libc.prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) != 1:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS)")
    if filt is not None:
        filt.load()
    # From here on every system call goes through the filter: execve (@default) only.
    os.execve(plan["argv"][0], plan["argv"], plan["env"])


# ------------------------------------------------------------------- the workload

def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint_token(secret, user_id, name, ttl=600):
    """An HS256 access token with the claims switchboard reads (SimpleJWT's shape)."""
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = {"token_type": "access", "user_id": user_id, "name": name, "exp": int(time.time()) + ttl}
    body = b64url(json.dumps(claims).encode())
    signature = hmac.new(secret.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64url(signature)}"


class WebSocket:
    """A minimal RFC 6455 client: handshake, masked text frames out, frames in."""

    GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

    def __init__(self, addr, path, timeout=5.0):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.buf = b""
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        if " 101 " not in lines[0] + " ":
            raise Failure(f"WebSocket handshake on {path.split('?')[0]} answered {lines[0]!r}")
        headers = {k.strip().lower(): v.strip() for k, _, v in (l.partition(":") for l in lines[1:])}
        accept = base64.b64encode(hashlib.sha1((key + self.GUID).encode()).digest()).decode()
        if headers.get("sec-websocket-accept") != accept:
            raise Failure("WebSocket handshake: wrong Sec-WebSocket-Accept")

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise Failure("the server closed the WebSocket connection")
        self.buf += chunk

    def _take(self, n):
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def _send(self, opcode, payload):
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(head + mask + masked)

    def send_text(self, text):
        self._send(0x1, text.encode())

    def recv_text(self, deadline):
        """The next text message; answers pings, reassembles fragments."""
        parts = []
        while True:
            self.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                b0, b1 = self._take(2)
            except socket.timeout:
                raise Failure("timed out waiting for a WebSocket frame") from None
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", self._take(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", self._take(8))[0]
            mask = self._take(4) if b1 & 0x80 else None
            payload = self._take(n)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            opcode = b0 & 0x0F
            if opcode == 0x9:
                self._send(0xA, payload)
            elif opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                raise Failure(f"the server closed the WebSocket with {code} {payload[2:].decode(errors='replace')}")
            elif opcode in (0x0, 0x1):
                parts.append(payload)
                if b0 & 0x80:
                    return b"".join(parts).decode()

    def wait_for(self, predicate, what, timeout=5.0):
        deadline, seen = time.monotonic() + timeout, []
        while time.monotonic() < deadline:
            text = self.recv_text(deadline)
            try:
                frame = json.loads(text)
            except ValueError:
                frame = None
            if isinstance(frame, dict) and predicate(frame):
                return frame
            seen.append(text[:120])
        raise Failure(f"no {what} within {timeout} s; frames seen: {seen}")

    def close(self):
        try:
            self._send(0x8, struct.pack("!H", 1000))
            self.sock.close()
        except OSError:
            pass


def http_request(addr, method, path, body=None, headers=None):
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


def thread_policy(pid, comm):
    names = {0: "SCHED_OTHER", 1: "SCHED_FIFO", 2: "SCHED_RR", 3: "SCHED_BATCH", 5: "SCHED_IDLE", 6: "SCHED_DEADLINE"}
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if f.read().strip() == comm:
                    return names.get(os.sched_getscheduler(int(tid)), "?")
    except OSError:
        pass
    return "thread not found"


def sandbox_status(pid):
    """What the kernel says the running server has: user, no_new_privs, seccomp, umask."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.split()
    modes = {"0": "none", "1": "strict", "2": "filter"}
    return (f"uid {fields['Uid'][0]} gid {fields['Gid'][0]}, NoNewPrivs {fields['NoNewPrivs'][0]}, "
            f"Seccomp {modes.get(fields['Seccomp'][0], '?')} ({fields.get('Seccomp_filters', ['?'])[0]} loaded), "
            f"Umask {fields.get('Umask', ['?'])[0]}")


def state_paths(entries):
    """The unit's /var/lib/NAME (StateDirectory=) and its mode."""
    names = (last(entries, "StateDirectory") or "").split()
    mode = int(last(entries, "StateDirectoryMode", "0755"), 8)
    return (f"/var/lib/{names[0]}" if names else None), mode


def check(unit_path, binary):
    started = time.monotonic()
    entries = read_unit(unit_path)
    say(f"unit {unit_path}, binary {binary}")
    spec = build_filter(entries)
    describe(spec)
    rules, default, _, _ = rules_of(spec)
    uid, gid, who = identity(entries)
    nnp, nnp_text = no_new_privileges(entries)
    umask = int(last(entries, "UMask", "0022"), 8)
    say(f"process: {who}, {nnp_text}, UMask={umask:04o}")

    exec_start = shlex.split(last(entries, "ExecStart", ""))
    program = exec_start[0].lstrip("-@:+!") if exec_start else "/usr/local/bin/switchboard"
    unit_state, state_mode = state_paths(entries)

    work = tempfile.mkdtemp(prefix="check-unit.")
    server = None
    try:
        os.chmod(work, 0o755)  # the user must reach the state directory and the binary
        # Like `install -m 0755 switchboard /usr/local/bin/`: a copy the user can execute
        # wherever the build tree is.
        bin_dir = os.path.join(work, "bin")
        os.mkdir(bin_dir, 0o755)
        installed = os.path.join(bin_dir, os.path.basename(program))
        shutil.copyfile(binary, installed)
        os.chmod(installed, 0o755)
        # StateDirectory=: owned by the service's user, with StateDirectoryMode=.
        state = os.path.join(work, "state")
        os.mkdir(state)
        os.chown(state, uid, gid)
        os.chmod(state, state_mode)

        def mapped(value):
            return value.replace(unit_state, state) if unit_state else value

        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/", "LANG": "C.UTF-8"}
        for key, value in entries:
            if key == "Environment":
                for assignment in shlex.split(value):
                    name, _, val = assignment.partition("=")
                    env[name] = mapped(val)
        jwt_secret, api_key = secrets.token_hex(16), secrets.token_hex(16)
        env.update(SWITCHBOARD_DB=os.path.join(state, "switchboard.db"),
                   SWITCHBOARD_JWT_SECRET=jwt_secret, SWITCHBOARD_API_KEY=api_key)
        workdir = mapped(last(entries, "WorkingDirectory", "/"))
        if not os.path.isdir(workdir):
            workdir = state
        argv = [installed] + exec_start[1:] + ["--listen", "127.0.0.1:0", "--api-listen", "127.0.0.1:0"]
        plan = {"argv": argv, "env": env, "cwd": workdir, "uid": uid, "gid": gid, "umask": umask, "nnp": nnp,
                "filter": None if spec["allow_list"] is None else
                {"rules": rules, "default": default, "native_only": spec["native_only"]}}
        plan_path = os.path.join(work, "plan.json")
        with open(plan_path, "w", encoding="utf-8") as f:
            json.dump(plan, f)
        os.chmod(plan_path, 0o600)

        out_path, err_path = os.path.join(work, "stdout"), os.path.join(work, "stderr")
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            server = subprocess.Popen([sys.executable, "-I", os.path.abspath(__file__), "exec", plan_path],
                                      stdin=subprocess.DEVNULL, stdout=out, stderr=err, env={"PATH": env["PATH"]})
        t0 = time.monotonic()
        say(f"started pid {server.pid}: {' '.join(argv[1:])} (state dir {state}, mode {state_mode:04o})")

        def alive(step):
            if server.poll() is not None:
                raise Failure(f"the server died {step}: {exit_text(server.returncode)}")

        # 1. The banner on stdout.
        pattern = re.compile(r"listening on ws://(\S+) \(server API on http://([^)\s]+)\)")
        match = None
        while match is None:
            with open(out_path, encoding="utf-8", errors="replace") as f:
                match = pattern.search(f.read())
            if match:
                break
            alive("before it was listening")
            if time.monotonic() - t0 > 10:
                raise Failure("no 'listening on' line within 10 s")
            time.sleep(0.05)
        ws_addr, api_addr = match.groups()
        say(f"listening on ws://{ws_addr}, API on http://{api_addr} ({time.monotonic() - t0:.2f} s after start)")

        # 2. Past the checkpoint thread's start and its first pass (500 ms).
        time.sleep(1.5)
        alive("in its first 1.5 s")
        say(f"alive 1.5 s after listening; wal-checkpoint thread runs {thread_policy(server.pid, 'wal-checkpoint')}")
        say(f"sandbox in force: {sandbox_status(server.pid)}")

        # 3. Health.
        status, body = http_request(api_addr, "GET", "/healthz")
        if status != 200 or json.loads(body) != {"status": "ok"}:
            raise Failure(f"GET /healthz -> {status} {body}")
        say(f"GET /healthz -> {status} {body.strip()}")
        alive("after /healthz")

        # 4. Two room clients; one speaks, the other hears.
        path = "/ws/rooms/lobby/?token="
        one = WebSocket(ws_addr, path + mint_token(jwt_secret, 1, "ann"))
        two = WebSocket(ws_addr, path + mint_token(jwt_secret, 2, "bob"))
        try:
            two.wait_for(lambda f: f.get("type") == "room_users_list", "room_users_list on client 2")
            say("two WebSocket clients joined /ws/rooms/lobby/")
            one.send_text(json.dumps({"message": "hello"}))
            two.wait_for(lambda f: f.get("type") == "chat_message" and f.get("message") == "hello",
                         "chat_message 'hello' on client 2")
            say("client 1 sent {\"message\": \"hello\"}; client 2 received chat_message \"hello\"")
            alive("after the chat message")

            # 5. The server API posts into the room.
            status, body = http_request(api_addr, "POST", "/api/rooms/lobby/messages",
                                        body=json.dumps({"message": "from api"}),
                                        headers={"Authorization": f"Bearer {api_key}",
                                                 "Content-Type": "application/json"})
            if status != 201:
                raise Failure(f"POST /api/rooms/lobby/messages -> {status} {body}")
            two.wait_for(lambda f: f.get("type") == "chat_message" and f.get("message") == "from api",
                         "chat_message 'from api' on client 2")
            say(f"POST /api/rooms/lobby/messages -> {status}; client 2 received chat_message \"from api\"")
        finally:
            one.close()
            two.close()
        alive("during the workload")

        # 6. A clean stop.
        server.send_signal(signal.SIGTERM)
        t_stop = time.monotonic()
        try:
            code = server.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise Failure(f"still running {STOP_TIMEOUT} s after SIGTERM (TimeoutStopSec)") from None
        if code != 0:
            raise Failure(f"after SIGTERM: {exit_text(code)}")
        say(f"SIGTERM -> exit status 0 after {time.monotonic() - t_stop:.2f} s")
        say(f"ok ({time.monotonic() - started:.1f} s)")
        return 0
    except (Failure, OSError, ValueError) as e:
        say(f"FAILED: {e}")
        if server is not None:
            # A step can fail on a refused connection because the server just died.
            if server.poll() is not None and "died" not in str(e):
                say(f"the server has exited: {exit_text(server.returncode)}")
            stop(server)
            for name in ("stdout", "stderr"):
                with open(os.path.join(work, name), encoding="utf-8", errors="replace") as f:
                    text = f.read().strip()
                say(f"server {name}:" + ("" if text else " (empty)"))
                for line in text.splitlines()[-40:]:
                    print(f"    {line}", flush=True)
        return 1
    finally:
        if server is not None:
            stop(server)
        shutil.rmtree(work, ignore_errors=True)


def exit_text(code):
    if code < 0:
        return f"killed by signal {-code} ({signal.Signals(-code).name})"
    return f"exit status {code}"


def stop(proc):
    """Ends the one process this script started, if it still runs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv):
    if len(argv) == 2 and argv[0] == "exec":
        exec_sandboxed(argv[1])
    if len(argv) == 2 and argv[0] == "plan":
        describe(build_filter(read_unit(argv[1])))
        return 0
    if len(argv) == 3 and argv[0] == "check":
        if os.geteuid() != 0:
            say("must run as root: it drops to the unit's user")
            return 1

        def timed_out(signum, frame):
            raise Failure("the check took over 50 s")

        signal.signal(signal.SIGALRM, timed_out)
        signal.signal(signal.SIGTERM, lambda s, f: timed_out(s, f))
        signal.alarm(50)
        return check(argv[1], argv[2])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
