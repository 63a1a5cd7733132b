"""A Confluent-compatible Schema Registry for the tests, in memory.

No real registry installs here (Confluent's, Apicurio and Karapace are not on PyPI, and
Karapace also needs a Kafka with CreateTopics, which librdkafka's mock cluster lacks).
This one serves the part of the REST API that clients use, with the registry's own
answers and error codes, and checks compatibility with the Apache Avro library
(`avro.compatibility`, BACKWARD by default, like the real one):

  POST /subjects/{s}/versions        register (same schema: same id; 409; 422)
  GET  /schemas/ids/{id}             schema by id (40403)
  GET  /subjects                     subjects
  GET  /subjects/{s}/versions/latest latest version (40401)
  PUT  /config/{s}                   {"compatibility": "NONE" | "BACKWARD" | ...}

Usage: python3 schema_registry.py [--port N] [--user U --password P]
[--preload SUBJECT SCHEMA]...; prints the base URL, then
serves until stdin closes (so it dies with the test process that started it).
"""

import argparse
import base64
import json
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import avro.schema
from avro.compatibility import ReaderWriterCompatibilityChecker, SchemaCompatibilityType

lock = threading.Lock()
schemas = []  # id - 1 -> canonical text
subjects = {}  # subject -> [id, ...]
compat = {}  # subject -> level
args = None


def canonical(text):
    return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))


def compatible(level, new, olds):
    if level == "NONE" or not olds:
        return None
    check = ReaderWriterCompatibilityChecker()
    if level.endswith("TRANSITIVE"):
        targets = olds
    else:
        targets = olds[-1:]
    for old in targets:
        pairs = []
        if level.startswith("BACKWARD") or level.startswith("FULL"):
            pairs.append((new, old))
        if level.startswith("FORWARD") or level.startswith("FULL"):
            pairs.append((old, new))
        for reader, writer in pairs:
            r = check.get_compatibility(reader=reader, writer=writer)
            if r.compatibility != SchemaCompatibilityType.compatible:
                return "; ".join(sorted(r.messages)) or "incompatible"
    return None


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def error(self, status, code, message):
        self.reply(status, {"error_code": code, "message": message})

    def authorized(self):
        if not args.user:
            return True
        want = "Basic " + base64.b64encode(f"{args.user}:{args.password}".encode()).decode()
        if self.headers.get("Authorization") == want:
            return True
        self.error(401, 401, "Unauthorized")
        return False

    def parts(self):
        path = urllib.parse.urlparse(self.path).path
        return [urllib.parse.unquote(p) for p in path.strip("/").split("/")]

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(n) or b"{}")

    def do_GET(self):
        if not self.authorized():
            return
        p = self.parts()
        with lock:
            if p == ["subjects"]:
                return self.reply(200, sorted(subjects))
            if len(p) == 3 and p[:2] == ["schemas", "ids"]:
                i = int(p[2])
                if 1 <= i <= len(schemas):
                    return self.reply(200, {"schema": schemas[i - 1]})
                return self.error(404, 40403, f"Schema {i} not found")
            if len(p) == 4 and p[0] == "subjects" and p[2] == "versions" and p[3] == "latest":
                ids = subjects.get(p[1])
                if not ids:
                    return self.error(404, 40401, f"Subject '{p[1]}' not found.")
                return self.reply(200, {"subject": p[1], "version": len(ids), "id": ids[-1],
                                        "schema": schemas[ids[-1] - 1]})
        self.error(404, 404, "HTTP 404 Not Found")

    def do_PUT(self):
        if not self.authorized():
            return
        p = self.parts()
        if len(p) == 2 and p[0] == "config":
            level = self.body().get("compatibility", "BACKWARD")
            with lock:
                compat[p[1]] = level
            return self.reply(200, {"compatibility": level})
        self.error(404, 404, "HTTP 404 Not Found")

    def do_POST(self):
        if not self.authorized():
            return
        p = self.parts()
        if not (len(p) == 3 and p[0] == "subjects" and p[2] == "versions"):
            return self.error(404, 404, "HTTP 404 Not Found")
        subject = p[1]
        text = self.body().get("schema", "")
        try:
            parsed = avro.schema.parse(text)
            text = canonical(text)
        except Exception as e:  # the registry's own answer to a schema it cannot parse
            return self.error(422, 42201, f"Invalid schema {text}: {e}")
        with lock:
            ids = subjects.setdefault(subject, [])
            for i in ids:
                if schemas[i - 1] == text:
                    return self.reply(200, {"id": i})
            olds = [avro.schema.parse(schemas[i - 1]) for i in ids]
            why = compatible(compat.get(subject, "BACKWARD"), parsed, olds)
            if why:
                return self.error(
                    409, 409,
                    f"Schema being registered is incompatible with an earlier schema for subject "
                    f"\"{subject}\", details: [{why}]")
            if text in schemas:
                i = schemas.index(text) + 1
            else:
                schemas.append(text)
                i = len(schemas)
            ids.append(i)
        self.reply(200, {"id": i})


def main():
    global args
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--user")
    ap.add_argument("--password", default="")
    ap.add_argument("--preload", nargs=2, action="append", default=[],
                    metavar=("SUBJECT", "SCHEMA"), help="register SCHEMA before serving")
    args = ap.parse_args()
    for subject, text in args.preload:
        schemas.append(canonical(text))
        subjects.setdefault(subject, []).append(len(schemas))
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"http://127.0.0.1:{server.server_address[1]}", flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdin.read()


if __name__ == "__main__":
    main()
