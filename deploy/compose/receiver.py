"""Webhook sink for the compose stack: logs every request and checks its
Standard Webhooks signature, so deliveries are visible with
`docker compose logs -f receiver`. Standard library only (runs in python:3-slim).
Env: WEBHOOK_SECRET (whsec_<base64> or raw, as HERALD_WEBHOOK_SECRET), HOST
(0.0.0.0), PORT (8080; 0 picks a free one, printed at start)."""
import base64, hashlib, hmac, http.server, json, os, sys

SECRET = os.environ.get("WEBHOOK_SECRET", "")
KEY = base64.b64decode(SECRET[6:]) if SECRET.startswith("whsec_") else SECRET.encode()


class Sink(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        msg_id, ts = self.headers.get("webhook-id", ""), self.headers.get("webhook-timestamp", "")
        mac = hmac.new(KEY, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
        want = "v1," + base64.b64encode(mac).decode()
        sent = self.headers.get("webhook-signature", "").split()
        sig = "unsigned" if not SECRET else ("ok" if want in sent else "BAD")
        self.send_response(200)
        self.end_headers()
        print(json.dumps({"path": self.path, "webhook_id": msg_id, "signature": sig,
                          "body": body.decode("utf-8", "replace")}), flush=True)

    def log_message(self, *args):  # one JSON line per request is enough
        pass


if __name__ == "__main__":
    addr = (os.environ.get("HOST", "0.0.0.0"), int(os.environ.get("PORT", "8080")))
    server = http.server.ThreadingHTTPServer(addr, Sink)
    print(f"receiver listening on port {server.server_address[1]}", file=sys.stderr, flush=True)
    server.serve_forever()
