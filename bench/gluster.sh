#!/usr/bin/env bash
# A GlusterFS replica-2 volume on this host, set up the way the perf anchors measured it.
#
#   bench/gluster.sh up   <workdir>    # volume "pacs" mounted at <workdir>/gluster/mnt
#   bench/gluster.sh down <workdir>    # unmount, stop + delete the volume, stop glusterd, remove the bricks
#   bench/gluster.sh status <workdir>
#
# Setup (docs: /work/shared/anchors/perf.md, "Exact commands"):
#   * glusterfs-server + glusterfs-client from Debian (apt-get, only if missing);
#   * glusterd started by hand when there is no working systemd:
#       glusterd -p <workdir>/gluster/glusterd.pid --log-file=<workdir>/gluster/logs/glusterd.log
#   * gluster volume create pacs replica 2 <host>:<workdir>/gluster/brick1 <host>:<workdir>/gluster/brick2 force
#     where <host> is this machine's hostname (gluster refuses "localhost"/127.0.0.1 as a brick
#     host; the hostname must resolve to an address of this machine, so all traffic stays local);
#   * default volume options (no `volume set`), as in the anchors;
#   * mount -t glusterfs localhost:/pacs <workdir>/gluster/mnt
#
# Both directions are idempotent. `up` reuses a running glusterd and a volume "pacs" whose bricks
# are ours; it refuses to touch a volume "pacs" with other bricks. `down` stops glusterd only
# if `up` started it (the pid is kept in <workdir>/gluster/glusterd.owner). Logs of the volume's
# daemons stay in /var/log/glusterfs/ (glusterd's own log is <workdir>/gluster/logs/glusterd.log).
# Environment: GLUSTER_HOST overrides the brick host name.
set -euo pipefail

VOL=pacs
usage() { echo "usage: $0 up|down|status <workdir>" >&2; exit 2; }
[[ $# -eq 2 ]] || usage
CMD=$1
WD=$(realpath -m "$2")
G="$WD/gluster"
B1="$G/brick1"
B2="$G/brick2"
MNT="$G/mnt"
OWNER="$G/glusterd.owner"
PIDFILE="$G/glusterd.pid"

say() { echo "gluster.sh: $*"; }
die() { echo "gluster.sh: error: $*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "must run as root"

gl() { timeout -k 5 120 gluster --mode=script "$@"; }   # --mode=script: no interactive prompts

# Is <path> a mount point (from /proc/self/mountinfo, never stat(): a dead FUSE mount must not hang us)?
mounted() { awk -v p="$1" '$5 == p { f = 1 } END { exit !f }' /proc/self/mountinfo; }

# A live process (gluster daemons are re-parented to pid 1, which may reap them late: a zombie is gone).
alive() { local st; st=$(awk '{ print $3 }' /proc/"$1"/stat 2>/dev/null) && [[ -n $st && $st != Z ]]; }

glusterd_up() { timeout -k 2 10 gluster --mode=script volume list >/dev/null 2>&1; }

volume_exists() { gl volume info "$VOL" >/dev/null 2>&1; }

volume_started() { [[ $(gl volume info "$VOL" 2>/dev/null) == *"Status: Started"* ]]; }

# The brick host: this machine's hostname, which must resolve to one of its own addresses.
pick_host() {
    local h=${GLUSTER_HOST:-$(hostname)}
    [[ -n $h && $h != localhost && $h != localhost.* ]] || die "hostname is '$h': gluster refuses localhost as brick host; set GLUSTER_HOST to a name that resolves to this machine"
    local ip
    ip=$(getent ahostsv4 "$h" | awk 'NR == 1 { print $1 }')
    [[ -n $ip ]] || die "brick host '$h' does not resolve; add it to /etc/hosts (127.0.0.1 $h) or set GLUSTER_HOST"
    local addrs
    addrs=$(ip -o addr show 2>/dev/null || true)
    if [[ $ip != 127.* && $addrs != *"inet $ip/"* ]]; then
        die "brick host '$h' resolves to $ip, which is not an address of this machine; set GLUSTER_HOST"
    fi
    echo "$h"
}

# Bricks of the existing volume "pacs", one path per line (host part removed).
volume_bricks() { gl volume info "$VOL" | sed -n 's/^Brick[0-9]*: [^:]*:\(.*\)$/\1/p'; }

volume_is_ours() {
    local b
    b=$(volume_bricks | sort | tr '\n' ' ')
    [[ $b == "$B1 $B2 " ]]
}

start_glusterd() {
    if glusterd_up; then
        if [[ -f $OWNER ]]; then
            say "glusterd is already running (started by an earlier 'gluster.sh up': 'down' stops it)"
        else
            say "glusterd is already running: using it (and leaving it running at 'down')"
        fi
        return
    fi
    mkdir -p "$G/logs"
    if timeout -k 2 30 systemctl start glusterd >/dev/null 2>&1 && glusterd_up; then
        echo systemd >"$OWNER"
        say "started glusterd with systemctl"
    else
        # no systemd here (perf.md quirk 2): start it by hand; it daemonizes and writes the pid file
        say "systemctl cannot start glusterd: starting glusterd directly"
        rm -f "$PIDFILE"
        glusterd -p "$PIDFILE" --log-file="$G/logs/glusterd.log"
        for _ in $(seq 50); do [[ -s $PIDFILE ]] && break; sleep 0.1; done
        [[ -s $PIDFILE ]] || die "glusterd wrote no pid file; see $G/logs/glusterd.log"
        echo "pid $(cat "$PIDFILE")" >"$OWNER"
    fi
    for _ in $(seq 60); do glusterd_up && return; sleep 0.5; done
    die "glusterd does not answer after 30 s; see $G/logs/glusterd.log"
}

stop_glusterd() {
    [[ -f $OWNER ]] || { glusterd_up && say "glusterd was not started by us: leaving it running"; return 0; }
    local how pid
    read -r how pid <"$OWNER" || true
    if [[ $how == systemd ]]; then
        timeout -k 2 60 systemctl stop glusterd || true
    elif [[ $how == pid && -n $pid ]] && alive "$pid" && [[ $(cat /proc/"$pid"/comm 2>/dev/null) == glusterd ]]; then
        # glusterd runs hook scripts after `volume delete` (S57glusterfind-delete-post, which calls
        # the gluster CLI): let its children finish first, at most 20 s
        local kids
        for _ in $(seq 200); do
            kids=$(pgrep -P "$pid" 2>/dev/null | while read -r k; do alive "$k" && echo "$k"; done || true)
            [[ -z $kids ]] && break
            sleep 0.1
        done
        [[ -z $kids ]] || say "glusterd still has children ($(echo $kids)) after 20 s: stopping it anyway"
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 100); do alive "$pid" || break; sleep 0.1; done
        if alive "$pid"; then say "glusterd $pid ignores SIGTERM: SIGKILL"; kill -KILL "$pid" 2>/dev/null || true; fi
    fi
    rm -f "$OWNER" "$PIDFILE"
    say "glusterd stopped"
}

# Gluster daemons of this volume (brick servers, self-heal daemon) by their pid files.
volume_daemon_pids() {
    local f
    for f in /var/run/gluster/vols/"$VOL"/*.pid /var/run/gluster/shd/"$VOL"/*.pid /var/run/gluster/glustershd/*.pid; do
        if [[ -s $f ]]; then cat "$f"; fi
    done 2>/dev/null | sort -u
    return 0
}

unmount_all() {
    local m
    # the mount point and anything else mounted under our directory, innermost first
    for m in $(awk -v p="$G/" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo | sort -r); do
        say "unmounting $m"
        timeout -k 5 60 umount "$m" 2>/dev/null || { say "umount $m failed: umount -l"; timeout -k 5 30 umount -l "$m" || true; }
    done
    ! awk -v p="$G/" 'index($5, p) == 1 { f = 1 } END { exit !f }' /proc/self/mountinfo
}

up() {
    # 1. packages
    if ! command -v glusterd >/dev/null || ! command -v mount.glusterfs >/dev/null; then
        say "installing glusterfs-server glusterfs-client"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y glusterfs-server glusterfs-client || { apt-get update && apt-get install -y glusterfs-server glusterfs-client; }
    fi
    local host
    host=$(pick_host)
    mkdir -p "$G/logs"
    case $(findmnt -n -o FSTYPE --target "$WD" 2>/dev/null || true) in
        tmpfs|ramfs) die "$WD is on tmpfs: bricks must be on the real disk" ;;
    esac

    # 2. glusterd
    start_glusterd

    # 3. the volume
    if volume_exists; then
        volume_is_ours || die "a volume '$VOL' with other bricks exists ($(volume_bricks | tr '\n' ' ')): not touching it"
        say "volume $VOL (bricks $B1, $B2) exists: reusing it"
    else
        # leftover brick dirs carry the old volume's xattrs and .glusterfs: gluster would refuse them
        mounted "$MNT" && { timeout -k 5 30 umount -l "$MNT" || true; }
        rm -rf "$B1" "$B2"
        mkdir -p "$B1" "$B2"
        say "gluster volume create $VOL replica 2 $host:$B1 $host:$B2 force"
        gl volume create "$VOL" replica 2 "$host:$B1" "$host:$B2" force
    fi
    if ! volume_started; then
        gl volume start "$VOL"
    fi
    # wait for both bricks (volume start can print success while a brick stays offline: quirk 4)
    local online=0
    for _ in $(seq 60); do
        online=$(gl volume status "$VOL" --xml 2>/dev/null | awk -v b1="$B1" -v b2="$B2" '
            /<path>/ { p = $0; sub(/.*<path>/, "", p); sub(/<\/path>.*/, "", p) }
            /<status>1<\/status>/ && (p == b1 || p == b2) { n++ }
            END { print n + 0 }' || true)
        [[ $online -ge 2 ]] && break
        sleep 0.5
    done
    [[ $online -ge 2 ]] || { gl volume status "$VOL" || true; die "bricks of $VOL are not both online after 30 s"; }

    # 4. the mount
    mkdir -p "$MNT"
    if mounted "$MNT"; then
        if timeout -k 2 10 stat -c %F "$MNT" >/dev/null 2>&1; then
            say "$MNT is already mounted"
        else
            say "$MNT is a dead mount: remounting"
            timeout -k 5 30 umount -l "$MNT" || true
        fi
    fi
    if ! mounted "$MNT"; then
        mount -t glusterfs "localhost:/$VOL" "$MNT"
    fi
    for _ in $(seq 60); do
        mounted "$MNT" && timeout -k 2 10 stat -c %F "$MNT" >/dev/null 2>&1 && break
        sleep 0.5
    done
    mounted "$MNT" || die "mount -t glusterfs localhost:/$VOL $MNT did not appear in mountinfo"
    # a write through the mount must work before anyone measures
    local probe="$MNT/.gluster-sh-probe.$$"
    timeout -k 2 30 sh -c "echo ok > '$probe' && rm -f '$probe'" || die "cannot write through $MNT"
    {
        echo "# $(date -Is) gluster.sh up"
        glusterfs --version | head -1
        gl volume info "$VOL"
        gl volume status "$VOL"
    } >"$G/logs/volume.txt" 2>&1 || true
    say "volume $VOL (replica 2, bricks $host:$B1 $host:$B2) mounted at $MNT ($(glusterfs --version | head -1))"
}

down() {
    local ok=1
    if [[ -d $G ]]; then
        unmount_all || { say "WARNING: something is still mounted under $G"; ok=0; }
    fi
    if ! command -v gluster >/dev/null; then
        rm -rf "$B1" "$B2" "$MNT"
        say "gluster is not installed: nothing else to do"
        return 0
    fi
    # the volume may exist with glusterd stopped (an interrupted earlier run): start glusterd to delete it
    if ! glusterd_up && [[ -d /var/lib/glusterd/vols/$VOL ]]; then
        say "glusterd is not running but volume $VOL is defined: starting glusterd to delete it"
        start_glusterd
    fi
    if glusterd_up && volume_exists; then
        if volume_is_ours; then
            local pids
            pids=$(volume_daemon_pids)
            if volume_started; then
                say "gluster volume stop $VOL force"
                gl volume stop "$VOL" force || ok=0
            fi
            say "gluster volume delete $VOL"
            gl volume delete "$VOL" || ok=0
            # brick servers and the self-heal daemon normally exit with the volume; wait for them
            local p
            for p in $pids; do
                for _ in $(seq 50); do alive "$p" || break; sleep 0.1; done
            done
        else
            say "volume $VOL has other bricks ($(volume_bricks | tr '\n' ' ')): not touching it"
        fi
    fi
    stop_glusterd
    if ! awk -v p="$G/" 'index($5, p) == 1 { f = 1 } END { exit !f }' /proc/self/mountinfo; then
        rm -rf "$B1" "$B2" "$MNT"
    fi
    ((ok)) || die "down finished with errors (see above)"
    say "down: volume $VOL removed, nothing mounted under $G"
}

status() {
    if mounted "$MNT"; then say "$MNT mounted"; else say "$MNT not mounted"; fi
    if glusterd_up; then
        say "glusterd running$([[ -f $OWNER ]] && echo " (started by gluster.sh: $(cat "$OWNER"))")"
        volume_exists && gl volume status "$VOL" || say "no volume $VOL"
    else
        say "glusterd not running"
    fi
}

case $CMD in
    up) up ;;
    down) down ;;
    status) status ;;
    *) usage ;;
esac
