#!/usr/bin/env python3
"""DICOM ingest through Samba: TwinFS against a plain directory and GlusterFS (Python 3 stdlib only).

One smbd (our own, private config, loopback only, port --port) exports three shares, all with the
share settings of ctdb-like/smb.conf.example's [pacs] section, verbatim (as the tests do):

  * plain    a directory on the same disk (<workdir>/plain/share)
  * twinfs   node a's mount of a TwinFS pair (bench.py's TwinFS2Target, <workdir>/twinfs2/a/mnt/share)
  * gluster  a GlusterFS replica-2 volume, FUSE-mounted by bench/gluster.sh (<workdir>/gluster/mnt/share)

Workloads, interleaved (for rep: for workload: for target, the target order rotating each rep):

  * smbput: one smbclient session puts --files files of 512 KiB (random, made once locally) into a
    fresh directory of the share (`mkdir; cd; lcd; prompt; mput *`). smbclient sends no SMB2 FLUSH,
    so smbd never fsyncs (strict sync = yes acts on a FLUSH only): the `smbput` rows end when
    smbclient exits (every file closed by smbd; on TwinFS that close is its FUSE flush, which
    commits the file on both nodes' disks, on plain/gluster the data may still be in the page
    cache); `smbput_sync` adds a server-side fsync of every file and directory (what strict sync
    would do on a client's flush), in the time: durable on all three.
  * dicom: dcmtk's storescu sends a generated study set (pacs_e2e.py generate --ct --mr --cr) to a
    fresh Orthanc (fresh index on local disk, fresh storage directory ON THE SHARE, reached through
    an smbnetfs mount of the share: this kernel has no CIFS module). `dicom` = storescu's wall time
    (every instance acknowledged); `dicom_sync` adds waiting until smbd has no file of the storage
    directory open and a server-side fsync of every stored file. smbnetfs implements neither flush
    nor fsync (libsmbclient has no such call): Orthanc's SyncStorageArea fsync returns 0 without
    reaching smbd, so "acknowledged" means written by smbd into the share's file system, not durable.
  * direct (opt-in, --only ...,direct): the same storescu -> Orthanc with the storage area on the
    target's own directory (no SMB), for comparison.

Safety rules as bench.py/heal.py (whose helpers this imports): every external command under
`timeout -k`, work on the mounts in forked children with deadlines, mounts waited for via
/proc/self/mountinfo, never stat(); everything torn down in finally blocks (Ctrl-C and SIGTERM too).
See bench/README.md, "Samba ingest".
"""

import argparse
import datetime
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request

sys.dont_write_bytecode = True  # no __pycache__ in the repo
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)
import bench as B  # noqa: E402  (bench.py: sh, mounts, run_in_child, TwinFS2Target)

from bench import MB, SMALL_SIZE, log, sh  # noqa: E402

REPO = os.path.dirname(BENCH_DIR)
OUT_DIR = os.path.join(BENCH_DIR, "out")
GLUSTER_SH = os.path.join(BENCH_DIR, "gluster.sh")
SMB_EXAMPLE = os.path.join(REPO, "ctdb-like", "smb.conf.example")
PACS_E2E = os.path.join(REPO, "Tests", "IntegrationTests", "pacs", "pacs_e2e.py")
SYS_PYTHON = "/usr/bin/python3"   # Debian's, with python3-pydicom and numpy (the PATH one may lack them)
ORTHANC = "/usr/sbin/Orthanc"
PASSWORD = "twinfs-bench"
TARGETS = ["plain", "twinfs", "gluster"]

ROWS = [
    ("smbput", "files/s"), ("smbput", "MB/s"),
    ("smbput_sync", "files/s"), ("smbput_sync", "MB/s"),
    ("dicom", "instances/s"), ("dicom", "MB/s"),
    ("dicom_sync", "instances/s"), ("dicom_sync", "MB/s"),
    ("direct", "instances/s"), ("direct", "MB/s"),
]
ROW_LABEL = {
    "smbput": "smbclient put 512 KiB (smbclient exited)",
    "smbput_sync": "smbclient put 512 KiB + server fsync",
    "dicom": "storescu -> Orthanc on smbnetfs (all acked)",
    "dicom_sync": "storescu -> Orthanc + server fsync",
    "direct": "storescu -> Orthanc on the target itself, no SMB",
}
JOBS = ["smbput", "dicom", "direct"]
JOB_ROWS = {"smbput": ["smbput", "smbput_sync"], "dicom": ["dicom", "dicom_sync"], "direct": ["direct"]}


class Failed(Exception):
    pass


def child(fn, args, timeout, what, abort=None):
    """fn(*args) in a forked child with a deadline; abort() runs when it is missed (it aborts the
    target's FUSE connection, so a child stuck on a hung mount can be killed)."""
    try:
        return B.run_in_child(fn, args, timeout, abort)
    except B.WorkloadFailed as e:
        raise Failed(f"{what}: {e}") from None


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_free(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def pgid_members(pgid):
    """Live pids whose process group is pgid (read from /proc; zombies left out)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if rest[0] != "Z" and int(rest[2]) == pgid:
            out.append(int(d))
    return out


def kill_group(proc, name, grace=20):
    """SIGTERM to proc (a session leader we started), wait up to grace s, then SIGKILL to its process
    group; then waits (bounded) until no member of the group is left, SIGKILL to the stragglers."""
    if proc is None:
        return
    pgid = proc.pid
    if proc.poll() is None:
        try:
            proc.send_signal(signal.SIGTERM)
        except OSError:
            pass
        if not B.wait_proc(proc, grace):
            log(f"{name}: pid {proc.pid} did not exit within {grace} s of SIGTERM: SIGKILL to its group")
            try:
                os.killpg(pgid, signal.SIGKILL)
            except OSError:
                pass
            B.wait_proc(proc, 10)
    end = time.monotonic() + 5  # its children (smbd's, smbnetfs's) leave once the leader is gone
    while pgid_members(pgid) and time.monotonic() < end:
        time.sleep(0.2)
    if pgid_members(pgid):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except OSError:
            pass
        end = time.monotonic() + 10
        while pgid_members(pgid) and time.monotonic() < end:
            time.sleep(0.2)
    left = pgid_members(pgid)
    if left:
        log(f"WARNING: {name}: processes {left} of group {pgid} still there")


# --------------------------------------------------------------------------- workloads (children)

def w_mkdirs(paths):
    for p in paths:
        os.makedirs(p, exist_ok=True)
    return True


def w_fsync_tree(root):
    """fsync(2) of every regular file and every directory under root (what smbd's strict sync
    does for a file on a client's FLUSH, plus the names)."""
    t0 = time.perf_counter()
    files = dirs = nbytes = 0
    for dp, _, fns in os.walk(root, onerror=lambda e: (_ for _ in ()).throw(e)):
        for name in fns:
            fd = os.open(os.path.join(dp, name), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
            try:
                os.fsync(fd)
                nbytes += os.fstat(fd).st_size
            finally:
                os.close(fd)
            files += 1
        fd = os.open(dp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        dirs += 1
    return {"seconds": time.perf_counter() - t0, "files": files, "dirs": dirs, "bytes": nbytes}


def w_verify_files(root, expected):
    """expected: {name: [size, sha256 hex]}; compares the files of root (flat) with it."""
    t0 = time.perf_counter()
    have = {}
    for name in os.listdir(root):
        p = os.path.join(root, name)
        h = hashlib.sha256()
        with open(p, "rb", buffering=0) as f:
            while True:
                b = f.read(1 << 20)
                if not b:
                    break
                h.update(b)
        have[name] = [os.path.getsize(p), h.hexdigest()]
    missing = sorted(set(expected) - set(have))
    extra = sorted(set(have) - set(expected))
    bad = sorted(n for n in set(have) & set(expected) if have[n] != list(expected[n]))
    return {"seconds": time.perf_counter() - t0, "files": len(have), "missing": len(missing),
            "extra": len(extra), "mismatched": len(bad), "examples": (missing + extra + bad)[:5]}


def w_copies(src, dests):
    """Each source file written to every directory of dests, each copy fsynced before the next
    (open, write, fsync, close): no SMB, no FUSE, no network. With two dests on one disk this is
    the ceiling of any replica-2 store that makes both copies durable before it acknowledges."""
    names = sorted(os.listdir(src))
    datas = []
    for n in names:
        with open(os.path.join(src, n), "rb") as f:
            datas.append(f.read())
    for d in dests:
        os.makedirs(d, exist_ok=True)
    os.sync()
    t0 = time.perf_counter()
    for n, data in zip(names, datas):
        for d in dests:
            fd = os.open(os.path.join(d, n), os.O_CREAT | os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
    for d in dests:
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return len(names) / (time.perf_counter() - t0)


def w_count(root):
    files = nbytes = 0
    for dp, _, fns in os.walk(root):
        for name in fns:
            files += 1
            nbytes += os.lstat(os.path.join(dp, name)).st_size
    return {"files": files, "bytes": nbytes}


def w_make_sources(root, n):
    """n files F%04d.bin of 512 KiB of random bytes (incompressible); returns {name: [size, sha256]}."""
    os.makedirs(root, exist_ok=True)
    out = {}
    for i in range(n):
        data = os.urandom(SMALL_SIZE)
        name = f"F{i:04d}.bin"
        with open(os.path.join(root, name), "wb") as f:
            f.write(data)
        out[name] = [len(data), hashlib.sha256(data).hexdigest()]
    return out


# --------------------------------------------------------------------------- Samba

def pacs_share_settings():
    """The lines of [pacs] in ctdb-like/smb.conf.example, except `path` and comments (as
    Tests/TestSupport/Samba.swift uses them)."""
    with open(SMB_EXAMPLE) as f:
        text = f.read()
    sec = text.split("[pacs]", 1)[1]
    sec = re.split(r"^\[", sec, maxsplit=1, flags=re.M)[0]  # up to a next section, if one is added
    out = []
    for line in sec.splitlines():
        s = line.strip()
        if s and not s.startswith("#") and not s.startswith(";") and not s.startswith("path"):
            out.append(s)
    return out


class Smbd:
    """Our own smbd: private dirs under <workdir>/smbd, loopback only, one port."""

    def __init__(self, workdir, port, logdir):
        self.dir = os.path.join(workdir, "smbd")
        self.conf = os.path.join(self.dir, "smb.conf")
        self.port = port
        self.out = os.path.join(logdir, "smbd.out")
        self.proc = None
        self.shares = {}

    def write_conf(self, shares):
        d = self.dir
        for sub in ("private", "lock", "state", "cache", "pid", "ncalrpc", "log"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        settings = pacs_share_settings()
        text = (f"[global]\n   server role = standalone server\n   unix charset = UTF-8\n"
                f"   smb ports = {self.port}\n   interfaces = lo\n   bind interfaces only = yes\n"
                f"   private dir = {d}/private\n   lock directory = {d}/lock\n   state directory = {d}/state\n"
                f"   cache directory = {d}/cache\n   pid directory = {d}/pid\n   ncalrpc dir = {d}/ncalrpc\n"
                f"   passdb backend = tdbsam:{d}/private/passdb.tdb\n   log file = {d}/log/log.%m\n"
                f"   load printers = no\n   disable spoolss = yes\n\n")
        for name, path in shares.items():
            text += f"[{name}]\n   path = {path}\n" + "".join(f"   {s}\n" for s in settings) + "\n"
        with open(self.conf, "w") as f:
            f.write(text)
        self.shares = dict(shares)
        return settings

    def start(self):
        rc, out = sh(["sh", "-c", f"printf '%s\\n%s\\n' '{PASSWORD}' '{PASSWORD}' | "
                      f"smbpasswd -c {shlex.quote(self.conf)} -a -s root"], 30)
        if rc != 0:
            raise Failed(f"smbpasswd -a root failed ({rc}): {out}")
        with open(self.out, "ab") as lf:
            # a session of its own (setsid): smbd signals its whole process group when it stops
            self.proc = subprocess.Popen(["smbd", "--foreground", "--no-process-group", "-s", self.conf,
                                          "--debug-stdout", "-d", "1"], stdout=lf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.dir)
        end = time.monotonic() + 30
        share = next(iter(self.shares))
        while True:
            rc, out = self.client(share, "ls", 10)
            if rc == 0:
                break
            if self.proc.poll() is not None or time.monotonic() > end:
                raise Failed(f"smbd did not answer on port {self.port} ({rc}: {out[-300:]}); "
                             f"smbd.out:\n{B.tail(self.out)}")
            time.sleep(0.3)
        log(f"smbd: pid {self.proc.pid}, port {self.port}, shares {list(self.shares)}")

    def client(self, share, commands, timeout):
        return sh(["smbclient", f"//127.0.0.1/{share}", "-p", str(self.port), "-U", f"root%{PASSWORD}",
                   "-c", commands], timeout)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def open_files(self, prefix):
        """Files under prefix that smbd has open (smbstatus -L -j), or None when smbstatus fails."""
        rc, out = sh(["smbstatus", "-s", self.conf, "-L", "-j"], 30)
        if rc != 0:
            return None
        try:
            js = json.loads(out[out.index("{"):])
        except ValueError:
            return None
        pre = prefix.rstrip("/") + "/"
        return [p for p in js.get("open_files", {}) if p.startswith(pre)]

    def stop(self):
        kill_group(self.proc, "smbd")
        self.proc = None


class SmbNetFS:
    """The shares mounted through smbnetfs (FUSE, libsmbclient) at <workdir>/smbnetfs/mnt; a share
    is <mnt>/127.0.0.1:<port>/<share> (libsmbclient takes the port from the URL)."""

    def __init__(self, workdir, port, logdir):
        self.base = os.path.join(workdir, "smbnetfs")
        self.home = os.path.join(self.base, "home")
        self.mnt = os.path.join(self.base, "mnt")
        self.port = port
        self.logpath = os.path.join(logdir, "smbnetfs.log")
        self.out = os.path.join(logdir, "smbnetfs.out")
        self.proc = None

    def share_path(self, share):
        return os.path.join(self.mnt, f"127.0.0.1:{self.port}", share)

    def start(self):
        cfgdir = os.path.join(self.home, ".smb")
        os.makedirs(cfgdir, exist_ok=True)
        os.makedirs(self.mnt, exist_ok=True)
        with open(os.path.join(cfgdir, "smb.conf"), "w") as f:  # libsmbclient's, not the machine's
            f.write("[global]\n   unix charset = UTF-8\n   client min protocol = SMB2\n")
        cfg = os.path.join(cfgdir, "smbnetfs.conf")
        fd = os.open(cfg, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # 0600, or `auth` is ignored
        with os.fdopen(fd, "w") as f:
            f.write(f'smb_query_browsers "false"\nshow_hidden_hosts "false"\nstat_workaround_depth 0\n'
                    f'auth "root" "{PASSWORD}"\nlog_file "{self.logpath}"\nsmbnetfs_debug 0\n')
        os.chmod(cfg, 0o600)
        if B.is_mounted(self.mnt):
            raise Failed(f"{self.mnt} is already mounted")
        env = dict(os.environ, HOME=self.home)
        # FUSE 2: without big_writes every write is 4 KiB (128 SMB writes per 512 KiB file)
        cmd = ["smbnetfs", self.mnt, "-f", "-o", f"config={cfg},big_writes,max_write=131072"]
        with open(self.out, "ab") as lf:
            lf.write(f"\n=== {datetime.datetime.now().isoformat()} starting: {shlex.join(cmd)}\n".encode())
            lf.flush()
            self.proc = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True, env=env, cwd=self.base)
        B.wait_mounted(self.mnt, self.proc, 30, self.out)
        log(f"smbnetfs: mounted {self.mnt} (pid {self.proc.pid})")

    def health(self):
        if self.proc is None or self.proc.poll() is not None:
            return "smbnetfs exited"
        if not B.is_mounted(self.mnt):
            return "smbnetfs mount vanished"
        return None

    def stop(self):
        if B.is_mounted(self.mnt):
            B.force_unmount(self.mnt)
        kill_group(self.proc, "smbnetfs", grace=15)  # it leaves its loop within its time_step
        self.proc = None


# --------------------------------------------------------------------------- Orthanc

class Orthanc:
    """A fresh Orthanc: index on local disk (<dir>/index), storage area at `storage`."""

    def __init__(self, d, storage):
        self.dir = d
        self.http = free_port()
        self.dicom = free_port()
        self.url = f"http://127.0.0.1:{self.http}"
        self.logpath = os.path.join(d, "orthanc.log")
        self.proc = None
        os.makedirs(os.path.join(d, "index"), exist_ok=True)
        cfg = {"Name": "TwinFS-bench", "StorageDirectory": storage, "IndexDirectory": os.path.join(d, "index"),
               "HttpPort": self.http, "DicomPort": self.dicom, "DicomAet": "ORTHANC", "RemoteAccessAllowed": False,
               "AuthenticationEnabled": False, "DicomCheckCalledAet": False, "StorageCompression": False,
               "SyncStorageArea": True, "Plugins": []}  # as Tests/IntegrationTests/PACSTests.swift
        self.cfg = os.path.join(d, "orthanc.json")
        with open(self.cfg, "w") as f:
            json.dump(cfg, f)

    def get(self, path, timeout=10):
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def start(self):
        with open(self.logpath, "ab") as lf:
            self.proc = subprocess.Popen([ORTHANC, self.cfg], stdout=lf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.dir)
        end = time.monotonic() + 60
        while True:
            try:
                self.get("/system", 2)
                return
            except (OSError, ValueError):
                pass
            if self.proc.poll() is not None or time.monotonic() > end:
                raise Failed(f"Orthanc did not answer on {self.url}; log tail:\n{B.tail(self.logpath, 15)}")
            time.sleep(0.2)

    def stop(self):
        kill_group(self.proc, "Orthanc", grace=30)
        self.proc = None


# --------------------------------------------------------------------------- results

class Results:
    def __init__(self, targets, reps):
        self.targets = list(targets)
        self.reps = reps
        self.samples = {}   # "row|unit" -> target -> [value or None] * reps
        self.details = {}   # job -> target -> [dict or None] * reps
        self.failures = []

    def slot(self, key, target):
        return self.samples.setdefault(key, {}).setdefault(target, [None] * self.reps)

    def put(self, row, target, rep, metrics):
        for unit, v in metrics.items():
            self.slot(f"{row}|{unit}", target)[rep] = v

    def detail(self, job, target, rep, d):
        self.details.setdefault(job, {}).setdefault(target, [None] * self.reps)[rep] = d

    def fail(self, job, target, rep, error, logtail=None):
        for row in JOB_ROWS[job]:
            for wl, unit in ROWS:
                if wl == row:
                    self.slot(f"{row}|{unit}", target)
        self.failures.append({"job": job, "target": target, "rep": rep, "error": error, "log": logtail})
        log(f"FAILED {job} on {target} (rep {rep + 1}): {error}")


def ratio_pairs(names):
    want = [("twinfs", "plain"), ("twinfs", "gluster"), ("gluster", "plain")]
    return [(a, b) for a, b in want if a in names and b in names]


def render_table(res):
    names = res.targets
    pairs = ratio_pairs(names)
    head = ["workload", "unit"] + names + [f"{a}/{b}" for a, b in pairs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    first_unit = {}
    for wl, unit in ROWS:
        first_unit.setdefault(wl, unit)
    for wl, unit in ROWS:
        per = res.samples.get(f"{wl}|{unit}")
        if per is None:
            continue
        cells = [ROW_LABEL[wl] if unit == first_unit[wl] else "", unit]
        for t in names:
            xs = per.get(t)
            ok = [x for x in (xs or []) if x is not None]
            if xs is None:
                cells.append("-")
            elif not ok:
                cells.append("FAILED")
            elif len(ok) < len(xs):
                cells.append(f"{B.fmt(statistics.median(ok))} ({len(ok)}/{len(xs)} ok)")
            else:
                cells.append(B.fmt(statistics.median(ok)))
        for a, b in pairs:
            r = B.paired(per.get(a, []), per.get(b, []))
            cells.append(f"{r:.2f}" if r is not None else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_medmed(res):
    pairs = ratio_pairs(res.targets)
    if not pairs:
        return ""
    head = ["workload"] + [f"{a}/{b} paired / med-med" for a, b in pairs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for wl, unit in ROWS:
        per = res.samples.get(f"{wl}|{unit}")
        if per is None or unit == "MB/s":
            continue  # the same ratio as files/s (instances/s)
        cells = [wl]
        for a, b in pairs:
            p = B.paired(per.get(a, []), per.get(b, []))
            ma, mb = B.med(per.get(a, [])), B.med(per.get(b, []))
            mm = ma / mb if ma is not None and mb else None
            cells.append(f"{p:.2f} / {mm:.2f}" if p is not None and mm is not None else "n/a")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_goals(res):
    """The issue's targets: twinfs >= 3x gluster and >= 0.6x plain (paired medians)."""
    lines = ["| workload | twinfs/gluster (goal >= 3) | twinfs/plain (goal >= 0.6) |", "|---|---|---|"]
    for wl, unit in ROWS:
        per = res.samples.get(f"{wl}|{unit}")
        if per is None or unit == "MB/s":
            continue
        cells = [wl]
        for other, goal in (("gluster", 3.0), ("plain", 0.6)):
            r = B.paired(per.get("twinfs", []), per.get(other, [])) if other in res.targets else None
            cells.append("n/a" if r is None else f"{r:.2f} {'met' if r >= goal else 'NOT met'}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_ceiling(R, res):
    """The put's files written straight to the disk, one and two fsynced copies, against what
    the goals ask of twinfs in files/s: no replica-2 store that makes both copies durable before
    it acknowledges can pass the two-copy rate on this one disk."""
    c = R.get("ceiling")
    if not c:
        return ""
    lines = ["| | files/s (median) | samples |", "|---|---|---|"]
    for label, text in (("one", "one fsynced copy (open, write 512 KiB, fsync, close)"),
                        ("two", "two fsynced copies, each file to two directories: the replica-2 ceiling")):
        xs = [x for x in c.get(label, []) if x is not None]
        if xs:
            lines.append(f"| {text} | {B.fmt(statistics.median(xs))} | {', '.join(B.fmt(x) for x in xs)} |")
    put = res.samples.get("smbput|files/s", {})
    two = c.get("two", [])
    for other, goal, what in (("gluster", 3.0, "3x GlusterFS's put"), ("plain", 0.6, "60 % of the plain share's put")):
        xs = [g * goal for g in (put.get(other) or []) if g is not None]
        if xs:
            lines.append(f"| the goal, {what} | {B.fmt(statistics.median(xs))} | |")
    r = B.paired(put.get("twinfs", []), two)
    if r is not None:
        lines.append(f"| twinfs's put / two fsynced copies (paired) | {r:.2f} | |")
    return "\n".join(lines)


def write_report(args, R, res, started, interrupted):
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    os.makedirs(OUT_DIR, exist_ok=True)
    md_path = os.path.join(OUT_DIR, f"smb-{stamp}.md")
    js_path = os.path.join(OUT_DIR, f"smb-{stamp}.json")
    R["duration_s"] = round(time.time() - started)
    m = R["machine"]
    md = [f"# TwinFS Samba ingest benchmark {datetime.datetime.fromtimestamp(started).isoformat(timespec='seconds')}"
          + (" (INTERRUPTED, partial)" if interrupted else ""), ""]
    md.append(f"Command: `{R['command']}`")
    md.append("")
    md.append(f"* machine: nproc {m['nproc']}, kernel {m['kernel']}, load {m['load_start']} at start, "
              f"{[round(x, 2) for x in os.getloadavg()]} at end; workdir {args.workdir} ({m.get('workdir_fs')}); "
              f"duration {R['duration_s']} s")
    v = R.get("versions", {})
    md.append(f"* twinfs {v.get('twinfs', '?')} ({args.twinfs_bin}, built {v.get('twinfs_mtime', '?')}); "
              f"{v.get('smbd', '?')}; smbnetfs {v.get('smbnetfs', '?')}; Orthanc {v.get('orthanc', '?')}; "
              f"dcmtk {v.get('dcmtk', '?')}; {v.get('glusterfs', 'gluster not run')}")
    md.append(f"* one smbd, shares {', '.join(R.get('shares', {}))}, each with the [pacs] settings of "
              f"ctdb-like/smb.conf.example: `{'; '.join(R.get('share_settings', []))}`")
    ds = R.get("dicom_set")
    md.append(f"* smbput: {args.files} x 512 KiB per sample, one smbclient session (`mput`); dicom: "
              + (f"{ds['instances']} instances, {ds['bytes'] / MB:.1f} MB (--ct {args.ct} --mr {args.mr} --cr {args.cr}) "
                 f"per sample, storescu -> fresh Orthanc whose storage area is on the share via smbnetfs"
                 if ds else "not run"))
    md.append(f"* {args.reps} reps, interleaved, target order rotating each rep; cells are medians; ratios are "
              "paired (median over reps of a_i / b_i). MB/s decimal.")
    md.append("")
    md.append("## Results")
    md.append("")
    md.append(render_table(res))
    md.append("")
    md.append("## Goals (the issue: twinfs >= 3x GlusterFS and >= 60 % of the plain directory)")
    md.append("")
    md.append(render_goals(res))
    ceiling = render_ceiling(R, res)
    if ceiling:
        md.append("")
        md.append("## The disk's ceiling (same run, no SMB, no FUSE, no network)")
        md.append("")
        md.append(ceiling)
    mm = render_medmed(res)
    if mm:
        md.append("")
        md.append("## Paired ratio / ratio of medians")
        md.append("")
        md.append(mm)
    md.append("")
    md.append("## Samples")
    md.append("")
    md.append(B.render_spread(res, [r for r in ROWS if r[1] != "MB/s"]))
    md.append("")
    md.append("## What the rows mean")
    md.append("")
    md.append("* smbput: smbclient's wall time (process start, session setup, `mkdir`, every `put`: "
              "create, writes, close). smbclient sends no SMB2 FLUSH, so smbd never calls fsync(2) here "
              "(`strict sync = yes` only acts on a FLUSH). On TwinFS smbd's close(2) is TwinFS's flush, which "
              "commits the file on both nodes' disks; on plain and gluster the data may still be in the page "
              "cache when smbclient exits.")
    md.append("* smbput_sync: the same plus a server-side pass that fsyncs every file and directory of the "
              "sample through the share's path (what strict sync does on a client's FLUSH): durable on all three.")
    md.append("* dicom: storescu's wall time, i.e. until Orthanc has acknowledged the last C-STORE. Orthanc "
              "writes the storage area through smbnetfs, which has no flush/fsync operation: Orthanc's fsync "
              "(SyncStorageArea) returns 0 without reaching smbd, and the file's SMB CLOSE is sent after close(2) "
              "returned (FUSE release is asynchronous). Acked = written by smbd into the share's file system.")
    md.append("* dicom_sync: the same plus waiting until smbd has no file of the storage directory open "
              "(`smbstatus -L`) and a server-side fsync of every stored file and directory.")
    if "direct" in args.only:
        md.append("* direct (for comparison, no SMB): storescu -> a fresh Orthanc whose storage area is the "
                  "target's own directory (plain dir, TwinFS mount, gluster mount); Orthanc's fsync is real there.")
    if R.get("events"):
        md.append("")
        md.append("## Events")
        md.append("")
        for e in R["events"]:
            md.append(f"* {e}")
    if res.failures:
        md.append("")
        md.append("## Failures")
        md.append("")
        for f in res.failures:
            md.append(f"* {f['job']} on {f['target']}, rep {f['rep'] + 1}: {f['error']}")
            if f.get("log"):
                md.append("")
                md.append("```")
                md.append(f["log"][-3000:])
                md.append("```")
    for e in R.get("errors", []):
        md.append(f"* ERROR: {e}")
    for n in R.get("notes", []):
        md.append(f"* note: {n}")
    text = "\n".join(md)
    R["samples"] = res.samples
    R["details"] = res.details
    R["failures"] = res.failures
    with open(md_path, "w") as f:
        f.write(text + "\n")
    with open(js_path, "w") as f:
        json.dump(R, f, indent=1, default=str)
    return md_path, js_path, text


# --------------------------------------------------------------------------- the run

class Run:
    def __init__(self, args, R):
        self.a = args
        self.R = R
        self.wd = args.workdir
        self.logdir = os.path.join(self.wd, "logs")
        self.pair = None
        self.gluster_up = False
        self.smbd = None
        self.snfs = None
        self.orthanc = None
        self.share_dirs = {}   # target -> server-side directory the share exports
        self.dead = {}         # target -> reason
        self.names = []
        self.res = None
        self.put_src = os.path.join(self.wd, "src", "put")
        self.dcm_src = os.path.join(self.wd, "src", "dicom")
        self.put_expected = {}

    def deadline(self, nbytes, nfiles):
        return (120 + nbytes / MB + nfiles / 5) * self.a.timeout_scale

    # --- setup

    def setup(self):
        a = self.a
        os.makedirs(self.logdir, exist_ok=True)
        plain = os.path.join(self.wd, "plain", "share")
        os.makedirs(plain, exist_ok=True)
        self.share_dirs["plain"] = plain
        self.names.append("plain")
        # TwinFS pair (nodes a and b); the share is a subdirectory of a's mount
        self.pair = B.TwinFS2Target("twinfs2", self.wd, a.twinfs_bin, a.listen, [], 60)
        self.pair.start()
        log(f"twinfs pair up: peer link {self.pair.peer_state}")
        if self.pair.notes:
            self.R["notes"].extend(f"twinfs: {n}" for n in self.pair.notes)
        self.share_dirs["twinfs"] = os.path.join(self.pair.a.fuse_mnt, "share")
        self.names.append("twinfs")
        if not a.no_gluster:
            self.gluster_up = True
            rc, out = sh(["bash", GLUSTER_SH, "up", self.wd], 900)
            log(f"gluster.sh up: rc {rc}\n{out[-800:]}")
            gmnt = os.path.join(self.wd, "gluster", "mnt")
            if rc != 0 or not B.is_mounted(gmnt):
                raise Failed(f"gluster.sh up failed ({rc}): {out[-800:]}")
            self.share_dirs["gluster"] = os.path.join(gmnt, "share")
            self.names.append("gluster")
        child(w_mkdirs, ([self.share_dirs[t] for t in self.names],), 60, "create the share directories")
        self.smbd = Smbd(self.wd, a.port, self.logdir)
        self.R["share_settings"] = self.smbd.write_conf({t: self.share_dirs[t] for t in self.names})
        self.R["shares"] = {t: self.share_dirs[t] for t in self.names}
        self.smbd.start()
        if "dicom" in a.only:
            self.snfs = SmbNetFS(self.wd, a.port, self.logdir)
            self.snfs.start()
            for t in self.names:  # the share is reachable through smbnetfs (bounded: in a child)
                child(os.listdir, (self.snfs.share_path(t),), 60, f"list {t} through smbnetfs")
        self.res = Results(self.names, a.reps)

    def prepare_sources(self):
        a = self.a
        if "smbput" in a.only:
            shutil.rmtree(self.put_src, ignore_errors=True)
            self.put_expected = w_make_sources(self.put_src, a.files)
            log(f"made {a.files} source files of 512 KiB in {self.put_src}")
        if "dicom" in a.only or "direct" in a.only:
            shutil.rmtree(self.dcm_src, ignore_errors=True)
            rc, out = sh([SYS_PYTHON, PACS_E2E, "generate", self.dcm_src, "--ct", str(a.ct), "--mr", str(a.mr),
                          "--cr", str(a.cr)], 1800)
            if rc != 0:
                raise Failed(f"pacs_e2e.py generate failed ({rc}): {out[-600:]} "
                             "(needs Debian's python3-pydicom and python3-numpy for /usr/bin/python3)")
            files = sorted(os.listdir(self.dcm_src))
            nbytes = sum(os.path.getsize(os.path.join(self.dcm_src, f)) for f in files)
            self.R["dicom_set"] = {"instances": len(files), "bytes": nbytes, "ct": a.ct, "mr": a.mr, "cr": a.cr}
            log(f"generated {len(files)} DICOM instances ({nbytes / MB:.1f} MB) in {self.dcm_src}")

    # --- health

    def event(self, text):
        self.R["events"].append(f"{datetime.datetime.now().strftime('%H:%M:%S')} {text}")
        log(text)

    def check(self, target):
        """None when the target and the SMB path to it are usable, else why not."""
        if target in self.dead:
            return self.dead[target]
        if not self.smbd.alive():
            self.event("smbd died: restarting it")
            kill_group(self.smbd.proc, "smbd")
            self.smbd.start()
        if self.snfs is not None and self.snfs.health():
            self.event(f"smbnetfs: {self.snfs.health()}: restarting it")
            self.snfs.stop()
            self.snfs.start()
        if target == "twinfs":
            why = self.pair.health()
            if why:
                self.dead[target] = f"twinfs pair down: {why}"
                self.event(f"{self.dead[target]}; log tail:\n{self.pair.log_tail()}")
                return self.dead[target]
        if target == "gluster" and not B.is_mounted(os.path.dirname(self.share_dirs["gluster"])):
            self.dead[target] = "gluster mount vanished"
            self.event(self.dead[target])
            return self.dead[target]
        rc, out = sh(["stat", "-c", "%F", self.share_dirs[target]], 20)
        if rc != 0:
            return f"stat of the share directory failed or hung ({rc}): {out}"
        return None

    def logtail(self, target):
        parts = [f"--- smbd.out\n{B.tail(self.smbd.out, 10)}"]
        if target == "twinfs":
            parts.append(self.pair.log_tail(15))
        if self.snfs is not None:
            parts.append(f"--- smbnetfs.log\n{B.tail(self.snfs.logpath, 10)}")
        return "\n".join(parts)

    def abort_fn(self, target):
        if target == "twinfs":
            return self.pair.abort
        if target == "gluster":
            return lambda: B.fuse_abort(os.path.dirname(self.share_dirs["gluster"]))
        return None

    def remove(self, path, what, target=None):
        try:
            child(B.w_remove, (path,), 600, f"remove {what}", self.abort_fn(target))
        except Failed as e:
            log(f"warning: {e}")

    # --- samples

    def wait_closed(self, path, timeout=60):
        """Until smbd has no file under path open (smbnetfs closes a file after the client's close)."""
        end = time.monotonic() + timeout
        polls = 0
        while True:
            polls += 1
            left = self.smbd.open_files(path)
            if left is None:
                raise Failed("smbstatus -L -j failed: cannot tell whether smbd has closed the stored files")
            if not left or time.monotonic() > end:
                return polls, left
            time.sleep(0.05)

    def sample_put(self, target, rep):
        name = f"put-r{rep + 1}"
        server = os.path.join(self.share_dirs[target], name)
        self.remove(server, f"{target}:{name}", target)  # a fresh directory
        try:
            self._put(target, rep, name, server)
        finally:
            self.remove(server, f"{target}:{name}", target)

    def _put(self, target, rep, name, server):
        a = self.a
        n, nbytes = a.files, a.files * SMALL_SIZE
        B.sync_all()
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        rc, out = self.smbd.client(target, f"mkdir {name}; cd {name}; lcd {self.put_src}; prompt; mput *",
                                   self.deadline(nbytes, n))
        t1 = time.perf_counter()
        puts = out.count("putting file ")
        if rc != 0 or puts != n or "NT_STATUS" in out:
            raise Failed(f"smbclient exited {rc} after {puts}/{n} puts: {out[-500:]}")
        fs = child(w_fsync_tree, (server,), self.deadline(nbytes, n), "server-side fsync", self.abort_fn(target))
        t2 = time.perf_counter()
        v = child(w_verify_files, (server, self.put_expected), self.deadline(2 * nbytes, n), "verify",
                  self.abort_fn(target))
        d = {"smbclient_s": t1 - t0, "fsync_pass_s": t2 - t1, "fsync_pass": fs, "verify": v, "load1": load}
        self.res.detail("smbput", target, rep, d)
        if v["missing"] or v["extra"] or v["mismatched"]:
            raise Failed(f"verify: {v['missing']} missing, {v['extra']} extra, {v['mismatched']} differ "
                         f"{v['examples']}")
        self.res.put("smbput", target, rep, {"files/s": n / (t1 - t0), "MB/s": nbytes / (t1 - t0) / MB})
        self.res.put("smbput_sync", target, rep, {"files/s": n / (t2 - t0), "MB/s": nbytes / (t2 - t0) / MB})
        log(f"smbput {target} rep {rep + 1}: {n / (t1 - t0):.0f} files/s ({t1 - t0:.2f} s), "
            f"+fsync {n / (t2 - t0):.0f} files/s (fsync pass {t2 - t1:.2f} s)")

    def sample_ceiling(self, rep):
        """The disk's own rates for the put's files, in the same rep: one fsynced copy, and two
        (the physical ceiling of a replica-2 store on this one disk)."""
        a = self.a
        base = os.path.join(a.workdir, "ceiling")
        out = {}
        for label, dests in (("one", [base + "/1"]), ("two", [base + "/2a", base + "/2b"])):
            shutil.rmtree(base, ignore_errors=True)
            try:
                out[label] = child(w_copies, (self.put_src, dests), self.deadline(2 * a.files * SMALL_SIZE, 2 * a.files),
                                   f"disk ceiling ({label})")
            except (Failed, OSError) as e:
                log(f"disk ceiling ({label}) failed: {e}")
        shutil.rmtree(base, ignore_errors=True)
        for label, v in out.items():
            self.R.setdefault("ceiling", {}).setdefault(label, [None] * a.reps)[rep] = v
        log(f"disk ceiling rep {rep + 1}: " + ", ".join(f"{k} copy(ies) {v:.0f} files/s" for k, v in out.items()))

    def sample_dicom(self, target, rep, via_smb=True):
        job = "dicom" if via_smb else "direct"
        name = f"orthanc-r{rep + 1}" if via_smb else f"orthanc-direct-r{rep + 1}"
        server = os.path.join(self.share_dirs[target], name)
        odir = os.path.join(self.wd, "orthanc", f"{job}-{target}-r{rep + 1}")
        shutil.rmtree(odir, ignore_errors=True)
        self.remove(server, f"{target}:{name}", target)  # a fresh storage directory
        try:
            self._dicom(job, target, rep, server, odir,
                        os.path.join(self.snfs.share_path(target), name) if via_smb else server)
        finally:
            if self.orthanc is not None:
                self.orthanc.stop()
                self.orthanc = None
            self.remove(server, f"{target}:{name}", target)
            shutil.rmtree(odir, ignore_errors=True)

    def _dicom(self, job, target, rep, server, odir, storage):
        """storescu -> a fresh Orthanc storing at `storage` (through smbnetfs for job dicom, the
        target's own directory for job direct); `server` is the same directory on the server side."""
        a = self.a
        ds = self.R["dicom_set"]
        n, nbytes = ds["instances"], ds["bytes"]
        self.orthanc = Orthanc(odir, storage)
        self.orthanc.start()
        B.sync_all()
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        rc, out = sh(["storescu", "-aec", "ORTHANC", "-aet", "MODALITY", "+sd", "+r", "127.0.0.1",
                      str(self.orthanc.dicom), self.dcm_src], self.deadline(nbytes, n))
        t1 = time.perf_counter()
        if rc != 0:
            raise Failed(f"storescu exited {rc}: {out[-600:]}\nOrthanc log tail:\n"
                         f"{B.tail(self.orthanc.logpath, 10)}")
        d = {"storescu_s": t1 - t0, "load1": load,
             "storescu_warnings": [ln for ln in out.splitlines() if ln.startswith(("W:", "E:", "F:"))][:10]}
        self.res.detail(job, target, rep, d)
        t2 = t3 = t1
        if job == "dicom":
            polls, still = self.wait_closed(server)
            t2 = time.perf_counter()
            fs = child(w_fsync_tree, (server,), self.deadline(nbytes, n), "server-side fsync", self.abort_fn(target))
            t3 = time.perf_counter()
            d.update({"wait_closed_s": t2 - t1, "smbstatus_polls": polls, "still_open_after_wait": still[:5],
                      "fsync_pass_s": t3 - t2, "fsync_pass": fs})
            if still:
                raise Failed(f"smbd still had {len(still)} stored files open 60 s after storescu ended: {still[:3]}")
        stats = self.orthanc.get("/statistics", 30)
        cnt = child(w_count, (server,), 300, "count stored files", self.abort_fn(target))
        d.update({"orthanc_instances": stats.get("CountInstances"), "server_files": cnt})
        if stats.get("CountInstances") != n or cnt["files"] != n:
            raise Failed(f"Orthanc has {stats.get('CountInstances')} instances and the share "
                         f"{cnt['files']} files, expected {n}")
        if not a.no_verify:
            rc, vout = sh([SYS_PYTHON, PACS_E2E, "verify-orthanc", self.orthanc.url, self.dcm_src],
                          self.deadline(2 * nbytes, n))
            d["verify"] = vout[-400:]
            if rc != 0:
                raise Failed(f"verify-orthanc: {vout[-400:]}")
        self.res.put(job, target, rep, {"instances/s": n / (t1 - t0), "MB/s": nbytes / (t1 - t0) / MB})
        if job == "dicom":
            self.res.put("dicom_sync", target, rep, {"instances/s": n / (t3 - t0), "MB/s": nbytes / (t3 - t0) / MB})
            log(f"dicom {target} rep {rep + 1}: {n / (t1 - t0):.1f} instances/s ({t1 - t0:.2f} s), +close wait "
                f"{t2 - t1:.2f} s, +fsync {n / (t3 - t0):.1f} instances/s (fsync pass {t3 - t2:.2f} s)")
        else:
            log(f"direct {target} rep {rep + 1}: {n / (t1 - t0):.1f} instances/s ({t1 - t0:.2f} s), no SMB")

    def order(self, rep):
        if self.a.no_rotate:
            return list(self.names)
        k = rep % len(self.names)
        return self.names[k:] + self.names[:k]

    def run(self):
        jobs = [j for j in JOBS if j in self.a.only]
        for rep in range(self.a.reps):
            order = self.order(rep)
            log(f"rep {rep + 1}/{self.a.reps}: order {', '.join(order)}")
            for job in jobs:
                if job == "smbput":
                    self.sample_ceiling(rep)
                for t in order:
                    try:
                        why = self.check(t)
                    except (Failed, OSError, RuntimeError) as e:
                        why = f"health check / restart failed: {e}"
                    if why:
                        self.res.fail(job, t, rep, f"target down: {why}")
                        continue
                    try:
                        if job == "smbput":
                            self.sample_put(t, rep)
                        else:
                            self.sample_dicom(t, rep, via_smb=(job == "dicom"))
                    except (Failed, OSError, ValueError, RuntimeError) as e:
                        self.res.fail(job, t, rep, str(e), self.logtail(t))

    # --- teardown (every step guarded: the next one runs whatever happened)

    def teardown(self):
        steps = [("Orthanc", lambda: self.orthanc and self.orthanc.stop()),
                 ("smbnetfs", lambda: self.snfs and self.snfs.stop()),
                 ("smbd", lambda: self.smbd and self.smbd.stop()),
                 ("twinfs pair", lambda: self.pair and self.pair.stop())]
        for name, fn in steps:
            try:
                fn()
            except BaseException as e:  # noqa: BLE001
                log(f"{name}: teardown error: {e}")
        if self.gluster_up:
            try:
                rc, out = sh(["bash", GLUSTER_SH, "down", self.wd], 600)
                log(f"gluster.sh down: rc {rc}: {out[-600:]}")
                if rc != 0:
                    self.R["errors"].append(f"gluster.sh down exited {rc}: {out[-300:]}")
            except BaseException as e:  # noqa: BLE001
                log(f"gluster teardown error: {e}")


def versions(args):
    v = {}
    v["twinfs"] = sh([args.twinfs_bin, "--version"], 20)[1]
    try:
        v["twinfs_mtime"] = datetime.datetime.fromtimestamp(os.path.getmtime(args.twinfs_bin)).isoformat(timespec="seconds")
    except OSError:
        pass
    v["smbd"] = "smbd " + sh(["smbd", "--version"], 20)[1]
    for key, pkg in (("smbnetfs", "smbnetfs"), ("orthanc", "orthanc"), ("dcmtk", "dcmtk")):
        rc, out = sh(["dpkg-query", "-W", "-f", "${Version}", pkg], 20)
        v[key] = out if rc == 0 else "?"
    if not args.no_gluster:
        rc, out = sh(["glusterfs", "--version"], 20)
        v["glusterfs"] = out.splitlines()[0] if rc == 0 and out else "?"
    return v


def ensure_tools(args):
    """smbnetfs (and the rest) from Debian if missing, as run.sh installs its dependencies."""
    pkgs = {"smbd": "samba", "smbclient": "smbclient", "smbstatus": "samba", "smbnetfs": "smbnetfs",
            "storescu": "dcmtk", "fusermount3": "fuse3"}
    if "dicom" in args.only or "direct" in args.only:
        pkgs["Orthanc"] = "orthanc"
    need = sorted({p for tool, p in pkgs.items() if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}")})
    if need:
        log(f"installing {' '.join(need)} with apt-get")
        sh(["apt-get", "update"], 600)
        rc, out = sh(["env", "DEBIAN_FRONTEND=noninteractive", "apt-get", "install", "-y"] + need, 900)
        if rc != 0:
            sys.exit(f"apt-get install {' '.join(need)} failed: {out[-500:]}")
    if "dicom" in args.only or "direct" in args.only:
        rc, out = sh([SYS_PYTHON, "-c", "import pydicom, numpy"], 30)
        if rc != 0:
            sys.exit(f"{SYS_PYTHON} lacks pydicom/numpy (apt-get install python3-pydicom python3-numpy): {out[-200:]}")


def parse_args(argv):
    p = argparse.ArgumentParser(description="DICOM ingest through Samba on TwinFS, a plain directory and "
                                            "GlusterFS (see bench/README.md, 'Samba ingest')")
    p.add_argument("--workdir", default="/var/tmp/twinfs-smb-bench", help="scratch dir on the real disk")
    p.add_argument("--reps", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--files", type=int, default=500, help="512 KiB files per smbclient sample (default 500)")
    p.add_argument("--ct", type=int, default=300, help="CT slices (512x512, 16 bit) in the study set (default 300)")
    p.add_argument("--mr", type=int, default=0, help="MR slices (256x256) in the study set (default 0)")
    p.add_argument("--cr", type=int, default=2, help="CR images (about 10 MB) in the study set (default 2)")
    p.add_argument("--only", default="smbput,dicom",
                   help="comma list of: smbput, dicom, direct (Orthanc storing on the target itself, no SMB: "
                        "for comparison; not in the default)")
    p.add_argument("--no-gluster", action="store_true", help="plain and twinfs only")
    p.add_argument("--twinfs-bin", default=B.DEFAULT_TWINFS, help="twinfs executable (default $TWINFS_BIN, "
                                                                   "else .build-release/release/twinfs)")
    p.add_argument("--listen", default="127.0.0.1:7795,127.0.0.1:7796", help="listen addresses of TwinFS nodes a,b")
    p.add_argument("--port", type=int, default=4450, help="smbd's port on 127.0.0.1 (default 4450)")
    p.add_argument("--no-rotate", action="store_true", help="the same target order in every rep")
    p.add_argument("--no-verify", action="store_true", help="skip pacs_e2e.py verify-orthanc after each dicom sample")
    p.add_argument("--timeout-scale", type=float, default=1.0, help="stretch the per-sample deadlines")
    p.add_argument("--keep-data", action="store_true", help="leave the workdir in place")
    a = p.parse_args(argv)
    a.workdir = os.path.abspath(a.workdir)
    a.listen = [x.strip() for x in a.listen.split(",")]
    a.only = [x.strip() for x in a.only.split(",") if x.strip()]
    if set(a.only) - set(JOBS) or not a.only:
        p.error(f"--only: a comma list of {', '.join(JOBS)}, not {a.only}")
    if len(a.listen) != 2:
        p.error("--listen takes two addresses")
    if a.reps < 1 or a.files < 1 or a.files > 9999 or a.ct + a.mr + a.cr < 1:
        p.error("--reps >= 1, 1 <= --files <= 9999, and at least one instance")
    if re.search(r"[\s;\"'\\]", a.workdir):
        p.error("--workdir must not contain blanks, quotes, backslashes or ';' (smbclient commands)")
    return a


def main(argv):
    args = parse_args(argv)
    B.require_root_and_binary("smb.py", "smbd, FUSE mounts, GlusterFS", args.twinfs_bin)
    ensure_tools(args)
    if not port_free(args.port):
        sys.exit(f"port {args.port} on 127.0.0.1 is in use: pick another with --port")
    started = time.time()
    fs = B.prepare_workdir(args.workdir, ("plain", "twinfs2", "smbd", "smbnetfs", "orthanc", "src", "logs"))
    free = shutil.disk_usage(args.workdir).free
    need = 3 * (args.files * SMALL_SIZE + (args.ct * 0.53 + args.mr * 0.14 + args.cr * 10.3) * 1e6) + 2e9
    if free < need:
        sys.exit(f"only {free / 1e9:.1f} GB free in {args.workdir}: needs about {need / 1e9:.1f} GB")
    B.raise_on_sigterm()

    R = {"command": shlex.join([sys.executable, os.path.abspath(__file__)] + list(argv)),
         "machine": {"nproc": os.cpu_count(), "kernel": os.uname().release, "load_start": list(os.getloadavg()),
                     "workdir_fs": f"{fs.get('source', '?')} {fs.get('fstype', '?')}" if fs else "?"},
         "args": vars(args), "versions": versions(args), "errors": [], "notes": [], "events": []}
    log(f"nproc {os.cpu_count()}, load {os.getloadavg()}, twinfs {R['versions']['twinfs']}, workdir {args.workdir}")
    run = Run(args, R)
    interrupted = False
    try:
        run.setup()
        run.prepare_sources()
        run.run()
    except KeyboardInterrupt as e:
        interrupted = True
        log(f"interrupted ({str(e) or 'SIGINT'}): cleaning up")
    except (Failed, RuntimeError, OSError, B.WorkloadFailed) as e:
        R["errors"].append(f"setup: {e}")
        log(f"FAILED: {e}")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the teardown short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        run.teardown()
        left = B.sweep_mounts(args.workdir)
        if left:
            log(f"WARNING: mounts left under {args.workdir}: {left}")
            R["errors"].append(f"mounts left under {args.workdir}: {left}")
        if run.res is None:
            run.res = Results(run.names or TARGETS, args.reps)
        md_path, js_path, text = write_report(args, R, run.res, started, interrupted)
        logs = []
        for d in (run.logdir, os.path.join(args.workdir, "smbd", "log"), os.path.join(args.workdir, "gluster", "logs")):
            if os.path.isdir(d):
                logs += [os.path.join(d, x) for x in sorted(os.listdir(d)) if os.path.isfile(os.path.join(d, x))]
        keep = B.keep_logs_and_clean(md_path, OUT_DIR, logs, args.workdir, args.keep_data, left)
    print()
    print(text)
    print()
    log(f"wrote {md_path}, {js_path} and the logs in {keep}")
    return 130 if interrupted else (1 if R["errors"] or run.res.failures else 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
