#!/usr/bin/env python3
"""TwinFS self-heal benchmark (Python 3 standard library only).

Measures how fast a TwinFS pair rebuilds a replaced (wiped) brick from its peer, against
GlusterFS's `heal full` on the same machine, and how much a rebuild slows PACS ingest on
the good node. See bench/README.md ("Heal").

  * TwinFS: two nodes a and b (volume "bench", as bench.py's twinfs2 target). The data set
    is written through a's mount; then node b is stopped (SIGTERM), its brick is replaced by
    an empty directory, its journal files are deleted, and b is started again. b rebuilds
    from a in the background while mounted. Done = `twinfs heal info --config b.toml --json
    --summary` reports nodes[0].crawl kind "rebuild" state "done", pending_entries 0 on both
    nodes, and `twinfs status --json` says HEALTHY on both. Time: b's start -> done.
  * GlusterFS (bench/gluster.sh up/down): the procedure of the perf anchors' self-heal
    section: kill brick 2's glusterfsd, wipe brick 2 (incl. .glusterfs and the root xattrs),
    restore trusted.glusterfs.volume-id, mkdir .glusterfs, `volume start force`, `heal full`
    (retried until accepted), poll until every file is on brick 2 at full size and heal info
    shows 0 entries on both bricks. Time: heal full accepted -> done (as the anchor).
  * After every heal, every file of the good brick is compared by sha256 with the healed
    brick (timed separately).
  * Ingest during heal: 1 writer, 512 KiB files, write + fsync + close, into a fresh
    directory on a's mount, undisturbed and while b rebuilds; interleaved reps.

Safety rules as bench.py (whose helpers this imports): every workload runs in a forked child
with a deadline, every external command under `timeout -k`, mounts are waited for via
/proc/self/mountinfo, never stat(), and everything is torn down in finally blocks (Ctrl-C too).
"""

import argparse
import datetime
import hashlib
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

sys.dont_write_bytecode = True  # no __pycache__ in the repo
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)
import bench as B  # noqa: E402  (bench.py: sh, mounts, run_in_child, TwinFS2Target, workloads)

from bench import GB, MB, MEDIUM_SIZE, MiB, SMALL_SIZE, log, sh  # noqa: E402

OUT_DIR = os.path.join(BENCH_DIR, "out")
GLUSTER_SH = os.path.join(BENCH_DIR, "gluster.sh")
VOL = "pacs"
DATA = "heal-data"   # the data set's directory in the volume


class Failed(Exception):
    pass


# --------------------------------------------------------------------------- children (workloads)

def child(fn, args, timeout, what):
    try:
        return B.run_in_child(fn, args, timeout)
    except B.WorkloadFailed as e:
        raise Failed(f"{what}: {e}") from None


def deadline(nbytes=0, nfiles=0):
    return 120 + nbytes / (5 * MB) + nfiles / 20


def w_write_small(root, n):
    """The anchor's data set: n x 512 KiB in Study%03d/Series%02d (4 series of 100 per study);
    no per-file fsync (one sync at the end, not timed)."""
    return B.w_ingest(root, n, 1, SMALL_SIZE, fsync=False)


def w_write_medium(root, n):
    t0 = time.perf_counter()
    os.makedirs(root, exist_ok=True)
    for i in range(n):
        fd = os.open(os.path.join(root, f"F{i:04d}.bin"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            for k in range(MEDIUM_SIZE // MiB):
                B.write_all(fd, B.payload(i * 64 + k, MiB))
        finally:
            os.close(fd)
    return {"seconds": time.perf_counter() - t0, "files": n, "bytes": n * MEDIUM_SIZE}


def tree_files(root, skip):
    """{relative path: size} of the regular files under root; top-level names in skip ignored."""
    out = {}
    for dp, dns, fns in os.walk(root):
        if dp == root:
            dns[:] = [d for d in dns if d not in skip]
        for f in fns:
            p = os.path.join(dp, f)
            rel = os.path.relpath(p, root)
            if dp == root and f in skip:
                continue
            st = os.lstat(p)
            if not os.path.islink(p):
                out[rel] = st.st_size
    return out


def w_count(root, skip, want_size):
    """Files under root, bytes, and files at want_size (None: any size)."""
    files = tree_files(root, skip)
    return {"files": len(files), "bytes": sum(files.values()),
            "full": sum(1 for s in files.values() if want_size is None or s == want_size)}


def sha256_file(p):
    h = hashlib.sha256()
    with open(p, "rb", buffering=0) as f:
        while True:
            b = f.read(4 * MiB)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def w_verify(good, healed, skip):
    """Compares every regular file of the good brick with the healed brick by sha256."""
    t0 = time.perf_counter()
    g = tree_files(good, skip)
    h = tree_files(healed, skip)
    missing = sorted(set(g) - set(h))
    extra = sorted(set(h) - set(g))
    mismatch = []
    nbytes = 0
    for rel in sorted(set(g) & set(h)):
        if g[rel] != h[rel]:
            mismatch.append(f"{rel}: size {h[rel]} != {g[rel]}")
            continue
        nbytes += g[rel]
        if sha256_file(os.path.join(good, rel)) != sha256_file(os.path.join(healed, rel)):
            mismatch.append(f"{rel}: sha256 differs")
    return {"seconds": time.perf_counter() - t0, "files": len(g), "bytes_compared": nbytes,
            "missing": len(missing), "extra": len(extra), "mismatches": len(mismatch),
            "bad": len(missing) + len(extra) + len(mismatch),
            "examples": (missing[:5] + extra[:5] + mismatch[:5])}


# --------------------------------------------------------------------------- TwinFS

class Pair:
    """A TwinFS pair (bench.py's TwinFS2Target) whose node b can be replaced by an empty disk."""

    def __init__(self, args, label):
        self.args = args
        self.label = label
        self.base = os.path.join(args.workdir, label)
        self.t = B.TwinFS2Target(f"twinfs2-{label}", self.base, args.twinfs_bin, args.listen, [], 60)
        self.a, self.b = self.t.a, self.t.b
        for n in (self.a, self.b):  # all logs in <workdir>/logs
            n.logpath = os.path.join(args.workdir, "logs", f"{label}-{n.node}.log")
        self.t.logpath = self.a.logpath
        self.started = False

    def start(self):
        self.started = True
        self.t.start()
        log(f"{self.t.name}: {self.t.peer_state}")

    def stop(self):
        if self.started:
            self.t.stop()

    def heal_info(self, node):
        rc, out = sh([self.args.twinfs_bin, "heal", "info", "--config", node.config, "--json", "--summary"], 30)
        if rc != 0:
            return None, f"heal info exited {rc}: {out[-300:]}"
        try:
            return json.loads(out), None
        except ValueError:
            return None, f"heal info printed no JSON: {out[-300:]}"

    def healthy(self):
        """(True, '') when both nodes are HEALTHY and neither has anything pending."""
        for n in (self.a, self.b):
            why = n.health()
            if why:
                raise Failed(f"node {n.node}: {why}; log tail:\n{B.tail(n.logpath)}")
            st, err = n.status()
            if st is None:
                return False, f"{n.node}: {err}"
            if st.get("state") != "HEALTHY":
                return False, f"{n.node}: state {st.get('state')}"
        hi, err = self.heal_info(self.a)
        if hi is None:
            return False, err
        pend = [x.get("pending_entries") for x in hi["nodes"]]
        if any(p != 0 for p in pend):
            return False, f"pending entries {pend}"
        return True, ""

    def wait_healthy(self, timeout=300):
        t0 = time.monotonic()
        why = ""
        while time.monotonic() - t0 < timeout:
            ok, why = self.healthy()
            if ok:
                return time.monotonic() - t0
            time.sleep(0.5)
        raise Failed(f"pair not HEALTHY with nothing pending after {timeout} s ({why})")

    def replace_disk_b(self):
        """Stops b, replaces its brick by an empty directory and deletes its journal files."""
        t0 = time.monotonic()
        b = self.b
        b.stop()  # SIGTERM, wait for the exit (fallbacks: fusermount3 -u, abort, umount -l)
        if B.is_mounted(b.fuse_mnt):
            raise Failed(f"{b.fuse_mnt} still mounted after stopping b")
        rc, out = sh(["rm", "-rf", "--one-file-system", b.brick], 600)
        if rc != 0:
            raise Failed(f"rm -rf {b.brick}: {rc} {out}")
        os.mkdir(b.brick, 0o755)  # the new disk's empty root (no xattrs)
        for name in os.listdir(b.state):
            if name == "journal.db" or name.startswith("journal.db-") or name.startswith("journal.db."):
                os.unlink(os.path.join(b.state, name))
        return time.monotonic() - t0

    def start_b(self, heal_lines):
        self.b.extra_config = list(heal_lines)
        self.b.start()

    def poll_rebuild(self, t0, timeout, trace):
        """Polls b's heal info until the rebuild is done and both nodes are HEALTHY.
        Returns (seconds since t0, last heal info)."""
        end = time.monotonic() + timeout
        last = None
        while time.monotonic() < end:
            why = self.t.health()
            if why:
                raise Failed(f"during the rebuild: {why}; log tail:\n{self.t.log_tail()}")
            hi, err = self.heal_info(self.b)
            now = time.monotonic()
            if hi is not None:
                last = hi
                me = hi["nodes"][0]
                cr = me.get("crawl", {})
                trace.append([round(now - t0, 2), cr.get("state"), cr.get("files_healed"), cr.get("bytes_healed"),
                              [x.get("pending_entries") for x in hi["nodes"]], me.get("rate_bytes_per_second")])
                done = (cr.get("kind") == "rebuild" and cr.get("state") == "done"
                        and all(x.get("pending_entries") == 0 for x in hi["nodes"]))
                if done:
                    states = []
                    for n in (self.a, self.b):
                        st, _ = n.status()
                        states.append(st.get("state") if st else None)
                    if all(s == "HEALTHY" for s in states):
                        return time.monotonic() - t0, hi
            time.sleep(0.5)
        raise Failed(f"rebuild not done after {timeout:.0f} s; last heal info: {json.dumps(last)[:600]}")

    def wait_rebuild_running(self, timeout=60):
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            hi, _ = self.heal_info(self.b)
            if hi is not None:
                cr = hi["nodes"][0].get("crawl", {})
                if cr.get("state") == "running" and (cr.get("bytes_healed") or 0) > 0:
                    return hi
                if cr.get("state") == "done":
                    return hi
            time.sleep(0.2)
        raise Failed("the rebuild did not start within 60 s")


def rebuild(pair, args, expect_bytes, expect_files, heal_lines=(), during=None):
    """Replaces b's disk and times the rebuild. during: optional fn(pair) run on a's mount while
    b rebuilds (its result is returned under 'during')."""
    res = {"heal_config": list(heal_lines)}
    res["wipe_seconds"] = round(pair.replace_disk_b(), 2)
    B.drop_caches()  # the good brick is read from disk, not from the page cache
    res["load1_start"] = os.getloadavg()[0]
    trace = []
    t0 = time.monotonic()
    pair.start_b(heal_lines)
    res["mount_seconds"] = round(time.monotonic() - t0, 2)
    if during is not None:
        hi0 = pair.wait_rebuild_running()
        res["during"] = during(pair, hi0, t0)
    secs, hi = pair.poll_rebuild(t0, deadline(expect_bytes, expect_files) * args.timeout_scale, trace)
    cr = hi["nodes"][0]["crawl"]
    res.update({"seconds": secs, "files_healed": cr.get("files_healed"), "bytes_healed": cr.get("bytes_healed"),
                "crawl": cr, "load1_end": os.getloadavg()[0], "trace": trace,
                "MB/s": expect_bytes / secs / MB, "files/s": expect_files / secs,
                "expect_bytes": expect_bytes, "expect_files": expect_files})
    if cr.get("problems"):
        res["problems"] = cr.get("problems")
    log(f"rebuild of {expect_files} files ({expect_bytes / GB:.2f} GB) done in {secs:.1f} s: "
        f"{res['MB/s']:.1f} MB/s, {res['files/s']:.0f} files/s (crawl: {cr.get('files_healed')} files, "
        f"{cr.get('bytes_healed')} bytes healed, {cr.get('problems')} problems)")
    B.sync_all()
    v = child(w_verify, (pair.a.brick, pair.b.brick, {".twinfs"}),
              deadline(2 * expect_bytes, expect_files) * args.timeout_scale, "verify")
    res["verify"] = v
    log(f"verify: {v['files']} files, {v['bytes_compared'] / GB:.2f} GB compared in {v['seconds']:.1f} s: "
        f"{v['mismatches']} mismatches, {v['missing']} missing, {v['extra']} extra {v['examples'][:3]}")
    return res


def ingest_once(pair, args, name):
    root = os.path.join(pair.a.fuse_mnt, name)
    B.sync_all()
    r = child(B.w_ingest, (root, args.ingest_n, 1, SMALL_SIZE), deadline(args.ingest_n * SMALL_SIZE, args.ingest_n),
              f"ingest {name}")
    r["files/s"] = r["files"] / r["seconds"]
    r["MB/s"] = r["bytes"] / r["seconds"] / MB
    return r


def remove_dir(pair, name):
    child(B.w_remove, (os.path.join(pair.a.fuse_mnt, name),), 300, f"rm {name}")


def during_ingest(args, name):
    def fn(pair, hi0, t0):
        c0 = hi0["nodes"][0]["crawl"]
        t_start = time.monotonic() - t0
        r = ingest_once(pair, args, name)
        t_end = time.monotonic() - t0
        hi1, _ = pair.heal_info(pair.b)
        c1 = hi1["nodes"][0]["crawl"] if hi1 else {}
        r.update({"started_at": round(t_start, 2), "ended_at": round(t_end, 2),
                  "crawl_state_at_start": c0.get("state"), "crawl_state_at_end": c1.get("state"),
                  "bytes_healed_at_start": c0.get("bytes_healed"), "bytes_healed_at_end": c1.get("bytes_healed")})
        r["overlapped"] = c0.get("state") == "running" and c1.get("state") == "running"
        if c1.get("bytes_healed") is not None and c0.get("bytes_healed") is not None:
            r["heal_MB/s_during_ingest"] = (c1["bytes_healed"] - c0["bytes_healed"]) / max(1e-6, t_end - t_start) / MB
        log(f"ingest {name} during rebuild: {r['files/s']:.0f} files/s ({r['seconds']:.1f} s); rebuild "
            f"{c0.get('state')} -> {c1.get('state')}, healed {c0.get('bytes_healed')} -> {c1.get('bytes_healed')} bytes")
        return r
    return fn


# --------------------------------------------------------------------------- GlusterFS

def gl(*argv, timeout=120):
    return sh(["gluster", "--mode=script"] + list(argv), timeout)


def gluster_brick_pid(brick):
    rc, out = gl("volume", "status", VOL, "--xml")
    if rc != 0:
        raise Failed(f"gluster volume status --xml: {rc} {out[-300:]}")
    root = ET.fromstring(out[out.index("<"):])
    for node in root.iter("node"):
        if (node.findtext("path") or "") == brick:
            return int(node.findtext("pid") or -1), node.findtext("status") == "1"
    raise Failed(f"brick {brick} not in volume status")


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def heal_info_counts():
    rc, out = gl("volume", "heal", VOL, "info", timeout=60)
    counts = re.findall(r"Number of entries:\s*(\S+)", out)
    return rc, counts


def run_gluster(args, res):
    wd = args.workdir
    g = os.path.join(wd, "gluster")
    b1, b2, mnt = os.path.join(g, "brick1"), os.path.join(g, "brick2"), os.path.join(g, "mnt")
    rc, out = sh(["bash", GLUSTER_SH, "up", wd], 900)
    log(f"gluster.sh up: rc {rc}\n{out[-1500:]}")
    if rc != 0 or not B.is_mounted(mnt):
        raise Failed(f"gluster.sh up failed ({rc}): {out[-800:]}")
    res["version"] = sh(["glusterfs", "--version"], 20)[1].splitlines()[0]
    n = args.small_n
    nbytes = n * SMALL_SIZE
    w = child(w_write_small, (os.path.join(mnt, DATA), n), deadline(nbytes, n) * args.timeout_scale, "gluster write")
    B.sync_all()
    res["write"] = {"seconds": w["seconds"], "MB/s": nbytes / w["seconds"] / MB}
    log(f"gluster: wrote {n} files in {w['seconds']:.1f} s ({res['write']['MB/s']:.1f} MB/s through the mount)")
    for _ in range(60):
        rc, counts = heal_info_counts()
        if rc == 0 and counts and all(c == "0" for c in counts):
            break
        time.sleep(1)
    # the anchor's procedure: kill brick 2, wipe it, restore the volume id, start force, heal full
    t_wipe = time.monotonic()
    pid, online = gluster_brick_pid(b2)
    if pid <= 0 or not online:
        raise Failed(f"brick 2 not online before the wipe (pid {pid})")
    os.kill(pid, signal.SIGKILL)
    for _ in range(100):
        if not alive(pid):
            break
        time.sleep(0.1)
    # glusterd must see the brick offline first, or `start force` takes it for running and does nothing
    for _ in range(120):
        if not gluster_brick_pid(b2)[1]:
            break
        time.sleep(0.5)
    else:
        raise Failed("glusterd still reports brick 2 online 60 s after its glusterfsd was killed")
    volid = os.getxattr(b1, "trusted.glusterfs.volume-id")
    rc, out = sh(["rm", "-rf", "--one-file-system", b2], 600)
    if rc != 0:
        raise Failed(f"rm -rf {b2}: {rc} {out}")
    os.mkdir(b2, 0o755)  # new root: no trusted.gfid / trusted.afr.* / volume-id xattrs
    os.setxattr(b2, "trusted.glusterfs.volume-id", volid)
    os.mkdir(os.path.join(b2, ".glusterfs"), 0o700)  # perf.md quirk 4
    res["wipe_seconds"] = round(time.monotonic() - t_wipe, 2)
    B.drop_caches()
    res["load1_start"] = os.getloadavg()[0]
    t_first = time.monotonic()
    starts = 0
    online = False
    # `start force` can print success and start nothing (seen right after the kill): retried every
    # 5 s; the time "from start force" counts from the run that started the brick
    while not online and starts < 12:
        starts += 1
        t_start = time.monotonic()
        rc, out = gl("volume", "start", VOL, "force")
        if rc != 0:
            raise Failed(f"volume start force: {rc} {out}")
        for _ in range(10):
            online = gluster_brick_pid(b2)[1]
            if online:
                break
            time.sleep(0.5)
    if not online:
        raise Failed(f"brick 2 not online after {starts} x volume start force (see the brick log)")
    res["start_force_runs"] = starts
    res["first_start_force_to_online_s"] = round(time.monotonic() - t_first, 2)
    res["brick_online_seconds"] = round(time.monotonic() - t_start, 2)
    attempts = 0
    while True:
        attempts += 1
        rc, out = gl("volume", "heal", VOL, "full", timeout=60)
        if rc == 0 and "has been successful" in out:
            break
        if attempts >= 120:
            raise Failed(f"heal full not accepted after {attempts} attempts: {out}")
        time.sleep(0.5)
    t_heal = time.monotonic()
    res["heal_full_attempts"] = attempts
    res["heal_full_accepted_after_start_s"] = round(t_heal - t_start, 2)
    trace = []
    end = t_heal + deadline(nbytes, n) * args.timeout_scale * 2
    while True:
        c = child(w_count, (b2, {".glusterfs"}, SMALL_SIZE), 60, "count brick 2")
        rc, counts = heal_info_counts()
        now = time.monotonic()
        trace.append([round(now - t_heal, 2), c["files"], c["full"], c["bytes"], counts])
        if c["full"] == n and c["bytes"] == nbytes and rc == 0 and counts and all(x == "0" for x in counts):
            break
        if now > end:
            raise Failed(f"gluster heal not done after {now - t_heal:.0f} s: {trace[-1]}")
        time.sleep(1)
    secs = now - t_heal
    res.update({"seconds": secs, "seconds_from_start_force": now - t_start, "MB/s": nbytes / secs / MB,
                "files/s": n / secs, "trace": trace, "load1_end": os.getloadavg()[0],
                "expect_bytes": nbytes, "expect_files": n})
    res["statistics"] = gl("volume", "heal", VOL, "statistics", timeout=60)[1][-3000:]
    log(f"gluster heal full: {n} files done in {secs:.1f} s after heal full accepted "
        f"({res['MB/s']:.1f} MB/s, {res['files/s']:.0f} files/s); {now - t_start:.1f} s from start force")
    B.sync_all()
    v = child(w_verify, (b1, b2, {".glusterfs"}), deadline(2 * nbytes, n) * args.timeout_scale, "gluster verify")
    res["verify"] = v
    log(f"gluster verify: {v['files']} files in {v['seconds']:.1f} s: {v['mismatches']} mismatches, "
        f"{v['missing']} missing, {v['extra']} extra {v['examples'][:3]}")


def gluster_down(args):
    rc, out = sh(["bash", GLUSTER_SH, "down", args.workdir], 600)
    log(f"gluster.sh down: rc {rc}: {out[-600:]}")


# --------------------------------------------------------------------------- report

def fmt(x, nd=1):
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    return f"{x:,}"


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def scan_logs(paths):
    """Lines of the node logs that look like errors or warnings, with counts."""
    out = {}
    pat = re.compile(r"\b(error|warning|critical|fault|fatal|panic)\b", re.I)
    for p in paths:
        try:
            with open(p, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            continue
        seen = {}
        for ln in lines:
            if pat.search(ln):
                key = re.sub(r"\d+", "N", ln.split("] ", 1)[-1])[:200]
                if key not in seen:
                    seen[key] = [ln[:300], 0]
                seen[key][1] += 1
        out[os.path.basename(p)] = [{"first": v[0], "count": v[1]} for v in seen.values()]
    return out


def report(args, R, started, interrupted):
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
    os.makedirs(OUT_DIR, exist_ok=True)
    md_path = os.path.join(OUT_DIR, f"heal-{stamp}.md")
    js_path = os.path.join(OUT_DIR, f"heal-{stamp}.json")
    R["duration_s"] = round(time.time() - started)
    md = [f"# TwinFS self-heal benchmark {datetime.datetime.fromtimestamp(started).isoformat(timespec='seconds')}"
          + (" (INTERRUPTED, partial)" if interrupted else ""), ""]
    md.append(f"Command: `{R['command']}`")
    md.append("")
    m = R["machine"]
    md.append(f"* machine: nproc {m['nproc']}, kernel {m['kernel']}, load {m['load_start']} at start, "
              f"{list(os.getloadavg())} at end; workdir {args.workdir}; duration {R['duration_s']} s")
    md.append(f"* twinfs {m['twinfs']} ({args.twinfs_bin}); gluster: {R.get('gluster', {}).get('version', '-')}")
    md.append("* MB/s decimal; heal time for TwinFS from b's start (node process spawned on the wiped brick) to "
              "rebuild done + pending 0 + both HEALTHY; for GlusterFS from `heal full` accepted to all files at "
              "full size on brick 2 + heal info 0 (the anchor's definition). Page cache dropped before each heal.")
    md.append("")
    md.append("## Heal throughput")
    md.append("")
    md.append("| case | data | seconds | MB/s | files/s | verify (s) | bad (mismatch+missing+extra) |")
    md.append("|---|---|---|---|---|---|---|")
    for key, label in (("twinfs_small", "TwinFS rebuild, 512 KiB files"), ("twinfs_medium", "TwinFS rebuild, 20 MiB files"),
                       ("gluster", "GlusterFS heal full, 512 KiB files")):
        r = R.get(key)
        if not r or "seconds" not in r:
            md.append(f"| {label} | - | {'FAILED: ' + r['error'][:200] if r and r.get('error') else 'not run'} | | | | |")
            continue
        v = r.get("verify", {})
        md.append(f"| {label} | {r['expect_files']} files, {r['expect_bytes'] / GB:.2f} GB | {r['seconds']:.1f} | "
                  f"{r['MB/s']:.1f} | {r['files/s']:.0f} | {fmt(v.get('seconds'))} | {fmt(v.get('bad'))} |")
    g, t = R.get("gluster", {}), R.get("twinfs_small", {})
    if "MB/s" in g and "MB/s" in t:
        md.append("")
        md.append(f"TwinFS / GlusterFS (512 KiB files): **{t['MB/s'] / g['MB/s']:.2f}x** "
                  f"({t['MB/s']:.1f} vs {g['MB/s']:.1f} MB/s). GlusterFS from `volume start force`: "
                  f"{g['seconds_from_start_force']:.1f} s ({g['expect_bytes'] / g['seconds_from_start_force'] / MB:.1f} MB/s); "
                  f"brick 2 online after {g['start_force_runs']} `start force` run(s), `heal full` accepted after "
                  f"{g['heal_full_attempts']} attempt(s).")
    elif "MB/s" in t:
        md.append("")
        md.append(f"GlusterFS not measured in this run: anchor value 22.4 MB/s (perf.md) used instead -> "
                  f"TwinFS / GlusterFS(anchor) = {t['MB/s'] / 22.4:.2f}x")
    for key in ("twinfs_small", "twinfs_medium"):
        r = R.get(key)
        if r and "seconds" in r:
            md.append(f"* {key}: b mounted {r['mount_seconds']} s after its start; wipe {r['wipe_seconds']} s; crawl "
                      f"{r['crawl'].get('files_healed')} files / {r['crawl'].get('bytes_healed')} bytes healed, "
                      f"{r['crawl'].get('problems')} problems; load1 {r['load1_start']:.2f} -> {r['load1_end']:.2f}")
    for sec, title in (("ingest", "default heal settings"), ("ingest_throttled", "[heal] rate_mb = 50, concurrency = 2 on b")):
        ig = R.get(sec)
        if not ig:
            continue
        md.append("")
        md.append(f"## Ingest on a while b rebuilds ({title})")
        md.append("")
        md.append(f"{args.ingest_n} x 512 KiB, 1 writer, write + fsync + close, fresh directory on a's mount. "
                  "The rebuild (same 2 GiB data set) starts before the ingest and was still running at its end "
                  "unless marked.")
        md.append("")
        md.append("| rep | undisturbed files/s | during rebuild files/s | ratio | rebuild s (MB/s) | rebuild running throughout | verify bad |")
        md.append("|---|---|---|---|---|---|---|")
        ratios = []
        for i in range(max(len(ig["undisturbed"]), len(ig["during"]))):
            u = ig["undisturbed"][i] if i < len(ig["undisturbed"]) else None
            d = ig["during"][i] if i < len(ig["during"]) else None
            uf = u.get("files/s") if u else None
            df = d["during"].get("files/s") if d and "during" in d else None
            ratio = df / uf if uf and df else None
            if ratio:
                ratios.append(ratio)
            md.append(f"| {i + 1} | {fmt(uf, 0)} | {fmt(df, 0)} | {fmt(ratio, 2)} | "
                      f"{fmt(d.get('seconds')) if d else '-'} ({fmt(d.get('MB/s')) if d else '-'}) | "
                      f"{d['during'].get('overlapped') if d and 'during' in d else '-'} | "
                      f"{fmt(d.get('verify', {}).get('bad')) if d else '-'} |")
        um = med([u.get("files/s") for u in ig["undisturbed"]])
        dm = med([d["during"].get("files/s") for d in ig["during"] if "during" in d])
        ig["median_undisturbed"], ig["median_during"] = um, dm
        ig["ratio_of_medians"] = dm / um if um and dm else None
        ig["median_paired_ratio"] = med(ratios)
        md.append(f"| **median** | **{fmt(um, 0)}** | **{fmt(dm, 0)}** | **{fmt(ig['ratio_of_medians'], 2)}** "
                  f"(paired {fmt(ig['median_paired_ratio'], 2)}) | {fmt(med([d.get('MB/s') for d in ig['during']]))} MB/s | | |")
    for e in R.get("errors", []):
        md.append("")
        md.append(f"* ERROR: {e}")
    logs = R.get("log_scan", {})
    if logs:
        md.append("")
        md.append("## Errors / warnings in the node logs")
        md.append("")
        for name, items in logs.items():
            if not items:
                md.append(f"* {name}: none")
            for it in items[:15]:
                md.append(f"* {name} ({it['count']}x): `{it['first']}`")
            if len(items) > 15:
                md.append(f"* {name}: ... {len(items) - 15} more kinds")
    for n in R.get("notes", []):
        md.append(f"* note: {n}")
    text = "\n".join(md)
    with open(md_path, "w") as f:
        f.write(text + "\n")
    with open(js_path, "w") as f:
        json.dump(R, f, indent=1, default=str)
    return md_path, js_path, text


# --------------------------------------------------------------------------- main

def parse_args(argv):
    p = argparse.ArgumentParser(description="TwinFS self-heal benchmark (see bench/README.md, 'Heal')")
    p.add_argument("--workdir", default="/var/tmp/twinfs-heal-bench", help="scratch dir on the real disk")
    p.add_argument("--twinfs-bin", default=B.DEFAULT_TWINFS, help="twinfs executable (default $TWINFS_BIN)")
    p.add_argument("--listen", default="127.0.0.1:7793,127.0.0.1:7794", help="listen addresses of nodes a,b")
    p.add_argument("--only", default="small,ingest,medium,gluster",
                   help="comma list of: small (TwinFS 512 KiB rebuild), ingest (ingest during rebuild), "
                        "medium (TwinFS 20 MiB rebuild), gluster (GlusterFS heal full)")
    p.add_argument("--small-n", type=int, default=4096, help="512 KiB files in the data set (default 4096 = 2 GiB)")
    p.add_argument("--medium-n", type=int, default=100, help="20 MiB files in the medium data set (default 100)")
    p.add_argument("--ingest-n", type=int, default=500, help="files per ingest sample (default 500)")
    p.add_argument("--reps", type=int, default=3, help="ingest reps, undisturbed and during rebuild interleaved")
    p.add_argument("--throttle", choices=["auto", "always", "never"], default="auto",
                   help="ingest during a throttled rebuild ([heal] rate_mb 50, concurrency 2): when the "
                        "default ratio is below 0.75 (auto), always or never")
    p.add_argument("--throttle-config", default="rate_mb = 50,concurrency = 2",
                   help="[heal] lines for the throttled run, comma-separated")
    p.add_argument("--timeout-scale", type=float, default=1.0)
    p.add_argument("--keep-data", action="store_true", help="leave the workdir in place")
    a = p.parse_args(argv)
    a.workdir = os.path.abspath(a.workdir)
    a.listen = [x.strip() for x in a.listen.split(",")]
    a.only = [x.strip() for x in a.only.split(",") if x.strip()]
    bad = set(a.only) - {"small", "ingest", "medium", "gluster"}
    if bad:
        p.error(f"unknown --only parts: {bad}")
    if a.small_n > 99999:
        p.error("--small-n is at most 99999")
    return a


def main(argv):
    args = parse_args(argv)
    B.require_root_and_binary("heal.py", "TwinFS nodes, GlusterFS, drop_caches", args.twinfs_bin)
    started = time.time()
    B.prepare_workdir(args.workdir, ("small", "medium", "logs"))
    os.makedirs(os.path.join(args.workdir, "logs"))
    free = __import__("shutil").disk_usage(args.workdir).free
    if free < 12 * GB:
        sys.exit(f"only {free / GB:.1f} GB free in {args.workdir}: needs about 12 GB")
    B.raise_on_sigterm()

    ver = sh([args.twinfs_bin, "--version"], 20)[1]
    R = {"command": shlex.join([sys.executable, os.path.abspath(__file__)] + list(argv)),
         "machine": {"nproc": os.cpu_count(), "kernel": os.uname().release, "load_start": list(os.getloadavg()),
                     "twinfs": ver},
         "args": vars(args), "errors": [], "notes": []}
    log(f"nproc {os.cpu_count()}, load {os.getloadavg()}, twinfs {ver}, workdir {args.workdir}")
    B.POOL = os.urandom(MEDIUM_SIZE + 4 * MiB)
    pairs = []
    gluster_up = False
    interrupted = False
    heal_throttled = ["[heal]"] + [x.strip() for x in args.throttle_config.split(",") if x.strip()]
    def phase(name, fn):
        """Runs one part; a failure is recorded and the next part runs (its pair is stopped)."""
        try:
            fn()
        except (Failed, RuntimeError, OSError, B.WorkloadFailed) as e:
            R["errors"].append(f"{name}: {e}")
            log(f"{name} FAILED: {e}")
        finally:
            for p in list(pairs):
                p.stop()
                pairs.remove(p)
                sh(["rm", "-rf", "--one-file-system", p.base], 600)

    def small():
        # TwinFS, 512 KiB data set: one clean rebuild, then the ingest reps (same pair, same data)
        pair = Pair(args, "small")
        pairs.append(pair)
        pair.start()
        n, nbytes = args.small_n, args.small_n * SMALL_SIZE
        w = child(w_write_small, (os.path.join(pair.a.fuse_mnt, DATA), n), deadline(nbytes, n) * args.timeout_scale,
                  "twinfs write")
        B.sync_all()
        pair.wait_healthy()
        R["twinfs_write"] = {"seconds": w["seconds"], "MB/s": nbytes / w["seconds"] / MB}
        log(f"twinfs: wrote {n} files ({nbytes / GB:.2f} GB) through a's mount in {w['seconds']:.1f} s "
            f"({nbytes / w['seconds'] / MB:.1f} MB/s)")
        if "small" in args.only:
            try:
                R["twinfs_small"] = rebuild(pair, args, nbytes, n)
            except Failed as e:
                R["twinfs_small"] = {"error": str(e)}
                raise
            pair.wait_healthy()
        if "ingest" not in args.only:
            return

        def ingest_set(key, heal_lines, reps):
            ig = R.setdefault(key, {"undisturbed": [], "during": [], "heal_config": heal_lines})
            for rep in range(reps):
                for kind in (("u", "d") if rep % 2 == 0 else ("d", "u")):
                    name = f"{key}-{kind}{rep}"
                    if kind == "u":
                        pair.wait_healthy()
                        B.drop_caches()
                        r = ingest_once(pair, args, name)
                        log(f"{name} undisturbed: {r['files/s']:.0f} files/s ({r['seconds']:.1f} s)")
                        ig["undisturbed"].append(r)
                    else:  # rebuild() drops the caches after the wipe, before b starts
                        r = rebuild(pair, args, nbytes, n, heal_lines, during_ingest(args, name))
                        r.pop("trace", None)
                        ig["during"].append(r)
                        pair.wait_healthy()
                    remove_dir(pair, name)
            us = [x["files/s"] for x in ig["undisturbed"]]
            ds = [x["during"]["files/s"] for x in ig["during"]]
            return statistics.median(ds) / statistics.median(us)

        ratio = ingest_set("ingest", [], args.reps)
        log(f"ingest during rebuild / undisturbed (medians): {ratio:.2f}")
        if args.throttle == "always" or (args.throttle == "auto" and ratio < 0.75):
            ratio_t = ingest_set("ingest_throttled", heal_throttled, args.reps)
            log(f"throttled: ingest during rebuild / undisturbed (medians): {ratio_t:.2f}")

    def medium():
        pair = Pair(args, "medium")
        pairs.append(pair)
        pair.start()
        n, nbytes = args.medium_n, args.medium_n * MEDIUM_SIZE
        w = child(w_write_medium, (os.path.join(pair.a.fuse_mnt, DATA), n), deadline(nbytes, n) * args.timeout_scale,
                  "twinfs write medium")
        B.sync_all()
        pair.wait_healthy()
        log(f"twinfs: wrote {n} x 20 MiB through a's mount in {w['seconds']:.1f} s ({nbytes / w['seconds'] / MB:.1f} MB/s)")
        try:
            R["twinfs_medium"] = rebuild(pair, args, nbytes, n)
        except Failed as e:
            R["twinfs_medium"] = {"error": str(e)}
            raise

    def gluster():
        nonlocal gluster_up
        R["gluster"] = {}
        gluster_up = True
        try:
            run_gluster(args, R["gluster"])
        except Failed as e:
            R["gluster"]["error"] = str(e)
            raise

    try:
        if "small" in args.only or "ingest" in args.only:
            phase("twinfs 512 KiB", small)
        if "medium" in args.only:
            phase("twinfs 20 MiB", medium)
        if "gluster" in args.only:
            phase("gluster", gluster)
    except KeyboardInterrupt as e:
        interrupted = True
        log(f"interrupted ({e or 'SIGINT'}): cleaning up")
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for p in pairs:
            try:
                p.stop()
            except BaseException as e:  # noqa: BLE001
                log(f"{p.t.name}: teardown error: {e}")
        if gluster_up:
            try:
                gluster_down(args)
            except BaseException as e:  # noqa: BLE001
                log(f"gluster teardown error: {e}")
        left = B.sweep_mounts(args.workdir)
        if left:
            log(f"WARNING: mounts left under {args.workdir}: {left}")
        logdir = os.path.join(args.workdir, "logs")
        logs = [os.path.join(logdir, x) for x in sorted(os.listdir(logdir))] if os.path.isdir(logdir) else []
        glogs = os.path.join(args.workdir, "gluster", "logs")
        extra_logs = [os.path.join(glogs, x) for x in sorted(os.listdir(glogs))] if os.path.isdir(glogs) else []
        R["log_scan"] = scan_logs(logs)
        md_path, js_path, text = report(args, R, started, interrupted)
        keep = B.keep_logs_and_clean(md_path, OUT_DIR, logs + extra_logs, args.workdir, args.keep_data, left)
    print()
    print(text)
    print()
    log(f"wrote {md_path}, {js_path} and the node logs in {keep}")
    return 130 if interrupted else (1 if R["errors"] else 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
