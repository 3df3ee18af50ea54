#!/usr/bin/env python3
"""Memory held by N idle proxied TCP connections: Strait beside nginx's stream module.

Each proxy forwards a loopback port to one backend that accepts and holds
connections. The script opens N client connections through each proxy, sends
one byte each way so every connection has carried data (and had its buffers
in use once), waits until they are idle, then reads the proxy processes'
resident memory (VmRSS, summed over the process tree) before and after.

    python3 bench/idle_memory.py --strait target/release/strait -n 9000

Needs nginx with the stream module (Debian: nginx libnginx-mod-stream).
Prints a markdown table; asserts nothing.
"""
import argparse, os, resource, selectors, shutil, signal, socket, subprocess, sys, tempfile, threading, time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid):
    """VmRSS of pid and its children, in KiB."""
    total = 0
    pids = [pid]
    try:
        children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def backend(port, ready):
    """Accepts connections, echoes the first byte, then holds them open."""
    sel = selectors.DefaultSelector()
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(4096)
    server.setblocking(False)
    sel.register(server, selectors.EVENT_READ)
    held = []
    ready.set()
    while True:
        for key, _ in sel.select(timeout=1):
            if key.fileobj is server:
                try:
                    conn, _ = server.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(False)
                held.append(conn)
                sel.register(conn, selectors.EVENT_READ)
            else:
                conn = key.fileobj
                try:
                    data = conn.recv(16)
                except OSError:
                    data = b""
                if data:
                    conn.send(data)
                else:
                    sel.unregister(conn)
                    conn.close()


def open_idle(port, n):
    conns = []
    for i in range(n):
        c = socket.create_connection(("127.0.0.1", port), timeout=10)
        conns.append(c)
    for c in conns:
        c.sendall(b"x")
    for c in conns:
        if c.recv(1) != b"x":
            raise SystemExit("a connection did not echo")
    return conns


def start_strait(binary, port, backend_port, work):
    admin = free_port()
    conf = os.path.join(work, "strait.yaml")
    with open(conf, "w") as f:
        f.write(f"""apisix:
  proxy_mode: stream
  enable_control: false
  stream_proxy:
    tcp: ["127.0.0.1:{port}"]
deployment:
  admin:
    admin_key: [{{name: admin, key: idlebench, role: admin}}]
    admin_listen: {{ip: 127.0.0.1, port: {admin}}}
nginx_config:
  worker_processes: 1
  event:
    worker_connections: 20000
strait:
  data_dir: {work}/strait-data
""")
    proc = subprocess.Popen([binary, "-c", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    body = '{"upstream":{"nodes":{"127.0.0.1:%d":1}}}' % backend_port
    for _ in range(100):
        r = subprocess.run(["curl", "-sf", "-X", "PUT", "-H", "X-API-KEY: idlebench",
                            f"http://127.0.0.1:{admin}/apisix/admin/stream_routes/1", "-d", body], capture_output=True)
        if r.returncode == 0:
            return proc
        time.sleep(0.1)
    raise SystemExit("strait did not accept the route")


def start_nginx(port, backend_port, work):
    conf = os.path.join(work, "nginx.conf")
    modules = "/usr/lib/nginx/modules/ngx_stream_module.so"
    load = f"load_module {modules};" if os.path.exists(modules) else ""
    with open(conf, "w") as f:
        f.write(f"""{load}
worker_processes 1;
worker_rlimit_nofile 40000;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log;
events {{ worker_connections 20000; }}
stream {{ server {{ listen 127.0.0.1:{port}; proxy_pass 127.0.0.1:{backend_port}; }} }}
""")
    return subprocess.Popen(["nginx", "-c", conf, "-p", work], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strait", default="target/release/strait")
    parser.add_argument("-n", type=int, default=9000)
    args = parser.parse_args()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    work = tempfile.mkdtemp(prefix="strait-idle-")
    backend_port = free_port()
    ready = threading.Event()
    threading.Thread(target=backend, args=(backend_port, ready), daemon=True).start()
    ready.wait()
    rows = []
    proxies = [("strait", lambda p: start_strait(args.strait, p, backend_port, work))]
    if shutil.which("nginx"):
        proxies.append(("nginx", lambda p: start_nginx(p, backend_port, work)))
    for name, start in proxies:
        port = free_port()
        proc = start(port)
        time.sleep(0.5)
        before = rss_kib(proc.pid)
        conns = open_idle(port, args.n)
        time.sleep(1.0)
        after = rss_kib(proc.pid)
        rows.append((name, before, after, (after - before) * 1024 / args.n))
        for c in conns:
            c.close()
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    print(f"| proxy | RSS idle (MiB) | RSS with {args.n} idle connections (MiB) | bytes per connection |")
    print("|---|---:|---:|---:|")
    for name, before, after, per in rows:
        print(f"| {name} | {before / 1024:.1f} | {after / 1024:.1f} | {per:.0f} |")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
