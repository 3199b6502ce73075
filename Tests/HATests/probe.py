#!/usr/bin/env python3
"""Client probe for the twinfs-ha failover tests (python3 standard library only).

Same semantics as the keepalived/CTDB anchor measurements (docs: /work/shared/anchors/ha.md):

  probe.py server --name NAME [--host 0.0.0.0] [--port 7000]
      Answers every line received on a TCP connection with one line: NAME. A connection may
      carry one request (probe mode) or many (hold mode).

  probe.py probe --target IP [--port 7000] [--interval 0.05] [--duration S] [--timeout 1.0]
                 [--json OUT] [--events FILE]
      A NEW TCP connection + one request/response every INTERVAL on a fixed schedule (probes
      overlap; each has TIMEOUT seconds in total for connect + answer). Resolution: INTERVAL.

  probe.py hold --target IP [--port 7000] [--interval 0.05] [--duration S] [--timeout 1.0]
                [--json OUT] [--events FILE]
      ONE long-lived TCP connection; a request line every INTERVAL on a fixed schedule
      (pipelined, answers matched in order). The connection counts as broken on RST, EOF,
      a send error, or an answer older than TIMEOUT; it is then closed and re-opened at the
      next slot. Slots while not connected count as failed requests. Measures how fast a
      long-lived (SMB-like) connection notices a takeover (tickle ACK / RST) and reconnects.

  probe.py garp --interface IF --address IP [--count 1] [--gap 0.0]
      Gratuitous ARP for IP from IF's MAC, COUNT rounds of a broadcast request (who-has IP tell
      IP) and a broadcast reply (IP is-at MAC, target MAC = own MAC, as Linux's arp_is_garp
      wants), like CTDB. A stand-in for `twinfs-ha arp announce` in tests. Needs CAP_NET_RAW.

  probe.py ping --target IP [--count 1] [--timeout 1.0]
      ICMP echo (raw socket, no ping binary needed). Exit 0 when an echo reply came back.

Definitions (probe and hold; every time is a Unix epoch float in seconds, as Date().timeIntervalSince1970):
  outage    a run of failed requests: start = send time of the first failed one, end = send
            time of the first successful one after it, duration_ms = end - start. A run still
            failing when the probe ends is "open": end = null, duration_ms = (last failed send
            time - start) + interval, a lower bound.
  switch    the answering node changed between two successful requests (failures in between
            are skipped): t = send time of the first answer from the new node.
  events    with --events FILE (lines "EPOCH LABEL", appended by the test while probing): per
            event the time to the first answer after it and to the first answer from a node other
            than the one that answered last before it.

The JSON written with --json (and printed SUMMARY/SWITCH/OUTAGE/EVENT/BREAK lines) holds
"probes" (seq, t, node, ms, error), "outages", "switches", "summary", "events", and in hold
mode also "connections" and "breaks". SIGTERM/SIGINT stop a probe early; the JSON is still
written.
"""

import argparse
import errno
import json
import os
import select
import signal
import socket
import socketserver
import sys
import threading
import time


# --------------------------------------------------------------------------------------------
# server

class _Handler(socketserver.StreamRequestHandler):
    def handle(self):
        name = self.server.node_name.encode() + b"\n"
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while True:
                line = self.rfile.readline(4096)
                if not line:
                    return
                self.wfile.write(name)
                self.wfile.flush()
        except OSError:
            return


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 512


def run_server(args):
    srv = _Server((args.host, args.port), _Handler)
    srv.node_name = args.name
    stop = threading.Event()

    def on_signal(signum, frame):
        if not stop.is_set():
            stop.set()
            threading.Thread(target=srv.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"LISTEN {args.host}:{args.port} name={args.name}", flush=True)
    try:
        srv.serve_forever(poll_interval=0.1)
    finally:
        srv.server_close()
    return 0


# --------------------------------------------------------------------------------------------
# analysis shared by both modes

def _err_name(e):
    if isinstance(e, socket.timeout):
        return "timeout"
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    if isinstance(e, ConnectionResetError):
        return "reset"
    if isinstance(e, BrokenPipeError):
        return "broken-pipe"
    if isinstance(e, OSError) and e.errno is not None:
        return errno.errorcode.get(e.errno, str(e.errno)).lower()
    return type(e).__name__


def analyse(probes, interval, events):
    probes = sorted(probes, key=lambda p: p["seq"])
    outages, switches = [], []
    run_start = None
    run_count = 0
    last_failed_t = None
    last_node = None
    before_run_node = None
    nodes = {}
    for p in probes:
        if p["node"] is None:
            if run_start is None:
                run_start = p["t"]
                run_count = 0
                before_run_node = last_node
            run_count += 1
            last_failed_t = p["t"]
            continue
        nodes[p["node"]] = nodes.get(p["node"], 0) + 1
        if run_start is not None:
            outages.append({"start": run_start, "end": p["t"],
                            "duration_ms": round((p["t"] - run_start) * 1000, 1),
                            "failed": run_count, "open": False,
                            "from": before_run_node, "to": p["node"]})
            run_start = None
        if last_node is not None and p["node"] != last_node:
            switches.append({"t": p["t"], "from": last_node, "to": p["node"]})
        last_node = p["node"]
    if run_start is not None:
        outages.append({"start": run_start, "end": None,
                        "duration_ms": round((last_failed_t - run_start + interval) * 1000, 1),
                        "failed": run_count, "open": True,
                        "from": before_run_node, "to": None})
    answered = [p for p in probes if p["node"] is not None]
    failed = len(probes) - len(answered)
    summary = {
        "probes": len(probes),
        "answered": len(answered),
        "failed": failed,
        "outage_ms": round(sum(o["duration_ms"] for o in outages), 1),
        "max_outage_ms": max((o["duration_ms"] for o in outages), default=0),
        "outages": len(outages),
        "switches": len(switches),
        "first_node": answered[0]["node"] if answered else None,
        "last_node": answered[-1]["node"] if answered else None,
        "nodes": nodes,
    }
    ev_out = []
    for t, label in events:
        before = [p for p in answered if p["t"] < t]
        after = [p for p in answered if p["t"] >= t]
        prev = before[-1]["node"] if before else None
        first = after[0] if after else None
        other = next((p for p in after if p["node"] != prev), None) if prev is not None else first
        ev_out.append({
            "t": t, "label": label, "node_before": prev,
            "first_answer_ms": round((first["t"] - t) * 1000, 1) if first else None,
            "first_answer_node": first["node"] if first else None,
            "other_node_ms": round((other["t"] - t) * 1000, 1) if other else None,
            "other_node": other["node"] if other else None,
            "failed_after": sum(1 for p in probes if p["t"] >= t and p["node"] is None),
        })
    return probes, outages, switches, summary, ev_out


def read_events(path):
    out = []
    if not path:
        return out
    try:
        with open(path) as f:
            for line in f:
                parts = line.strip().split(None, 1)
                if not parts:
                    continue
                try:
                    out.append((float(parts[0]), parts[1] if len(parts) > 1 else ""))
                except ValueError:
                    pass
    except OSError:
        pass
    return out


def report(args, mode, started, probes, extra):
    probes, outages, switches, summary, events = analyse(probes, args.interval, read_events(args.events))
    for s in switches:
        print(f"SWITCH t={s['t']:.3f} {s['from']} -> {s['to']}")
    for o in outages:
        end = f"{o['end']:.3f}" if o["end"] is not None else "open"
        print(f"OUTAGE start={o['start']:.3f} end={end} duration_ms={o['duration_ms']} failed={o['failed']}")
    for e in events:
        print(f"EVENT {e['label']} t={e['t']:.3f} first_answer_ms={e['first_answer_ms']} "
              f"other_node_ms={e['other_node_ms']} other_node={e['other_node']}")
    for b in extra.get("breaks", []):
        print(f"BREAK t={b['t']:.3f} reason={b['reason']} node={b['node']}")
    print("SUMMARY " + " ".join(f"{k}={v}" for k, v in summary.items() if k != "nodes")
          + " nodes=" + ",".join(f"{k}:{v}" for k, v in sorted(summary["nodes"].items())), flush=True)
    doc = {"mode": mode, "target": args.target, "port": args.port, "interval": args.interval,
           "timeout": args.timeout, "duration": args.duration, "started": started, "ended": time.time(),
           "probes": probes, "outages": outages, "switches": switches, "summary": summary,
           "events": events}
    doc.update(extra)
    if args.json:
        tmp = args.json + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1)
        os.replace(tmp, args.json)
    return 0


class _Stop:
    def __init__(self):
        self.event = threading.Event()
        signal.signal(signal.SIGTERM, self._on)
        signal.signal(signal.SIGINT, self._on)

    def _on(self, signum, frame):
        self.event.set()


# --------------------------------------------------------------------------------------------
# probe: a new connection per request

def _one_probe(target, port, timeout, rec):
    deadline = time.monotonic() + timeout
    s = None
    try:
        s = socket.socket(socket.AF_INET6 if ":" in target else socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(timeout)
        s.connect((target, port))
        s.sendall(b"probe\n")
        buf = b""
        while b"\n" not in buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout()
            s.settimeout(left)
            chunk = s.recv(256)
            if not chunk:
                raise EOFError()
            buf += chunk
        rec["node"] = buf.split(b"\n", 1)[0].decode(errors="replace")
        rec["ms"] = round((time.monotonic() - (deadline - timeout)) * 1000, 2)
    except EOFError:
        rec["error"] = "eof"
    except Exception as e:  # noqa: BLE001 - every failure is a data point
        rec["error"] = _err_name(e)
    finally:
        if s is not None:
            try:
                # RST instead of FIN: no TIME_WAIT pile-up on the client at 20 connections/s.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            except OSError:
                pass
            s.close()


def run_probe(args):
    stop = _Stop()
    mono0 = time.monotonic()
    wall0 = time.time()
    probes, threads = [], []
    seq = 0
    while not stop.event.is_set():
        slot = mono0 + seq * args.interval
        if args.duration is not None and slot - mono0 >= args.duration:
            break
        delay = slot - time.monotonic()
        if delay > 0 and stop.event.wait(delay):
            break
        rec = {"seq": seq, "t": round(wall0 + (slot - mono0), 6), "node": None, "ms": None, "error": None}
        probes.append(rec)
        th = threading.Thread(target=_one_probe, args=(args.target, args.port, args.timeout, rec), daemon=True)
        th.start()
        threads.append(th)
        threads = [t for t in threads if t.is_alive()]
        seq += 1
    for th in threads:
        th.join(args.timeout + 1)
    for rec in probes:
        if rec["node"] is None and rec["error"] is None:
            rec["error"] = "unfinished"
    return report(args, "probe", wall0, probes, {})


# --------------------------------------------------------------------------------------------
# hold: one long-lived connection

def run_hold(args):
    stop = _Stop()
    mono0 = time.monotonic()
    wall0 = time.time()

    def wall(m):
        return round(wall0 + (m - mono0), 6)

    fam = socket.AF_INET6 if ":" in args.target else socket.AF_INET
    probes, connections, breaks = [], [], []
    sock = None
    connecting_since = None
    conn = None            # the current connection's record
    outstanding = []       # requests sent, awaiting an answer (FIFO)
    buf = b""
    last_node = None
    last_attempt = None
    seq = 0

    def close(reason, now):
        nonlocal sock, conn, outstanding, buf, connecting_since
        for rec in outstanding:
            rec["error"] = reason
        if conn is not None and conn["opened"] is not None:
            conn["closed"] = wall(now)
            conn["reason"] = reason
            breaks.append({"t": wall(now), "reason": reason, "node": last_node,
                           "outstanding": len(outstanding)})
        outstanding = []
        buf = b""
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
        sock = None
        conn = None
        connecting_since = None

    def start_connect(now):
        nonlocal sock, connecting_since, conn
        sock = socket.socket(fam, socket.SOCK_STREAM)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        rc = sock.connect_ex((args.target, args.port))
        connecting_since = now
        conn = {"attempt": wall(now), "opened": None, "closed": None, "reason": None,
                "node": None, "requests": 0, "answers": 0}
        if rc not in (0, errno.EINPROGRESS):
            connections.append(dict(conn, reason=errno.errorcode.get(rc, str(rc)).lower()))
            sock.close()
            sock = None
            conn = None
            connecting_since = None
        elif rc == 0:
            conn["opened"] = wall(now)
            connections.append(conn)
            connecting_since = None

    while not stop.event.is_set():
        now = time.monotonic()
        slot = mono0 + seq * args.interval
        if args.duration is not None and slot - mono0 >= args.duration:
            break
        if sock is None and (last_attempt is None or now - last_attempt >= args.interval):
            # (Re)connect at once after a break, at most one attempt per interval.
            last_attempt = now
            start_connect(now)
            if sock is not None and connecting_since is not None and seq == 0:
                # The first connection: wait for it (bounded) so the schedule starts connected.
                _, w, _ = select.select([], [sock], [], args.timeout)
                if w and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    conn["opened"] = wall(time.monotonic())
                    connections.append(conn)
                    connecting_since = None
                continue
        if now >= slot:
            # A request slot.
            rec = {"seq": seq, "t": wall(slot), "node": None, "ms": None, "error": None}
            probes.append(rec)
            seq += 1
            if sock is not None and connecting_since is None:
                try:
                    sock.send(b"hold %d\n" % rec["seq"])
                    rec["_sent"] = now
                    outstanding.append(rec)
                    conn["requests"] += 1
                except (BlockingIOError, InterruptedError):
                    rec["error"] = "send-blocked"
                except OSError as e:
                    rec["error"] = _err_name(e)
                    close(rec["error"], now)
            else:
                rec["error"] = "connecting" if sock is not None else "disconnected"
            continue
        # Wait for the socket until the next slot.
        wait = max(0.0, slot - now)
        if sock is None:
            stop.event.wait(min(wait, max(0.0, last_attempt + args.interval - now)))
            continue
        wlist = [sock] if connecting_since is not None else []
        try:
            r, w, _ = select.select([sock], wlist, [], wait)
        except InterruptedError:
            continue
        now = time.monotonic()
        if connecting_since is not None:
            if w or r:
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if err == 0:
                    conn["opened"] = wall(now)
                    connections.append(conn)
                    connecting_since = None
                else:
                    connections.append(dict(conn, reason=errno.errorcode.get(err, str(err)).lower()))
                    conn = None
                    sock.close()
                    sock = None
                    connecting_since = None
                continue
            if now - connecting_since > args.timeout:
                connections.append(dict(conn, reason="connect-timeout"))
                conn = None
                sock.close()
                sock = None
                connecting_since = None
            continue
        if r:
            try:
                chunk = sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                chunk = None
            except OSError as e:
                close(_err_name(e), now)
                continue
            if chunk == b"":
                close("eof", now)
                continue
            if chunk:
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if not outstanding:
                        continue
                    rec = outstanding.pop(0)
                    rec["node"] = line.decode(errors="replace")
                    rec["ms"] = round((now - rec["_sent"]) * 1000, 2)
                    last_node = rec["node"]
                    conn["answers"] += 1
                    if conn["node"] is None:
                        conn["node"] = rec["node"]
        if outstanding and now - outstanding[0]["_sent"] > args.timeout:
            close("timeout", now)
    now = time.monotonic()
    if sock is not None:
        # Let the last answers arrive (bounded), then close without counting a break.
        deadline = now + args.timeout
        while outstanding and connecting_since is None and time.monotonic() < deadline:
            r, _, _ = select.select([sock], [], [], max(0.0, deadline - time.monotonic()))
            if not r:
                break
            try:
                chunk = sock.recv(4096)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf and outstanding:
                line, buf = buf.split(b"\n", 1)
                rec = outstanding.pop(0)
                rec["node"] = line.decode(errors="replace")
                rec["ms"] = round((time.monotonic() - rec["_sent"]) * 1000, 2)
                conn["answers"] += 1
        for rec in outstanding:
            rec["error"] = "unfinished"
        if conn is not None and conn["opened"] is not None:
            conn["closed"] = wall(time.monotonic())
            conn["reason"] = "end"
        sock.close()
    for rec in probes:
        rec.pop("_sent", None)
        if rec["node"] is None and rec["error"] is None:
            rec["error"] = "unfinished"
    return report(args, "hold", wall0, probes, {"connections": connections, "breaks": breaks})



# --------------------------------------------------------------------------------------------
# garp / ping: small network tools the test namespaces lack (no arping, no ping installed)

def _ipv4_bytes(addr):
    return socket.inet_aton(addr)


def run_garp(args):
    with open(f"/sys/class/net/{args.interface}/address") as f:
        mac = bytes.fromhex(f.read().strip().replace(":", ""))
    ip = _ipv4_bytes(args.address)
    bcast = b"\xff" * 6

    def frame(op, tha):
        arp = (b"\x00\x01" b"\x08\x00" b"\x06" b"\x04" + op.to_bytes(2, "big")
               + mac + ip + tha + ip)
        return (bcast + mac + b"\x08\x06" + arp).ljust(60, b"\x00")

    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    try:
        s.bind((args.interface, 0))
        for i in range(args.count):
            if i and args.gap > 0:
                time.sleep(args.gap)
            s.send(frame(1, b"\x00" * 6))   # request: who-has IP tell IP
            s.send(frame(2, mac))            # reply: IP is-at MAC
    finally:
        s.close()
    return 0


def _icmp_checksum(data):
    if len(data) % 2:
        data += b"\x00"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (~total) & 0xFFFF


def run_ping(args):
    ident = os.getpid() & 0xFFFF
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        for seq in range(1, args.count + 1):
            payload = b"twinfs-ha-ping"
            hdr = b"\x08\x00\x00\x00" + ident.to_bytes(2, "big") + seq.to_bytes(2, "big")
            csum = _icmp_checksum(hdr + payload)
            pkt = hdr[:2] + csum.to_bytes(2, "big") + hdr[4:] + payload
            s.sendto(pkt, (args.target, 0))
            deadline = time.monotonic() + args.timeout
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                r, _, _ = select.select([s], [], [], left)
                if not r:
                    break
                data, addr = s.recvfrom(2048)
                ihl = (data[0] & 0x0F) * 4
                icmp = data[ihl:]
                if (addr[0] == args.target and len(icmp) >= 8 and icmp[0] == 0
                        and int.from_bytes(icmp[4:6], "big") == ident
                        and int.from_bytes(icmp[6:8], "big") == seq):
                    print(f"REPLY from {args.target} seq={seq}", flush=True)
                    return 0
    finally:
        s.close()
    print(f"NO REPLY from {args.target}", flush=True)
    return 1

# --------------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("server", help="answer every received line with NAME")
    s.add_argument("--name", required=True)
    s.add_argument("--host", default="0.0.0.0")
    s.add_argument("--port", type=int, default=7000)
    for mode in ("probe", "hold"):
        p = sub.add_parser(mode, help="new connection per request" if mode == "probe" else "one long-lived connection")
        p.add_argument("--target", required=True)
        p.add_argument("--port", type=int, default=7000)
        p.add_argument("--interval", type=float, default=0.05)
        p.add_argument("--duration", type=float, default=None, help="seconds (default: until SIGTERM/SIGINT)")
        p.add_argument("--timeout", type=float, default=1.0)
        p.add_argument("--json", default=None)
        p.add_argument("--events", default=None)
    g = sub.add_parser("garp", help="send gratuitous ARP (request + reply, broadcast)")
    g.add_argument("--interface", required=True)
    g.add_argument("--address", required=True)
    g.add_argument("--count", type=int, default=1)
    g.add_argument("--gap", type=float, default=0.0, help="seconds between rounds")
    q = sub.add_parser("ping", help="ICMP echo; exit 0 on a reply")
    q.add_argument("--target", required=True)
    q.add_argument("--count", type=int, default=1)
    q.add_argument("--timeout", type=float, default=1.0)
    args = ap.parse_args(argv)
    if args.cmd == "server":
        return run_server(args)
    if args.cmd == "garp":
        return run_garp(args)
    if args.cmd == "ping":
        return run_ping(args)
    if args.interval <= 0 or args.timeout <= 0:
        ap.error("--interval and --timeout must be positive")
    return run_probe(args) if args.cmd == "probe" else run_hold(args)


if __name__ == "__main__":
    sys.exit(main())
