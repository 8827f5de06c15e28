# Shared helpers for botfleet scripts. Sourced, not run.

# A TCP port nobody listens on now, below 55000: a Redis Cluster node also
# listens on port + 10000 (its bus), which must stay a valid port.
free_port() {
  python3 - <<'PY'
import random, socket
for _ in range(200):
    port = random.randint(20000, 54999)
    ok = True
    for p in (port, port + 10000):
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", p))
        except OSError:
            ok = False
        finally:
            s.close()
    if ok:
        print(port)
        break
else:
    raise SystemExit("no free port pair found")
PY
}

# Installs Redis from the OS package manager when redis-server is missing.
ensure_redis() {
  if command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1; then return 0; fi
  echo "redis-server not found: installing it with apt-get" >&2
  local sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq >&2 && $sudo apt-get install -y -qq redis-server >&2
}

# Waits until redis on port $1 answers PING (20 s).
wait_redis() {
  for _ in $(seq 200); do
    redis-cli -p "$1" ping >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "redis on port $1 did not start" >&2; return 1
}

# Cargo's target directory (honours CARGO_TARGET_DIR and .cargo/config).
target_dir() {
  cargo metadata --format-version 1 --no-deps 2>/dev/null \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])'
}

# The URL in the `{"ready":true,"url":...}` line a botfleet or botfleet-sim
# process prints, waiting up to 30 s; fails with the process's log otherwise.
ready_url() { # stdout-file stderr-file
  for _ in $(seq 300); do grep -q '"ready":true' "$1" 2>/dev/null && break; sleep 0.1; done
  if ! grep -q '"ready":true' "$1" 2>/dev/null; then
    echo "no ready line in $1 after 30 s; its log:" >&2; cat "$2" >&2 2>/dev/null; return 1
  fi
  python3 -c 'import json,sys; print(json.loads(open(sys.argv[1]).readline())["url"])' "$1"
}
