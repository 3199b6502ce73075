#!/usr/bin/env python3
"""TwinFS benchmark harness (Python 3 standard library only).

Compares a plain directory (raw), libfuse's passthrough_ll (fuse) and a TwinFS
node (twinfs), plus any already-mounted directory given as name=/path, on the
PACS workloads of docs/perf anchors: small-file ingest (1 and 4 writers),
cold read-back, 20 MiB files, one large sequential file, and a metadata walk.
Samples are interleaved (for rep: for target: run) and ratios are "paired"
(median over reps of target_i / raw_i). See bench/README.md.

Safety rules (see the FUSE notes): every workload runs in a forked child
process with a deadline, so a dead or hung mount can never hang the harness;
every external command is bounded with `timeout -k`; mounts are waited for via
/proc/self/mountinfo, never stat(); every mount the harness made is torn down
in a finally block (Ctrl-C included).
"""

import argparse
import datetime
import errno
import hashlib
import json
import math
import os
import platform
import re
import resource
import select
import shlex
import shutil
import signal
import socket
import stat
import statistics
import subprocess
import sys
import tempfile
import time

KiB = 1024
MiB = 1024 * KiB
MB = 1_000_000  # MB/s are decimal, as in perf.md
GB = 1_000_000_000

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH_DIR)
OUT_DIR = os.path.join(BENCH_DIR, "out")

# TWINFS_BIN overrides the binary (e.g. a release build made in a private clone).
DEFAULT_TWINFS = os.environ.get("TWINFS_BIN") or os.path.join(REPO, ".build-release", "release", "twinfs")
DEFAULT_PLL = os.path.join(OUT_DIR, "passthrough_ll")

# Jobs (what --only selects) and the table rows they produce, in table order.
JOBS = ["ingest1", "ingest4", "medium", "seq", "meta"]
JOB_ALIASES = {
    "ingest": ["ingest1", "ingest4"], "smallread": ["ingest1"],
    "seqwrite": ["seq"], "seqread": ["seq"], "meta_warm": ["meta"], "treecreate": ["meta"],
}
ROWS = [
    ("ingest1", "files/s"), ("ingest1", "MB/s"),
    ("smallread", "files/s"), ("smallread", "MB/s"),
    ("ingest4", "files/s"), ("ingest4", "MB/s"),
    ("medium", "files/s"), ("medium", "MB/s"),
    ("seqwrite", "MB/s"), ("seqread", "MB/s"),
    ("treecreate", "files/s"), ("meta", "ops/s"), ("meta_warm", "ops/s"), ("treedelete", "files/s"),
]
ROW_LABEL = {
    "ingest1": "ingest1 (512 KiB, 1 writer, fsync)",
    "smallread": "smallread (cold, sha256 verify)",
    "ingest4": "ingest4 (512 KiB, 4 writers, fsync)",
    "medium": "medium (20 MiB, fsync)",
    "seqwrite": "seqwrite (1 MiB writes, +fsync)",
    "seqread": "seqread (cold)",
    "treecreate": "treecreate (1 sample, no fsync)",
    "meta": "meta (cold walk)",
    "meta_warm": "meta_warm",
    "treedelete": "treedelete (1 sample)",
}
ONE_SAMPLE = {"treecreate", "treedelete"}

SMALL_SIZE = 512 * KiB
MEDIUM_SIZE = 20 * MiB
META_SIZE = 4 * KiB
FILES_PER_SERIES = 100
SERIES_PER_STUDY = 4

POOL = b""          # random payload, generated once before any fork (shared copy-on-write)
MIRRORS = []        # (copy 1 root, copy 2 root) of each `two` target: see copies()
RESULT_FD = -1      # the workload child's result pipe; writers close it


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


# --------------------------------------------------------------------------- shell-outs

def sh(argv, timeout=60):
    """Runs argv bounded by `timeout -k 5` and a Python-side deadline. Output goes to a
    temp file, not a pipe, so a child stuck in D state cannot block us on pipe EOF."""
    with tempfile.TemporaryFile(mode="w+b") as f:
        try:
            p = subprocess.Popen(["timeout", "-k", "5", str(int(timeout))] + list(argv), stdout=f,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as e:
            return 127, str(e)
        try:
            rc = p.wait(timeout + 15)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except OSError:
                pass
            rc = 124
        f.seek(0)
        return rc, f.read().decode("utf-8", "replace").strip()


_warned_drop = False


def sync_all():
    rc, out = sh(["sync"], 300)
    if rc != 0:
        log(f"warning: sync returned {rc}: {out}")


def drop_caches():
    global _warned_drop
    if os.geteuid() != 0:
        if not _warned_drop:
            log("warning: not root, cannot drop caches: 'cold' numbers are not cold")
            _warned_drop = True
        return False
    rc, out = sh(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"], 300)
    if rc != 0:
        log(f"warning: drop_caches returned {rc}: {out}")
        return False
    return True


# --------------------------------------------------------------------------- mounts

def _unescape(s):
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), s)


def mountinfo():
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            p = line.split()
            try:
                sep = p.index("-", 6)
            except ValueError:
                continue
            out.append({"dev": p[2], "mnt": _unescape(p[4]), "fstype": p[sep + 1], "source": p[sep + 2]})
    return out


def mount_entry(path):
    found = None
    for m in mountinfo():
        if m["mnt"] == path:
            found = m  # the last one is the top of the stack
    return found


def is_mounted(path):
    return mount_entry(path) is not None


def fs_of(path):
    """The mountinfo entry of the filesystem holding path (longest mount-point prefix)."""
    path = os.path.realpath(path)
    best = None
    for m in mountinfo():
        mp = m["mnt"]
        if path == mp or path.startswith(mp.rstrip("/") + "/") or mp == "/":
            if best is None or len(mp) >= len(best["mnt"]):
                best = m
    return best


def fuse_abort(path):
    """Aborts the FUSE connection of the mount at path (releases callers stuck on it)."""
    m = mount_entry(path)
    if not m or not m["fstype"].startswith("fuse"):
        return False
    minor = m["dev"].split(":")[1]
    conn = "/sys/fs/fuse/connections"
    if not os.path.exists(os.path.join(conn, minor)):
        if not any(x["fstype"] == "fusectl" for x in mountinfo()):
            sh(["mount", "-t", "fusectl", "fusectl", conn], 20)
    try:
        with open(os.path.join(conn, minor, "abort"), "w") as f:
            f.write("1")
        log(f"aborted FUSE connection {minor} of {path}")
        return True
    except OSError as e:
        log(f"warning: cannot abort FUSE connection {minor} of {path}: {e}")
        return False


def force_unmount(path):
    """fusermount3 -u, then abort + fusermount3 -u, then umount -l. True when gone."""
    if not is_mounted(path):
        return True
    rc, out = sh(["fusermount3", "-u", path], 30)
    if is_mounted(path):
        log(f"fusermount3 -u {path} failed ({rc}: {out}); aborting the connection")
        fuse_abort(path)
        sh(["fusermount3", "-u", path], 30)
    if is_mounted(path):
        rc, out = sh(["umount", "-l", path], 30)
        log(f"umount -l {path}: rc {rc} {out}")
    return not is_mounted(path)


def sweep_mounts(prefix, keep=()):
    """Lazily removes leftover mounts under prefix (from an earlier crashed run). Mounts that hold
    a path in keep (external targets such as <workdir>/gluster/mnt) are left alone."""
    prefix = prefix.rstrip("/") + "/"

    def ours(mp):
        return mp.startswith(prefix) and not any(k == mp or k.startswith(mp.rstrip("/") + "/") for k in keep)
    left = [m["mnt"] for m in mountinfo() if ours(m["mnt"])]
    for mp in sorted(left, key=len, reverse=True):
        log(f"leftover mount {mp} from an earlier run: unmounting")
        force_unmount(mp)
    return [m["mnt"] for m in mountinfo() if ours(m["mnt"])]


def wait_mounted(mnt, proc, timeout, logpath):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_mounted(mnt):
            return
        rc = proc.poll()
        if rc is not None:
            raise RuntimeError(f"daemon exited with status {rc} before mounting {mnt}; log tail:\n{tail(logpath)}")
        time.sleep(0.1)
    raise RuntimeError(f"{mnt} did not appear in /proc/self/mountinfo within {timeout} s; log tail:\n{tail(logpath)}")


def wait_proc(proc, t):
    try:
        proc.wait(t)
        return True
    except subprocess.TimeoutExpired:
        return False


def stop_proc(proc, grace=30):
    """Waits for the daemon (bounded), then SIGTERM, then SIGKILL. Returns the exit status."""
    if proc.poll() is None and not wait_proc(proc, grace):
        proc.send_signal(signal.SIGTERM)
        if not wait_proc(proc, 10):
            proc.kill()
            wait_proc(proc, 10)
    return proc.poll()


def tail(path, n=25):
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 64 * KiB))
            lines = f.read().decode("utf-8", "replace").splitlines()
        return "\n".join(lines[-n:])
    except OSError as e:
        return f"(no log: {e})"


# --------------------------------------------------------------------------- targets

class Target:
    managed = False
    fuse_mnt = None      # the FUSE mount point the harness owns (for abort), if any
    backing = None       # where the data really lands (for emergency cleanup), if safe to touch
    logpath = None

    def __init__(self, name, path):
        self.name = name
        self.dir = path
        self.dead = None         # reason, once the target is given up
        self.events = []         # restarts and other notable things
        self.notes = []          # things the report should say about this target

    def log_tail(self, n=25):
        return tail(self.logpath, n) if self.logpath else None

    def note(self, text):
        if text not in self.notes:
            self.notes.append(text)
            log(f"{self.name}: note: {text}")

    @property
    def data(self):
        return os.path.join(self.dir, "bench-data")

    def start(self):
        rc, out = sh(["stat", "-c", "%F", self.dir], 20)
        if rc != 0 or "directory" not in out:
            raise RuntimeError(f"{self.dir} is not a reachable directory: {out}")

    def stop(self):
        pass

    def health(self):
        """None when usable, else the reason."""
        rc, out = sh(["stat", "-c", "%F", self.dir], 20)
        if rc != 0:
            return f"stat {self.dir} failed ({rc}): {out}"
        return None

    def abort(self):
        pass

    def restart(self, why):
        raise RuntimeError(f"cannot restart an external target ({why})")

    def describe(self):
        return {"name": self.name, "dir": self.dir, "kind": type(self).__name__}


class RawTarget(Target):
    def __init__(self, name, workdir):
        super().__init__(name, os.path.join(workdir, "raw"))
        self.backing = os.path.join(self.dir, "bench-data")

    def start(self):
        os.makedirs(self.dir, exist_ok=True)


class TwoTarget(RawTarget):
    """The two-copies physical limit: every file the workloads write goes to two plain
    directories on the workdir's disk (<workdir>/two/1 and /2), and both copies are fsynced
    before close when the workload fsyncs. Reads and walks use copy 1 only. The workloads
    find the second copy through MIRRORS (copies())."""

    def __init__(self, name, workdir):
        Target.__init__(self, name, os.path.join(workdir, "two", "1"))
        self.mirror = os.path.join(workdir, "two", "2")
        self.backing = os.path.join(self.dir, "bench-data")
        MIRRORS.append((self.dir, self.mirror))

    def start(self):
        os.makedirs(self.dir, exist_ok=True)
        os.makedirs(self.mirror, exist_ok=True)

    def describe(self):
        d = super().describe()
        d["mirror"] = self.mirror
        return d


class DaemonTarget(Target):
    managed = True

    def __init__(self, name, mnt, logpath):
        super().__init__(name, mnt)
        self.fuse_mnt = mnt
        self.logpath = logpath
        self.proc = None
        self.exit_codes = []

    def command(self):
        raise NotImplementedError

    def prepare(self):
        pass

    def start(self):
        self.prepare()
        if is_mounted(self.fuse_mnt):
            raise RuntimeError(f"{self.fuse_mnt} is already mounted")
        cmd = self.command()
        with open(self.logpath, "ab") as lf:
            lf.write(f"\n=== {datetime.datetime.now().isoformat()} starting: {shlex.join(cmd)}\n".encode())
            lf.flush()
            self.proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        try:
            wait_mounted(self.fuse_mnt, self.proc, 30, self.logpath)
        except BaseException:
            self.stop()
            raise
        log(f"{self.name}: mounted {self.fuse_mnt} (pid {self.proc.pid})")

    def health(self):
        if self.proc is None:
            return "not started"
        rc = self.proc.poll()
        if rc is not None:
            return f"daemon exited with status {rc}"
        if not is_mounted(self.fuse_mnt):
            return "mount point vanished from mountinfo"
        rc, out = sh(["stat", "-c", "%F", self.fuse_mnt], 20)
        if rc != 0:
            return f"stat on the mount failed or hung ({rc}): {out}"
        return None

    def abort(self):
        fuse_abort(self.fuse_mnt)

    def restart(self, why):
        log(f"{self.name}: restarting ({why})")
        self.events.append(f"{datetime.datetime.now().strftime('%H:%M:%S')} restarted: {why}")
        self.stop()
        self.start()

    def stop(self):
        if self.proc is None:
            force_unmount(self.fuse_mnt)
            return
        force_unmount(self.fuse_mnt)
        rc = stop_proc(self.proc)
        self.exit_codes.append(rc)
        log(f"{self.name}: daemon pid {self.proc.pid} exited with {rc}")
        self.proc = None


class PassthroughTarget(DaemonTarget):
    def __init__(self, name, workdir, binary):
        base = os.path.join(workdir, "fuse")
        super().__init__(name, os.path.join(base, "mnt"), os.path.join(workdir, "logs", "passthrough_ll.log"))
        self.src = os.path.join(base, "src")
        self.backing = os.path.join(self.src, "bench-data")
        self.binary = binary

    def prepare(self):
        if not os.access(self.binary, os.X_OK):
            raise RuntimeError(f"{self.binary} not found: build it with bench/run.sh")
        os.makedirs(self.src, exist_ok=True)
        os.makedirs(self.fuse_mnt, exist_ok=True)

    def command(self):
        # default options, as in perf.md: multi-threaded, cache=auto, timeout 1 s, no writeback
        return [self.binary, "-f", "-o", f"source={self.src}", self.fuse_mnt]


class TwinFSTarget(DaemonTarget):
    """One TwinFS node. Alone (target `twinfs`: <workdir>/twinfs) or as one half of `twinfs2`
    (base <workdir>/twinfs2/a or /b, with a [peer] section: peer = (node, address, secret_file))."""

    def __init__(self, name, workdir, binary, listen, extra_config, base=None, node="a", peer=None,
                 logname="twinfs-node.log"):
        base = base or os.path.join(workdir, "twinfs")
        super().__init__(name, os.path.join(base, "mnt"), os.path.join(workdir, "logs", logname))
        self.base = base
        self.brick = os.path.join(base, "brick")
        self.state = os.path.join(base, "state")
        self.config = os.path.join(base, "twinfs.toml") if peer is None else os.path.join(base, f"{node}.toml")
        self.binary = binary
        self.listen = listen
        self.extra_config = extra_config
        self.node = node
        self.peer = peer

    def prepare(self):
        if not os.access(self.binary, os.X_OK):
            raise RuntimeError(f"{self.binary} not found: build with `swift build -c release "
                               f"--scratch-path {REPO}/.build-release` (bench/run.sh does it)")
        for d in (self.brick, self.fuse_mnt, self.state):
            os.makedirs(d, exist_ok=True)
        text = (f'volume = "bench"\nnode = "{self.node}"\nbrick = "{self.brick}"\n'
                f'journal = "{self.state}/journal.db"\nmountpoint = "{self.fuse_mnt}"\n'
                f'control_socket = "{self.state}/control.sock"\nlisten = "{self.listen}"\n')
        for line in self.extra_config:  # top-level keys: before [peer], or TOML would put them in it
            text += line + "\n"
        if self.peer is not None:
            pnode, paddr, psecret = self.peer
            text += f'\n[peer]\nnode = "{pnode}"\naddress = "{paddr}"\nsecret_file = "{psecret}"\n'
        with open(self.config, "w") as f:
            f.write(text)

    def command(self):
        return [self.binary, "node", "--config", self.config]

    def stop(self):
        """SIGTERM and wait for the node to unmount and exit; fusermount3/umount -l as fallback."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            if not wait_proc(self.proc, 30):
                log(f"{self.name}: node did not exit within 30 s of SIGTERM")
        super().stop()

    def status(self):
        """`twinfs status --config ... --json` as a dict, or None (with the reason) when it fails."""
        rc, out = sh([self.binary, "status", "--config", self.config, "--json"], 15)
        if rc != 0:
            return None, f"twinfs status exited {rc}: {out[-300:]}"
        try:
            return json.loads(out), None
        except ValueError:
            return None, f"twinfs status printed no JSON: {out[-300:]}"


PEER_OK = {"connected", "healthy"}
PEER_NOT_OK_STATES = {"degraded", "healing", "split-brain", "disconnected", "connecting"}


def peer_link_state(st):
    """(reported, ok, text): the node reports its pair under "replication" (mode live = every
    change on both bricks; degraded / catching-up = not yet)."""
    rep = st.get("replication")
    if isinstance(rep, dict) and "mode" in rep:
        m = str(rep["mode"])
        return True, m == "live" and str(st.get("state", "")) == "HEALTHY", f"replication.mode {m!r}, state {st.get('state')!r}"
    peer = st.get("peer")
    if isinstance(peer, dict) and "state" in peer:
        s = str(peer["state"])
        return True, s.lower() in PEER_OK, f"peer.state {s!r}"
    top = str(st.get("state", ""))
    return False, False, f"peer {json.dumps(peer)}, state {top!r}"


class TwinFS2Target(Target):
    """Two TwinFS nodes on this host: a (<workdir>/twinfs2/a) and b (.../b), volume "bench", each
    with a [peer] section pointing at the other and one shared secret file (mode 0600). The
    workloads run on a's mount; b's mount is up too. Before the first sample the harness waits
    until a's status reports the peer link connected (if the node reports it at all)."""
    managed = True

    def __init__(self, name, workdir, binary, listens, extra_config, peer_wait):
        self.base = os.path.join(workdir, name)
        self.secret = os.path.join(self.base, "secret")
        la, lb = listens
        self.a = TwinFSTarget(f"{name}.a", workdir, binary, la, extra_config, base=os.path.join(self.base, "a"),
                              node="a", peer=("b", lb, self.secret), logname=f"{name}-a.log")
        self.b = TwinFSTarget(f"{name}.b", workdir, binary, lb, extra_config, base=os.path.join(self.base, "b"),
                              node="b", peer=("a", la, self.secret), logname=f"{name}-b.log")
        super().__init__(name, self.a.fuse_mnt)
        self.fuse_mnt = self.a.fuse_mnt
        self.logpath = self.a.logpath
        self.peer_wait = peer_wait
        self.peer_state = None

    @property
    def nodes(self):
        return (self.a, self.b)

    @property
    def exit_codes(self):
        return [f"{n.node}:{c}" for n in self.nodes for c in n.exit_codes]

    def log_tail(self, n=25):
        return "\n".join(f"--- node {x.node} ({x.logpath})\n{tail(x.logpath, n)}" for x in self.nodes)

    def write_secret(self):
        os.makedirs(self.base, exist_ok=True)
        if os.path.exists(self.secret):
            os.chmod(self.secret, 0o600)
            return
        fd = os.open(self.secret, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            write_all(fd, os.urandom(32))
        finally:
            os.close(fd)

    def start(self):
        self.write_secret()
        try:
            for n in self.nodes:
                n.start()
            self.wait_peer()
        except BaseException:
            self.stop()
            raise

    def wait_peer(self):
        t0 = time.monotonic()
        last = None
        while True:
            st, err = self.a.status()
            if st is None:
                last = err
                reported, ok, text = False, False, err
            else:
                reported, ok, text = peer_link_state(st)
                last = text
                if not reported:
                    self.peer_state = f"not reported ({text})"
                    self.note("node a's `twinfs status --json` does not report the peer link "
                              f"({text}); measured as soon as both mounts were up")
                    return
                if ok:
                    self.peer_state = f"connected after {time.monotonic() - t0:.1f} s ({text})"
                    log(f"{self.name}: peer link {self.peer_state}")
                    return
            for n in self.nodes:
                why = n.health()
                if why:
                    raise RuntimeError(f"node {n.node} unhealthy while waiting for the peer link: {why}; "
                                       f"log tail:\n{tail(n.logpath)}")
            if time.monotonic() - t0 > self.peer_wait:
                self.peer_state = f"NOT connected after {self.peer_wait:.0f} s ({last})"
                self.note(f"peer link NOT connected after {self.peer_wait:.0f} s ({last}): "
                          "the twinfs2 numbers may be single-node numbers")
                self.events.append(f"{datetime.datetime.now().strftime('%H:%M:%S')} peer link {self.peer_state}")
                return
            time.sleep(0.5)

    def health(self):
        for n in self.nodes:
            why = n.health()
            if why:
                return f"node {n.node}: {why}"
        return None

    def abort(self):
        self.a.abort()

    def restart(self, why):
        log(f"{self.name}: restarting both nodes ({why})")
        self.events.append(f"{datetime.datetime.now().strftime('%H:%M:%S')} restarted both nodes: {why}")
        self.stop()
        self.start()

    def stop(self):
        for n in self.nodes:  # SIGTERM both first: a node may wait for its peer while shutting down
            if n.proc is not None and n.proc.poll() is None:
                n.proc.send_signal(signal.SIGTERM)
        for n in self.nodes:
            try:
                n.stop()
            except BaseException as e:  # noqa: BLE001 - always try the other node too
                log(f"{n.name}: teardown error: {e}")

    def describe(self):
        d = super().describe()
        d.update({"nodes": {n.node: {"config": n.config, "mount": n.fuse_mnt, "brick": n.brick, "listen": n.listen,
                                     "log": n.logpath} for n in self.nodes},
                  "peer_link": self.peer_state})
        return d


def build_targets(args):
    out = []
    for spec in [s.strip() for s in args.targets.split(",") if s.strip()]:
        if "=" in spec:
            name, path = spec.split("=", 1)
            if not os.path.isabs(path):
                sys.exit(f"target {name}: path must be absolute: {path}")
            t = Target(name, os.path.normpath(path))
        elif spec == "raw":
            t = RawTarget("raw", args.workdir)
        elif spec == "two":
            t = TwoTarget("two", args.workdir)
        elif spec == "fuse":
            t = PassthroughTarget("fuse", args.workdir, args.passthrough_ll)
        elif spec == "twinfs":
            t = TwinFSTarget("twinfs", args.workdir, args.twinfs_bin, args.twinfs_listen, args.twinfs_config)
        elif spec == "twinfs2":
            t = TwinFS2Target("twinfs2", args.workdir, args.twinfs_bin, args.twinfs2_listen, args.twinfs_config,
                              args.twinfs2_peer_wait)
        elif spec == "twinfs2b":
            if not args.twinfs2b_bin and not args.twinfs2b_config:
                sys.exit("target twinfs2b needs --twinfs2b-bin or --twinfs2b-config (the other side of an A/B run)")
            args.twinfs2b_bin = args.twinfs2b_bin or args.twinfs_bin
            t = TwinFS2Target("twinfs2b", args.workdir, args.twinfs2b_bin, args.twinfs2b_listen,
                              args.twinfs_config + args.twinfs2b_config, args.twinfs2_peer_wait)
        else:
            sys.exit(f"unknown target '{spec}': use raw, two, fuse, twinfs, twinfs2, twinfs2b or name=/already/mounted/dir")
        if any(x.name == t.name for x in out):
            sys.exit(f"target name '{t.name}' given twice")
        out.append(t)
    if not out:
        sys.exit("no targets")
    return out


# --------------------------------------------------------------------------- child processes

class WorkloadFailed(Exception):
    pass


def describe_exc(e):
    if isinstance(e, OSError) and e.errno:
        name = errno.errorcode.get(e.errno, str(e.errno))
        where = f" {e.filename!r}" if e.filename else ""
        return f"{name} ({e.strerror}){where}"
    return f"{type(e).__name__}: {e}"


def run_in_child(fn, args, timeout, on_timeout=None):
    """Runs fn(*args) in a forked child (own process group) and returns its result.
    Raises WorkloadFailed on an exception in the child, a crash or the deadline."""
    global RESULT_FD
    r, w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.setpgid(0, 0)
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.close(r)
            RESULT_FD = w
            try:
                res = {"ok": True, "value": fn(*args)}
            except BaseException as e:  # noqa: BLE001 - everything is reported
                res = {"ok": False, "error": describe_exc(e)}
            data = json.dumps(res).encode()
            while data:
                data = data[os.write(w, data):]
        except BaseException:
            code = 3
        finally:
            os._exit(code)
    os.close(w)
    try:
        os.setpgid(pid, pid)
    except OSError:
        pass
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                if on_timeout:
                    on_timeout()
                raise WorkloadFailed(f"timed out after {timeout:.0f} s (workload killed)")
            ready, _, _ = select.select([r], [], [], min(left, 1.0))
            if ready:
                d = os.read(r, 65536)
                if not d:
                    break
                chunks.append(d)
    finally:
        os.close(r)
        try:
            os.killpg(pid, signal.SIGKILL)  # the child's writers, if any are left
        except OSError:
            pass
        status = None
        for _ in range(100):
            try:
                done, st = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                break
            if done:
                status = st
                break
            time.sleep(0.1)
    if not chunks:
        raise WorkloadFailed(f"workload process died without a result (wait status {status})")
    res = json.loads(b"".join(chunks))
    if not res["ok"]:
        raise WorkloadFailed(res["error"])
    return res["value"]


def run_parallel(work, parts):
    """Runs work(part) for every part; more than one part -> one forked writer each.
    Returns the wall time from the common start signal to the last writer's end."""
    if len(parts) == 1:
        t0 = time.perf_counter()
        work(parts[0])
        return time.perf_counter() - t0
    go_r, go_w = os.pipe()
    err_r, err_w = os.pipe()
    pids = []
    for part in parts:
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                os.close(go_w)
                os.close(err_r)
                if RESULT_FD >= 0:
                    os.close(RESULT_FD)
                os.read(go_r, 1)
                try:
                    work(part)
                except BaseException as e:  # noqa: BLE001
                    os.write(err_w, (describe_exc(e)[:400] + "\n").encode())
                    code = 1
            finally:
                os._exit(code)
        pids.append(pid)
    os.close(go_r)
    os.close(err_w)
    t0 = time.perf_counter()
    os.write(go_w, b"g" * len(parts))
    bad = 0
    for pid in pids:
        _, st = os.waitpid(pid, 0)
        if st != 0:
            bad += 1
    secs = time.perf_counter() - t0
    os.close(go_w)
    errs = b""
    while True:
        d = os.read(err_r, 65536)
        if not d:
            break
        errs += d
    os.close(err_r)
    if bad:
        msgs = sorted(set(errs.decode("utf-8", "replace").split("\n")) - {""})
        raise RuntimeError(f"{bad} of {len(parts)} writers failed: " + "; ".join(msgs))
    return secs


# --------------------------------------------------------------------------- workloads (run in children)

def payload(i, size):
    off = (i * 40961) % (len(POOL) - size)
    return memoryview(POOL)[off:off + size]


def write_all(fd, buf):
    while buf:
        n = os.write(fd, buf)
        buf = buf[n:]


def copies(p):
    """The paths a workload writes for p: p itself, and its second copy when p lies in a
    `two` target's copy 1."""
    for one, two in MIRRORS:
        if p.startswith(one + os.sep):
            return [p, two + p[len(one):]]
    return [p]


def makedirs_all(d):
    for c in copies(d):
        os.makedirs(c, exist_ok=True)


def write_file(p, chunks, fsync, flags=os.O_CREAT | os.O_TRUNC):
    """Creates p (and its second copy), writes every chunk to each copy, fsyncs each copy
    if `fsync`, then closes them: a plain target pays one fsync per file, `two` pays two."""
    fds = []
    try:
        for c in copies(p):
            fds.append(os.open(c, os.O_WRONLY | flags | os.O_CLOEXEC, 0o644))
        for buf in chunks:
            for fd in fds:
                write_all(fd, buf)
        if fsync:
            for fd in fds:
                os.fsync(fd)
    finally:
        for fd in fds:
            os.close(fd)


def ingest_path(root, i):
    return os.path.join(root, f"Study{i // (FILES_PER_SERIES * SERIES_PER_STUDY):03d}",
                        f"Series{(i // FILES_PER_SERIES) % SERIES_PER_STUDY:02d}", f"IM{i:05d}.dcm")


def w_ingest(root, n, writers, size, fsync=True):
    """n files of `size` bytes in the PACS layout, `writers` at once; each fsync'ed before close
    unless `fsync` is False (a data set to heal, written like the anchor's)."""
    makedirs_all(root)
    parts = [range(k * n // writers, (k + 1) * n // writers) for k in range(writers)]

    def work(idx):
        made = set()
        for i in idx:
            p = ingest_path(root, i)
            d = os.path.dirname(p)
            if d not in made:
                makedirs_all(d)
                made.add(d)
            write_file(p, [payload(i, size)], fsync)

    secs = run_parallel(work, parts)
    return {"seconds": secs, "files": n, "bytes": n * size}


def w_smallread(root, n, size):
    expected = [hashlib.sha256(payload(i, size)).digest() for i in range(n)]
    buf = bytearray(size + 1)
    mv = memoryview(buf)
    t0 = time.perf_counter()
    for i in range(n):
        p = ingest_path(root, i)
        got = 0
        with open(p, "rb", buffering=0) as f:
            while True:
                k = f.readinto(mv[got:])
                if not k:
                    break
                got += k
                if got > size:
                    break
        if got != size:
            raise RuntimeError(f"{p}: read {got} bytes, wrote {size}")
        if hashlib.sha256(mv[:got]).digest() != expected[i]:
            raise RuntimeError(f"{p}: content differs from what was written (sha256 mismatch)")
    secs = time.perf_counter() - t0
    return {"seconds": secs, "files": n, "bytes": n * size}


def w_medium(root, n, size):
    makedirs_all(root)
    t0 = time.perf_counter()
    for i in range(n):
        write_file(os.path.join(root, f"F{i:04d}.bin"), (payload(i * 64 + k, MiB) for k in range(size // MiB)), True)
    secs = time.perf_counter() - t0
    return {"seconds": secs, "files": n, "bytes": n * size}


def w_seqwrite(root, mib):
    makedirs_all(root)
    p = os.path.join(root, "seq.bin")
    t0 = time.perf_counter()
    write_file(p, (payload(k, MiB) for k in range(mib)), True)
    secs = time.perf_counter() - t0
    return {"seconds": secs, "bytes": mib * MiB}


def w_seqread(root, mib):
    p = os.path.join(root, "seq.bin")
    buf = bytearray(MiB)
    total = 0
    t0 = time.perf_counter()
    with open(p, "rb", buffering=0) as f:
        while True:
            k = f.readinto(buf)
            if not k:
                break
            total += k
    secs = time.perf_counter() - t0
    if total != mib * MiB:
        raise RuntimeError(f"read {total} bytes back, wrote {mib * MiB}")
    return {"seconds": secs, "bytes": total}


def meta_layout(nfiles):
    ndirs = max(1, math.ceil(nfiles / FILES_PER_SERIES))
    width = max(3, len(str(ndirs - 1)))
    return ndirs, width


def w_treecreate(root, nfiles):
    ndirs, width = meta_layout(nfiles)
    buf = payload(7, META_SIZE)
    makedirs_all(root)
    t0 = time.perf_counter()
    made = 0
    try:
        for d in range(ndirs):
            dp = os.path.join(root, f"D{d:0{width}d}")
            for c in copies(dp):
                os.mkdir(c)
            for k in range(min(FILES_PER_SERIES, nfiles - d * FILES_PER_SERIES)):
                write_file(os.path.join(dp, f"f{k:03d}"), [buf], False, os.O_CREAT | os.O_EXCL)
                made += 1
    except OSError as e:
        raise RuntimeError(f"{describe_exc(e)} after {made} of {nfiles} files") from e
    secs = time.perf_counter() - t0
    return {"seconds": secs, "files": made, "dirs": ndirs}


def walk_once(root):
    ops = entries = 0
    stack = [root]
    t0 = time.perf_counter()
    while stack:
        d = stack.pop()
        names = os.listdir(d)
        ops += 1
        for nm in names:
            p = os.path.join(d, nm)
            st = os.lstat(p)
            ops += 1
            entries += 1
            if stat.S_ISDIR(st.st_mode):
                stack.append(p)
    return {"seconds": time.perf_counter() - t0, "ops": ops, "entries": entries}


def w_walk(root, nfiles):
    ndirs, _ = meta_layout(nfiles)
    want = nfiles + ndirs
    res = {}
    for phase in ("cold", "warm"):
        r = walk_once(root)
        if r["entries"] != want:
            raise RuntimeError(f"{phase} walk saw {r['entries']} entries, expected {want}")
        res[phase] = r
    return res


def w_remove(path):
    """Removes path (and its second copy, for `two`); counts the files of copy 1."""
    n = 0
    present = []
    for c in copies(path):
        try:
            os.lstat(c)  # unlike lexists, lets ENOTCONN of a dead mount through
            present.append(c)
        except FileNotFoundError:
            pass
    if not present:
        return {"seconds": 0.0, "files": 0}

    def boom(e):
        raise e
    for _, _, files in os.walk(present[0], onerror=boom):
        n += len(files)
    t0 = time.perf_counter()
    for c in present:
        shutil.rmtree(c)
    return {"seconds": time.perf_counter() - t0, "files": n}


# --------------------------------------------------------------------------- results

class Results:
    def __init__(self, targets, reps):
        self.targets = [t.name for t in targets]
        self.reps = reps
        self.samples = {}    # "workload|unit" -> target -> [value or None] * reps
        self.details = {}    # "workload" -> target -> [raw dict or None] * reps
        self.failures = []   # dicts: workload, target, rep, error, log
        self.loads = []      # (time, load1)

    def _slot(self, table, key, target, n):
        return table.setdefault(key, {}).setdefault(target, [None] * n)

    def put(self, workload, target, rep, metrics, detail):
        n = 1 if workload in ONE_SAMPLE else self.reps
        for unit, v in metrics.items():
            self._slot(self.samples, f"{workload}|{unit}", target, n)[rep] = v
        self._slot(self.details, workload, target, n)[rep] = detail

    def fail(self, workload, target, rep, error, logtail=None):
        n = 1 if workload in ONE_SAMPLE else self.reps
        for (wl, unit) in ROWS:
            if wl == workload:
                self._slot(self.samples, f"{wl}|{unit}", target, n)
        self.failures.append({"workload": workload, "target": target, "rep": rep, "error": error,
                              "log": logtail})
        log(f"FAILED {workload} on {target} (rep {rep + 1}): {error}")

    def failed(self, workload, target):
        return [f for f in self.failures if f["workload"] == workload and f["target"] == target]


def rate(detail, key):
    return detail[key] / detail["seconds"] if detail["seconds"] > 0 else float("inf")


def paired(a, b):
    xs = [x / y for x, y in zip(a, b) if x is not None and y]
    return statistics.median(xs) if xs else None


def med(xs):
    v = [x for x in xs if x is not None]
    return statistics.median(v) if v else None


def fmt(v):
    if v is None:
        return "-"
    if v >= 1000:
        return f"{v:,.0f}"
    if v >= 100:
        return f"{v:.0f}"
    if v >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def ratio_pairs(names):
    pairs = [(t, "raw") for t in names if t != "raw" and "raw" in names]
    if "twinfs" in names:
        pairs += [("twinfs", t) for t in names if t not in ("raw", "twinfs")]
    if "twinfs2" in names:  # the two-node volume against the others (twinfs/twinfs2 is above)
        pairs += [("twinfs2", t) for t in names if t not in ("raw", "twinfs", "twinfs2")]
    if "twinfs2b" in names:  # the A/B pair against the two-copies limit too
        pairs += [("twinfs2b", t) for t in names if t in ("two",)]
    return pairs


def render_table(res, rows):
    names = res.targets
    pairs = ratio_pairs(names)
    head = ["workload", "unit"] + names + [f"{a}/{b}" for a, b in pairs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for wl, unit in rows:
        per = res.samples.get(f"{wl}|{unit}")
        if per is None:
            continue
        cells = [ROW_LABEL.get(wl, wl) if unit == [u for w, u in ROWS if w == wl][0] else "", unit]
        for t in names:
            xs = per.get(t)
            if xs is None:
                cells.append("-")
                continue
            ok = [x for x in xs if x is not None]
            if not ok:
                cells.append("FAILED" if res.failed(wl, t) else "-")
            elif len(ok) < len(xs):
                cells.append(f"{fmt(statistics.median(ok))} ({len(ok)}/{len(xs)} ok)")
            else:
                cells.append(fmt(statistics.median(ok)))
        for a, b in pairs:
            r = paired(per.get(a, []), per.get(b, []))
            cells.append(f"{r:.2f}" if r is not None else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_medmed(res, rows):
    names = res.targets
    pairs = ratio_pairs(names)
    if not pairs:
        return ""
    head = ["workload", "unit"] + [f"{a}/{b} paired / med-med" for a, b in pairs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for wl, unit in rows:
        per = res.samples.get(f"{wl}|{unit}")
        if per is None or unit == "MB/s" and wl in ("ingest1", "ingest4", "smallread", "medium"):
            continue  # same ratio as files/s
        cells = [wl, unit]
        for a, b in pairs:
            p = paired(per.get(a, []), per.get(b, []))
            ma, mb = med(per.get(a, [])), med(per.get(b, []))
            mm = ma / mb if ma is not None and mb else None
            cells.append(f"{p:.2f} / {mm:.2f}" if p is not None and mm is not None else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_spread(res, rows):
    lines = ["| workload | unit | target | samples (in rep order) | min | max | CV |", "|---|---|---|---|---|---|---|"]
    for wl, unit in rows:
        per = res.samples.get(f"{wl}|{unit}")
        if per is None:
            continue
        for t in res.targets:
            xs = per.get(t)
            if xs is None:
                continue
            ok = [x for x in xs if x is not None]
            cv = f"{100 * statistics.stdev(ok) / statistics.mean(ok):.0f} %" if len(ok) > 1 and statistics.mean(ok) else "-"
            lines.append(f"| {wl} | {unit} | {t} | {', '.join('FAILED' if x is None else fmt(x) for x in xs)} | "
                         f"{fmt(min(ok)) if ok else '-'} | {fmt(max(ok)) if ok else '-'} | {cv} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- run setup (smb.py, heal.py)

def require_root_and_binary(script, why, binary):
    if os.geteuid() != 0:
        sys.exit(f"{script} must run as root ({why})")
    if not os.access(binary, os.X_OK):
        sys.exit(f"{binary} not found: set TWINFS_BIN or --twinfs-bin")


def prepare_workdir(workdir, clear):
    """The workdir on a real disk, without mounts or the `clear` subdirectories of an earlier
    run; returns its file system (fs_of)."""
    os.makedirs(workdir, exist_ok=True)
    fs = fs_of(workdir)
    if fs and fs["fstype"] in ("tmpfs", "ramfs"):
        sys.exit(f"{workdir} is on {fs['fstype']}: use the real disk")
    left = sweep_mounts(workdir, [os.path.join(workdir, "gluster", "mnt")])
    if left:
        sys.exit(f"cannot clear leftover mounts under {workdir}: {left}")
    for name in clear:
        sh(["rm", "-rf", "--one-file-system", os.path.join(workdir, name)], 600)
    return fs


def raise_on_sigterm():
    """SIGTERM and Ctrl-C both raise KeyboardInterrupt, so every finally block tears down."""
    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def keep_logs_and_clean(md_path, out_dir, logs, workdir, keep_data, mounts_left):
    """Copies `logs` next to the report (<report>-logs/) and removes the workdir unless told
    to keep it or mounts are left in it; returns the log folder."""
    keep = os.path.join(out_dir, os.path.basename(md_path)[:-3] + "-logs")
    os.makedirs(keep, exist_ok=True)
    for p in logs:
        sh(["cp", p, keep], 60)
    if not keep_data and not mounts_left:
        sh(["rm", "-rf", "--one-file-system", workdir], 900)
    return keep

# --------------------------------------------------------------------------- machine info

def read_first(path, default=""):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return default


def machine_info(args):
    mem = ""
    for line in read_first("/proc/meminfo").splitlines():
        if line.startswith("MemTotal"):
            mem = line.split(":", 1)[1].strip()
    cpu = ""
    for line in read_first("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    fs = fs_of(args.workdir) or {}
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "kernel": " ".join(platform.uname()[2:4]),
        "nproc": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "mem_total": mem,
        "python": platform.python_version(),
        "rlimit_nofile": list(resource.getrlimit(resource.RLIMIT_NOFILE)),
        "workdir": args.workdir,
        "workdir_fs": f"{fs.get('source', '?')} {fs.get('fstype', '?')} on {fs.get('mnt', '?')}",
        "euid": os.geteuid(),
    }
    rc, out = sh(["dpkg-query", "-W", "-f", "${Version}", "fuse3"], 20)
    info["fuse3"] = out if rc == 0 else "?"
    rc, out = sh([args.twinfs_bin, "--version"], 20)
    info["twinfs_version"] = out if rc == 0 else "?"
    # the git state of the tree the binary was built from (TWINFS_BIN may point into another clone)
    src = REPO
    rc, out = sh(["git", "-C", os.path.dirname(os.path.abspath(args.twinfs_bin)), "rev-parse", "--show-toplevel"], 20)
    if rc == 0 and out and os.path.isdir(out):
        src = out
    rc, out = sh(["git", "-C", src, "rev-parse", "--short", "HEAD"], 20)
    head = out if rc == 0 else "?"
    rc, out = sh(["git", "-C", src, "status", "--porcelain", "--", "Sources", "Package.swift"], 20)
    dirty = len(out.splitlines()) if rc == 0 else "?"
    info["twinfs_git"] = f"{head} (+{dirty} uncommitted changes under Sources/, Package.swift)" if dirty else head
    if src != REPO:
        info["twinfs_git"] += f" in {src}"
    ext = {}
    for spec in [x.strip() for x in args.targets.split(",") if "=" in x]:
        name, path = spec.split("=", 1)
        m = fs_of(path) or {}
        ext[name] = f"{path}: {m.get('fstype', '?')} {m.get('source', '?')} on {m.get('mnt', '?')}"
    if ext:
        info["external_targets"] = ext
    if any("glusterfs" in v for v in ext.values()):
        rc, out = sh(["glusterfs", "--version"], 20)
        info["glusterfs"] = out.splitlines()[0] if rc == 0 and out else "?"
    try:
        info["twinfs_binary_mtime"] = datetime.datetime.fromtimestamp(os.path.getmtime(args.twinfs_bin)).isoformat(timespec="seconds")
    except OSError:
        pass
    return info


# --------------------------------------------------------------------------- the run

class Bench:
    def __init__(self, args, targets):
        self.a = args
        self.targets = targets
        self.res = Results(targets, args.reps)
        self.meta_ok = {}

    def sample_load(self):
        self.res.loads.append((time.time(), os.getloadavg()[0]))

    def timeout_for(self, nbytes=0, nfiles=0):
        # generous: 120 s plus 10 MB/s plus 50 files/s; --timeout-scale stretches it
        return (120 + nbytes / (10 * MB) + nfiles / 50) * self.a.timeout_scale

    def child(self, t, fn, args, timeout):
        return run_in_child(fn, args, timeout, on_timeout=t.abort)

    def logtail(self, t):
        return t.log_tail()

    def usable(self, t):
        """Checks health before a sample; restarts a managed target that died or hangs."""
        if t.dead:
            return False
        why = t.health()
        if why is None:
            return True
        log(f"{t.name}: unhealthy before the next sample: {why}")
        if t.managed:
            t.events.append(f"unhealthy: {why}; log tail: {t.log_tail(10)}")
            try:
                t.restart(why)
                return True
            except Exception as e:  # noqa: BLE001
                t.dead = f"restart failed: {e}"
        else:
            t.dead = why
        log(f"{t.name}: giving up on this target: {t.dead}")
        return False

    def clean(self, t, path_in_target, backing_rel=None):
        """Removes workload data through the target; emergency fallbacks keep the disk bounded."""
        tmo = self.timeout_for(nfiles=self.a.meta_files * 3)
        if not t.dead:
            try:
                return self.child(t, w_remove, (path_in_target,), tmo)
            except WorkloadFailed as e:
                log(f"{t.name}: cleanup of {path_in_target} failed: {e}; dropping caches and retrying")
                t.events.append(f"cleanup of {path_in_target} failed: {e}")
        if self.usable(t):
            drop_caches()
            try:
                return self.child(t, w_remove, (path_in_target,), tmo)
            except WorkloadFailed as e:
                t.events.append(f"cleanup retry failed: {e}")
        if True:
            if t.backing and backing_rel is not None:
                p = os.path.join(t.backing, backing_rel)
                log(f"{t.name}: removing {p} in the backing directory instead")
                t.events.append(f"removed {p} in the backing directory instead")
                for c in copies(p):
                    shutil.rmtree(c, ignore_errors=True)
                drop_caches()
        return None

    def guarded(self, wl, t, rep, fn, args, timeout):
        """Runs one timed workload; records a failure (with the daemon's log tail) on error."""
        self.sample_load()
        try:
            return self.child(t, fn, args, timeout)
        except WorkloadFailed as e:
            self.res.fail(wl, t.name, rep, str(e), self.logtail(t))
            return None
        finally:
            self.sample_load()

    def skip(self, wls, t, rep, why):
        for wl in wls:
            self.res.fail(wl, t.name, rep, why)

    # one job = one target, one rep
    def job_ingest(self, t, rep, writers):
        wl = f"ingest{writers}"
        wls = [wl, "smallread"] if writers == 1 else [wl]
        if not self.usable(t):
            return self.skip(wls, t, rep, f"target down: {t.dead}")
        n, root = self.a.small_n, os.path.join(t.data, wl)
        sync_all()
        d = self.guarded(wl, t, rep, w_ingest, (root, n, writers, SMALL_SIZE), self.timeout_for(n * SMALL_SIZE, n))
        if d:
            self.res.put(wl, t.name, rep, {"files/s": rate(d, "files"), "MB/s": rate(d, "bytes") / MB}, d)
            if writers == 1:
                drop_caches()
                d2 = self.guarded("smallread", t, rep, w_smallread, (root, n, SMALL_SIZE), self.timeout_for(n * SMALL_SIZE, n))
                if d2:
                    self.res.put("smallread", t.name, rep, {"files/s": rate(d2, "files"), "MB/s": rate(d2, "bytes") / MB}, d2)
        elif writers == 1:
            self.skip(["smallread"], t, rep, "skipped: ingest1 failed")
        self.clean(t, root, os.path.join(wl))

    def job_medium(self, t, rep):
        if not self.usable(t):
            return self.skip(["medium"], t, rep, f"target down: {t.dead}")
        n, root = self.a.medium_n, os.path.join(t.data, "medium")
        sync_all()
        d = self.guarded("medium", t, rep, w_medium, (root, n, MEDIUM_SIZE), self.timeout_for(n * MEDIUM_SIZE, n))
        if d:
            self.res.put("medium", t.name, rep, {"files/s": rate(d, "files"), "MB/s": rate(d, "bytes") / MB}, d)
        self.clean(t, root, "medium")

    def job_seq(self, t, rep):
        if not self.usable(t):
            return self.skip(["seqwrite", "seqread"], t, rep, f"target down: {t.dead}")
        mib, root = self.a.seq_mib, os.path.join(t.data, "seq")
        sync_all()
        d = self.guarded("seqwrite", t, rep, w_seqwrite, (root, mib), self.timeout_for(mib * MiB))
        if d:
            self.res.put("seqwrite", t.name, rep, {"MB/s": rate(d, "bytes") / MB}, d)
            drop_caches()
            d2 = self.guarded("seqread", t, rep, w_seqread, (root, mib), self.timeout_for(mib * MiB))
            if d2:
                self.res.put("seqread", t.name, rep, {"MB/s": rate(d2, "bytes") / MB}, d2)
        else:
            self.skip(["seqread"], t, rep, "skipped: seqwrite failed")
        self.clean(t, root, "seq")

    def meta_create(self, t):
        nf, root = self.a.meta_files, os.path.join(t.data, "meta")
        self.meta_ok[t.name] = False
        if not self.usable(t):
            return self.skip(["treecreate"], t, 0, f"target down: {t.dead}")
        self.clean(t, root, "meta")  # a partial tree from an interrupted run
        sync_all()
        d = self.guarded("treecreate", t, 0, w_treecreate, (root, nf), self.timeout_for(nf * META_SIZE, nf))
        if d:
            self.res.put("treecreate", t.name, 0, {"files/s": rate(d, "files")}, d)
            self.meta_ok[t.name] = True
        sync_all()

    def meta_walk(self, t, rep):
        if not self.meta_ok.get(t.name):
            why = "skipped: tree creation failed" if self.res.failed("treecreate", t.name) else "skipped: no tree"
            return self.skip(["meta", "meta_warm"], t, rep, why)
        if not self.usable(t):
            return self.skip(["meta", "meta_warm"], t, rep, f"target down: {t.dead}")
        nf, root = self.a.meta_files, os.path.join(t.data, "meta")
        sync_all()
        drop_caches()
        d = self.guarded("meta", t, rep, w_walk, (root, nf), self.timeout_for(nfiles=nf * 2))
        if d:
            self.res.put("meta", t.name, rep, {"ops/s": rate(d["cold"], "ops")}, d["cold"])
            self.res.put("meta_warm", t.name, rep, {"ops/s": rate(d["warm"], "ops")}, d["warm"])
        else:
            self.skip(["meta_warm"], t, rep, "skipped: cold walk failed")

    def meta_delete(self, t):
        root = os.path.join(t.data, "meta")
        if t.dead:
            return
        if not self.meta_ok.get(t.name):
            self.clean(t, root, "meta")
            return
        sync_all()
        d = None
        if self.usable(t):
            d = self.guarded("treedelete", t, 0, w_remove, (root,), self.timeout_for(nfiles=self.a.meta_files * 3))
        if d and d["files"]:
            self.res.put("treedelete", t.name, 0, {"files/s": rate(d, "files")}, d)
        else:
            self.clean(t, root, "meta")

    def order(self, rep):
        ts = list(self.targets)
        if self.a.rotate:
            k = rep % len(ts)
            ts = ts[k:] + ts[:k]
        return ts

    def run(self, jobs):
        data_jobs = [j for j in JOBS if j in jobs and j != "meta"]
        for rep in range(self.a.reps):
            for job in data_jobs:
                for t in self.order(rep):
                    log(f"rep {rep + 1}/{self.a.reps} {job} on {t.name}")
                    if job == "ingest1":
                        self.job_ingest(t, rep, 1)
                    elif job == "ingest4":
                        self.job_ingest(t, rep, 4)
                    elif job == "medium":
                        self.job_medium(t, rep)
                    elif job == "seq":
                        self.job_seq(t, rep)
        if "meta" in jobs:
            for t in self.targets:
                log(f"treecreate ({self.a.meta_files} files) on {t.name}")
                self.meta_create(t)
            for rep in range(self.a.reps):
                for t in self.order(rep):
                    log(f"rep {rep + 1}/{self.a.reps} meta walk on {t.name}")
                    self.meta_walk(t, rep)
            for t in self.targets:
                log(f"treedelete on {t.name}")
                self.meta_delete(t)


def write_report(bench, args, info, jobs, started, interrupted):
    res = bench.res
    info = dict(info)
    info["loadavg_end"] = list(os.getloadavg())
    loads = [x for _, x in res.loads]
    if loads:
        info["load1_during"] = {"min": min(loads), "median": statistics.median(loads), "max": max(loads),
                                "samples": len(loads)}
    info["duration_s"] = round(time.time() - started)
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    os.makedirs(OUT_DIR, exist_ok=True)
    md_path = os.path.join(OUT_DIR, f"results-{stamp}.md")
    js_path = os.path.join(OUT_DIR, f"results-{stamp}.json")

    ld = info.get("load1_during", {})
    md = [f"# TwinFS benchmark {info['date']}" + (" (INTERRUPTED, partial)" if interrupted else ""), ""]
    md.append(f"Command: `{info['command']}`")
    md.append("")
    md.append(f"* machine: {info['host']}, kernel {info['kernel']}, nproc {info['nproc']} ({info['cpu']}), "
              f"RAM {info['mem_total']}, RLIMIT_NOFILE {info['rlimit_nofile']}")
    md.append(f"* load average: start {' / '.join(f'{x:.2f}' for x in info['loadavg_start'])}, "
              f"end {' / '.join(f'{x:.2f}' for x in info['loadavg_end'])} (1/5/15 min); "
              f"1-min load sampled around each sample: min {ld.get('min', 0):.2f}, median {ld.get('median', 0):.2f}, "
              f"max {ld.get('max', 0):.2f} ({ld.get('samples', 0)} samples)")
    md.append(f"* workdir {info['workdir']} on {info['workdir_fs']}; fuse3 {info['fuse3']}; Python {info['python']}")
    md.append(f"* twinfs: {info['twinfs_version']}, git {info['twinfs_git']}, binary {args.twinfs_bin} "
              f"built {info.get('twinfs_binary_mtime', '?')}")
    for name, what in info.get("external_targets", {}).items():
        md.append(f"* external target {name}: {what}")
    if "glusterfs" in info:
        md.append(f"* {info['glusterfs']} (replica 2, both bricks on this host, default options; bench/gluster.sh)")
    md.append(f"* sizes: reps {args.reps}, ingest {args.small_n} x 512 KiB, medium {args.medium_n} x 20 MiB, "
              f"seq {args.seq_mib} MiB, meta tree {args.meta_files} x 4 KiB in {meta_layout(args.meta_files)[0]} dirs; "
              f"jobs {','.join(jobs)}; target order rotated per rep: {args.rotate}")
    md.append(f"* duration {info['duration_s']} s")
    for note in info.get("notes", []):
        md.append(f"* note: {note}")
    md.append("")
    md.append("Cells are medians over reps; ratio columns are paired (median over reps of a_i / b_i, "
              "same interleaved round). MB/s are decimal. `(k/n ok)` = only k of n reps succeeded.")
    md.append("")
    md.append(render_table(res, ROWS))
    md.append("")
    md.append("## Paired ratio vs ratio of medians")
    md.append("")
    md.append(render_medmed(res, ROWS))
    md.append("")
    md.append("## Samples")
    md.append("")
    md.append(render_spread(res, ROWS))
    md.append("")
    if res.failures:
        md.append("## Failures")
        md.append("")
        for f in res.failures:
            md.append(f"* **{f['workload']}** on **{f['target']}**, rep {f['rep'] + 1}: {f['error']}")
        shown = set()
        for f in res.failures:
            if f.get("log") and f["target"] not in shown and not f["error"].startswith(("skipped", "target down")):
                shown.add(f["target"])
                md.append("")
                md.append(f"Log tail of {f['target']} at its first failure ({f['workload']}):")
                md.append("")
                md.append("```")
                md.append(f["log"])
                md.append("```")
        md.append("")
    events = {t.name: t.events for t in bench.targets if t.events}
    exits = {t.name: t.exit_codes for t in bench.targets if getattr(t, "exit_codes", None)}
    if events or exits:
        md.append("## Target events")
        md.append("")
        for name, ev in events.items():
            for e in ev:
                md.append(f"* {name}: {e}")
        for name, codes in exits.items():
            md.append(f"* {name}: daemon exit status(es) {codes}")
        md.append("")
    text = "\n".join(md)
    with open(md_path, "w") as f:
        f.write(text + "\n")
    data = {
        "machine": info, "args": vars(args), "jobs": jobs, "interrupted": interrupted,
        "targets": [t.describe() for t in bench.targets],
        "samples": res.samples, "details": res.details, "failures": res.failures,
        "load_samples": res.loads,
        "events": events, "daemon_exit_codes": exits,
        "ratios": {
            key: {f"{a}/{b}": {"paired": paired(per.get(a, []), per.get(b, [])),
                                "med_med": (med(per.get(a, [])) / med(per.get(b, [])))
                                if med(per.get(a, [])) is not None and med(per.get(b, [])) else None}
                  for a, b in ratio_pairs(res.targets)}
            for key, per in res.samples.items()
        },
    }
    with open(js_path, "w") as f:
        json.dump(data, f, indent=1, default=str)
    return md_path, js_path, text


def parse_args(argv):
    p = argparse.ArgumentParser(description="TwinFS benchmark harness (see bench/README.md)")
    p.add_argument("--reps", type=int, default=5, help="interleaved rounds (default 5)")
    p.add_argument("--targets", default="raw,fuse,twinfs",
                   help="comma list of raw, two, fuse, twinfs, twinfs2, twinfs2b and name=/already/mounted/dir "
                        "(default raw,fuse,twinfs)")
    p.add_argument("--only", default=",".join(JOBS),
                   help=f"comma list of jobs: {', '.join(JOBS)} (aliases: {', '.join(JOB_ALIASES)})")
    p.add_argument("--small-n", type=int, default=1000, help="512 KiB files per ingest sample (default 1000)")
    p.add_argument("--medium-n", type=int, default=25, help="20 MiB files per medium sample (default 25)")
    p.add_argument("--seq-mib", type=int, default=2048, help="size of the sequential file in MiB (default 2048)")
    p.add_argument("--meta-files", type=int, default=20000, help="files in the metadata tree (default 20000)")
    p.add_argument("--workdir", default="/var/tmp/twinfs-bench",
                   help="scratch dir for raw, fuse and twinfs (same disk as the others, not tmpfs)")
    p.add_argument("--twinfs-bin", default=DEFAULT_TWINFS, help="the twinfs executable (release build)")
    p.add_argument("--twinfs-listen", default="127.0.0.1:7790", help="the node's listen address (loopback)")
    p.add_argument("--twinfs-config", action="append", default=[], metavar="LINE",
                   help="extra TOML line for the node config, e.g. 'attr_timeout = 1.0' (repeatable; "
                        "applies to the twinfs node and to both twinfs2 nodes)")
    p.add_argument("--twinfs2-listen", default="127.0.0.1:7791,127.0.0.1:7792", metavar="A,B",
                   help="listen addresses of twinfs2's nodes a and b (default 127.0.0.1:7791,127.0.0.1:7792)")
    p.add_argument("--twinfs2b-bin", default=None, metavar="PATH",
                   help="twinfs binary of target twinfs2b: a second pair, for A/B runs of two builds "
                        "(ratio column twinfs2/twinfs2b)")
    p.add_argument("--twinfs2b-config", action="append", default=[], metavar="LINE",
                   help="extra TOML line for twinfs2b's nodes only (repeatable): an A/B of one setting")
    p.add_argument("--twinfs2b-listen", default="127.0.0.1:7795,127.0.0.1:7796", metavar="A,B",
                   help="listen addresses of twinfs2b's nodes a and b (default 127.0.0.1:7795,127.0.0.1:7796)")
    p.add_argument("--twinfs2-peer-wait", type=float, default=60, metavar="S",
                   help="how long to wait for twinfs2's peer link to be reported connected (default 60 s)")
    p.add_argument("--passthrough-ll", default=DEFAULT_PLL, help="libfuse's passthrough_ll binary")
    p.add_argument("--no-rotate", dest="rotate", action="store_false",
                   help="keep the target order fixed in every rep (default: rotate it by one each rep)")
    p.add_argument("--timeout-scale", type=float, default=1.0, help="stretch the per-workload deadlines")
    p.add_argument("--keep-data", action="store_true", help="do not delete raw/fuse/twinfs dirs at the end")
    p.add_argument("--allow-tmpfs", action="store_true", help="allow a workdir on tmpfs (numbers meaningless)")
    a = p.parse_args(argv)
    a.workdir = os.path.abspath(a.workdir)
    a.twinfs2_listen = [x.strip() for x in a.twinfs2_listen.split(",") if x.strip()]
    if len(a.twinfs2_listen) != 2 or len(set(a.twinfs2_listen)) != 2:
        p.error("--twinfs2-listen takes two different host:port addresses, comma-separated")
    a.twinfs2b_listen = [x.strip() for x in a.twinfs2b_listen.split(",") if x.strip()]
    if len(a.twinfs2b_listen) != 2 or set(a.twinfs2b_listen) & set(a.twinfs2_listen):
        p.error("--twinfs2b-listen takes two host:port addresses, different from twinfs2's")
    jobs = []
    for j in [x.strip() for x in a.only.split(",") if x.strip()]:
        for k in JOB_ALIASES.get(j, [j]):
            if k not in JOBS:
                p.error(f"unknown job '{j}' (jobs: {', '.join(JOBS)})")
            if k not in jobs:
                jobs.append(k)
    a.jobs = [j for j in JOBS if j in jobs]
    if a.reps < 1 or a.small_n < 1 or a.medium_n < 1 or a.seq_mib < 1 or a.meta_files < 1:
        p.error("sizes and --reps must be at least 1")
    if a.small_n > 99999:
        p.error("--small-n is at most 99999 (IM%05d names)")
    return a


def check_space(args, notes):
    free = shutil.disk_usage(args.workdir).free
    log(f"free space in {args.workdir}: {free / GB:.1f} GB")
    if free < 2 * GB:
        sys.exit(f"only {free / GB:.1f} GB free in {args.workdir}: not running")
    if free < 15 * GB:
        budget = free / 3  # one target's data at a time, plus slack for the others' meta trees and journals
        seq = min(args.seq_mib, int(budget // MiB))
        med_n = min(args.medium_n, max(1, int(budget // MEDIUM_SIZE)))
        small = min(args.small_n, max(1, int(budget // SMALL_SIZE)))
        if (seq, med_n, small) != (args.seq_mib, args.medium_n, args.small_n):
            note = (f"only {free / GB:.1f} GB free: scaled down seq {args.seq_mib}->{seq} MiB, "
                    f"medium {args.medium_n}->{med_n}, ingest {args.small_n}->{small}")
            log("warning: " + note)
            notes.append(note)
            args.seq_mib, args.medium_n, args.small_n = seq, med_n, small


def main(argv):
    global POOL
    args = parse_args(argv)
    started = time.time()
    os.makedirs(args.workdir, exist_ok=True)
    fs = fs_of(args.workdir)
    if fs and fs["fstype"] in ("tmpfs", "ramfs") and not args.allow_tmpfs:
        sys.exit(f"{args.workdir} is on {fs['fstype']}: use a directory on the real disk (--workdir)")
    logdir = os.path.join(args.workdir, "logs")
    os.makedirs(logdir, exist_ok=True)
    for name in os.listdir(logdir):  # one run's daemon logs at a time (tails go into the report)
        if name.endswith(".log"):
            os.replace(os.path.join(logdir, name), os.path.join(logdir, name + ".prev"))

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored

    targets = build_targets(args)
    external = [t.dir for t in targets if type(t) is Target]  # name=/path: never unmounted by us
    notes = []
    if any(t.managed or isinstance(t, RawTarget) for t in targets):
        left = sweep_mounts(args.workdir, external)
        if left:
            sys.exit(f"cannot clear leftover mounts under {args.workdir}: {left}")
        for t in targets:  # fresh dirs (brick, journal, source) every run
            if isinstance(t, RawTarget):
                shutil.rmtree(t.dir, ignore_errors=True)
                if isinstance(t, TwoTarget):
                    shutil.rmtree(t.mirror, ignore_errors=True)
            elif isinstance(t, PassthroughTarget):
                shutil.rmtree(os.path.dirname(t.src), ignore_errors=True)
            elif isinstance(t, (TwinFSTarget, TwinFS2Target)):
                shutil.rmtree(t.base, ignore_errors=True)
    check_space(args, notes)

    info = machine_info(args)
    info["command"] = shlex.join([sys.executable, os.path.abspath(__file__)] + list(argv))
    info["loadavg_start"] = list(os.getloadavg())
    info["notes"] = notes
    log(f"nproc {info['nproc']}, load {info['loadavg_start']}, kernel {info['kernel']}, twinfs {info['twinfs_git']}")

    POOL = os.urandom(MEDIUM_SIZE + 4 * MiB)
    bench = Bench(args, targets)
    interrupted = False
    try:
        for t in targets:
            try:
                t.start()
                if t.managed:
                    log(f"{t.name}: log in {t.logpath}")
            except Exception as e:  # noqa: BLE001
                t.dead = f"start failed: {e}"
                log(f"{t.name}: {t.dead}")
                bench.res.failures.append({"workload": "start", "target": t.name, "rep": 0, "error": str(e),
                                           "log": t.log_tail()})
        for t in targets:
            notes.extend(f"{t.name}: {x}" for x in t.notes if f"{t.name}: {x}" not in notes)
            if not t.dead:
                try:
                    bench.child(t, os.makedirs, (t.data, 0o755, True), 60)
                except WorkloadFailed as e:
                    t.dead = f"cannot create {t.data}: {e}"
        bench.run(args.jobs)
        for t in targets:
            if not t.dead and t.health() is None:
                bench.clean(t, t.data, "")
    except KeyboardInterrupt as e:
        interrupted = True
        log(f"interrupted ({e or 'SIGINT'}): cleaning up")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the teardown short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for t in reversed(targets):
            try:
                t.stop()
            except BaseException as e:  # noqa: BLE001 - keep tearing down the others
                log(f"{t.name}: teardown error: {e}")
        left = sweep_mounts(args.workdir, external)
        if left:
            log(f"WARNING: mounts left under {args.workdir}: {left}")
        for t in targets:  # notes made later (a restart's peer wait)
            notes.extend(f"{t.name}: {x}" for x in t.notes if f"{t.name}: {x}" not in notes)
        md_path, js_path, text = write_report(bench, args, info, args.jobs, started, interrupted)
        if not args.keep_data and not left:
            for t in targets:
                if isinstance(t, RawTarget):
                    shutil.rmtree(t.dir, ignore_errors=True)
                    if isinstance(t, TwoTarget):
                        shutil.rmtree(t.mirror, ignore_errors=True)
                elif isinstance(t, PassthroughTarget):
                    shutil.rmtree(os.path.dirname(t.src), ignore_errors=True)
                elif isinstance(t, TwinFSTarget):
                    # keep the journal for inspection when TwinFS had trouble; the brick goes
                    shutil.rmtree(t.brick, ignore_errors=True)
                    if not any(f["target"] == t.name for f in bench.res.failures):
                        shutil.rmtree(t.base, ignore_errors=True)
                elif isinstance(t, TwinFS2Target):
                    for n in t.nodes:
                        shutil.rmtree(n.brick, ignore_errors=True)
                    if not any(f["target"] == t.name for f in bench.res.failures):
                        shutil.rmtree(t.base, ignore_errors=True)
    print()
    print(text)
    print()
    log(f"wrote {md_path} and {js_path}")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
