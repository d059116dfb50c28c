"""Holds N connections to `kmsfs kms serve` open without credentials, as a
local user who wants to starve it would (issue 15.5). A third connect and
send nothing, a third send half a request head, a third send a complete
unsigned head announcing a body that never comes. Whatever the server
closes is opened again, until stdin closes. Run by tests/server_attacks.rs:

    python3 stall.py HOST PORT N

Prints `holding N` once all N were opened the first time, then, at the
end, `reopened K` (how many the server had closed).
"""

import select
import socket
import sys
import threading
import time

HOST, PORT, N = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
HEAD = (
    "POST / HTTP/1.1\r\nHost: {h}\r\nContent-Type: application/x-amz-json-1.1\r\n"
    "X-Amz-Target: TrentService.Decrypt\r\n"
).format(h=HOST)
SENDS = [b"", HEAD.encode(), (HEAD + "Content-Length: 100000\r\n\r\n{\"Cipher").encode()]


def open_one(i):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(True)
    s.settimeout(5)
    try:
        s.connect((HOST, PORT))
        if SENDS[i % 3]:
            s.sendall(SENDS[i % 3])
    except OSError:
        pass
    s.setblocking(False)
    return s


done = threading.Event()
threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
socks = [open_one(i) for i in range(N)]
print("holding", len(socks), flush=True)
reopened = 0
while not done.is_set():
    readable, _, _ = select.select(socks, [], [], 0.2)
    for s in readable:
        try:
            data = s.recv(65536)
        except OSError:
            data = b""
        if not data:
            i = socks.index(s)
            s.close()
            socks[i] = open_one(i)
            reopened += 1
    time.sleep(1.0)
print("reopened", reopened, flush=True)
