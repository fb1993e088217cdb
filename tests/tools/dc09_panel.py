"""A DC-09 alarm panel written from the standard (SIA DC-09), independent of the service's own
encoder: it sends each message given as JSON on stdin, one per line, over one TCP connection (or
UDP), and prints one JSON line per message: the answer's ID token and sequence (None when the
receiver stayed silent) and the milliseconds until it came.

A message: {"seq": "0001", "account": "4711", "data": "Nri1/BA003", "key_hex": "...",
"offset_s": 0, "bad_crc": false, "token": "SIA-DCS"}

usage: dc09_panel.py HOST PORT tcp|udp
"""
import json
import random
import socket
import string
import sys
import time
from datetime import datetime, timedelta, timezone

from Crypto.Cipher import AES


def crc16_arc(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def frame(m):
    when = datetime.now(timezone.utc) + timedelta(seconds=m.get("offset_s", 0))
    # A panel that repeats a message whose ACK was lost sends the same timestamp again.
    stamp = m.get("stamp") or when.strftime("_%H:%M:%S,%m-%d-%Y")
    token = m.get("token", "SIA-DCS")
    body = f"|{m.get('data', '')}]{stamp}"
    if m.get("key_hex"):
        pad = (16 - len(body) % 16) % 16
        plain = "".join(random.choice(string.ascii_letters) for _ in range(pad)) + body
        cipher = AES.new(bytes.fromhex(m["key_hex"]), AES.MODE_CBC, bytes(16))
        span = f'"*{token}"{m["seq"]}R0L0#{m["account"]}[' + cipher.encrypt(plain.encode()).hex().upper()
    else:
        span = f'"{token}"{m["seq"]}R0L0#{m["account"]}[#{m["account"]}{body}'
    crc = crc16_arc(span.encode())
    if m.get("bad_crc"):
        crc ^= 0x0101
    return f"\n{crc:04X}{len(span):04X}{span}\r".encode()


def answer_of(raw: bytes, key_hex):
    text = raw.decode("ascii", "replace").strip()
    if len(text) < 9:
        return {"token": None, "raw": text}
    span = text[8:]
    crc_ok = f"{crc16_arc(span.encode()):04X}" == text[:4]
    token = span[1:span.index('"', 1)] if span.startswith('"') and '"' in span[1:] else None
    seq = span[len(token) + 2:len(token) + 6] if token else None
    out = {"token": token, "seq": seq, "crc_ok": crc_ok, "raw": text}
    if token == "*ACK" and key_hex:
        hexpart = span[span.index("[") + 1:]
        plain = AES.new(bytes.fromhex(key_hex), AES.MODE_CBC, bytes(16)).decrypt(bytes.fromhex(hexpart))
        out["decrypted"] = plain.decode("ascii", "replace")
    return out


def main():
    host, port, proto = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    if proto == "udp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect((host, port))
    else:
        sock = socket.create_connection((host, port))
    for line in sys.stdin:
        if not line.strip():
            continue
        m = json.loads(line)
        data = frame(m)
        started = time.monotonic()
        sock.sendall(data) if proto == "tcp" else sock.send(data)
        sock.settimeout(m.get("wait_s", 5))
        raw = b""
        try:
            while not raw.endswith(b"\r"):
                chunk = sock.recv(2048)
                if not chunk:
                    break
                raw += chunk
        except socket.timeout:
            pass
        elapsed = (time.monotonic() - started) * 1000
        result = answer_of(raw, m.get("key_hex")) if raw else {"token": None}
        result["elapsed_ms"] = round(elapsed, 2)
        result["sent_seq"] = m["seq"]
        print(json.dumps(result), flush=True)


main()
