#!/usr/bin/env bash
# POSIX conformance: pjdfstest on a two-node pair's mount and on a plain ext4 directory of the
# same machine, same build, side by side (issue 15). Needs root. Takes about 10 minutes.
#
#   bench/pjdfstest.sh                    # clones pjdfstest (commit 85a8aea) from GitHub
#   PJDFSTEST_SRC=/path/to/pjdfstest bench/pjdfstest.sh
#
# Prints, for each side, the test files and subtests that failed, then the subtests that fail
# on the pair but pass on ext4 (the ones that matter). Full logs in bench/out/pjdfstest-*.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
OUT="$HERE/out/pjdfstest-$(date +%Y%m%d-%H%M%S)"
WORK="${PJDFSTEST_WORK:-/var/tmp/twinfs-pjdfstest}"
COMMIT=85a8aea
mkdir -p "$OUT" "$WORK"
[ "$(id -u)" = 0 ] || { echo "pjdfstest.sh: run as root (pjdfstest changes owners and makes device nodes)" >&2; exit 2; }
command -v prove >/dev/null || { echo "pjdfstest.sh: prove (perl) is missing: apt-get install perl" >&2; exit 2; }

# pjdfstest itself: one C file; the config.h autotools would write for Linux/glibc.
SRC="$WORK/pjdfstest"
if [ -n "${PJDFSTEST_SRC:-}" ]; then
    rm -rf "$SRC"; cp -r "$PJDFSTEST_SRC" "$SRC"
elif [ ! -d "$SRC" ]; then
    git clone -q https://github.com/pjd/pjdfstest "$SRC"
    git -C "$SRC" checkout -q "$COMMIT"
fi
cat > "$SRC/config.h" <<'EOF'
#define _GNU_SOURCE 1
#define HAVE_FACCESSAT 1
#define HAVE_FCHMODAT 1
#define HAVE_FCHOWNAT 1
#define HAVE_FSTATAT 1
#define HAVE_LINKAT 1
#define HAVE_MKDIRAT 1
#define HAVE_MKFIFOAT 1
#define HAVE_MKNODAT 1
#define HAVE_OPENAT 1
#define HAVE_POSIX_FALLOCATE 1
#define HAVE_READLINKAT 1
#define HAVE_RENAMEAT 1
#define HAVE_SYMLINKAT 1
#define HAVE_UTIMENSAT 1
#define HAVE_SYS_SYSMACROS_H 1
EOF
gcc -O2 -o "$SRC/pjdfstest" "$SRC/pjdfstest.c"

# TwinFS: the demo pair, built from this checkout.
BIN="${TWINFS_BIN:-}"
if [ -z "$BIN" ]; then
    (cd "$REPO" && swift build -c release --product twinfs >/dev/null)
    BIN="$REPO/.build/release/twinfs"
fi
DEMO="$WORK/demo"
IMG="$WORK/ext4.img"
EXT="$WORK/ext4"
cleanup() {
    [ -n "${DEMO_PID:-}" ] && kill -INT "$DEMO_PID" 2>/dev/null && wait "$DEMO_PID" 2>/dev/null || true
    umount "$EXT" 2>/dev/null || true
}
trap cleanup EXIT
rm -rf "$DEMO"
"$BIN" demo --dir "$DEMO" > "$OUT/demo.log" 2>&1 &
DEMO_PID=$!
for _ in $(seq 60); do mountpoint -q "$DEMO/a/mnt" && mountpoint -q "$DEMO/b/mnt" && break; sleep 1; done
mountpoint -q "$DEMO/a/mnt" || { echo "the demo pair did not come up; see $OUT/demo.log" >&2; exit 1; }

# Plain ext4 on a loop image of this machine's disk.
truncate -s 1G "$IMG"; mkfs.ext4 -q -F "$IMG"; mkdir -p "$EXT"; mount -o loop "$IMG" "$EXT"

run() {  # $1: label, $2: directory to run in
    mkdir -p "$2/pjd"
    local t0=$SECONDS
    (cd "$2/pjd" && prove -r "$SRC/tests" > "$OUT/$1.txt" 2>&1) || true
    echo "$1: $((SECONDS - t0)) s" >> "$OUT/times.txt"
}
run ext4 "$EXT" &
run twinfs "$DEMO/a/mnt" &
wait %1 %2 2>/dev/null || wait

summary() {  # failed subtests, one "file subtest" per line
    awk '/^\/.*\.t / {f=$1} /Failed tests?:/ {sub(/.*Failed tests?: */,""); n=split($0,a,/, */); for(i=1;i<=n;i++) print f, a[i]}' "$OUT/$1.txt" | sort
}
for side in ext4 twinfs; do
    line=$(grep -E '^Files=' "$OUT/$side.txt" || true)
    res=$(grep -E '^Result:' "$OUT/$side.txt" || true)
    failed=$(grep -E 'Failed [0-9]+/[0-9]+ subtests' "$OUT/$side.txt" | awk '{split($2,a,"/"); s+=a[1]} END {print s+0}')
    echo "$side: $line $res; failed subtests: $failed"
done
cat "$OUT/times.txt"
echo "subtest ranges failing on the pair and not on ext4:"
comm -13 <(summary ext4) <(summary twinfs) || true
echo "logs: $OUT"
