#!/usr/bin/python3
# =============================================================================
#  THIS IS NOT OLLAMA. It is a TEST DOUBLE standing in for ollama/ollama:0.9.6.
#
#  No Ollama binary (nor any model weights) can be had on the onevps
#  developer/CI machines: no container registry, no downloads outside the
#  package registries. So this small server, Python standard library only,
#  speaks the part of Ollama's HTTP API the apps use, with Ollama's response
#  shapes, and answers deterministically:
#      "stand-in llama3.2:1b reply to: <last user text>"
#  It is the ONE test double among the onevps stand-in images; nginx, Redis
#  and ChromaDB stand-ins run the real servers. See ../README.md.
#
#  Installed as /bin/ollama:  ollama serve | list | pull NAME | rm NAME |
#  run NAME [PROMPT] | ps | show NAME | --version
#
#  Server endpoints: GET/HEAD /, GET /api/version, GET /api/tags, GET /api/ps,
#  POST /api/pull, /api/generate, /api/chat, /api/embeddings, /api/embed,
#  /api/show, /api/copy, DELETE /api/delete, and the OpenAI-compatible
#  GET /v1/models, POST /v1/chat/completions, /v1/embeddings.
#
#  Environment: OLLAMA_HOST (default 127.0.0.1:11434; the image sets
#  0.0.0.0:11434), OLLAMA_MODELS (default ~/.ollama/models),
#  OLLAMA_STANDIN_DEFAULT_MODELS (models present in a new store, comma
#  separated, default llama3.2:1b), OLLAMA_STANDIN_PULL_DENY (names whose pull
#  fails like a name missing from the registry), OLLAMA_STANDIN_TOKEN_DELAY
#  (seconds between streamed chunks, default 0).
# =============================================================================
import datetime as _dt
import hashlib
import json
import math
import os
import re
import signal
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = "0.9.6"
DEFAULT_REGISTRY = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"

# Sizes/dimensions of a few well-known models, so listings look plausible.
KNOWN = {
    "llama3.2:1b": (1321098329, "llama", "1.2B", "Q8_0", 2048),
    "llama3.2:3b": (2019393189, "llama", "3.2B", "Q4_K_M", 3072),
    "llama3.2:latest": (2019393189, "llama", "3.2B", "Q4_K_M", 3072),
    "llama3.1:8b": (4920753328, "llama", "8.0B", "Q4_K_M", 4096),
    "nomic-embed-text:latest": (274302450, "nomic-bert", "137M", "F16", 768),
    "mxbai-embed-large:latest": (669615493, "bert", "334M", "F16", 1024),
    "all-minilm:latest": (45960996, "bert", "23M", "F16", 384),
}


# --------------------------------------------------------------------------
# model names and the on-disk store (same layout as Ollama's manifests)
# --------------------------------------------------------------------------
_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")


class NameError_(ValueError):
    pass


def parse_name(name):
    """'llama3.2:1b' -> (host, namespace, model, tag); raises NameError_."""
    if not isinstance(name, str) or not name.strip():
        raise NameError_("model is required")
    name = name.strip()
    tag = "latest"
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = name.rsplit(":", 1)
    parts = name.split("/")
    if len(parts) == 1:
        host, ns, model = DEFAULT_REGISTRY, DEFAULT_NAMESPACE, parts[0]
    elif len(parts) == 2:
        host, (ns, model) = DEFAULT_REGISTRY, parts
    elif len(parts) == 3:
        host, ns, model = parts
    else:
        raise NameError_("invalid model name")
    for p in (ns, model, tag):
        if not _PART.match(p):
            raise NameError_("invalid model name")
    if not re.match(r"^[A-Za-z0-9.-]+(:[0-9]+)?$", host):
        raise NameError_("invalid model name")
    return host, ns, model.lower(), tag


def display_name(parsed):
    host, ns, model, tag = parsed
    if host == DEFAULT_REGISTRY and ns == DEFAULT_NAMESPACE:
        return f"{model}:{tag}"
    if host == DEFAULT_REGISTRY:
        return f"{ns}/{model}:{tag}"
    return f"{host}/{ns}/{model}:{tag}"


def models_dir():
    return os.environ.get("OLLAMA_MODELS") or os.path.join(os.path.expanduser("~"), ".ollama", "models")


def manifest_path(parsed):
    host, ns, model, tag = parsed
    return os.path.join(models_dir(), "manifests", host, ns, model, tag)


def is_embedding_model(name):
    return any(k in name for k in ("embed", "minilm", "bge-", "e5-"))


def canonical(name):
    try:
        return display_name(parse_name(name))
    except NameError_:
        return str(name)


def model_facts(name):
    name = canonical(name)
    if name in KNOWN:
        return KNOWN[name]
    h = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
    size = 400_000_000 + h % 4_000_000_000
    return (size, "llama", "unknown", "Q4_K_M", 768)


def write_manifest(name):
    parsed = parse_name(name)
    disp = display_name(parsed)
    size = model_facts(disp)[0]
    layer = "sha256:" + hashlib.sha256(("model:" + disp).encode()).hexdigest()
    config = "sha256:" + hashlib.sha256(("config:" + disp).encode()).hexdigest()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": config, "size": 485},
        "layers": [{"mediaType": "application/vnd.ollama.image.model", "digest": layer, "size": size}],
        "standin": "written by the onevps Ollama stand-in; no weights exist",
    }
    path = manifest_path(parsed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(manifest, f)
    os.replace(tmp, path)
    return disp


def read_model(name):
    """The /api/tags entry of an installed model, or None."""
    try:
        parsed = parse_name(name)
    except NameError_:
        return None
    path = manifest_path(parsed)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        st = os.stat(path)
        manifest = json.loads(raw)
    except (OSError, ValueError):
        return None
    disp = display_name(parsed)
    size, family, psize, quant, _dim = model_facts(disp)
    size = sum(l.get("size", 0) for l in manifest.get("layers", [])) or size
    return {
        "name": disp,
        "model": disp,
        "modified_at": rfc3339(st.st_mtime),
        "size": size,
        "digest": hashlib.sha256(raw).hexdigest(),
        "details": {
            "parent_model": "",
            "format": "gguf",
            "family": family,
            "families": [family],
            "parameter_size": psize,
            "quantization_level": quant,
        },
    }


def list_models():
    root = os.path.join(models_dir(), "manifests")
    out = []
    if not os.path.isdir(root):
        return out
    for host in sorted(os.listdir(root)):
        for ns in sorted(os.listdir(os.path.join(root, host))):
            nsdir = os.path.join(root, host, ns)
            if not os.path.isdir(nsdir):
                continue
            for model in sorted(os.listdir(nsdir)):
                mdir = os.path.join(nsdir, model)
                if not os.path.isdir(mdir):
                    continue
                for tag in sorted(os.listdir(mdir)):
                    if tag.endswith(".tmp"):
                        continue
                    m = read_model(display_name((host, ns, model, tag)))
                    if m:
                        out.append(m)
    out.sort(key=lambda m: m["modified_at"], reverse=True)
    return out


def seed_default_models():
    """A new store (no manifests folder yet) starts with the default models."""
    if os.path.isdir(os.path.join(models_dir(), "manifests")):
        return
    names = os.environ.get("OLLAMA_STANDIN_DEFAULT_MODELS", "llama3.2:1b")
    os.makedirs(os.path.join(models_dir(), "manifests"), exist_ok=True)
    os.makedirs(os.path.join(models_dir(), "blobs"), exist_ok=True)
    for n in filter(None, (x.strip() for x in names.split(","))):
        write_manifest(n)


# --------------------------------------------------------------------------
# deterministic "inference"
# --------------------------------------------------------------------------
def dumps(obj):
    """JSON as Go's encoder writes it: compact, UTF-8."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def rfc3339(ts=None):
    ts = time.time() if ts is None else ts
    d = _dt.datetime.fromtimestamp(ts, _dt.timezone.utc)
    return d.strftime("%Y-%m-%dT%H:%M:%S.") + f"{d.microsecond:06d}000Z"


def words(text):
    return re.findall(r"\w+", (text or "").lower())


def reply_text(model, text):
    return f"stand-in {model} reply to: {text}"


def chunks(text):
    """Split like a token stream: words with their trailing spaces."""
    return re.findall(r"\S+\s*|\s+", text) or [""]


def fill_schema(schema, text, depth=0):
    """A value that fits a JSON schema (for `format` as a schema)."""
    if not isinstance(schema, dict) or depth > 8:
        return text
    if "enum" in schema and schema["enum"]:
        return schema["enum"][0]
    if "const" in schema:
        return schema["const"]
    t = schema.get("type")
    if isinstance(t, list):
        t = next((x for x in t if x != "null"), "null")
    if t == "object" or "properties" in schema:
        return {k: fill_schema(v, text, depth + 1) for k, v in (schema.get("properties") or {}).items()}
    if t == "array":
        return [fill_schema(schema.get("items") or {}, text, depth + 1)]
    if t == "integer":
        return 0
    if t == "number":
        return 0.0
    if t == "boolean":
        return False
    if t == "null":
        return None
    return text


def formatted_reply(model, text, fmt):
    reply = reply_text(model, text)
    if fmt == "json":
        return json.dumps({"model": model, "reply": reply})
    if isinstance(fmt, dict):
        return json.dumps(fill_schema(fmt, reply))
    return reply


def embed_dim(model):
    env = os.environ.get("OLLAMA_STANDIN_EMBED_DIM")
    if env:
        return int(env)
    return model_facts(model)[4]


def embedding(model, text, dim=None):
    """Deterministic unit vector; texts sharing words get similar vectors
    (feature hashing of words), so retrieval tests behave sensibly."""
    dim = dim or embed_dim(model)
    vec = [0.0] * dim
    h = hashlib.sha256(("bias:" + canonical(model)).encode()).digest()
    vec[int.from_bytes(h[:4], "big") % dim] += 0.1
    for w in words(text):
        d = hashlib.sha256(w.encode()).digest()
        for k in range(2):
            i = int.from_bytes(d[4 * k:4 * k + 4], "big") % dim
            vec[i] += 1.0 if d[8 + k] & 1 else -1.0
    norm = math.sqrt(sum(x * x for x in vec)) or 1.0
    return [round(x / norm, 7) for x in vec]


def stats(prompt_text, out_chunks, start):
    prompt_tokens = max(1, len(words(prompt_text)))
    eval_count = max(1, len(out_chunks))
    total = max(int((time.monotonic() - start) * 1e9), 1_000_000)
    return {
        "total_duration": total,
        "load_duration": 1_000_000,
        "prompt_eval_count": prompt_tokens,
        "prompt_eval_duration": prompt_tokens * 1_000_000,
        "eval_count": eval_count,
        "eval_duration": eval_count * 10_000_000,
    }


# --------------------------------------------------------------------------
# HTTP server
# --------------------------------------------------------------------------
LOADED = {}  # model -> time it was last used (for /api/ps)
LOCK = threading.Lock()


class HTTPError_(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def not_found(name):
    return HTTPError_(404, f"model '{name}' not found, try pulling it first")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ollama-standin/" + VERSION
    sys_version = ""

    # ---- plumbing ----
    def log_message(self, fmt, *args):
        pass

    def _log(self, code):
        ms = (time.monotonic() - self._t0) * 1000
        sys.stderr.write(
            f"[GIN] {time.strftime('%Y/%m/%d - %H:%M:%S')} | {code:3d} | {ms:10.3f}ms |"
            f" {self.client_address[0]:>15} | {self.command:<7} \"{self.path}\"\n")
        sys.stderr.flush()

    def _send(self, code, body, ctype="application/json; charset=utf-8"):
        data = body if isinstance(body, bytes) else (
            body.encode() if isinstance(body, str) else dumps(body).encode())
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        self._log(code)

    def _stream_start(self, ctype="application/x-ndjson"):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _stream_write(self, data):
        if isinstance(data, (dict, list)):
            data = dumps(data) + "\n"
        if isinstance(data, str):
            data = data.encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _stream_end(self):
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        self._log(200)

    def _json_body(self):
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            raw = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                raw += self.rfile.read(size)
                self.rfile.readline()
        else:
            n = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(n) if n else b""
        if not raw.strip():
            return {}
        try:
            body = json.loads(raw)
        except ValueError as e:
            raise HTTPError_(400, f"invalid character in request body: {e}")
        if not isinstance(body, dict):
            raise HTTPError_(400, "request body must be a JSON object")
        return body

    def _dispatch(self, routes):
        self._t0 = time.monotonic()
        path = self.path.split("?", 1)[0].rstrip("/") or "/"
        fn = routes.get(path)
        try:
            if fn is None:
                known = any(path in r for r in (GET_ROUTES, POST_ROUTES, DELETE_ROUTES))
                if known:
                    self._send(405, "405 method not allowed", "text/plain")
                else:
                    self._send(404, "404 page not found", "text/plain")
                return
            fn(self)
        except HTTPError_ as e:
            self._send(e.code, {"error": e.message})
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self):
        self._dispatch(GET_ROUTES)

    def do_HEAD(self):
        self._dispatch(GET_ROUTES)

    def do_POST(self):
        self._dispatch(POST_ROUTES)

    def do_DELETE(self):
        self._dispatch(DELETE_ROUTES)

    # ---- helpers ----
    def _model_arg(self, body, *, must_exist=True):
        """The model name as the request gave it (Ollama echoes it back)."""
        name = body.get("model") or body.get("name")
        try:
            disp = display_name(parse_name(name))
        except NameError_ as e:
            raise HTTPError_(400, str(e))
        if must_exist and read_model(disp) is None:
            raise not_found(name)
        with LOCK:
            LOADED[disp] = time.time()
        return name.strip()

    def _wants_stream(self, body):
        s = body.get("stream")
        return True if s is None else bool(s)

    # ---- endpoints ----
    def root(self):
        self._send(200, "Ollama is running", "text/plain; charset=utf-8")

    def version(self):
        self._send(200, {"version": VERSION})

    def tags(self):
        self._send(200, {"models": list_models()})

    def ps(self):
        now = time.time()
        out = []
        with LOCK:
            items = [(m, t) for m, t in LOADED.items() if now - t < 300]
        for name, t in items:
            m = read_model(name)
            if m:
                out.append({"name": name, "model": name, "size": m["size"], "digest": m["digest"],
                            "details": m["details"], "expires_at": rfc3339(t + 300), "size_vram": 0})
        self._send(200, {"models": out})

    def pull(self):
        body = self._json_body()
        name = body.get("model") or body.get("name")
        try:
            disp = display_name(parse_name(name))
        except NameError_ as e:
            raise HTTPError_(400, str(e))
        deny = {x.strip() for x in os.environ.get("OLLAMA_STANDIN_PULL_DENY", "").split(",") if x.strip()}
        failed = name in deny or disp in deny
        size = model_facts(disp)[0]
        digest = "sha256:" + hashlib.sha256(("model:" + disp).encode()).hexdigest()
        if not self._wants_stream(body):
            if failed:
                raise HTTPError_(500, "pull model manifest: file does not exist")
            write_manifest(disp)
            self._send(200, {"status": "success"})
            return
        self._stream_start()
        self._stream_write({"status": "pulling manifest"})
        if failed:
            self._stream_write({"error": "pull model manifest: file does not exist"})
            self._stream_end()
            return
        for frac in (0, 0.5, 1):
            self._stream_write({"status": f"pulling {digest[7:19]}", "digest": digest,
                                "total": size, "completed": int(size * frac)})
        self._stream_write({"status": "verifying sha256 digest"})
        write_manifest(disp)
        self._stream_write({"status": "writing manifest"})
        self._stream_write({"status": "success"})
        self._stream_end()

    def delete(self):
        body = self._json_body()
        name = body.get("model") or body.get("name")
        try:
            parsed = parse_name(name)
        except NameError_ as e:
            raise HTTPError_(400, str(e))
        try:
            os.remove(manifest_path(parsed))
        except FileNotFoundError:
            raise HTTPError_(404, f"model '{name}' not found")
        with LOCK:
            LOADED.pop(display_name(parsed), None)
        self._send(200, b"", "text/plain")

    def copy(self):
        body = self._json_body()
        src = self._model_arg({"model": body.get("source")})
        try:
            dst = display_name(parse_name(body.get("destination")))
        except NameError_ as e:
            raise HTTPError_(400, str(e))
        with open(manifest_path(parse_name(src)), "rb") as f:
            raw = f.read()
        path = manifest_path(parse_name(dst))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(raw)
        self._send(200, b"", "text/plain")

    def show(self):
        body = self._json_body()
        name = self._model_arg(body)
        m = read_model(name)
        embed = is_embedding_model(name)
        self._send(200, {
            "license": "",
            "modelfile": f"# Modelfile of the onevps stand-in for {name}\nFROM {name}\n",
            "parameters": "",
            "template": "{{ .Prompt }}",
            "details": m["details"],
            "model_info": {"general.architecture": m["details"]["family"],
                           "general.parameter_count": 0,
                           f"{m['details']['family']}.embedding_length": embed_dim(name)},
            "capabilities": ["embedding"] if embed else ["completion"],
            "modified_at": m["modified_at"],
        })

    def _reply(self, body, name, text, prompt_for_stats, shape):
        """Answer generate/chat, streamed or not. shape(piece, final) -> dict."""
        start = time.monotonic()
        out = formatted_reply(name, text, body.get("format"))
        pieces = chunks(out)
        delay = float(os.environ.get("OLLAMA_STANDIN_TOKEN_DELAY", "0") or 0)
        if not self._wants_stream(body):
            final = {"model": name, "created_at": rfc3339(), **shape(out, True),
                     "done_reason": "stop", "done": True}
            final.update(stats(prompt_for_stats, pieces, start))
            return self._send(200, final)
        self._stream_start()
        for p in pieces:
            if delay:
                time.sleep(delay)
            self._stream_write({"model": name, "created_at": rfc3339(), **shape(p, False), "done": False})
        final = {"model": name, "created_at": rfc3339(), **shape("", True), "done_reason": "stop", "done": True}
        final.update(stats(prompt_for_stats, pieces, start))
        self._stream_write(final)
        self._stream_end()

    def generate(self):
        body = self._json_body()
        name = self._model_arg(body)
        if is_embedding_model(name):
            raise HTTPError_(400, f'"{name}" does not support generate')
        prompt = body.get("prompt") or ""
        if not prompt and not body.get("images"):
            # an empty prompt only loads the model
            return self._send(200, {"model": name, "created_at": rfc3339(), "response": "",
                                    "done": True, "done_reason": "load"})
        ctx = [int(hashlib.sha256(w.encode()).hexdigest()[:4], 16) for w in words(prompt)][:64]

        def shape(piece, final):
            return {"response": piece, **({"context": ctx} if final else {})}
        self._reply(body, name, prompt, prompt, shape)

    def chat(self):
        body = self._json_body()
        name = self._model_arg(body)
        if is_embedding_model(name):
            raise HTTPError_(400, f'"{name}" does not support chat')
        messages = body.get("messages") or []
        if not isinstance(messages, list):
            raise HTTPError_(400, "messages must be a list")
        if not messages:
            return self._send(200, {"model": name, "created_at": rfc3339(),
                                    "message": {"role": "assistant", "content": ""},
                                    "done_reason": "load", "done": True})
        last_user = next((m.get("content") or "" for m in reversed(messages)
                          if isinstance(m, dict) and m.get("role") == "user"), "")
        all_text = " ".join(str(m.get("content") or "") for m in messages if isinstance(m, dict))
        self._reply(body, name, last_user, all_text,
                    lambda piece, final: {"message": {"role": "assistant", "content": piece}})

    def embeddings(self):  # legacy: one prompt -> "embedding"
        body = self._json_body()
        name = self._model_arg(body)
        prompt = body.get("prompt") or ""
        self._send(200, {"embedding": embedding(name, prompt) if prompt else []})

    def embed(self):  # current: "input" str or list -> "embeddings"
        start = time.monotonic()
        body = self._json_body()
        name = self._model_arg(body)
        inp = body.get("input")
        if inp is None:
            inp = []
        texts = [inp] if isinstance(inp, str) else inp
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise HTTPError_(400, "invalid input type")
        dim = body.get("dimensions") or None
        vecs = [embedding(name, t, dim) for t in texts]
        self._send(200, {"model": name, "embeddings": vecs,
                         "total_duration": int((time.monotonic() - start) * 1e9) + 1_000_000,
                         "load_duration": 1_000_000,
                         "prompt_eval_count": sum(max(1, len(words(t))) for t in texts)})

    # ---- OpenAI-compatible subset ----
    def _oai_error(self, e):
        self._send(e.code, {"error": {"message": e.message, "type": "api_error", "param": None,
                                      "code": None}})

    def v1_models(self):
        self._send(200, {"object": "list", "data": [
            {"id": m["name"], "object": "model",
             "created": int(_dt.datetime.strptime(m["modified_at"][:19], "%Y-%m-%dT%H:%M:%S")
                            .replace(tzinfo=_dt.timezone.utc).timestamp()),
             "owned_by": "library"} for m in list_models()]})

    def v1_chat(self):
        try:
            body = self._json_body()
            name = self._model_arg(body)
        except HTTPError_ as e:
            return self._oai_error(e)
        messages = body.get("messages") or []
        last_user = next((m.get("content") or "" for m in reversed(messages)
                          if isinstance(m, dict) and m.get("role") == "user"), "")
        if isinstance(last_user, list):  # content parts
            last_user = " ".join(p.get("text", "") for p in last_user if isinstance(p, dict))
        text = reply_text(name, last_user)
        cid = "chatcmpl-" + hashlib.sha256(text.encode()).hexdigest()[:8]
        created = int(time.time())
        usage = {"prompt_tokens": max(1, len(words(last_user))), "completion_tokens": len(chunks(text))}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if not body.get("stream"):
            return self._send(200, {
                "id": cid, "object": "chat.completion", "created": created, "model": name,
                "system_fingerprint": "fp_ollama",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop"}],
                "usage": usage})
        self._stream_start("text/event-stream")
        for p in chunks(text):
            self._stream_write("data: " + dumps({
                "id": cid, "object": "chat.completion.chunk", "created": created, "model": name,
                "system_fingerprint": "fp_ollama",
                "choices": [{"index": 0, "delta": {"role": "assistant", "content": p},
                             "finish_reason": None}]}) + "\n\n")
        self._stream_write("data: " + dumps({
            "id": cid, "object": "chat.completion.chunk", "created": created, "model": name,
            "system_fingerprint": "fp_ollama",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                         "finish_reason": "stop"}]}) + "\n\n")
        self._stream_write("data: [DONE]\n\n")
        self._stream_end()

    def v1_embeddings(self):
        try:
            body = self._json_body()
            name = self._model_arg(body)
        except HTTPError_ as e:
            return self._oai_error(e)
        inp = body.get("input")
        texts = [inp] if isinstance(inp, str) else (inp or [])
        data = [{"object": "embedding", "embedding": embedding(name, str(t)), "index": i}
                for i, t in enumerate(texts)]
        n = sum(max(1, len(words(str(t)))) for t in texts)
        self._send(200, {"object": "list", "data": data, "model": name,
                         "usage": {"prompt_tokens": n, "total_tokens": n}})


GET_ROUTES = {
    "/": Handler.root,
    "/api/version": Handler.version,
    "/api/tags": Handler.tags,
    "/api/ps": Handler.ps,
    "/v1/models": Handler.v1_models,
}
POST_ROUTES = {
    "/api/pull": Handler.pull,
    "/api/generate": Handler.generate,
    "/api/chat": Handler.chat,
    "/api/embeddings": Handler.embeddings,
    "/api/embed": Handler.embed,
    "/api/show": Handler.show,
    "/api/copy": Handler.copy,
    "/v1/chat/completions": Handler.v1_chat,
    "/v1/embeddings": Handler.v1_embeddings,
}
DELETE_ROUTES = {"/api/delete": Handler.delete}


def parse_host(default_host):
    """OLLAMA_HOST like Ollama: [scheme://]host[:port], default port 11434."""
    raw = os.environ.get("OLLAMA_HOST", "").strip() or default_host
    raw = re.sub(r"^[a-z]+://", "", raw).rstrip("/")
    m = re.match(r"^\[?([^\]]*?)\]?(?::(\d+))?$", raw)
    host, port = (m.group(1), m.group(2)) if m else (raw, None)
    return host or default_host, int(port or 11434)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve():
    host, port = parse_host("127.0.0.1")
    seed_default_models()
    if ":" in host:
        Server.address_family = socket.AF_INET6
    httpd = Server((host, port), Handler)

    def stop(*_):
        threading.Thread(target=httpd.shutdown, daemon=True).start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    sys.stderr.write(
        f"time={rfc3339()} level=INFO msg=\"Listening on {host}:{port} (version {VERSION})\"\n"
        f"time={rfc3339()} level=WARN msg=\"THIS IS THE ONEVPS OLLAMA STAND-IN (a test double,"
        f" no real model): models in {models_dir()}\"\n")
    sys.stderr.flush()
    httpd.serve_forever()
    httpd.server_close()
    return 0


# --------------------------------------------------------------------------
# CLI client
# --------------------------------------------------------------------------
def client_base():
    host, port = parse_host("127.0.0.1")
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


class Unreachable(Exception):
    pass


def request(method, path, body=None, stream=False, timeout=30):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(client_base() + path, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        try:
            msg = json.loads(e.read()).get("error")
        except ValueError:
            msg = None
        raise RuntimeError(msg or f"{e.code} {e.reason}")
    except (urllib.error.URLError, OSError) as e:
        raise Unreachable(str(e))
    if stream:
        return (json.loads(line) for line in resp if line.strip())
    raw = resp.read()
    return json.loads(raw) if raw.strip() else None


def human_bytes(n):
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= div:
            v = n / div
            return f"{v:.1f} {unit}" if v < 10 else f"{v:.0f} {unit}"
    return f"{n} B"


def human_time(iso):
    try:
        t = _dt.datetime.strptime(iso[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=_dt.timezone.utc)
    except ValueError:
        return iso
    s = (_dt.datetime.now(_dt.timezone.utc) - t).total_seconds()
    for limit, div, one, many in ((60, 1, "Less than a second ago", "{} seconds ago"),
                                  (3600, 60, "About a minute ago", "{} minutes ago"),
                                  (86400, 3600, "About an hour ago", "{} hours ago"),
                                  (86400 * 7, 86400, "1 day ago", "{} days ago"),
                                  (86400 * 30, 86400 * 7, "1 week ago", "{} weeks ago"),
                                  (float("inf"), 86400 * 30, "1 month ago", "{} months ago")):
        if s < limit:
            n = int(s // div)
            return one if n <= 1 else many.format(n)
    return iso


def table(rows, headers):
    widths = [max(len(str(r[i])) for r in rows + [headers]) for i in range(len(headers))]
    for r in [headers] + rows:
        print("    ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())


def cmd_list(_args):
    models = request("GET", "/api/tags")["models"]
    table([[m["name"], m["digest"][:12], human_bytes(m["size"]), human_time(m["modified_at"])]
           for m in models], ["NAME", "ID", "SIZE", "MODIFIED"])
    return 0


def cmd_ps(_args):
    models = request("GET", "/api/ps")["models"]
    table([[m["name"], m["digest"][:12], human_bytes(m["size"]), "100% CPU", "4 minutes from now"]
           for m in models], ["NAME", "ID", "SIZE", "PROCESSOR", "UNTIL"])
    return 0


def cmd_pull(args):
    if not args:
        raise RuntimeError("accepts 1 arg(s), received 0")
    for ev in request("POST", "/api/pull", {"model": args[0], "stream": True}, stream=True):
        if ev.get("error"):
            raise RuntimeError(ev["error"])
        line = ev.get("status", "")
        if ev.get("total"):
            line += f" {100 * ev.get('completed', 0) // ev['total']:3d}% {human_bytes(ev['total'])}"
        print(line, flush=True)
    return 0


def cmd_rm(args):
    for name in args:
        request("DELETE", "/api/delete", {"model": name})
        print(f"deleted '{name}'")
    return 0


def cmd_show(args):
    info = request("POST", "/api/show", {"model": args[0] if args else ""})
    d = info["details"]
    print(f"  Model\n    architecture        {d['family']}\n    parameters          {d['parameter_size']}\n"
          f"    quantization        {d['quantization_level']}\n\n  Capabilities\n"
          + "".join(f"    {c}\n" for c in info.get("capabilities", [])))
    return 0


def cmd_run(args):
    if not args:
        raise RuntimeError("requires at least 1 arg(s), only received 0")
    name, prompt = args[0], " ".join(args[1:])
    if not prompt and not sys.stdin.isatty():
        prompt = sys.stdin.read().strip()
    try:
        request("POST", "/api/show", {"model": name})
    except RuntimeError:
        cmd_pull([name])
    if not prompt:
        print("(the stand-in has no interactive mode; pass a prompt)", file=sys.stderr)
        return 0
    for ev in request("POST", "/api/generate", {"model": name, "prompt": prompt, "stream": True},
                      stream=True):
        if ev.get("error"):
            raise RuntimeError(ev["error"])
        print(ev.get("response", ""), end="", flush=True)
    print()
    return 0


def cmd_version(_args):
    try:
        v = request("GET", "/api/version", timeout=5)["version"]
        print(f"ollama version is {v}")
    except (Unreachable, RuntimeError):
        print("Warning: could not connect to a running Ollama instance")
        print(f"Warning: client version is {VERSION}")
    return 0


USAGE = """Large language model runner (onevps STAND-IN: a test double, not Ollama)

Usage:
  ollama [flags]
  ollama [command]

Available Commands:
  serve       Start ollama
  show        Show information for a model
  run         Run a model
  pull        Pull a model from a registry
  list        List models
  ps          List running models
  rm          Remove a model
  help        Help about any command

Flags:
  -h, --help      help for ollama
  -v, --version   Show version information
"""

COMMANDS = {"serve": None, "start": None, "list": cmd_list, "ls": cmd_list, "ps": cmd_ps,
            "pull": cmd_pull, "rm": cmd_rm, "show": cmd_show, "run": cmd_run,
            "version": cmd_version, "-v": cmd_version, "--version": cmd_version}


def main(argv):
    if not argv or argv[0] in ("help", "-h", "--help"):
        print(USAGE, end="")
        return 0
    cmd, args = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f'Error: unknown command "{cmd}" for "ollama"', file=sys.stderr)
        return 1
    if cmd in ("serve", "start"):
        return serve()
    try:
        return COMMANDS[cmd](args)
    except Unreachable:
        print("Error: could not connect to ollama app, is it running?", file=sys.stderr)
        return 1
    except RuntimeError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
