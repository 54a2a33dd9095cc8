#!/bin/busybox sh
# The init of the kernel-matrix guest (`cargo xtask kernels`): every wirelab tool once, in a
# lab inside the guest, one "WIRELAB-KT PASS|FAIL name" line per check on the serial console.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /sys/fs/bpf /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
for m in /modules/*.ko; do insmod "$m" 2>/dev/null; done
ip link set lo up
W=/bin/wirelab
export WIRELAB_LOG=info
echo "WIRELAB-KT KERNEL $(uname -r)"

# `cargo xtask kernels --check NAME` boots with wirelab.checks=NAME,...: only those run (a
# developer's loop; the matrix runs every check).
ONLY=$(sed -n 's/.*wirelab\.checks=\([^ ]*\).*/\1/p' /proc/cmdline)

# check NAME CMD...: PASS when CMD exits 0; its output is shown either way.
check() {
  name=$1; shift
  if [ -n "$ONLY" ] && ! echo ",$ONLY," | grep -q ",$name,"; then return 0; fi
  t0=$(cut -d' ' -f1 /proc/uptime)
  if "$@" > /tmp/out 2>&1; then r=PASS; else r=FAIL; fi
  t1=$(cut -d' ' -f1 /proc/uptime)
  sed 's/^/  | /' /tmp/out | tail -n 25
  echo "WIRELAB-KT $r $name"
  echo "WIRELAB-KT TOOK $name $(awk "BEGIN { printf \"%.1f\", $t1 - $t0 }") s"
}

# until TRIES CMD...: retry CMD every 0.5 s. Waits for a tool to load and attach take up to
# 360 tries (3 minutes): under TCG on a busy host, 5.10's verifier took 61 s for capture's
# programs, and a 60 s limit failed a CI run.
until_ok() {
  n=$1; shift
  while [ "$n" -gt 0 ]; do "$@" > /dev/null 2>&1 && return 0; n=$((n - 1)); sleep 0.5; done
  return 1
}

$W doctor
# Every program of every tool through this kernel's verifier, not only those the checks run.
check programs-load $W doctor --programs
check lab-up $W lab up
check ping-through-bridge $W lab exec client -- ping -c 2 -W 5 198.18.0.2

inspect_counts() {
  $W inspect --netns wirelab-server --iface eth0 --duration 120s --json > /tmp/inspect.json 2> /tmp/inspect.err &
  p=$!
  until_ok 360 grep -q "inspect attached" /tmp/inspect.err || { cat /tmp/inspect.err; return 1; }
  $W lab exec client -- ping -c 3 -i 0.5 198.18.0.2 || return 1
  kill -INT $p; wait $p
  grep '"type":"final"' /tmp/inspect.json | grep -q '"icmp":{"packets":[3-9]'
}
check inspect-counts-pings inspect_counts

fw_blocks() {
  printf 'default = "allow"\n[[rule]]\nname = "no-ping"\naction = "deny"\nproto = "icmp"\n' > /tmp/r.toml
  $W fw --netns wirelab-server --iface eth0 --rules /tmp/r.toml --duration 60s > /tmp/fw.out 2>&1 &
  p=$!
  until_ok 360 $W fw stats --netns wirelab-server || return 1
  if $W lab exec client -- ping -c 2 -W 2 198.18.0.2; then kill -INT $p; return 1; fi
  $W fw stats --netns wirelab-server --json | grep -q '"name":"no-ping"'
  ok=$?
  kill -INT $p; wait $p
  return $ok
}
check fw-denies-icmp fw_blocks

wan_delays() {
  $W wan --netns wirelab-wan --between to-client to-server --both "delay 20ms" --duration 90s > /tmp/wan.out 2>&1 &
  p=$!
  until_ok 360 grep -q "wan running" /tmp/wan.out || { cat /tmp/wan.out; return 1; }
  $W lab exec client -- ping -c 5 -i 0.3 198.18.0.2 > /tmp/ping.out || { cat /tmp/ping.out /tmp/wan.out; return 1; }
  cat /tmp/ping.out
  kill -INT $p; wait $p; cat /tmp/wan.out | tail -n 5
  # 20 ms each way: the average RTT is at least 38 ms (the emulated guest adds, never removes).
  awk -F/ '/round-trip/ { exit !($4 >= 38.0) }' /tmp/ping.out
}
check wan-delay-20ms-each-way wan_delays

# Loss measured by the probe: 10% each way on 400 probes (a generous band: emulated guest).
wan_loss() {
  $W probe server --netns wirelab-server --bind 198.18.0.2:7001 --duration 120s > /tmp/ps.out 2>&1 &
  ps=$!
  $W wan --netns wirelab-wan --between to-client to-server --both "loss 10%" --seed 3 --duration 90s > /tmp/wl.out 2>&1 &
  p=$!
  until_ok 360 grep -q "wan running" /tmp/wl.out || { cat /tmp/wl.out; kill $ps; return 1; }
  until_ok 60 grep -q "listening" /tmp/ps.out || { kill $p $ps; return 1; }
  $W probe client --netns wirelab-client --to 198.18.0.2:7001 --rate 100 --count 400 --json > /tmp/pl.json
  ok=$?
  kill -INT $p $ps; wait $p; wait $ps
  cat /tmp/pl.json
  [ $ok -eq 0 ] || return 1
  # forward loss_pct between 4 and 18 %
  grep -o '"forward":{[^}]*"loss_pct":[0-9.]*' /tmp/pl.json | grep -o '[0-9.]*$' | awk '{ exit !($1 >= 4 && $1 <= 18) }'
}
check wan-loss-10pct-by-probe wan_loss

# kill -9 of a running wan: its XDP links go with it; the tc fast path's clsact filter (kernels
# before 6.6) stays until `wirelab cleanup`. Afterwards the bridge forwards again and a new wan
# attaches to the same interfaces.
kill9_then_cleanup() {
  $W wan --netns wirelab-wan --between to-client to-server --both "delay 5ms" --duration 90s > /tmp/w9.out 2>&1 &
  p=$!
  until_ok 360 grep -q "wan running" /tmp/w9.out || { cat /tmp/w9.out; return 1; }
  kill -9 $p; wait $p 2>/dev/null
  $W cleanup || return 1
  $W lab exec client -- ping -c 2 -W 5 198.18.0.2 || return 1
  $W wan --netns wirelab-wan --between to-client to-server --both "delay 5ms" --duration 90s > /tmp/w10.out 2>&1 &
  p=$!
  until_ok 360 grep -q "wan running" /tmp/w10.out || { cat /tmp/w10.out; return 1; }
  kill -INT $p; wait $p
}
check kill9-wan-then-cleanup kill9_then_cleanup

swarm_connects() {
  $W lab exec server -- ip route add 198.18.0.64/26 dev eth0 || return 1
  $W probe server --netns wirelab-server --bind 198.18.0.2:7000 --duration 120s > /tmp/probe.out 2>&1 &
  p=$!
  until_ok 60 grep -q "listening" /tmp/probe.out || return 1
  $W swarm connect --netns wirelab-client --iface eth0 --pool 198.18.0.64/26 --clients 20 \
     --to 198.18.0.2:7000 --hold 200ms --timeout 60s --json
  ok=$?
  kill -INT $p; wait $p
  return $ok
}
check swarm-connect-20-clients swarm_connects

# gen: 200 UDP frames to the server's MAC (XDP live frames from 5.18, AF_PACKET before).
gen_sends() {
  mac=$($W lab exec server -- ip link show eth0 | sed -n 's/.*link\/ether \([0-9a-f:]*\).*/\1/p')
  [ -n "$mac" ] || return 1
  $W gen --netns wirelab-client --iface eth0 --dst-mac "$mac" --src 198.18.0.1 --dst 198.18.0.2 \
     --proto udp --size 64 --count 200 --rate 2000 --json > /tmp/gen.json || { cat /tmp/gen.json; return 1; }
  cat /tmp/gen.json
  grep -q '"sent":200,"delivered":200,' /tmp/gen.json
}
check gen-200-frames gen_sends

# capture: 3 pings seen on the server's eth0, requests in (XDP) and replies out (tc egress).
capture_pings() {
  $W capture --netns wirelab-server --iface eth0 --filter icmp --count 6 --json \
     -w /tmp/c.pcapng > /tmp/cap.json 2> /tmp/cap.err &
  p=$!
  until_ok 360 grep -q "capture attached" /tmp/cap.err || { cat /tmp/cap.err; return 1; }
  $W lab exec client -- ping -c 3 -i 0.5 -W 5 198.18.0.2 || return 1
  wait $p || { cat /tmp/cap.err; return 1; }
  cat /tmp/cap.json
  grep -q '"written":6,' /tmp/cap.json && [ -s /tmp/c.pcapng ]
}
check capture-pings-both-ways capture_pings

# capture behind wan's tap: 4 Mbit/s of probes into `rate 1mbit limit 5`; the frames wan's
# engine drops from its full queue are marked in the file (`engine_drops` in the summary).
capture_behind_wan() {
  $W probe server --netns wirelab-server --bind 198.18.0.2:7002 --duration 150s > /tmp/pw.out 2>&1 &
  ps=$!
  $W wan --netns wirelab-wan --between to-client to-server --a-to-b "rate 1mbit limit 5" \
     --duration 150s > /tmp/wq.out 2>&1 &
  p=$!
  until_ok 360 grep -q "wan running" /tmp/wq.out || { cat /tmp/wq.out; kill $ps; return 1; }
  until_ok 60 grep -q "listening" /tmp/pw.out || { kill $p $ps; return 1; }
  $W capture --netns wirelab-wan --iface to-client --filter 'udp dst port 7002' --json \
     -w /tmp/cw.pcapng > /tmp/cw.json 2> /tmp/cw.err &
  pc=$!
  until_ok 360 grep -q "capture attached" /tmp/cw.err || { cat /tmp/cw.err; kill $p $ps $pc; return 1; }
  $W probe client --netns wirelab-client --to 198.18.0.2:7002 --rate 500 --count 500 --size 1000 \
     --json > /tmp/pq.json
  kill -INT $pc; wait $pc
  kill -INT $p $ps; wait $p; wait $ps
  cat /tmp/cw.json
  grep -q '"behind":"wan"' /tmp/cw.json && grep -q '"engine_drops":[1-9]' /tmp/cw.json
}
check capture-behind-wan-marks-queue-drops capture_behind_wan
check swarm-run-5-clients $W swarm run --netns wirelab-client --iface eth0 --pool 198.18.0.64/26 --clients 5 -- true
check lab-down $W lab down

# A 2-cell sweep in its own lab (lab, emulator changed live with seeds, probe, records).
sweep_runs() {
  cat > /tmp/sweep.toml <<'EOT'
repetitions = 1
[[axis]]
name = "delay"
values = ["delay 5ms", "delay 20ms"]
[[workload]]
kind = "udp"
rate = 50
count = 50
EOT
  $W sweep /tmp/sweep.toml --out /tmp/sweep1 --json > /tmp/sweep.json || { cat /tmp/sweep.json; return 1; }
  cat /tmp/sweep.json
  grep -q '"runs":2,"failed":0' /tmp/sweep.json
}
check sweep-2-cells sweep_runs

# The load balancer on the tour's DSR lab: TCP sinks on the VIP in three backends, the tc
# program (TCX, or a clsact filter before 6.6) spreading a TCP probe's flows, lb stats.
lb_balances() {
  $W lab up --name lbk /examples/lb-lab.toml || return 1
  for b in b1 b2 b3; do
    $W lab exec --name lbk $b -- ip addr add 198.18.1.100/32 dev lo || return 1
    $W probe server --netns lbk-$b --bind 198.18.1.100:80 --duration 120s > /tmp/lb-$b.out 2>&1 &
  done
  $W lb --netns lbk-lb --iface eth0 --config /examples/lb.toml --duration 120s > /tmp/lb.out 2>&1 &
  p=$!
  until_ok 360 $W lb stats --netns lbk-lb || { cat /tmp/lb.out; return 1; }
  for i in 1 2 3 4 5 6; do
    $W probe client --netns lbk-client --to 198.18.1.100:80 --tcp --duration 1s --json > /tmp/lbc.json || { cat /tmp/lbc.json; return 1; }
    grep -q '"goodput_mbps":0.0,' /tmp/lbc.json && { cat /tmp/lbc.json; return 1; }
  done
  $W lb stats --netns lbk-lb
  $W lb stats --netns lbk-lb --json > /tmp/lbs.json
  ok=1
  grep -q '"new_flows":[1-9]' /tmp/lbs.json && ok=0
  kill -INT $p; wait $p
  $W lab down --name lbk
  return $ok
}
check lb-dsr-tcp lb_balances

# NAT with a smaller MTU towards the backends: the balancer's own "fragmentation needed"
# reaches the client only through lb_egress (tc egress; a clsact filter before 6.6), which
# gives its quote the VIP back. Without it the bulk TCP probe stalls at 0 goodput. The
# backend listens on 8080 (`port`): the service port is translated both ways, in the quote
# too.
# $1: an SNAT address for the service (then the balancer's "fragmentation needed" goes to
# that address, its own, through lo, and lb_icmp sends it on to the client), or nothing.
lb_nat_pmtu() {
  $W lab up --name lbn /examples/lb-nat-lab.toml || return 1
  snat=""
  if [ -n "$1" ]; then
    snat="snat = \"$1\"\n"
    $W lab exec --name lbn lb -- ip addr add "$1/24" dev eth1 || return 1
    $W lab exec --name lbn lb -- sysctl -w net.ipv4.conf.all.accept_local=1 || return 1
  fi
  printf '[[service]]\nname = "web"\nvip = "198.18.1.100"\nport = 80\nproto = "tcp"\nmode = "nat"\n'"$snat"'[[service.backend]]\nname = "b1"\naddr = "198.18.2.21"\nport = 8080\n' > /tmp/lbn.toml
  cat /tmp/lbn.toml
  $W lab exec --name lbn lb -- ip link set eth1 mtu 1280 || return 1
  $W probe server --netns lbn-b1 --bind 198.18.2.21:8080 --duration 120s > /tmp/lbn-b1.out 2>&1 &
  $W lb --netns lbn-lb --iface eth0 --nat-iface eth1 --config /tmp/lbn.toml --duration 120s > /tmp/lbn.out 2>&1 &
  p=$!
  until_ok 360 $W lb stats --netns lbn-lb || { cat /tmp/lbn.out; return 1; }
  ok=1
  $W probe client --netns lbn-client --to 198.18.1.100:80 --tcp --duration 2s --json > /tmp/lbnc.json && ok=0
  cat /tmp/lbnc.json
  grep -q '"goodput_mbps":0.0,' /tmp/lbnc.json && ok=1
  $W lb stats --netns lbn-lb --json > /tmp/lbns.json
  grep -q '"icmp_translated":[1-9]' /tmp/lbns.json || ok=1
  grep -o '"icmp_translated":[0-9]*' /tmp/lbns.json
  kill -INT $p; wait $p
  $W lab down --name lbn
  return $ok
}
check lb-nat-port-pmtu lb_nat_pmtu
check lb-snat-pmtu lb_nat_pmtu 198.18.2.250
check cleanup-after $W cleanup
echo "WIRELAB-KT DONE"
poweroff -f
