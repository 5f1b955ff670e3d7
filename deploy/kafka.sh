#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft, broker+controller) on 127.0.0.1, no Docker needed.
#
#   deploy/kafka.sh start    fetch jars (once, cached), format storage, start, wait until it answers
#   deploy/kafka.sh stop     stop the broker this script started (by its pid file)
#   deploy/kafka.sh status   say whether it runs
#
# The broker jars come from Maven Central through `mvn` and are cached under .cache/kafka-<version>.
# Environment: KAFKA_VERSION (default below), KAFKA_PORT (9092), KAFKA_CONTROLLER_PORT (9093),
# KAFKA_STATE_DIR (default ./data/kafka), KAFKA_HEAP (default -Xmx768m).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# 4.1.x: the newest line that aiokafka 0.14 / faust-streaming 0.15 were checked against here.
KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
STATE_DIR="${KAFKA_STATE_DIR:-$ROOT/data/kafka}"
CACHE_DIR="${KAFKA_CACHE_DIR:-$ROOT/.cache/kafka-$KAFKA_VERSION}"
PID_FILE="$STATE_DIR/broker.pid"
LOG_FILE="$STATE_DIR/broker.log"

log() { echo "[kafka] $*" >&2; }

fetch_jars() {
  if [ -f "$CACHE_DIR/.complete" ]; then return; fi
  command -v mvn >/dev/null || { log "mvn not found: install Maven (and Java 17)"; exit 1; }
  mkdir -p "$CACHE_DIR"
  log "fetching Apache Kafka $KAFKA_VERSION jars with mvn (once; cached in $CACHE_DIR)"
  cat >"$CACHE_DIR/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.adclick</groupId><artifactId>kafka-broker</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>2.24.3</version></dependency>
  </dependencies>
</project>
EOF
  mvn -q -B -f "$CACHE_DIR/pom.xml" dependency:copy-dependencies \
      -DoutputDirectory="$CACHE_DIR/libs" -DincludeScope=runtime >&2
  touch "$CACHE_DIR/.complete"
}

is_running() {
  [ -f "$PID_FILE" ] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null
}

port_answers() {
  (exec 3<>"/dev/tcp/127.0.0.1/$KAFKA_PORT") 2>/dev/null
}

write_config() {
  mkdir -p "$STATE_DIR"
  cat >"$STATE_DIR/server.properties" <<EOF
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=$STATE_DIR/logs
num.partitions=3
# Topics are created by the project with explicit partition counts.
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=6
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
group.initial.rebalance.delay.ms=0
log.retention.hours=168
EOF
  cat >"$STATE_DIR/log4j2.properties" <<EOF
status=error
appender.file.type=File
appender.file.name=file
appender.file.fileName=$LOG_FILE
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=[%d] %p %m (%c)%n
rootLogger.level=WARN
rootLogger.appenderRef.file.ref=file
logger.kafka.name=kafka
logger.kafka.level=WARN
logger.server.name=kafka.server.KafkaServer
logger.server.level=INFO
EOF
}

start() {
  if is_running; then
    log "already running (pid $(cat "$PID_FILE")) on 127.0.0.1:$KAFKA_PORT: nothing to do"
    return 0
  fi
  if port_answers; then
    log "something else already listens on 127.0.0.1:$KAFKA_PORT; not starting a second broker"
    return 0
  fi
  fetch_jars
  write_config
  local cp="$CACHE_DIR/libs/*"
  if [ ! -f "$STATE_DIR/logs/meta.properties" ]; then
    log "formatting KRaft storage in $STATE_DIR/logs"
    java -cp "$cp" -Dlog4j2.configurationFile="$STATE_DIR/log4j2.properties" kafka.tools.StorageTool \
      format --standalone -t "$(java -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)" \
      -c "$STATE_DIR/server.properties" >/dev/null 2>&1 ||
    java -cp "$cp" -Dlog4j2.configurationFile="$STATE_DIR/log4j2.properties" kafka.tools.StorageTool \
      format -t "$(java -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)" \
      -c "$STATE_DIR/server.properties" >/dev/null
  fi
  log "starting Kafka $KAFKA_VERSION on 127.0.0.1:$KAFKA_PORT (log: $LOG_FILE)"
  nohup java ${KAFKA_HEAP:--Xmx768m} -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$STATE_DIR/log4j2.properties" \
    -cp "$cp" kafka.Kafka "$STATE_DIR/server.properties" >"$STATE_DIR/broker.stdout" 2>&1 &
  echo $! >"$PID_FILE"
  for _ in $(seq 1 120); do
    if port_answers; then log "broker answers on 127.0.0.1:$KAFKA_PORT (pid $(cat "$PID_FILE"))"; return 0; fi
    if ! is_running; then log "broker died; see $STATE_DIR/broker.stdout and $LOG_FILE"; tail -20 "$STATE_DIR/broker.stdout" >&2; exit 1; fi
    sleep 0.5
  done
  log "broker did not answer within 60 s"; exit 1
}

stop() {
  if ! is_running; then log "not running"; rm -f "$PID_FILE"; return 0; fi
  local pid; pid="$(cat "$PID_FILE")"
  log "stopping broker pid $pid"
  kill "$pid"
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$PID_FILE"; log "stopped"; return 0; }
    sleep 0.5
  done
  log "broker did not stop in 30 s; killing"; kill -9 "$pid" 2>/dev/null || true; rm -f "$PID_FILE"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if is_running; then echo "running (pid $(cat "$PID_FILE")) on 127.0.0.1:$KAFKA_PORT"; else echo "not running"; exit 1; fi ;;
  fetch) fetch_jars ;;
  *) echo "usage: $0 start|stop|status|fetch" >&2; exit 2 ;;
esac
