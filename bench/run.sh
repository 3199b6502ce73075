#!/usr/bin/env bash
# Builds what the benchmark needs, then runs bench/bench.py with the given arguments.
#   bench/run.sh --reps 3 --small-n 500 --medium-n 10 --seq-mib 1024
# Environment: SKIP_BUILD=1 skips the swift build (uses the existing release binary).
# Must run as root (FUSE mounts, drop_caches).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
OUT="$HERE/out"            # git-ignored: built binaries and results only
SCRATCH="$REPO/.build-release"
mkdir -p "$OUT"

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
exec python3 "$HERE/bench.py" "$@"
