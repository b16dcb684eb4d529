#!/usr/bin/env bash
# Test servers for the NoSQL job stores, all on 127.0.0.1 only.
#
#   scripts/services.sh start   [zookeeper|mongodb|redis ...]   install what is missing, start, wait
#   scripts/services.sh stop    [zookeeper|mongodb|redis ...]   stop what this script started
#   scripts/services.sh restart [zookeeper|mongodb|redis ...]   stop then start (tests use this)
#   scripts/services.sh status  [zookeeper|mongodb|redis ...]   exit 1 if one is not answering
#
# Without a name it acts on all three. Idempotent: starting a running service does nothing.
#
#   Redis      127.0.0.1:6379   (normally already running; started here if it is not;
#                                `stop` never stops a Redis this script did not start)
#   ZooKeeper  127.0.0.1:2181   (Debian's zookeeper 3.8 package, ZooKeeperServerMain)
#   MongoDB    127.0.0.1:27217  (SecantusDB from PyPI, a MongoDB wire-protocol server,
#                                in-memory, in a venv)
#
# State (pid files, logs, data, the venv) lives in $APSCHED_SERVICES_DIR
# (default /var/tmp/apsched-services). Ports: APSCHED_ZK_PORT, APSCHED_MONGO_PORT.
#
# Tests that kill a server restart it with `scripts/services.sh restart NAME` (or `start NAME`
# after `stop NAME`). The store tests read their URLs from APSCHED_REDIS_URL,
# APSCHED_MONGODB_URL and APSCHED_ZK_URL (defaults match the ports above).
set -euo pipefail

DIR="${APSCHED_SERVICES_DIR:-/var/tmp/apsched-services}"
ZK_PORT="${APSCHED_ZK_PORT:-2181}"
MONGO_PORT="${APSCHED_MONGO_PORT:-27217}"
REDIS_PORT=6379
SECANTUS_VERSION="0.7.0b3"
mkdir -p "$DIR"

log() { echo "services: $*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() { # name port seconds
  local i
  for ((i = 0; i < $3 * 10; i++)); do
    if port_open "$2"; then return 0; fi
    sleep 0.1
  done
  log "$1 did not accept connections on 127.0.0.1:$2 within $3 s"
  [[ -f "$DIR/$1.log" ]] && tail -n 20 "$DIR/$1.log" >&2
  return 1
}

pid_alive() { [[ -f "$DIR/$1.pid" ]] && kill -0 "$(cat "$DIR/$1.pid")" 2>/dev/null; }

apt_updated=0
apt_install() {
  if [[ $apt_updated == 0 ]]; then
    apt-get update -qq >/dev/null
    apt_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# ---------------------------------------------------------------- ZooKeeper
install_zookeeper() {
  if [[ ! -f /usr/share/java/zookeeper.jar ]] || ! command -v java >/dev/null; then
    log "installing zookeeper (Debian package)"
    apt_install zookeeper
  fi
}

start_zookeeper() {
  if port_open "$ZK_PORT"; then return 0; fi
  install_zookeeper
  local conf="$DIR/zookeeper-conf"
  mkdir -p "$conf" "$DIR/zookeeper-data"
  cat >"$conf/zoo.cfg" <<EOF
tickTime=2000
dataDir=$DIR/zookeeper-data
clientPort=$ZK_PORT
clientPortAddress=127.0.0.1
admin.enableServer=false
4lw.commands.whitelist=ruok,srvr,stat
maxSessionTimeout=60000
EOF
  cat >"$conf/log4j.properties" <<EOF
log4j.rootLogger=WARN, CONSOLE
log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender
log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout
log4j.appender.CONSOLE.layout.ConversionPattern=%d [%t] %-5p %c - %m%n
EOF
  # zookeeper.jar's manifest lists its dependencies (netty, jute, slf4j-api, ...); slf4j has
  # no binding on the classpath, so ZooKeeper logs nothing but startup failures on stderr.
  nohup java -Xmx256m -cp "$conf:/usr/share/java/zookeeper.jar" \
    org.apache.zookeeper.server.ZooKeeperServerMain "$conf/zoo.cfg" \
    >"$DIR/zookeeper.log" 2>&1 </dev/null &
  echo $! >"$DIR/zookeeper.pid"
  wait_port zookeeper "$ZK_PORT" 60
}

# ---------------------------------------------------------------- MongoDB (SecantusDB)
install_mongodb() {
  local venv="$DIR/venv"
  if [[ -x "$venv/bin/secantusd-py" ]]; then return 0; fi
  log "installing secantusdb==$SECANTUS_VERSION (PyPI) into $venv"
  if ! python3 -m venv "$venv" 2>/dev/null; then
    apt_install python3-venv
    python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q "secantusdb==$SECANTUS_VERSION"
}

start_mongodb() {
  if port_open "$MONGO_PORT"; then return 0; fi
  install_mongodb
  nohup "$DIR/venv/bin/secantusd-py" --host 127.0.0.1 --port "$MONGO_PORT" \
    --storage-path ':memory:' >"$DIR/mongodb.log" 2>&1 </dev/null &
  echo $! >"$DIR/mongodb.pid"
  wait_port mongodb "$MONGO_PORT" 60
}

# ---------------------------------------------------------------- Redis
start_redis() {
  if port_open "$REDIS_PORT"; then return 0; fi
  if ! command -v redis-server >/dev/null; then
    log "installing redis-server (Debian package)"
    apt_install redis-server
  fi
  mkdir -p "$DIR/redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" \
    --appendonly no --dir "$DIR/redis" --logfile "$DIR/redis.log" \
    --pidfile "$DIR/redis.pid"
  wait_port redis "$REDIS_PORT" 30
}

# ---------------------------------------------------------------- common
stop_one() { # name port
  if pid_alive "$1"; then
    local pid
    pid="$(cat "$DIR/$1.pid")"
    kill "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$DIR/$1.pid"
}

port_of() {
  case "$1" in
    zookeeper) echo "$ZK_PORT" ;;
    mongodb) echo "$MONGO_PORT" ;;
    redis) echo "$REDIS_PORT" ;;
    *) log "unknown service '$1' (zookeeper, mongodb, redis)"; exit 2 ;;
  esac
}

cmd="${1:-}"
shift || true
names=("$@")
[[ ${#names[@]} == 0 ]] && names=(redis zookeeper mongodb)

case "$cmd" in
  start)
    for n in "${names[@]}"; do port_of "$n" >/dev/null; "start_$n"; log "$n up on 127.0.0.1:$(port_of "$n")"; done ;;
  stop)
    for n in "${names[@]}"; do port_of "$n" >/dev/null; stop_one "$n"; done ;;
  restart)
    for n in "${names[@]}"; do port_of "$n" >/dev/null; stop_one "$n"; "start_$n"; done ;;
  status)
    rc=0
    for n in "${names[@]}"; do
      if port_open "$(port_of "$n")"; then echo "$n: up (127.0.0.1:$(port_of "$n"))"; else echo "$n: down"; rc=1; fi
    done
    exit $rc ;;
  *)
    sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
    exit 2 ;;
esac
