#!/usr/bin/env bash
# Check the stand-in images for real: start each one, exercise what the
# project relies on, remove what was started. Traffic goes through
# `docker exec` only (nothing is published). Exits non-zero on any failure.
#
#   bash .ci/standins/verify.sh        (after build.sh)
set -uo pipefail

P=onevps-standin-verify
TMP=$(mktemp -d "${TMPDIR:-/tmp}/onevps-standin-verify.XXXXXX")
PASS=0
FAIL=0

cleanup() {
    docker rm -f "$P-nginx" "$P-redis" "$P-chroma" "$P-ollama" >/dev/null 2>&1 || true
    docker volume rm "$P-ollama-data" >/dev/null 2>&1 || true
    rm -rf "$TMP"
}
trap cleanup EXIT
cleanup_start() { docker rm -f "$1" >/dev/null 2>&1 || true; }

# check DESCRIPTION COMMAND... : passes when the command exits 0
check() {
    local what=$1 out
    shift
    if out=$("$@" 2>&1); then
        PASS=$((PASS + 1)); echo "[verify] ok   $what"
    else
        FAIL=$((FAIL + 1)); echo "[verify] FAIL $what"; printf '%s\n' "$out" | tail -n 15 | sed 's/^/         /'
    fi
}

# wait_for NAME COMMAND... : retry a command in a container for up to 60 s
wait_for() {
    local name=$1 i
    shift
    for i in $(seq 1 120); do
        docker exec "$name" "$@" >/dev/null 2>&1 && return 0
        [ "$(docker inspect -f '{{.State.Running}}' "$name" 2>/dev/null)" = true ] || break
        sleep 0.5
    done
    docker logs --tail 30 "$name" 2>&1
    return 1
}

# ---------------------------------------------------------------- python
check "python:3.11-slim: python, ssl, pip, venv, update-ca-certificates, no PEP 668 marker" \
    docker run --rm python:3.11-slim sh -ec '
        python -c "import ssl,sys; print(sys.version); assert sys.version_info[:2] == (3, 11)"
        pip --version | grep -q "python 3.11"
        pip3 --version >/dev/null
        python3 -m venv /tmp/v && /tmp/v/bin/pip --version >/dev/null
        command -v update-ca-certificates
        test ! -e /usr/lib/python3.11/EXTERNALLY-MANAGED
        test -z "$(ls /usr/local/share/ca-certificates)"'   # no proxy CA baked in
check "python:3.11-slim: PIP_CERT is honoured" \
    docker run --rm -e PIP_CERT=/nonexistent/ca.pem python:3.11-slim sh -c \
        'pip download --no-deps -d /tmp/d six 2>&1 | grep -q "/nonexistent/ca.pem"'

# ---------------------------------------------------------------- nginx
mkdir -p "$TMP/templates"
cat > "$TMP/templates/app.conf.template" <<'EOF'
server {
    listen ${APP_PORT};
    location / { return 200 "backend=${BACKEND_NAME} uri=$request_uri\n"; }
}
EOF
cleanup_start "$P-nginx"
docker run -d --name "$P-nginx" -e APP_PORT=8080 -e BACKEND_NAME=blue \
    -v "$TMP/templates:/etc/nginx/templates:ro" nginx:1.27-bookworm >/dev/null
check "nginx: starts, renders the template (only defined variables)" \
    wait_for "$P-nginx" sh -c 'curl -fsS http://127.0.0.1:8080/x?y=1 | grep -qx "backend=blue uri=/x?y=1"'
check "nginx: default page, nginx -t, user nginx, logs to stdout/stderr" \
    docker exec "$P-nginx" sh -ec '
        curl -fsS http://127.0.0.1/ | grep -q "Welcome to nginx"
        nginx -t
        id nginx | grep -q "uid=101"
        test "$(readlink /var/log/nginx/access.log)" = /dev/stdout
        test "$(readlink /var/log/nginx/error.log)" = /dev/stderr
        test ! -e /etc/nginx/sites-enabled/default'
check "nginx: STOPSIGNAL, CMD, ENTRYPOINT, EXPOSE like upstream" \
    sh -c '[ "$(docker image inspect -f "{{.Config.StopSignal}} {{json .Config.Cmd}} {{json .Config.Entrypoint}} {{json .Config.ExposedPorts}}" nginx:1.27-bookworm)" = "SIGQUIT [\"nginx\",\"-g\",\"daemon off;\"] [\"/docker-entrypoint.sh\"] {\"80/tcp\":{}}" ]'
docker rm -f "$P-nginx" >/dev/null

# ---------------------------------------------------------------- redis
cleanup_start "$P-redis"
docker run -d --name "$P-redis" redis:7.4-bookworm --appendonly yes --requirepass x >/dev/null
check "redis: --appendonly yes --requirepass x, ping with password" \
    wait_for "$P-redis" sh -c 'redis-cli -a x --no-auth-warning ping | grep -qx PONG'
check "redis: auth required, protected-mode off, all interfaces, runs as redis in /data" \
    docker exec "$P-redis" sh -ec '
        redis-cli ping 2>&1 | grep -q NOAUTH
        c() { redis-cli -a x --no-auth-warning config get "$1" | tail -n 1; }
        test "$(c protected-mode)" = no
        test "$(c appendonly)" = yes
        test "$(c daemonize)" = no
        test "$(c dir)" = /data
        c bind | grep -q "\*"
        test "$(stat -c %U /proc/1)" = redis'
docker rm -f "$P-redis" >/dev/null

# ---------------------------------------------------------------- chroma
cleanup_start "$P-chroma"
docker run -d --name "$P-chroma" chromadb/chroma:1.0.20 >/dev/null
check "chroma: the project's healthcheck (bash /dev/tcp on 8000)" \
    wait_for "$P-chroma" /bin/bash -c 'cat < /dev/null > /dev/tcp/localhost/8000'
check "chroma: REST v2 round trip (collection, add with embeddings, query, persisted in /data)" \
    docker exec "$P-chroma" python3 -c '
import json, urllib.request
B = "http://127.0.0.1:8000/api/v2"
C = B + "/tenants/default_tenant/databases/default_database/collections"
def call(method, url, body=None):
    req = urllib.request.Request(url, method=method, data=None if body is None else json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read() or b"null")
assert "nanosecond heartbeat" in call("GET", B + "/heartbeat")
col = call("POST", C, {"name": "verify", "metadata": {"hnsw:space": "cosine"}, "get_or_create": True})
cid = col["id"]
call("POST", f"{C}/{cid}/add", {"ids": ["a", "b"], "embeddings": [[1, 0, 0], [0, 1, 0]],
                                "documents": ["alpha", "beta"], "metadatas": [{"k": 1}, {"k": 2}]})
assert call("GET", f"{C}/{cid}/count") == 2
q = call("POST", f"{C}/{cid}/query", {"query_embeddings": [[0.9, 0.1, 0]], "n_results": 1,
                                      "include": ["documents", "metadatas", "distances"]})
assert q["ids"] == [["a"]] and q["documents"] == [["alpha"]] and q["metadatas"] == [[{"k": 1}]], q
assert call("GET", C + "/verify")["id"] == cid
import os; assert os.path.exists("/data/chroma.sqlite3")
print("ok")'

# ---------------------------------------------------------------- ollama
cleanup_start "$P-ollama"
docker volume rm "$P-ollama-data" >/dev/null 2>&1 || true
docker run -d --name "$P-ollama" -v "$P-ollama-data:/root/.ollama" ollama/ollama:0.9.6 >/dev/null
check "ollama: \`ollama list\` healthcheck, default model llama3.2:1b, --version" \
    wait_for "$P-ollama" sh -c 'ollama list | grep -q "^llama3.2:1b " && ollama --version | grep -qx "ollama version is 0.9.6"'
check "ollama: generate/chat (stream and not), pull, tags, embeddings, unknown model 404" \
    docker exec "$P-ollama" python3 -c '
import json, urllib.request, urllib.error
B = "http://127.0.0.1:11434"
def call(path, body=None, lines=False):
    req = urllib.request.Request(B + path, data=None if body is None else json.dumps(body).encode())
    with urllib.request.urlopen(req) as r:
        raw = r.read().decode()
    return [json.loads(l) for l in raw.splitlines() if l] if lines else json.loads(raw)
assert call("/api/version") == {"version": "0.9.6"}
g = call("/api/generate", {"model": "llama3.2:1b", "prompt": "hi there", "stream": False})
assert g["response"] == "stand-in llama3.2:1b reply to: hi there" and g["done"] and g["eval_count"] > 0, g
parts = call("/api/generate", {"model": "llama3.2:1b", "prompt": "hi there"}, lines=True)
assert "".join(p["response"] for p in parts) == g["response"] and parts[-1]["done"], parts
c = call("/api/chat", {"model": "llama3.2:1b", "stream": False,
                       "messages": [{"role": "user", "content": "2+2?"}]})
assert c["message"] == {"role": "assistant", "content": "stand-in llama3.2:1b reply to: 2+2?"}, c
parts = call("/api/chat", {"model": "llama3.2:1b", "messages": [{"role": "user", "content": "yo"}]}, lines=True)
assert parts[-1]["done"] and "".join(p["message"]["content"] for p in parts).endswith("yo")
try:
    call("/api/generate", {"model": "mistral", "prompt": "x"}); raise SystemExit("no 404")
except urllib.error.HTTPError as e:
    assert e.code == 404 and json.loads(e.read()) == {"error": "model '"'"'mistral'"'"' not found, try pulling it first"}
assert call("/api/pull", {"model": "nomic-embed-text", "stream": False}) == {"status": "success"}
assert call("/api/pull", {"model": "mistral"}, lines=True)[-1] == {"status": "success"}
names = [m["name"] for m in call("/api/tags")["models"]]
assert {"llama3.2:1b", "nomic-embed-text:latest", "mistral:latest"} <= set(names), names
e = call("/api/embed", {"model": "nomic-embed-text", "input": ["a b", "a b"]})
assert len(e["embeddings"]) == 2 and e["embeddings"][0] == e["embeddings"][1] and len(e["embeddings"][0]) == 768
assert len(call("/api/embeddings", {"model": "nomic-embed-text", "prompt": "a"})["embedding"]) == 768
print("ok")'
check "ollama: \`ollama pull\` CLI, models kept in the volume across a restart" \
    sh -ec "docker exec $P-ollama ollama pull qwen2.5:0.5b | tail -n 1 | grep -qx success
            docker restart $P-ollama >/dev/null
            for i in \$(seq 1 60); do docker exec $P-ollama ollama list >/dev/null 2>&1 && break; sleep 0.5; done
            docker exec $P-ollama ollama list | grep -q '^qwen2.5:0.5b '"

echo "verify: $PASS passed, $FAIL failed"
[ "$FAIL" = 0 ]
