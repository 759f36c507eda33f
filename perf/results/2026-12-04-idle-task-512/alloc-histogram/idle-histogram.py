import sys, os, time
sys.path.insert(0, "/work/main/perf")
import memory as m
srv = m.Server(sys.argv[1])
try:
    def dump():
        n = len([f for f in os.listdir("/tmp") if f.startswith("allochist-")])
        open("/tmp/dumpalloc","w").close()
        while not os.path.exists(f"/tmp/allochist-{n}"):
            time.sleep(0.05)
        time.sleep(0.1)
        return dict(tuple(map(int,l.split())) for l in open(f"/tmp/allochist-{n}"))
    conns=[]
    for i in range(5000): conns.append(m.open_conn(srv.addr, srv.token))
    r1 = srv.steady_rss(); time.sleep(1); a = dump()
    for i in range(5000): conns.append(m.open_conn(srv.addr, srv.token))
    r2 = srv.steady_rss(); time.sleep(1); b = dump()
    print("rss per conn", (r2-r1)/5000)
    tot=0
    for k in sorted(set(a)|set(b)):
        d=(b.get(k,0)-a.get(k,0))
        if abs(d) >= 100 and k != 99999:
            print(f"size<={k:5d}: {d/5000:6.2f} per conn")
            tot += d/5000*k
    print("big bytes per conn", (b[99999]-a[99999])/5000)
    print("approx bytes/conn (upper bound of bucket):", tot)
    for c in conns: c.close()
finally:
    srv.stop()
