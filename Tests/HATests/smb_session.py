#!/usr/bin/python3
"""One long-lived SMB session that stores files into a share and, like a Windows or Linux
SMB client, reconnects to the same address when its connection dies, then continues with the
file it was storing. Uses Samba's own client library (Debian python3-samba), SMB2+.

  smb_session.py --server IP --share NAME --user U --password P --src DIR --dest SUBDIR \
                 --out JSON [--progress FILE] [--timeout-ms 10000] [--deadline 240]

Every file of --src (sorted) is stored as SUBDIR\\name, one after the other, on the same
session. A file counts as stored when the server answered its close. When a request fails
(the connection was reset, or no answer within --timeout-ms), the error is recorded and a new
session is opened (retried every 100 ms until --deadline), and the file is stored again.
At the end every stored file is read back on the current session and compared.

--progress gets one line per stored file (flushed), so a test can act after N files.
The JSON: {"stored": [[name, unix_time], ...], "losses": [{"time", "file", "error"}],
"reconnects": [unix_time, ...], "mismatches": [name, ...], "error": null | text}.
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.dont_write_bytecode = True

from samba import NTSTATUSError, credentials  # noqa: E402
from samba.samba3 import libsmb_samba_internal as libsmb  # noqa: E402
from samba.samba3 import param as s3param  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", required=True)
    ap.add_argument("--share", required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--password", required=True)
    ap.add_argument("--src", required=True)
    ap.add_argument("--dest", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--progress")
    ap.add_argument("--timeout-ms", type=int, default=10000)
    ap.add_argument("--deadline", type=float, default=240)
    a = ap.parse_args()

    # A client configuration of our own: nothing of the machine's smb.conf is used.
    conf = tempfile.NamedTemporaryFile("w", suffix=".conf", delete=False)
    conf.write("[global]\n   client min protocol = SMB2\n")
    conf.close()
    lp = s3param.get_context()
    lp.load(conf.name)
    os.unlink(conf.name)
    creds = credentials.Credentials()
    creds.guess(lp)
    creds.set_username(a.user)
    creds.set_password(a.password)

    deadline = time.time() + a.deadline
    result = {"stored": [], "losses": [], "reconnects": [], "mismatches": [], "error": None}
    progress = open(a.progress, "a") if a.progress else None

    def connect():
        while True:
            try:
                c = libsmb.Conn(a.server, a.share, lp, creds)
                c.settimeout(a.timeout_ms)
                return c
            except NTSTATUSError as e:
                if time.time() > deadline:
                    raise RuntimeError("no session to //%s/%s before the deadline: %s" % (a.server, a.share, e.args))
                time.sleep(0.1)

    def finish(code):
        with open(a.out, "w") as f:
            json.dump(result, f)
        sys.exit(code)

    try:
        conn = connect()
        names = sorted(os.listdir(a.src))
        for name in names:
            with open(os.path.join(a.src, name), "rb") as f:
                data = f.read()
            while True:
                try:
                    conn.savefile(a.dest + "\\" + name, data)
                    break
                except NTSTATUSError as e:
                    result["losses"].append({"time": time.time(), "file": name, "error": "0x%08x %s" % (e.args[0] & 0xFFFFFFFF, e.args[1])})
                    if time.time() > deadline:
                        raise RuntimeError("%s never stored" % name)
                    conn = connect()
                    result["reconnects"].append(time.time())
            result["stored"].append([name, time.time()])
            if progress:
                progress.write(name + "\n")
                progress.flush()
        for name in names:
            with open(os.path.join(a.src, name), "rb") as f:
                want = f.read()
            if conn.loadfile(a.dest + "\\" + name) != want:
                result["mismatches"].append(name)
    except Exception as e:  # noqa: BLE001 -- any failure ends up in the JSON for the test to show
        result["error"] = "%s: %s" % (type(e).__name__, e)
        finish(1)
    finish(0 if not result["mismatches"] else 1)


if __name__ == "__main__":
    main()
