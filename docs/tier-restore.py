#!/usr/bin/env python3
"""Restore a TwinFS archive tier to a plain directory tree, without TwinFS.

Reads the manifest segments under PREFIX.twinfs/manifest/ in the bucket (JSON lines; a later
line for a key replaces an earlier one), fetches every object (the version the manifest names),
checks its XXH3-128 with `xxhsum -H2`, and puts it at DEST/path with the recorded mode, owner
(when run as root) and mtime. Needs python3-boto3 and xxhsum (Debian: xxhash).

    tier-restore.py --endpoint http://127.0.0.1:7480 --bucket pacs-archive --prefix pacs/ \\
        --credentials /etc/twinfs/pacs.tier-credentials --dest /srv/restore

The credentials file is the tier's own (AWS's shared-credentials format). Exit status 0 when
every file was restored and verified, 1 when any failed (each named on stderr), 2 on bad usage.
"""
import argparse
import json
import os
import subprocess
import sys

import boto3


def manifest_entries(s3, bucket, prefix):
    """The latest entry of every key, from the segments in key order (their names sort by time)."""
    latest = {}
    token = None
    keys = []
    while True:
        kwargs = {"Bucket": bucket, "Prefix": prefix + ".twinfs/manifest/"}
        if token:
            kwargs["ContinuationToken"] = token
        page = s3.list_objects_v2(**kwargs)
        keys += [o["Key"] for o in page.get("Contents", [])]
        if not page.get("IsTruncated"):
            break
        token = page["NextContinuationToken"]
    for key in sorted(keys):
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        for number, line in enumerate(body.split(b"\n"), 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                latest[entry["key"]] = entry
            except (ValueError, KeyError) as e:
                raise SystemExit(f"tier-restore: {key} line {number} is not a manifest entry: {e}")
    return latest


def safe_destination(dest, path):
    """DEST/path, refusing a path that would leave DEST."""
    parts = path.split("/")
    if path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"unsafe path in manifest: {path!r}")
    return os.path.join(dest, *parts)


def xxh3_128(path):
    out = subprocess.run(["xxhsum", "-H2", path], check=True, capture_output=True, text=True).stdout
    return out.split()[0].lower()


def restore(s3, bucket, entry, dest):
    target = safe_destination(dest, entry["path"])
    os.makedirs(os.path.dirname(target), exist_ok=True)
    partial = target + ".tier-restore-partial"
    kwargs = {"Bucket": bucket, "Key": entry["key"]}
    if entry.get("version_id"):
        kwargs["VersionId"] = entry["version_id"]
    with open(partial, "wb") as f:
        body = s3.get_object(**kwargs)["Body"]
        for chunk in iter(lambda: body.read(1 << 20), b""):
            f.write(chunk)
    size = os.path.getsize(partial)
    digest = xxh3_128(partial)
    if size != entry["size"] or digest != entry["xxh3"].lower():
        os.unlink(partial)
        raise ValueError(f"{entry['path']}: got {size} bytes with XXH3-128 {digest}, "
                         f"the manifest says {entry['size']} bytes with {entry['xxh3']}")
    os.chmod(partial, entry["mode"] & 0o7777)
    if os.geteuid() == 0:
        os.chown(partial, entry["uid"], entry["gid"])
    os.utime(partial, ns=(entry["mtime_ns"], entry["mtime_ns"]))
    os.rename(partial, target)


def main():
    p = argparse.ArgumentParser(description="Restore a TwinFS archive tier from its manifest with plain S3.")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--bucket", required=True)
    p.add_argument("--prefix", default="", help="the tier's key prefix, e.g. pacs/")
    p.add_argument("--credentials", help="the tier's credentials file (AWS format)")
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--dest", required=True)
    args = p.parse_args()
    if args.credentials:
        os.environ["AWS_SHARED_CREDENTIALS_FILE"] = args.credentials
    s3 = boto3.client("s3", endpoint_url=args.endpoint, region_name=args.region)
    entries = manifest_entries(s3, args.bucket, args.prefix)
    failed = 0
    for key in sorted(entries):
        try:
            restore(s3, args.bucket, entries[key], args.dest)
        except Exception as e:  # one line per file, then go on with the others
            failed += 1
            print(f"tier-restore: {key}: {e}", file=sys.stderr)
    print(f"tier-restore: {len(entries) - failed} of {len(entries)} files restored and verified")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
