#!/usr/bin/env bash
# Builds what the benchmark needs, then runs bench/bench.py with the given arguments.
#   bench/run.sh --reps 3 --small-n 500 --medium-n 10 --seq-mib 1024
#   bench/run.sh --gluster --targets raw,twinfs2       # two-node TwinFS against GlusterFS replica 2
# --gluster (run.sh's own flag, not passed on): `bench/gluster.sh up <workdir>` before the run,
#   adds gluster=<workdir>/gluster/mnt to the targets, `bench/gluster.sh down <workdir>` after it
#   (also when the run fails or is interrupted).
# Environment: SKIP_BUILD=1 skips the swift build (uses the existing release binary).
#   TWINFS_BIN=/path/to/twinfs uses that binary (no build; bench.py reads the same variable).
# Must run as root (FUSE mounts, drop_caches).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
OUT="$HERE/out"            # git-ignored: built binaries and results only
SCRATCH="$REPO/.build-release"
mkdir -p "$OUT"

# run.sh's own flag --gluster; the rest goes to bench.py. Find --workdir and --targets too.
GLUSTER=0
WORKDIR=/var/tmp/twinfs-bench
TARGETS=
args=()
while (($#)); do
    case $1 in
        --gluster) GLUSTER=1 ;;
        --workdir) args+=("$1"); [[ $# -ge 2 ]] && { WORKDIR=$2; args+=("$2"); shift; } ;;
        --workdir=*) WORKDIR=${1#--workdir=}; args+=("$1") ;;
        --targets) [[ $# -ge 2 ]] && { TARGETS=$2; shift; } ;;
        --targets=*) TARGETS=${1#--targets=} ;;
        *) args+=("$1") ;;
    esac
    shift
done
WORKDIR=$(realpath -m "$WORKDIR")
if ((GLUSTER)); then
    TARGETS="${TARGETS:-raw,fuse,twinfs},gluster=$WORKDIR/gluster/mnt"
fi
[[ -n $TARGETS ]] && args+=(--targets "$TARGETS")
if [[ -n ${TWINFS_BIN:-} ]]; then
    [[ -x $TWINFS_BIN ]] || { echo "run.sh: TWINFS_BIN=$TWINFS_BIN is not an executable" >&2; exit 1; }
    export TWINFS_BIN
    SKIP_BUILD=1
    echo "run.sh: using TWINFS_BIN=$TWINFS_BIN (no build)"
fi

# 1. system packages (Debian 12)
need=()
for p in fuse3 libfuse3-dev pkg-config gcc; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || need+=("$p")
done
if ((${#need[@]})); then
    echo "run.sh: installing ${need[*]}"
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}"
fi

# 2. TwinFS, release build in its own scratch path (does not disturb the debug .build).
#    Only the twinfs product: test targets being edited at the same time cannot break it.
if [[ -z "${SKIP_BUILD:-}" ]]; then
    echo "run.sh: swift build -c release --product twinfs --scratch-path $SCRATCH (log: $OUT/build-release.log)"
    if ! (cd "$REPO" && swift build -c release --product twinfs --scratch-path "$SCRATCH") >"$OUT/build-release.log" 2>&1; then
        tail -30 "$OUT/build-release.log"
        echo "run.sh: the TwinFS release build failed (see $OUT/build-release.log)" >&2
        exit 1
    fi
    tail -3 "$OUT/build-release.log"
fi

# 3. libfuse's passthrough_ll (the FUSE ceiling), compiled from the packaged example
#    straight into bench/out/; its source is not copied anywhere.
EX=/usr/share/doc/libfuse3-dev/examples
if [[ -f "$EX/passthrough_ll.c" ]]; then
    gcc -O2 -Wall -I"$EX" "$EX/passthrough_ll.c" $(pkg-config fuse3 --cflags --libs) -o "$OUT/passthrough_ll"
elif [[ -f "$EX/passthrough_ll.c.gz" ]]; then
    zcat "$EX/passthrough_ll.c.gz" | gcc -O2 -Wall -I"$EX" -x c - $(pkg-config fuse3 --cflags --libs) -o "$OUT/passthrough_ll"
else
    echo "run.sh: $EX/passthrough_ll.c not found (is libfuse3-dev installed?)" >&2
    exit 1
fi

# 4. the benchmark
if ((!GLUSTER)); then
    exec python3 "$HERE/bench.py" "${args[@]}"
fi

# 4'. with GlusterFS: up, run, and down whatever happens
BENCH_PID=
gluster_down() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $BENCH_PID ]] && kill -0 "$BENCH_PID" 2>/dev/null; then
        kill -TERM "$BENCH_PID" 2>/dev/null || true
        wait "$BENCH_PID" 2>/dev/null || true
    fi
    echo "run.sh: bench/gluster.sh down $WORKDIR"
    "$HERE/gluster.sh" down "$WORKDIR" || { echo "run.sh: gluster.sh down failed" >&2; rc=1; }
    exit "$rc"
}
trap gluster_down EXIT
# A trapped signal only runs while bash waits in `wait`, so bench.py runs in the background.
# SIGTERM is passed on to it (it tears its targets down and writes a partial report); Ctrl-C
# reaches it directly from the terminal, so bash itself ignores SIGINT and keeps waiting.
trap 'if [[ -n $BENCH_PID ]]; then kill -TERM "$BENCH_PID" 2>/dev/null || true; else exit 143; fi' TERM
trap 'if [[ -z $BENCH_PID ]]; then exit 130; fi' INT
mkdir -p "$WORKDIR"
"$HERE/gluster.sh" up "$WORKDIR"
python3 "$HERE/bench.py" "${args[@]}" &
BENCH_PID=$!
set +e
while :; do
    wait "$BENCH_PID"
    rc=$?
    kill -0 "$BENCH_PID" 2>/dev/null || break
done
set -e
BENCH_PID=
exit "$rc"
