"""What one call costs on the wire: a loopback capture, read back per direction.

``capture(port, run)`` records the TCP traffic to and from ``port`` on the
loopback interface with tcpdump (capture filter ``tcp port PORT``) while
``run()`` drives a known number of calls, then ``summarize`` reads the pcap
with the standard library (IPv4/IPv6 over Ethernet or Linux cooked capture)
and reports per direction: TCP segments with payload, bare ACKs, payload
bytes and, for HTTP/2, the frames of each type (the byte streams reassembled
per connection and cut into frames by their 9-byte headers, so frames split
across segments count once). Divide by the calls made to get the cost of one.
"""

from __future__ import annotations

import os
import shutil
import signal
import struct
import subprocess
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

H2_TYPES = {0: "DATA", 1: "HEADERS", 2: "PRIORITY", 3: "RST_STREAM", 4: "SETTINGS",
            5: "PUSH_PROMISE", 6: "PING", 7: "GOAWAY", 8: "WINDOW_UPDATE", 9: "CONTINUATION"}
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def available() -> str:
    """'' when tcpdump can capture here, else why not."""
    if not shutil.which("tcpdump"):
        return "tcpdump not found (Debian package tcpdump)"
    if os.geteuid() != 0:
        return "capturing needs root"
    return ""


def capture(port: int, run, snaplen: int = 0) -> tuple[dict, object]:
    """Capture ``tcp port PORT`` on lo while ``run()`` runs; (summary, run's result)."""
    with tempfile.TemporaryDirectory(prefix="naiad-wire-") as tmp:
        pcap = Path(tmp) / "cap.pcap"
        cmd = ["tcpdump", "-i", "lo", "-n", "-U", "-s", str(snaplen), "-w", str(pcap),
               f"tcp port {port}"]
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            time.sleep(1.0)  # tcpdump needs a moment before it sees packets
            result = run()
            time.sleep(0.5)
        finally:
            p.send_signal(signal.SIGINT)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        return summarize(pcap.read_bytes(), port), result


def _packets(data: bytes):
    """(timestamp, src port, dst port, seq, flags, payload) of each TCP packet."""
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError("not a pcap file")
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    off = 24
    while off + 16 <= len(data):
        ts, tus, incl, _orig = struct.unpack(endian + "IIII", data[off:off + 16])
        pkt = data[off + 16:off + 16 + incl]
        off += 16 + incl
        if linktype == 1:  # Ethernet
            ethertype, ip = struct.unpack("!H", pkt[12:14])[0], pkt[14:]
        elif linktype == 113:  # Linux cooked (SLL)
            ethertype, ip = struct.unpack("!H", pkt[14:16])[0], pkt[16:]
        elif linktype == 276:  # Linux cooked v2
            ethertype, ip = struct.unpack("!H", pkt[0:2])[0], pkt[20:]
        else:
            raise ValueError(f"link type {linktype} not handled")
        if ethertype == 0x0800:
            ihl = (ip[0] & 0x0F) * 4
            total = struct.unpack("!H", ip[2:4])[0]
            proto, tcp = ip[9], ip[ihl:total]
        elif ethertype == 0x86DD:
            plen = struct.unpack("!H", ip[4:6])[0]
            proto, tcp = ip[6], ip[40:40 + plen]
        else:
            continue
        if proto != 6 or len(tcp) < 20:
            continue
        sport, dport, seq = struct.unpack("!HHI", tcp[:8])
        doff = (tcp[12] >> 4) * 4
        yield ts + tus / 1e6, sport, dport, seq, tcp[13], tcp[doff:]


def summarize(data: bytes, port: int) -> dict:
    """Per direction ("to_server", "to_client"): segments, acks, bytes, HTTP/2 frames."""
    out = {d: {"segments": 0, "bare_acks": 0, "payload_bytes": 0, "h2_frames": Counter()}
           for d in ("to_server", "to_client")}
    streams: dict[tuple, dict[int, bytes]] = defaultdict(dict)
    for _ts, sport, dport, seq, flags, payload in _packets(data):
        direction = "to_server" if dport == port else "to_client"
        d = out[direction]
        if payload:
            d["segments"] += 1
            d["payload_bytes"] += len(payload)
            streams[(direction, sport, dport)].setdefault(seq, payload)  # retransmits once
        elif flags & 0x10 and not flags & 0x07:  # ACK without SYN/FIN/RST
            d["bare_acks"] += 1
    for (direction, _s, _d), segs in streams.items():
        buf = b"".join(segs[k] for k in sorted(segs))  # no wrap-around in short captures
        _frames(buf, out[direction]["h2_frames"])
    for d in out.values():
        d["h2_frames"] = dict(sorted(d["h2_frames"].items()))
    return out


def _frames(buf: bytes, counter: Counter) -> None:
    i = len(PREFACE) if buf.startswith(PREFACE) else 0
    if i == 0 and not buf[3:4] == b"\x04" and buf[:4].isascii() and buf[:4].isalpha():
        return  # HTTP/1.1: no frames to count
    while i + 9 <= len(buf):
        length = int.from_bytes(buf[i:i + 3], "big")
        counter[H2_TYPES.get(buf[i + 3], f"type{buf[i + 3]}")] += 1
        i += 9 + length


def per_call(summary: dict, calls: int) -> dict:
    """The summary divided by the number of calls (rounded)."""
    if not calls:
        return {}
    res = {}
    for direction, d in summary.items():
        res[direction] = {
            "segments": round(d["segments"] / calls, 2),
            "bare_acks": round(d["bare_acks"] / calls, 2),
            "payload_bytes": round(d["payload_bytes"] / calls, 1),
            "h2_frames": {k: round(v / calls, 2) for k, v in d["h2_frames"].items()},
        }
    return res
