#!/usr/bin/env bash
# A throw-away ClickHouse server for tests and CI: install it, start it in a directory, stop it.
#
#   .ci/clickhouse.sh install                    Debian's clickhouse-server and -client, if missing
#   .ci/clickhouse.sh start DIR PORT HTTP_PORT   config in DIR, data in DIR/data, logs in DIR/log,
#                                                pid in DIR/pid; returns once `SELECT 1` answers
#   .ci/clickhouse.sh stop DIR                   SIGTERM, then SIGKILL after STOP_TIMEOUT_S
#
# Every subcommand is idempotent: installing twice, starting a running server
# or stopping a stopped one says so and succeeds. Restarting with the same DIR
# keeps the data. The server listens on 127.0.0.1 only, in UTC, as the current
# user (root included: ClickHouse 18.16 does not check who runs it).
#
# Users: `default` (no password, loopback only, full rights), `relay_reader`
# (no password, loopback only, readonly=2: reads only, but the limits the
# relay sets per query still apply; table functions such as url() still run,
# so the relay refuses to serve /query through it) and `relay_query` (the user
# docs/clickhouse.md tells operators to create for CLICKHOUSE_QUERY_URL:
# readonly=1 with the /query limits in its profile). Profiles: default,
# readonly, relay_reader, relay_query.
set -euo pipefail

START_TIMEOUT_S=${START_TIMEOUT_S:-60}
STOP_TIMEOUT_S=${STOP_TIMEOUT_S:-30}

say() { echo "clickhouse.sh: $*"; }
die() { echo "clickhouse.sh: $*" >&2; exit 1; }

server_bin() {
  # /usr/sbin is not on every user's PATH; Debian puts the server there.
  command -v clickhouse-server 2>/dev/null || { [ -x /usr/sbin/clickhouse-server ] && echo /usr/sbin/clickhouse-server; } || true
}

client_bin() {
  command -v clickhouse-client 2>/dev/null || true
}

alive() {  # PID -> exit 0 while it runs; a zombie (where nobody reaps orphans) counts as gone
  kill -0 "$1" 2>/dev/null || return 1
  [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != "Z" ]
}

is_running() {  # DIR -> exit 0 when the pid in DIR/pid is a live clickhouse-server
  local pid
  [ -s "$1/pid" ] || return 1
  pid=$(cat "$1/pid")
  alive "$pid" || return 1
  # a recycled pid must not make us signal an unrelated process
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "clickhouse" || return 1
}

answers() {  # PORT -> exit 0 when the server answers SELECT 1 on it
  [ "$("$(client_bin)" --host 127.0.0.1 --port "$1" -q 'SELECT 1' 2>/dev/null)" = "1" ]
}

log_tail() {
  local file
  for file in "$1"/log/stdout.log "$1"/log/clickhouse-server.err.log; do
    if [ -s "$file" ]; then
      echo "---- last lines of $file ----" >&2
      tail -n 40 "$file" >&2
    fi
  done
}

cmd_install() {
  if [ -n "$(server_bin)" ] && [ -n "$(client_bin)" ]; then
    say "clickhouse-server and clickhouse-client already installed ($(server_bin), $(client_bin))"
    return 0
  fi
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null || die "not root and no sudo: install clickhouse-server and clickhouse-client yourself"
    sudo="sudo"
  fi
  say "installing Debian's clickhouse-server and clickhouse-client"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends clickhouse-server clickhouse-client
  # The package may start a system service on 9000/8123; ours run on their own ports, so leave it.
  [ -n "$(server_bin)" ] || die "clickhouse-server still missing after apt-get install"
  say "installed $(server_bin)"
}

write_config() {  # DIR PORT HTTP_PORT
  local dir=$1 port=$2 http_port=$3
  mkdir -p "$dir/data/tmp" "$dir/data/user_files" "$dir/data/format_schemas" "$dir/log"
  cat >"$dir/config.xml" <<EOF
<?xml version="1.0"?>
<!-- Written by .ci/clickhouse.sh: a test server on 127.0.0.1 only. -->
<yandex>
    <logger>
        <level>information</level>
        <log>$dir/log/clickhouse-server.log</log>
        <errorlog>$dir/log/clickhouse-server.err.log</errorlog>
        <size>100M</size>
        <count>2</count>
    </logger>
    <listen_host>127.0.0.1</listen_host>
    <tcp_port>$port</tcp_port>
    <http_port>$http_port</http_port>
    <path>$dir/data/</path>
    <tmp_path>$dir/data/tmp/</tmp_path>
    <user_files_path>$dir/data/user_files/</user_files_path>
    <format_schema_path>$dir/data/format_schemas/</format_schema_path>
    <users_config>$dir/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <max_connections>1024</max_connections>
    <keep_alive_timeout>3</keep_alive_timeout>
    <max_concurrent_queries>100</max_concurrent_queries>
    <uncompressed_cache_size>268435456</uncompressed_cache_size>
    <mark_cache_size>268435456</mark_cache_size>
    <builtin_dictionaries_reload_interval>3600</builtin_dictionaries_reload_interval>
    <max_session_timeout>3600</max_session_timeout>
    <default_session_timeout>60</default_session_timeout>
</yandex>
EOF
  cat >"$dir/users.xml" <<'EOF'
<?xml version="1.0"?>
<!-- Written by .ci/clickhouse.sh. -->
<yandex>
    <profiles>
        <default>
            <!-- an idle connection notices a shutdown after poll_interval seconds (default 10):
                 keep stop (and outage tests) quick -->
            <poll_interval>1</poll_interval>
            <max_memory_usage>2000000000</max_memory_usage>
            <use_uncompressed_cache>0</use_uncompressed_cache>
            <load_balancing>random</load_balancing>
        </default>
        <readonly>
            <readonly>1</readonly>
        </readonly>
        <!-- readonly=2: no writes, no DDL, but per-query limit settings may still be set -->
        <relay_reader>
            <readonly>2</readonly>
            <max_memory_usage>1000000000</max_memory_usage>
        </relay_reader>
        <!-- readonly=1: no writes, DDL, table functions or settings changes; the limits live here -->
        <relay_query>
            <max_execution_time>10</max_execution_time>
            <max_result_rows>10001</max_result_rows>
            <result_overflow_mode>break</result_overflow_mode>
            <max_rows_to_read>100000000</max_rows_to_read>
            <max_memory_usage>1000000000</max_memory_usage>
            <readonly>1</readonly>
        </relay_query>
    </profiles>
    <users>
        <default>
            <password></password>
            <networks><ip>::1</ip><ip>127.0.0.1</ip></networks>
            <profile>default</profile>
            <quota>default</quota>
        </default>
        <relay_reader>
            <password></password>
            <networks><ip>::1</ip><ip>127.0.0.1</ip></networks>
            <profile>relay_reader</profile>
            <quota>default</quota>
        </relay_reader>
        <relay_query>
            <password></password>
            <networks><ip>::1</ip><ip>127.0.0.1</ip></networks>
            <profile>relay_query</profile>
            <quota>default</quota>
        </relay_query>
    </users>
    <quotas>
        <default>
            <interval>
                <duration>3600</duration>
                <queries>0</queries>
                <errors>0</errors>
                <result_rows>0</result_rows>
                <read_rows>0</read_rows>
                <execution_time>0</execution_time>
            </interval>
        </default>
    </quotas>
</yandex>
EOF
}

cmd_start() {  # DIR PORT HTTP_PORT
  [ $# -eq 3 ] || die "usage: $0 start DIR PORT HTTP_PORT"
  local dir port=$2 http_port=$3 server pid deadline
  mkdir -p "$1"
  dir=$(cd "$1" && pwd)
  server=$(server_bin)
  [ -n "$server" ] || die "clickhouse-server is not installed: run .ci/clickhouse.sh install"
  [ -n "$(client_bin)" ] || die "clickhouse-client is not installed: run .ci/clickhouse.sh install"

  if is_running "$dir"; then
    if answers "$port"; then
      say "already running in $dir (pid $(cat "$dir/pid"), port $port)"
      return 0
    fi
    die "a server from $dir (pid $(cat "$dir/pid")) is running but does not answer on port $port: stop it first"
  fi
  if answers "$port"; then
    die "port $port already answers SELECT 1: another server uses it"
  fi

  write_config "$dir" "$port" "$http_port"
  rm -f "$dir/pid"
  say "starting $server in $dir (tcp $port, http $http_port, log $dir/log)"
  # Its own session: a Ctrl-C at the terminal reaches the tests, which stop it in order.
  setsid "$server" --config-file="$dir/config.xml" </dev/null >>"$dir/log/stdout.log" 2>&1 &
  pid=$!
  echo "$pid" >"$dir/pid"

  deadline=$((SECONDS + START_TIMEOUT_S))
  until answers "$port"; do
    if ! alive "$pid"; then
      rm -f "$dir/pid"
      log_tail "$dir"
      die "clickhouse-server (pid $pid) exited during start-up"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      log_tail "$dir"
      die "clickhouse-server (pid $pid) did not answer on port $port within ${START_TIMEOUT_S}s (still running; stop it with: $0 stop $dir)"
    fi
    sleep 0.1
  done
  say "running: pid $pid, answers on 127.0.0.1:$port"
}

cmd_stop() {  # DIR
  [ $# -eq 1 ] || die "usage: $0 stop DIR"
  local dir=$1 pid deadline
  if ! is_running "$dir"; then
    say "not running in $dir"
    rm -f "$dir/pid"
    return 0
  fi
  pid=$(cat "$dir/pid")
  say "stopping pid $pid (SIGTERM)"
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + STOP_TIMEOUT_S))
  while alive "$pid"; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      say "pid $pid still running after ${STOP_TIMEOUT_S}s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      while alive "$pid"; do sleep 0.05; done
      break
    fi
    sleep 0.05
  done
  rm -f "$dir/pid"
  say "stopped"
}

case "${1:-}" in
  install) shift; cmd_install "$@" ;;
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  *) die "usage: $0 install | start DIR PORT HTTP_PORT | stop DIR" ;;
esac
