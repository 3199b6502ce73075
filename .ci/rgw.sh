#!/usr/bin/env bash
# A private single-node Ceph cluster with an S3 gateway (RGW) on loopback, for the archive tier's
# tests and demo. Everything lives in DIR: config, monitor and OSD data, logs, sockets, PIDs.
#
#   .ci/rgw.sh up DIR [PORT]   start it (PORT: the S3 port, default a free one); prints the env
#   .ci/rgw.sh env DIR         print RGW_ENDPOINT, RGW_BUCKET, RGW_CREDENTIALS, ... as exports
#   .ci/rgw.sh down DIR        stop the daemons started by `up DIR`, by their PIDs
#
# One monitor (msgr v1 on a free loopback port), one OSD, one RGW (beast on 127.0.0.1:PORT), no
# manager (pools, OSDs and RGW work without one; it would only add memory and a python runtime).
# cephx is off: every daemon listens on 127.0.0.1 only, and S3 requests are still signed with the
# user's keys. The S3 user's keys go to DIR/credentials (mode 0600, AWS's ini format, so `aws` and
# boto3 read it as AWS_SHARED_CREDENTIALS_FILE); the bucket RGW_BUCKET (default "tier") is made
# with Object Lock enabled.
#
# RGW_OSD_STORE=memstore (default: fastest, the data lives in the OSD's memory and is gone after
# `down`) or bluestore (a sparse 10 GiB file DIR/osd-block.img; `up DIR` again restarts with the data).
# Needs Debian's ceph-mon ceph-osd radosgw ceph-common (see .ci/install-deps) and curl.
set -euo pipefail

die() { echo "rgw.sh: $*" >&2; exit 1; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# The daemons' PIDs, one "name pid" a line, in start order.
pids_file() { echo "$1/pids"; }

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }

# Starts a daemon in the foreground mode (-f) under setsid, in the background, and records its PID.
start_daemon() {
  local dir=$1 name=$2; shift 2
  setsid "$@" -f -c "$dir/ceph.conf" >>"$dir/log/$name.out" 2>&1 < /dev/null &
  echo "$name $!" >> "$(pids_file "$dir")"
}

wait_for() {  # wait_for SECONDS WHAT COMMAND...
  local limit=$1 what=$2; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "$what not ready after ${limit}s (logs in $DIR/log)"
    sleep 0.3
  done
}

write_conf() {
  local dir=$1 monport=$2 s3port=$3 store=$4
  cat > "$dir/ceph.conf" <<EOF
[global]
fsid = $(cat "$dir/fsid")
mon host = v1:127.0.0.1:$monport
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind msgr2 = false
auth cluster required = none
auth service required = none
auth client required = none
auth allow insecure global id reclaim = false
keyring = /dev/null
run dir = $dir/run
admin socket = $dir/run/\$name.asok
pid file = $dir/run/\$name.pid
log file = $dir/log/\$name.log
crash dir = $dir/crash
mon data = $dir/mon/\$id
osd data = $dir/osd
osd objectstore = $store
bluestore block path = $dir/osd-block.img
bluestore block create = true
bluestore block size = 10737418240
memstore device bytes = 4294967296
osd max object name len = 460
osd max object namespace len = 64
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
# The OSD places itself in the CRUSH map below, before it starts: its own start-up commands can
# reach the monitor before the monitor map does and be refused ("wrong fsid"), failing its init.
osd crush update on start = false
osd class update on start = false
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
osd memory target = 939524096
[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:$s3port
rgw dns name = 127.0.0.1
rgw thread pool size = 64
EOF
}

ceph_cli() { ceph -c "$DIR/ceph.conf" --connect-timeout 10 "$@"; }

# With cephx off, a client can send its first command before it has the monitor map, and the
# monitor refuses it ("wrong fsid", "problem getting command descriptions"): try again.
ceph_retry() {
  local i
  for i in 1 2 3 4 5 6 7 8 9 10; do
    ceph_cli "$@" 2>>"$DIR/log/cli.err" && return 0
    sleep 0.5
  done
  return 1
}

# Creates the monitor and the OSD the first time (bluestore keeps them for the next `up`).
mkfs_cluster() {
  local dir=$1 store=$2
  mkdir -p "$dir/mon" "$dir/osd"
  monmaptool --create --clobber --fsid "$(cat "$dir/fsid")" --addv a "[v1:127.0.0.1:$(cat "$dir/mon-port")]" "$dir/monmap" >/dev/null
  ceph-mon --mkfs -i a --monmap "$dir/monmap" -c "$dir/ceph.conf" >>"$dir/log/mkfs.out" 2>&1
}

mkfs_osd() {
  local dir=$1
  local uuid; uuid=$(cat /proc/sys/kernel/random/uuid)
  local id; id=$(ceph_retry osd new "$uuid")
  [ "$id" = 0 ] || die "expected OSD id 0, the monitor gave '$id'"
  ceph-osd -i 0 --mkfs --osd-uuid "$uuid" -c "$dir/ceph.conf" >>"$dir/log/mkfs.out" 2>&1 \
    || die "ceph-osd --mkfs failed (see $dir/log/mkfs.out)"
  ceph_retry osd crush create-or-move osd.0 1.0 root=default >>"$dir/log/mkfs.out" || die "placing osd.0 in the CRUSH map failed"
}

osd_up() { ceph_cli osd stat 2>/dev/null | grep -q ' 1 up'; }

s3_answers() { curl -s -o /dev/null "http://127.0.0.1:$(cat "$DIR/s3-port")/"; }

# The S3 user and its keys; the keys are random and written only to the 0600 credentials file.
make_user() {
  local dir=$1
  if [ ! -s "$dir/credentials" ]; then
    local ak sk
    ak=$(head -c 15 /dev/urandom | base32 | tr -d '=' | head -c 20)
    sk=$(head -c 30 /dev/urandom | base64 | tr -d '/+=' | head -c 40)
    local i ok=0
    for i in 1 2 3 4 5; do
      if radosgw-admin -c "$dir/ceph.conf" user create --uid tier --display-name "TwinFS tier" \
           --access-key "$ak" --secret "$sk" >>"$dir/log/admin.out" 2>&1; then ok=1; break; fi
      sleep 0.5
    done
    [ $ok = 1 ] || die "radosgw-admin user create failed (see $dir/log/admin.out)"
    (umask 077; printf '[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n' "$ak" "$sk" > "$dir/credentials")
  fi
  chmod 600 "$dir/credentials"
}

cred() { sed -n "s/^$1 *= *//p" "$DIR/credentials"; }

# PUT /BUCKET with x-amz-bucket-object-lock-enabled (curl signs SigV4 itself); 409 = exists.
make_bucket() {
  local bucket=$1 code
  code=$(curl -s -o "$DIR/log/bucket.out" -w '%{http_code}' -X PUT \
    --aws-sigv4 "aws:amz:us-east-1:s3" --user "$(cred aws_access_key_id):$(cred aws_secret_access_key)" \
    -H "x-amz-bucket-object-lock-enabled: true" -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" \
    "http://127.0.0.1:$(cat "$DIR/s3-port")/$bucket")
  case $code in 200|409) ;; *) die "creating bucket $bucket: HTTP $code $(cat "$DIR/log/bucket.out")";; esac
}

print_env() {
  local dir=$1
  echo "export RGW_DIR=$dir"
  echo "export RGW_ENDPOINT=http://127.0.0.1:$(cat "$dir/s3-port")"
  echo "export RGW_BUCKET=$(cat "$dir/bucket")"
  echo "export RGW_CREDENTIALS=$dir/credentials"
  echo "export AWS_SHARED_CREDENTIALS_FILE=$dir/credentials"
  echo "export AWS_DEFAULT_REGION=us-east-1"
}

up() {
  local store=${RGW_OSD_STORE:-memstore}
  case $store in memstore|bluestore) ;; *) die "RGW_OSD_STORE must be memstore or bluestore, not $store";; esac
  mkdir -p "$DIR"
  DIR=$(cd "$DIR" && pwd)
  if [ -s "$(pids_file "$DIR")" ]; then
    while read -r name pid; do alive "$pid" && die "$name (pid $pid) from an earlier 'up $DIR' still runs: run 'down $DIR' first"; done < "$(pids_file "$DIR")"
  fi
  : > "$(pids_file "$DIR")"
  mkdir -p "$DIR/run" "$DIR/log" "$DIR/crash"
  local fresh=0
  [ -s "$DIR/fsid" ] && [ -d "$DIR/mon/a" ] && [ "$store" = bluestore ] && [ "$(cat "$DIR/store" 2>/dev/null)" = bluestore ] || fresh=1
  if [ $fresh = 1 ]; then
    rm -rf "$DIR/mon" "$DIR/osd" "$DIR/osd-block.img" "$DIR/credentials"
    cat /proc/sys/kernel/random/uuid > "$DIR/fsid"
    free_port > "$DIR/mon-port"
    echo "${PORT:-$(free_port)}" > "$DIR/s3-port"
    echo "$store" > "$DIR/store"
    echo "${RGW_BUCKET:-tier}" > "$DIR/bucket"
  fi
  [ -z "${PORT:-}" ] || echo "$PORT" > "$DIR/s3-port"
  write_conf "$DIR" "$(cat "$DIR/mon-port")" "$(cat "$DIR/s3-port")" "$store"
  [ $fresh = 0 ] || mkfs_cluster "$DIR" "$store"
  start_daemon "$DIR" mon ceph-mon -i a
  wait_for 30 "monitor" ceph_cli mon stat
  [ $fresh = 0 ] || mkfs_osd "$DIR"
  start_daemon "$DIR" osd ceph-osd -i 0
  wait_for 60 "OSD" osd_up
  start_daemon "$DIR" rgw radosgw -n client.rgw
  wait_for 60 "RGW on port $(cat "$DIR/s3-port")" s3_answers
  make_user "$DIR"
  make_bucket "$(cat "$DIR/bucket")"
  print_env "$DIR"
}

down() {
  [ -d "$DIR" ] || die "no cluster directory $DIR"
  local pf; pf=$(pids_file "$DIR")
  [ -s "$pf" ] || { echo "rgw.sh: nothing started in $DIR" >&2; return 0; }
  # Reverse start order: the gateway first, the monitor last.
  local lines; lines=$(tac "$pf")
  while read -r name pid; do alive "$pid" && kill -TERM "$pid" 2>/dev/null || true; done <<< "$lines"
  local deadline=$((SECONDS + 15))
  while read -r name pid; do
    while alive "$pid" && [ $SECONDS -lt $deadline ]; do sleep 0.2; done
    if alive "$pid"; then echo "rgw.sh: $name (pid $pid) ignored SIGTERM; SIGKILL" >&2; kill -KILL "$pid" 2>/dev/null || true; fi
  done <<< "$lines"
  : > "$pf"
}

cmd=${1:-}; DIR=${2:-}
[ -n "$cmd" ] && [ -n "$DIR" ] || die "usage: rgw.sh up DIR [PORT] | env DIR | down DIR"
PORT=${3:-${RGW_PORT:-}}
case $cmd in
  up) up ;;
  down) down ;;
  env) DIR=$(cd "$DIR" && pwd); [ -s "$DIR/credentials" ] || die "no cluster in $DIR (run up first)"; print_env "$DIR" ;;
  *) die "unknown command $cmd (up, down, env)" ;;
esac
