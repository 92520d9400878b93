"""Sequential HTTP requests over one keep-alive connection, timed, for the benchmarks that talk
to the worker (scripts/bench-worker, scripts/bench-writes)."""
import http.client
import json
import time


class KeepAlive:
    """Sequential requests over one persistent connection (no TCP setup in the measurement)."""

    def __init__(self, base, key):
        self.host, self.port = base.removeprefix("http://").split(":")
        self.key = key
        self.conn = http.client.HTTPConnection(self.host, int(self.port), timeout=60)

    def call(self, method, path, body=None):
        """(milliseconds, status, headers, parsed body); reconnects once if the server closed an
        idle connection (the failed attempt is not timed)."""
        try:
            return self.timed_call(method, path, body)
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            self.conn.close()
            self.conn = http.client.HTTPConnection(self.host, int(self.port), timeout=60)
            return self.timed_call(method, path, body)

    def timed_call(self, method, path, body):
        headers = {"authorization": f"Bearer {self.key}"}
        if body is not None:
            headers["content-type"] = "application/json"
        # Encoded before the clock starts: a 384-float vector takes this client ~0.1 ms to encode.
        encoded = json.dumps(body) if body is not None else None
        t0 = time.perf_counter()
        self.conn.request(method, path, encoded, headers)
        response = self.conn.getresponse()
        data = response.read()
        wall = (time.perf_counter() - t0) * 1000
        return wall, response.status, {k.lower(): v for k, v in response.getheaders()}, json.loads(data or b"null")
