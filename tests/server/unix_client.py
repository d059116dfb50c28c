"""One AWS JSON 1.1 request over a Unix socket, unsigned (the server takes the
peer's credentials as the caller). Prints `STATUS BODY`.

    python3 unix_client.py SOCKET OPERATION JSON_BODY
"""

import http.client
import socket
import sys


class UnixConnection(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("localhost", timeout=10)
        self.path = path

    def connect(self):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(self.path)
        self.sock = s


path, op, body = sys.argv[1:4]
c = UnixConnection(path)
c.request("POST", "/", body=body.encode(), headers={
    "Content-Type": "application/x-amz-json-1.1",
    "X-Amz-Target": "TrentService." + op,
})
r = c.getresponse()
print(r.status, r.read().decode())
