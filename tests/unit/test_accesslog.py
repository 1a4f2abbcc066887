"""nginx's JSON access log: the format in nginx/nginx.conf and its parser (onevps.accesslog).

tests/unit/fixtures/nginx_access.log is the real `docker logs 2>&1` output of nginx:1.27-bookworm
(nginx 1.22.1) with nginx/nginx.conf, after requests with query strings, a cookie, an error
page, a dead upstream, a failover to the backup and an ACME location with `access_log off`.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

from onevps import accesslog
from onevps.accesslog import Request

from .recording import ROOT

FIXTURE = ROOT / "tests" / "unit" / "fixtures" / "nginx_access.log"
NGINX_CONF = ROOT / "nginx" / "nginx.conf"
FIELDS = {"time", "host", "method", "uri", "status", "request_time", "upstream_addr", "upstream_status",
          "upstream_response_time", "upstream_connect_time", "bytes_sent", "request_length"}


def log_format() -> str:
    text = NGINX_CONF.read_text()
    match = re.search(r"log_format onevps escape=json\s+((?:'[^']*'\s*)+);", text)
    assert match, "nginx.conf has no `log_format onevps escape=json '...'`"
    return "".join(re.findall(r"'([^']*)'", match.group(1)))


def test_nginx_logs_every_request_with_the_json_format():
    text = NGINX_CONF.read_text()
    assert re.search(r"^\s*access_log /var/log/nginx/access.log onevps;", text, re.M)
    assert "log_format main" not in text


def test_the_format_holds_no_query_strings_headers_or_cookies():
    fmt = log_format()
    for secret in ("$request_uri", "$args", "$query_string", "$request ", "$http_", "$cookie_", "$arg_",
                   "$remote_user", "$request_body"):
        assert secret not in fmt
    assert "$onevps_path" in fmt  # $request_uri cut at "?" by a map


def test_the_format_names_every_field_once():
    sample = re.sub(r"\$[a-z0-9_]+", "0", log_format())
    assert set(json.loads(sample)) == FIELDS


def test_the_real_log_parses_and_skips_other_lines():
    text = FIXTURE.read_text()
    requests = accesslog.parse(text)
    json_lines = [line for line in text.splitlines() if line.startswith("{")]
    assert len(requests) == len(json_lines) == 9
    assert all(set(json.loads(line)) == FIELDS for line in json_lines)
    assert len(text.splitlines()) > len(requests)  # start-up and error-log lines were skipped


def test_a_real_line_becomes_a_request():
    first = accesslog.parse(FIXTURE.read_text())[0]
    assert first == Request(
        time=datetime(2026, 11, 26, 18, 30, 34, 217000, tzinfo=timezone.utc), host="kb.localhost",
        method="GET", uri="/", status=200, request_time=0.0, upstream_addr="172.31.14.10:8000",
        upstream_status="200", upstream_response_time="0.001", upstream_connect_time="0.000",
        bytes_sent=157, request_length=118)
    assert first.app == "kb" and first.upstream == "172.31.14.10:8000" and not first.is_5xx


def test_no_secret_of_the_requests_reached_the_log():
    text = FIXTURE.read_text()
    for secret in ("SECRET123", "COOKIESECRET", "token=", "x=1"):
        assert secret not in text
    uris = [r.uri for r in accesslog.parse(text)]
    assert "/" in uris and "/boom" in uris and "/x" in uris and "/a%20b/c" in uris


def test_off_locations_stay_out():
    uris = [r.uri for r in accesslog.parse(FIXTURE.read_text())]
    assert not any(u.startswith("/.well-known/acme-challenge/") for u in uris)


def test_the_status_is_what_the_client_got_and_the_upstream_the_last_tried():
    by_uri = {r.uri: r for r in accesslog.parse(FIXTURE.read_text())}
    down = by_uri["/down"]  # both servers timed out; nginx answered 504 with its error page
    assert down.status == 504 and down.is_5xx
    assert down.upstream_addr == "172.31.14.10:8000, 172.31.14.138:8000"
    assert down.upstream == "172.31.14.138:8000"
    assert by_uri["/boom"].status == 500
    assert by_uri['/quote"x\\y'].status == 200  # escape=json kept the line whole
    assert by_uri["/form"].method == "POST"


def test_lines_that_are_not_requests_are_none():
    for line in ("", "2026/11/26 18:30:34 [error] 21#21: *7 open() failed", "{not json", '{"status": 200}',
                 '["a"]', '{"time":"yesterday","host":"a","method":"GET","uri":"/","status":200,"request_time":0}'):
        assert accesslog.parse_line(line) is None


T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)


def req(second: float, status: int = 200, rt: float = 0.01, host: str = "kb.example.com",
        upstream: str = "10.9.0.140:8000") -> Request:
    return Request(time=T0 + timedelta(seconds=second), host=host, method="GET", uri="/", status=status,
                   request_time=rt, upstream_addr=upstream, upstream_status=str(status),
                   upstream_response_time=str(rt), upstream_connect_time="0.000", bytes_sent=100,
                   request_length=80)


def test_percentiles_are_nearest_rank():
    values = [i / 100 for i in range(1, 101)]  # 0.01 .. 1.00
    assert accesslog.percentile(values, 0.5) == 0.5
    assert accesslog.percentile(values, 0.95) == 0.95
    assert accesslog.percentile([3.0], 0.95) == 3.0
    assert accesslog.percentile([], 0.5) is None


def test_summary_per_app_over_a_window():
    reqs = ([req(s, rt=0.01 * (s + 1)) for s in range(10)] + [req(2, 502), req(3, 500), req(4, 404)]
            + [req(5, host="chatbot.example.com"), req(70)])
    out = accesslog.summarise(reqs, T0, T0 + timedelta(seconds=60))
    assert list(out) == ["chatbot", "kb"]
    kb = out["kb"]
    assert (kb.app, kb.requests, kb.errors, kb.seconds) == ("kb", 13, 2, 60.0)
    assert round(kb.share, 4) == round(2 / 13, 4)
    assert kb.p50 == 0.01 * 4 and kb.p95 == 0.01 * 10  # 13 values: the 7th and the 13th
    assert kb.per_minute == 13 and kb.errors_per_minute == 2
    assert out["chatbot"].requests == 1 and out["chatbot"].errors == 0


def test_an_open_window_spans_the_requests_and_an_empty_one_is_zero():
    s = accesslog.summary_of("kb", [req(0), req(30, 503)])
    assert (s.requests, s.errors, s.seconds, s.share) == (2, 1, 30.0, 0.5)
    empty = accesslog.summary_of("kb", [])
    assert (empty.requests, empty.share, empty.p50, empty.per_minute) == (0, 0.0, None, 0.0)


def test_answered_by_an_address_with_or_without_port():
    reqs = [req(0, upstream="10.9.0.140:8000"), req(1, upstream="10.9.0.12:8000"),
            req(2, upstream="10.9.0.140:8000, 10.9.0.12:8000"), req(3, upstream="10.9.0.12:8000, 10.9.0.140:8000"),
            req(4, upstream=""), req(5, upstream="10.9.0.1400:8000")]
    assert [r.time.second for r in accesslog.answered_by(reqs, "10.9.0.140")] == [0, 3]
    assert [r.time.second for r in accesslog.answered_by(reqs, "10.9.0.140:8000")] == [0, 3]
