"""Hangs up on `kmsfs kms serve` before reading its answers, as a local user
without credentials who wants to stop it would: N connections, each sending
20 pipelined unsigned requests and closing at once. The server's answers
then meet a closed socket (EPIPE). Run by tests/server_attacks.rs:

    python3 hangup.py HOST PORT N

Prints `sent N`, or `refused after K` if the server stopped accepting.
"""

import socket
import sys

HOST, PORT, N = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
REQUEST = (
    b"POST / HTTP/1.1\r\nHost: kms\r\nX-Amz-Target: TrentService.ListKeys\r\n"
    b"Content-Type: application/x-amz-json-1.1\r\nContent-Length: 2\r\n\r\n{}"
) * 20

for i in range(N):
    try:
        s = socket.create_connection((HOST, PORT))
        s.sendall(REQUEST)
        s.close()
    except OSError:
        print(f"refused after {i}")
        sys.exit(0)
print(f"sent {N}")
