#!/usr/bin/env python3
"""fuzz/make_corpus.py: writes the seed corpora under fuzz/corpus/<target>/ (run it from anywhere).

Every seed is written here by hand; the input layouts are described in each target's source.
Rerunning it rewrites the same files (names are the seeds' own labels)."""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# fuzz_http_parse: [limits/mode][seed][seed] + bytes. Mode bit 7: a chunked body alone.
def http():
    heads = {
        "get": "GET /index.html?q=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: t\r\n\r\n",
        "get10": "GET / HTTP/1.0\r\n\r\n",
        "keepalive10": "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        "post_cl": "POST /api HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
        "post_cl_pipelined": "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nokGET / HTTP/1.1\r\n",
        "post_chunked": "POST /u HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
        "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n",
        "expect": "PUT /x HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nz",
        "close": "GET / HTTP/1.1\r\nHost: h\r\nConnection: close, Upgrade\r\n\r\n",
        "leading_crlf": "\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n",
        "bare_lf": "GET / HTTP/1.1\nHost: h\n\n",
        "obs_fold": "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
        "space_colon": "GET / HTTP/1.1\r\nHost : h\r\n\r\n",
        "two_hosts": "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "no_host": "GET / HTTP/1.1\r\n\r\n",
        "cl_te": "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        "te_gzip": "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        "te_other": "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n",
        "te_10": "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
        "cl_dup_same": "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab",
        "cl_dup_diff": "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nab",
        "cl_big": "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n\r\n",
        "http2": "GET / HTTP/2.0\r\nHost: h\r\n\r\n",
        "bad_version": "GET / HTTP/1.x\r\nHost: h\r\n\r\n",
        "ctl_target": "GET /a\x01b HTTP/1.1\r\nHost: h\r\n\r\n",
        "incomplete": "GET /partial HTTP/1.1\r\nHost: h\r\nX-Long: ",
        "many_headers": "GET / HTTP/1.1\r\nHost: h\r\n" + "".join("H%d: v\r\n" % i for i in range(12)) + "\r\n",
        "empty_value": "GET / HTTP/1.1\r\nHost: h\r\nX:   \t\r\n\r\n",
    }
    sels = [0x00, 0x05, 0x11, 0x2a, 0x3f]
    for i, (name, text) in enumerate(sorted(heads.items())):
        write("fuzz_http_parse", "head_" + name, bytes([sels[i % len(sels)], i, 7 * i]) + text.encode())
    chunks = {
        "simple": "5\r\nhello\r\n0\r\n\r\n",
        "two": "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\nNEXT",
        "ext": "4;a=b;c\r\nwxyz\r\n0;x\r\nT: v\r\nU: w\r\n\r\n",
        "upper_hex": "A\r\n0123456789\r\n0\r\n\r\n",
        "bad_size": "z\r\n",
        "no_crlf": "3\r\nabcX\r\n",
        "bare_lf": "3\nabc\n0\n\n",
        "huge": "ffffffffffffffffff\r\n",
        "too_big": "400\r\n",
    }
    for i, (name, text) in enumerate(sorted(chunks.items())):
        write("fuzz_http_parse", "chunked_" + name, bytes([0x80 | (i * 5 & 0x0f), i, 3 * i]) + text.encode())


def frame(ftype, stream, payload=b""):
    return struct.pack(">BII", ftype, stream, len(payload)) + payload


# fuzz_frame: [seed][seed] + a frame stream (also read as a build script).
def frames():
    seeds = {
        "hello_relay": frame(1, 0, b"PHRELAY1" + struct.pack(">H", 8080)),
        "hello_serve": frame(1, 0, b"PHSERVE1" + struct.pack(">H", 4)),
        "open_data_fin": frame(2, 1) + frame(3, 1, b"hello") + frame(4, 1),
        "credit": frame(6, 3, struct.pack(">I", 65536)),
        "credit_zero": frame(6, 3, struct.pack(">I", 0)),
        "goaway": frame(7, 0, b"bye"),
        "goaway_empty": frame(7, 0),
        "reset": frame(5, 9),
        "exec": frame(0x10, 2, struct.pack(">II", 20, 0) + b"\x00\x00\x00\x01c"),
        "stderr": frame(0x11, 2, b"oops\n"),
        "exit_code": frame(0x12, 2, bytes([0, 3, 0])),
        "exit_signal_timeout": frame(0x12, 2, bytes([1, 15, 1])),
        "exit_bad": frame(0x12, 2, bytes([2, 0, 0])),
        "signal": frame(0x13, 4, bytes([15]) + struct.pack(">I", 2000)),
        "signal_bad": frame(0x13, 4, bytes([65, 0, 0, 0, 0])),
        "unknown_type": frame(0x08, 1),
        "data_stream0": frame(3, 0, b"x"),
        "empty_data": frame(3, 1),
        "too_long": struct.pack(">BII", 3, 1, 65537),
        "max_payload": frame(3, 5, b"\xab" * 65536),
        "partial_header": b"\x03\x00\x00",
        "partial_payload": struct.pack(">BII", 3, 1, 10) + b"abc",
        "mixed": frame(1, 0, b"PHRELAY1\x00\x01") + frame(2, 1) + frame(3, 1, b"GET / HTTP/1.1\r\n")
        + frame(6, 1, struct.pack(">I", 100)) + frame(5, 1) + frame(7, 0, b"done"),
    }
    for i, (name, data) in enumerate(sorted(seeds.items())):
        write("fuzz_frame", name, bytes([i, 11 * i & 0xff]) + data)


def rpc(method, id_=1, params=None, **extra):
    msg = {"jsonrpc": "2.0", "id": id_, "method": method}
    if params is not None:
        msg["params"] = params
    msg.update(extra)
    return json.dumps(msg)


# fuzz_ndjson: [line limit and pipe/file] + the worker's stdin.
def ndjson():
    stub = {"driverKey": "fuzzstub", "companyId": "c1", "environmentId": "e1", "config": {}}
    lease = {"providerLeaseId": "lease-1", "metadata": {}}
    seeds = {
        "initialize": [rpc("initialize", 1, {"manifest": {}}), rpc("health", 2)],
        "twice_initialize": [rpc("initialize", 1), rpc("initialize", 2)],
        "unknown": [rpc("nope", "a"), rpc("runJob", 7), rpc("configChanged", 8, {})],
        "notification": [json.dumps({"jsonrpc": "2.0", "method": "health"}), rpc("health", None)],
        "response": [json.dumps({"jsonrpc": "2.0", "id": 1, "result": {}})],
        "parse_error": ["{not json", "[1,2", ""],
        "not_object": ["[]", "42", '"s"', "null", json.dumps({"jsonrpc": "1.0", "id": 3, "method": "health"})],
        "bad_ids": ['{"jsonrpc":"2.0","id":1e400,"method":"health"}', '{"jsonrpc":"2.0","id":{},"method":"health"}',
                    '{"jsonrpc":"2.0","id":"\\ud800","method":"health"}', '{"jsonrpc":"2.0","id":1.5,"method":"health"}',
                    '{"jsonrpc":"2.0","id":-0,"method":"health"}', '{"jsonrpc":"2.0","id":123456789012345678901,"method":"health"}'],
        "method_not_string": ['{"jsonrpc":"2.0","id":4,"method":5}'],
        "validate_local": [rpc("environmentValidateConfig", 1, {"driverKey": "local", "config": {"timeoutMs": "12"}})],
        "validate_stub": [rpc("environmentValidateConfig", 1, dict(stub, config={"mode": "x", "tags": "a,b"}))],
        "probe": [rpc("environmentProbe", 1, stub)],
        "probe_local": [rpc("environmentProbe", 1, dict(stub, driverKey="local"))],
        "acquire": [rpc("environmentAcquireLease", "x", dict(stub, config={"mode": "error"}))],
        "resume": [rpc("environmentResumeLease", 2, dict(stub, providerLeaseId="l", leaseMetadata={}))],
        "release": [rpc("environmentReleaseLease", 3, dict(stub, providerLeaseId="l"))],
        "destroy_raise": [rpc("environmentDestroyLease", 3, dict(stub, providerLeaseId="l", config={"mode": "raise"}))],
        "realize": [rpc("environmentRealizeWorkspace", 4, dict(stub, lease=lease, workspace={"localPath": "/w"}))],
        "execute": [rpc("environmentExecute", 5, dict(stub, lease=lease, command="echo", args=["a", "\u00e9"],
                                                      cwd="/", env={"A": "1"}, timeoutMs=1000),
                        paperclipInvocation={"id": "inv-1"})],
        "execute_bad_env": [rpc("environmentExecute", 5, dict(stub, lease=lease, command="x", env={"A-B": "1"}))],
        "execute_bridge": [rpc("environmentExecute", 6, dict(stub, lease=lease, command="x",
                                                             bridge={"apiUrl": "http://127.0.0.1:1", "apiKey": "k"}))],
        "cancel": [rpc("environmentCancelExecution", 6, dict(stub, lease=lease, executionId="ex1"))],
        "cancel_local": [rpc("environmentCancelExecution", 6, dict(stub, driverKey="local", lease=lease, executionId="e"))],
        "sync": [rpc("environmentSyncIn", 7, dict(stub, lease=lease)), rpc("environmentSyncOut", 8, dict(stub, lease=lease))],
        "no_driver": [rpc("environmentProbe", 9, {"config": {}}), rpc("environmentProbe", 10, {"driverKey": "zz"})],
        "params_array": [rpc("environmentProbe", 11, [1, 2])],
        "shutdown": [rpc("health", 1), rpc("shutdown", 2), rpc("health", 3)],
        "invalid_utf8": ['{"jsonrpc":"2.0","id":"\xff","method":"health"}', '{"jsonrpc":"2.0","id":1,"method":"\xc3("}'],
        "blank_lines": ["", "   ", "\t", rpc("health", 1)],
        "no_final_newline": [rpc("health", 1), rpc("health", 2) + "\x00NONL"],
    }
    for i, (name, lines) in enumerate(sorted(seeds.items())):
        text = "\n".join(lines)
        if text.endswith("\x00NONL"):
            text = text[: -len("\x00NONL")]
        else:
            text += "\n"
        sel = (i % 2) | (((5 if i % 3 else 7) << 1) & 0x0e)  # 4096 bytes or unlimited
        # json.dumps writes ASCII; the only other characters are the raw bytes of invalid_utf8
        write("fuzz_ndjson", name, bytes([sel]) + text.encode("latin-1"))
    # Overlong lines: small limits.
    write("fuzz_ndjson", "overlong_8", bytes([0]) + (rpc("health", 1) + "\nab\n" + rpc("health", 2) + "\n").encode())
    write("fuzz_ndjson", "overlong_40_last", bytes([2]) + ("x" * 50).encode())


# fuzz_schema: any JSON: a config, {fields, config, opts}, or a list of field specs.
def schema():
    seeds = {
        "empty_object": {},
        "local_config": {"timeoutMs": 1000, "reuseLease": True, "shell": "sh"},
        "local_bad": {"timeoutMs": "abc", "reuseLease": "yes"},
        "e2b_config": {"apiKey": " secret-key ", "template": "", "timeoutMs": "300000", "reuseLease": False},
        "exe_config": {"apiKey": "k", "memory": "4GB", "cpus": 2, "image": "ubuntu"},
        "ssh_config": {"host": "example.com", "port": 22, "username": "u", "privateKey": "-----BEGIN", "env": {"A": "1"}},
        "stub_config": {"token": "  ", "timeoutMs": 1.5, "mode": "ok", "tags": "a, b,,c", "env": {"X": 1}},
        "wrapped": {"config": {"timeoutMs": 86400001}},
        "array": [1, "two", None, True],
        "string": "just a string",
        "number": 3.5e300,
        "null": None,
        "fields_basic": {"fields": [["name", "string", {"default": "x", "trim": True}],
                                    ["count", "integer", {"between": [1, 10], "truncate": True}],
                                    ["tags", "array", {"elements": "string", "comma_list": True}],
                                    ["env", "map", {"elements": "number"}],
                                    ["on", "boolean", {"required": True}]],
                         "config": {"name": "  y ", "count": 11.7, "tags": "a,b", "env": {"k": "1e3"}}},
        "fields_bad_type": {"fields": [["x", "strng"]]},
        "fields_dup": {"fields": [["x", "string"], ["x", "integer"]]},
        "fields_pattern": {"fields": [["p", "string", {"pattern": "^%d+$", "min_length": 2, "max_length": 4}]],
                           "config": {"p": "123"}},
        "fields_bad_pattern": {"fields": [["p", "string", {"pattern": "[%"}]]},
        "fields_one_of": {"fields": [["m", "string", {"one_of": ["a", "b"], "blank": "default", "default": "a"}]],
                          "config": {"m": ""}},
        "fields_loose": {"fields": [["l", "number", {"loose": True, "fill": 3}]], "config": {"l": "nope"}},
        "fields_opts": {"fields": [["a", "string"], ["b", "string"]], "opts": {"output_order": ["b", "a"],
                                                                              "error_order": ["b"]},
                        "config": {"a": 1, "b": 2}},
        "fields_secret": {"fields": [["k", "string", {"secret": True, "blank": "null"}]], "config": {"k": "hunter22"}},
        "fields_ui": {"fields": [["u", "integer", {"ui": {"advanced": True, "group": "G"}, "form_default": 5}]]},
        "params_execute": {"driverKey": "local", "lease": {"providerLeaseId": "l"}, "command": "ls",
                           "args": ["-l"], "env": {"A": "b"}, "timeoutMs": 5, "executionId": "e1"},
        "params_bad": {"lease": "x", "executionId": {}, "env": {"1A": "x"}, "args": "notalist"},
    }
    for name, v in sorted(seeds.items()):
        write("fuzz_schema", name, json.dumps(v))
    write("fuzz_schema", "deep", "[" * 300 + "]" * 300)
    write("fuzz_schema", "unicode", '{"k":"\\u00e9\\ud83d\\ude00","\\u0000":"nul"}')


# fuzz_shell_quote: bytes; NUL separates words.
def shell():
    seeds = {
        "plain": b"abc",
        "empty": b"",
        "quote": b"it's",
        "quotes": b"''''",
        "meta": b"$HOME `id` \"x\" \\ ; | & * ? ~ # !",
        "newlines": b"a\nb\n\n",
        "words": b"one\x00two\x00three",
        "empty_words": b"\x00\x00",
        "env": b"KEY\x00value with 'quote' and $x",
        "dash": b"-n\x00-e\x00--",
        "percent": b"%s %d %%\\n",
        "high_bytes": b"\xff\xfe\xc3\xa9\x80",
        "backslashes": b"\\\\'\\'",
        "glob": b"*\x00?\x00[a-z]",
        "tabs": b"\t \t\x01\x1f\x7f",
        "spaces": b"  leading and trailing  ",
        "ifs": b"IFS\x00 \t\n",
        "expansions": b"${x:-y}\x00$(echo hi)\x00$((1+2))",
        "utf8": "h\u00e9llo w\u00f6rld \u2603".encode(),
        "long": b"x'" * 200,
        "only_quote": b"'",
    }
    for name, data in sorted(seeds.items()):
        write("fuzz_shell_quote", name, data)


if __name__ == "__main__":
    http()
    frames()
    ndjson()
    schema()
    shell()
