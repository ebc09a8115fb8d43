#!/usr/bin/env bash
# The relayhouse benchmark, in one command: relayhouse, nginx + nchan and the naive relay
# side by side on one load generator. See docs/benchmarks.md.
#
#   bench/run.sh            the whole bench (~20 min on 2 cores)
#   bench/run.sh --quick    a smoke run (~3 min)
#   bench/run.sh --only fanout,idle --systems relayhouse,nchan   (see: bench/run.sh --help)
#
# Installs what it needs when missing: nginx and libnginx-mod-nchan (apt-get), the Node `ws`
# package (npm, into bench/loadgen/node_modules), bench/requirements.txt (pip, into .venv),
# Debian's ClickHouse server (via .ci/clickhouse.sh). Everything listens on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}

case " $* " in *" --help "*|*" -h "*) exec "$VENV/bin/python" bench/run.py --help ;; esac

[ -x "$VENV/bin/gunicorn" ] || make setup-dev >/dev/null

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_nchan_module.so ] || missing+=(libnginx-mod-nchan)
command -v node >/dev/null 2>&1 || missing+=(nodejs npm)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  echo "installing: ${missing[*]}"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  # the package must not start a system nginx on :80: the bench runs its own on loopback
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
bash .ci/clickhouse.sh install >/dev/null || echo "no ClickHouse server: its ingest runs will be skipped"

if [ ! -d bench/loadgen/node_modules/ws ]; then
  (cd bench/loadgen && npm ci --no-audit --no-fund --silent)
fi
"$VENV/bin/pip" install -q -r bench/requirements.txt

# 10,000 connections per process: every socket is a file descriptor (the hard limit here is 20000)
ulimit -n "$(ulimit -Hn)"
echo "open files: $(ulimit -n); load average: $(cut -d' ' -f1-3 /proc/loadavg)"
exec "$VENV/bin/python" bench/run.py "$@"
