"""Protocol checks of the vtl Jupyter kernel with jupyter_client.

usage: check_kernel.py VTL              the protocol checks
       check_kernel.py VTL NB.ipynb ...  run the notebooks instead

Installs the kernelspec into a temporary prefix (`vtl kernel install --prefix`), starts the
kernel with jupyter_client's KernelManager and checks: kernel_info, execute (stream output,
execute_result, error with traceback), complete, inspect, is_complete, io.read through
input_request, rich display (display_data / update_display_data), a message signed with the
wrong key (dropped, logged, and the next good one answered), interrupt during a long loop
(the kernel survives), restart, and the kernel's RSS over 200 executions. Given notebooks,
runs each with nbclient against the kernel instead, failing on any cell error.

Prints one line per check and a closing "N passed, N failed"; exits 1 when any failed.
"""
import base64
import os
import queue
import subprocess
import sys
import tempfile
import time
import traceback

from jupyter_client.manager import KernelManager
from jupyter_client.session import Session

VTL = os.path.abspath(sys.argv[1])
NOTEBOOKS = sys.argv[2:]
TIMEOUT = float(os.environ.get("VTL_JUPYTER_TIMEOUT", "60"))

results = {"passed": 0, "failed": 0}


def check(name):
    def wrap(fn):
        t0 = time.time()
        try:
            fn()
            results["passed"] += 1
            print(f"ok    {name} ({time.time() - t0:.1f}s)", flush=True)
        except Exception:
            results["failed"] += 1
            print(f"FAIL  {name}", flush=True)
            traceback.print_exc(file=sys.stdout)
        return fn
    return wrap


def execute(kc, code, allow_stdin=False, timeout=TIMEOUT, stdin_reply=None):
    """Runs code; returns (reply content, list of iopub messages for this request)."""
    msg_id = kc.execute(code, allow_stdin=allow_stdin)
    msgs = []
    deadline = time.time() + timeout
    if stdin_reply is not None:
        req = kc.get_stdin_msg(timeout=timeout)
        assert req["msg_type"] == "input_request", req["msg_type"]
        assert req["parent_header"]["msg_id"] == msg_id
        kc.input(stdin_reply)
    reply = kc.get_shell_msg(timeout=timeout)
    assert reply["parent_header"]["msg_id"] == msg_id
    while True:  # iopub until this request's idle status
        m = kc.get_iopub_msg(timeout=max(1, deadline - time.time()))
        if m["parent_header"].get("msg_id") != msg_id:
            continue
        msgs.append(m)
        if m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
            break
    return reply["content"], msgs


def of_type(msgs, t):
    return [m["content"] for m in msgs if m["msg_type"] == t]


def stdout_of(msgs):
    return "".join(c["text"] for c in of_type(msgs, "stream") if c["name"] == "stdout")


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


prefix = tempfile.mkdtemp(prefix="vtl-jupyter-")
subprocess.run([VTL, "kernel", "install", "--prefix", prefix], check=True, stdout=subprocess.DEVNULL)
os.environ["JUPYTER_PATH"] = os.path.join(prefix, "share", "jupyter")


def protocol_checks():
    global log, km, kc, log_path
    log_path = os.path.join(prefix, "kernel.log")
    log = open(log_path, "w")

    km = KernelManager(kernel_name="vtl")
    km.start_kernel(stderr=log)
    kc = km.client()
    kc.start_channels()
    kc.wait_for_ready(timeout=TIMEOUT)


    @check("kernelspec: display name, language, argv with the absolute vtl path")
    def _():
        spec = km.kernel_spec
        assert spec.display_name == "vtl (Lua 5.4)", spec.display_name
        assert spec.language == "lua"
        assert os.path.isabs(spec.argv[0]) and os.path.samefile(spec.argv[0], VTL), spec.argv


    @check("kernel_info")
    def _():
        kc.kernel_info()
        r = kc.get_shell_msg(timeout=TIMEOUT)
        c = r["content"]
        assert r["msg_type"] == "kernel_info_reply"
        assert c["protocol_version"] == "5.3" and c["language_info"]["name"] == "lua", c
        assert r["header"]["version"] == "5.3"


    @check("execute: print and io.write become stream stdout, in order")
    def _():
        c, msgs = execute(kc, 'io.stderr:write("to stderr\\n")\nprint("hello", 1 + 1)\nio.write("no newline")\nlocal done = true')
        assert c["status"] == "ok", c
        assert stdout_of(msgs) == "hello\t2\nno newline", repr(stdout_of(msgs))
        err = "".join(s["text"] for s in of_type(msgs, "stream") if s["name"] == "stderr")
        assert err == "to stderr\n", repr(err)
        assert not of_type(msgs, "execute_result")
        assert of_type(msgs, "execute_input")[0]["code"].startswith("io.stderr")


    @check("execute: a trailing expression's value is the execute_result (print's text)")
    def _():
        c, msgs = execute(kc, "x = 20\nx + 22")
        assert c["status"] == "ok"
        res = of_type(msgs, "execute_result")
        assert len(res) == 1 and res[0]["data"]["text/plain"] == "42", res
        assert res[0]["execution_count"] == c["execution_count"]
        # locals of the cell are visible to its trailing expression; several values: tab-separated
        c, msgs = execute(kc, "local a = 1\nlocal b = 'two'\na, b, nil")
        assert of_type(msgs, "execute_result")[0]["data"]["text/plain"] == "1\ttwo\tnil"
        # a tensor prints as tostring does
        c, msgs = execute(kc, "vtl.arange(3)")
        text = of_type(msgs, "execute_result")[0]["data"]["text/plain"]
        c2, msgs2 = execute(kc, "print(vtl.arange(3))")
        assert text + "\n" == stdout_of(msgs2), (text, stdout_of(msgs2))
        # a statement has no value; a loop is not an expression
        c, msgs = execute(kc, "for i = 1, 2 do\n  y = i\nend")
        assert c["status"] == "ok" and not of_type(msgs, "execute_result")
        c, msgs = execute(kc, "y")
        assert of_type(msgs, "execute_result")[0]["data"]["text/plain"] == "2"


    @check("execute: errors are error replies with a traceback; the kernel goes on")
    def _():
        c, msgs = execute(kc, "local function inner() error('boom here') end\ninner()\nprint('not reached')")
        assert c["status"] == "error", c
        assert "boom here" in c["evalue"], c["evalue"]
        assert c["evalue"].startswith("In["), c["evalue"]
        assert any("stack traceback" in line for line in c["traceback"]), c["traceback"]
        assert any("inner" in line for line in c["traceback"]), c["traceback"]
        e = of_type(msgs, "error")
        assert len(e) == 1 and e[0]["evalue"] == c["evalue"]
        c, msgs = execute(kc, "local x = = 1")
        assert c["status"] == "error" and "unexpected symbol" in c["evalue"], c
        c, msgs = execute(kc, "1 + 1")
        assert c["status"] == "ok" and of_type(msgs, "execute_result")[0]["data"]["text/plain"] == "2"


    @check("complete: the REPL's completion (globals, fields, methods)")
    def _():
        code = "local z = vtl.zer"
        kc.complete(code, len(code))
        c = kc.get_shell_msg(timeout=TIMEOUT)["content"]
        assert c["status"] == "ok"
        assert "vtl.zeros" in c["matches"] and "vtl.zeros_like" in c["matches"], c["matches"]
        assert c["cursor_start"] == len("local z = ") and c["cursor_end"] == len(code), c
        execute(kc, "tt = vtl.ones({2})")
        code = "tt:resh"
        kc.complete(code, len(code))
        c = kc.get_shell_msg(timeout=TIMEOUT)["content"]
        assert "tt:reshape" in c["matches"], c["matches"]
        code = "é = pri"  # cursor positions count code points
        kc.complete(code, len(code))
        c = kc.get_shell_msg(timeout=TIMEOUT)["content"]
        assert "print" in c["matches"] and c["cursor_start"] == 4, c


    @check("inspect: signature and doc of a vtl function from its --- comments")
    def _():
        code = "vtl.plot.lines("
        kc.inspect(code, len(code))
        c = kc.get_shell_msg(timeout=TIMEOUT)["content"]
        assert c["status"] == "ok" and c["found"], c
        text = c["data"]["text/plain"]
        assert text.startswith("vtl.plot.lines(series, opts)"), text
        assert "Line (or point) chart" in text and "@param series" in text, text
        kc.inspect("vtl.display.markdown", len("vtl.display.mark"))  # the cursor inside the name
        c = kc.get_shell_msg(timeout=TIMEOUT)["content"]
        assert c["found"] and "markdown(s, opts)" in c["data"]["text/plain"], c
        kc.inspect("no_such_thing", 3)
        c = kc.get_shell_msg(timeout=TIMEOUT)["content"]
        assert c["status"] == "ok" and not c["found"], c


    @check("is_complete: complete, incomplete (with indent), invalid")
    def _():
        for code, want in [("x = 1", "complete"), ("for i = 1, 3 do", "incomplete"),
                           ("function f(a)\n  return a", "incomplete"), ("x = = 1", "invalid"), ("1 + 1", "complete")]:
            kc.is_complete(code)
            c = kc.get_shell_msg(timeout=TIMEOUT)["content"]
            assert c["status"] == want, (code, c)
            if want == "incomplete":
                assert "indent" in c


    @check("io.read asks the front end (input_request on stdin)")
    def _():
        c, msgs = execute(kc, "local s = io.read()\nprint('got ' .. s)", allow_stdin=True, stdin_reply="hello")
        assert c["status"] == "ok" and stdout_of(msgs) == "got hello\n", (c, stdout_of(msgs))
        c, msgs = execute(kc, "io.read('n') + 1", allow_stdin=True, stdin_reply="41")
        assert of_type(msgs, "execute_result")[0]["data"]["text/plain"] == "42", msgs


    @check("io.read without allow_stdin is a clear error")
    def _():
        c, msgs = execute(kc, "io.read()", allow_stdin=False)
        assert c["status"] == "error" and "allow_stdin" in c["evalue"], c


    @check("vtl.display: tensor (text + HTML table), PNG image, markdown, display_id updates")
    def _():
        c, msgs = execute(kc, "vtl.display(vtl.arange(6):view(2, 3))")
        d = of_type(msgs, "display_data")
        assert c["status"] == "ok" and len(d) == 1, (c, msgs)
        assert "<table" in d[0]["data"]["text/html"] and "<td>5</td>" in d[0]["data"]["text/html"]
        assert d[0]["data"]["text/plain"].startswith("tensor(")
        c, msgs = execute(kc, "vtl.display(vtl.zeros({4, 6, 3}, {dtype = 'u8'}) + 200)")
        png = base64.b64decode(of_type(msgs, "display_data")[0]["data"]["image/png"])
        assert png[:8] == b"\x89PNG\r\n\x1a\n", png[:8]
        assert int.from_bytes(png[16:20], "big") == 6 and int.from_bytes(png[20:24], "big") == 4  # IHDR width, height
        c, msgs = execute(kc, "p = vtl.plot.lines({{y = {1, 3, 2}}}, {path = os.tmpname() .. '.png'})\nvtl.display(p)\nos.remove(p)")
        assert c["status"] == "ok", c
        png = base64.b64decode(of_type(msgs, "display_data")[0]["data"]["image/png"])
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
        c, msgs = execute(kc, "vtl.display.markdown('**bold**')")
        assert of_type(msgs, "display_data")[0]["data"]["text/markdown"] == "**bold**"
        c, msgs = execute(kc, "id = vtl.display('step 1', {display_id = true})\nvtl.display.update(id, 'step 2')")
        d, u = of_type(msgs, "display_data"), of_type(msgs, "update_display_data")
        assert len(d) == 1 and len(u) == 1, msgs
        assert d[0]["transient"]["display_id"] == u[0]["transient"]["display_id"]
        assert u[0]["data"]["text/plain"] == "step 2"
        c, msgs = execute(kc, "vtl.display(1, 2)")
        assert c["status"] == "error" and "display: argument 2" in c["evalue"], c


    @check("a message signed with the wrong key is dropped and logged; the next good one is answered")
    def _():
        bad = Session(key=b"not-the-key", session=kc.session.session, username=kc.session.username)
        bad.send(kc.shell_channel.socket, bad.msg("execute_request", {"code": "bad_ran = true", "silent": False}))
        try:
            r = kc.get_shell_msg(timeout=2)
            raise AssertionError("the badly signed message was answered: %r" % r["msg_type"])
        except queue.Empty:
            pass
        c, msgs = execute(kc, "bad_ran")
        assert of_type(msgs, "execute_result")[0]["data"]["text/plain"] == "nil"
        log.flush()
        with open(log_path) as f:
            assert "bad signature" in f.read()


    @check("interrupt stops a long loop; the kernel survives and runs the next cell")
    def _():
        msg_id = kc.execute("local n = 0\nwhile true do n = n + 1 end")
        time.sleep(1.0)
        km.interrupt_kernel()
        reply = kc.get_shell_msg(timeout=TIMEOUT)
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["content"]["status"] == "error" and "interrupted!" in reply["content"]["evalue"], reply["content"]
        km.interrupt_kernel()  # while idle: ignored
        time.sleep(0.3)
        assert km.is_alive()
        c, msgs = execute(kc, "6 * 7")
        assert of_type(msgs, "execute_result")[0]["data"]["text/plain"] == "42"


    # Under ASan freed memory sits in its quarantine, so RSS grows whatever the kernel does;
    # there LeakSanitizer checks the kernel at shutdown instead (see the shutdown check).
    @check("memory: RSS stable over 200 executions")
    def _():
        if os.environ.get("VTL_SAN") == "1":
            print("      skipped under VTL_SAN=1 (ASan quarantine); LeakSanitizer checks the shutdown")
            return
        pid = km.provisioner.process.pid
        code = "local t = vtl.randn({64, 64})\nprint((t * 2):sum():item() ~= nil)\nt:mean():item()"
        for _ in range(30):
            execute(kc, code)
        before = rss_kb(pid)
        for _ in range(200):
            c, _m = execute(kc, code)
            assert c["status"] == "ok"
        after = rss_kb(pid)
        grew = after - before
        print(f"      RSS {before} kB -> {after} kB over 200 executions ({grew:+d} kB)")
        assert grew < 3072, f"RSS grew by {grew} kB"


    @check("restart: a new kernel process with a fresh state")
    def _():
        execute(kc, "kept = 1")
        old = km.provisioner.process.pid
        km.restart_kernel(now=False)
        kc.wait_for_ready(timeout=TIMEOUT)
        assert km.provisioner.process.pid != old
        c, msgs = execute(kc, "kept")
        assert of_type(msgs, "execute_result")[0]["data"]["text/plain"] == "nil"


    @check("shutdown: the kernel exits")
    def _():
        proc = km.provisioner.process
        km.shutdown_kernel(now=False)
        assert proc.poll() is not None
        assert proc.returncode == 0, f"the kernel exited with {proc.returncode}"
        log.flush()
        with open(log_path) as f:
            text = f.read()
        assert "Sanitizer" not in text and "runtime error" not in text, text[-4000:]


    kc.stop_channels()



if not NOTEBOOKS:
    protocol_checks()

for path in NOTEBOOKS:
    @check(f"notebook {os.path.basename(path)} runs top to bottom with nbclient")
    def _():
        import nbformat
        from nbclient import NotebookClient
        nb = nbformat.read(path, as_version=4)
        client = NotebookClient(nb, kernel_name="vtl", timeout=600, allow_errors=False,
                                resources={"metadata": {"path": os.path.dirname(os.path.abspath(path))}})
        client.execute()
        errors = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs if o.output_type == "error"]
        assert not errors, errors

print(f"{results['passed']} passed, {results['failed']} failed")
sys.exit(1 if results["failed"] else 0)
