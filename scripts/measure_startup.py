#!/usr/bin/env python3
"""Start-to-ready time of a sluice binary: exec to the first 200 from /readyz (median of N runs),
and its idle RSS. Usage: scripts/measure_startup.py target/release/sluice [runs]."""
import os, socket, subprocess, sys, time, tempfile
def free():
    s=socket.socket(); s.bind(("127.0.0.1",0)); p=s.getsockname()[1]; s.close(); return p
binp=sys.argv[1]; runs=int(sys.argv[2]) if len(sys.argv)>2 else 5
res=[]
for _ in range(runs):
    px,ad=free(),free()
    d=tempfile.mkdtemp(); cfg=os.path.join(d,"s.yaml")
    open(cfg,"w").write(f"listeners: {{proxy: '127.0.0.1:{px}', admin: '127.0.0.1:{ad}'}}\npools:\n  - name: p\n    provider: openai\n    endpoints: [{{url: 'http://127.0.0.1:9', keys: [{{env: K}}]}}]\nroutes:\n  - {{name: r, match: {{path_prefix: /v1}}, pools: [p]}}\n")
    t0=time.perf_counter()
    p=subprocess.Popen([binp,"run","-c",cfg],env=dict(os.environ,K="x"),stderr=subprocess.DEVNULL)
    while True:
        try:
            c=socket.create_connection(("127.0.0.1",ad),timeout=1); c.sendall(b"GET /readyz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            if b" 200 " in c.recv(100): break
        except OSError: pass
        time.sleep(0.0005)
    res.append((time.perf_counter()-t0)*1000)
    rss=[l for l in open(f"/proc/{p.pid}/status") if l.startswith("VmRSS")][0].split()[1]
    p.terminate(); p.kill(); p.wait()
res.sort()
print(f"start-to-ready ms: median {res[len(res)//2]:.1f} min {res[0]:.1f} max {res[-1]:.1f}; idle RSS {rss} kB")
