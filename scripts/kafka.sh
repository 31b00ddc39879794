#!/usr/bin/env bash
# Runs a real Apache Kafka broker (KRaft, no ZooKeeper) on 127.0.0.1 for tests, from the jars on
# Maven Central; no Docker, no Kafka tarball.
#
#   scripts/kafka.sh [--nodes 1|3] [--security] [--] [COMMAND [ARGS...]]
#   scripts/kafka.sh --install        # only fetch the jars (once), e.g. in a CI cache step
#
#   scripts/kafka.sh -- cargo test -p conveyor-kafka --test live   # runs COMMAND against it
#   scripts/kafka.sh --nodes 3                                     # prints the exports, waits
#                                                                  # for Ctrl-C
#
# It starts N nodes (1 by default, or 3), each a combined broker+controller, in a fresh folder
# `mktemp -d -t conveyor-kafka.XXXXXX`, waits until all N brokers are registered (90 s at most),
# exports the variables below, runs COMMAND, then kills the nodes and removes the folder (also
# when COMMAND fails, and on Ctrl-C / SIGINT / SIGTERM / SIGHUP). The script exits with COMMAND's
# exit code. Without COMMAND it prints the exports and waits until it is interrupted.
# If CONVEYOR_TEST_BROKERS is already set it is ignored: this script always starts its own
# cluster and overrides the variable for COMMAND.
#
# Exported for COMMAND (and printed to stderr as `export X=...`):
#   CONVEYOR_TEST_BROKERS            127.0.0.1:PORT[,...]  PLAINTEXT listeners of all nodes
#   CONVEYOR_TEST_KAFKA_NODES        the work folder, holding node1..nodeN
#   CONVEYOR_TEST_KAFKA_NODE_COUNT   N
#   CONVEYOR_TEST_KAFKA_LIBS         the jar folder (java -cp "$CONVEYOR_TEST_KAFKA_LIBS/*" ...)
#   CONVEYOR_TEST_KAFKA_VERSION      the version the broker logged ("Kafka version: X")
# With --security also (each node gets two more listeners; cert: CN localhost, SAN DNS:localhost
# and IP:127.0.0.1, so hostname verification of 127.0.0.1 passes):
#   CONVEYOR_TEST_KAFKA_SASL_SSL     127.0.0.1:PORT[,...]  SASL_SSL, SCRAM-SHA-512, no client cert
#   CONVEYOR_TEST_KAFKA_SSL          127.0.0.1:PORT[,...]  SSL with ssl.client.auth=required (mTLS)
#   CONVEYOR_TEST_KAFKA_CA           PEM of the throwaway CA that signed the broker and client certs
#   CONVEYOR_TEST_KAFKA_OTHER_CA     PEM of an unrelated CA (a client trusting only it must fail)
#   CONVEYOR_TEST_KAFKA_CLIENT_CERT  client certificate (PEM, CN=conveyor), signed by the CA
#   CONVEYOR_TEST_KAFKA_CLIENT_KEY   its key (PEM, PKCS#8, unencrypted)
#   CONVEYOR_TEST_KAFKA_OTHER_CLIENT_CERT / _KEY  a client cert+key signed by the OTHER CA (mTLS
#                                    must refuse it)
#   CONVEYOR_TEST_KAFKA_SASL_USER    conveyor
#   CONVEYOR_TEST_KAFKA_SASL_PASSWORD  random, per run
#
# Work folder layout ($CONVEYOR_TEST_KAFKA_NODES):
#   nodeI/server.properties  nodeI/data/  nodeI/broker.log (appended on every start)
#   nodeI/pid   the running JVM's pid        nodeI/id    the node id (I)
#   nodeI/port  its PLAINTEXT port
#   nodeI/start [--wait [TIMEOUT_S]]  (re)starts the node in the background, detached, writes pid;
#               never reformats storage. With --wait it also waits until the cluster lists all N
#               brokers again through this node. Fault tests: `kill -9 $(cat nodeI/pid)`, later
#               `nodeI/start --wait`.
#   nodeI/stop  SIGKILLs the node and waits until it is gone.
#   tls/        (with --security) ca.pem ca.key other-ca.pem broker-keystore.pem client.pem
#               client.key other-client.pem other-client.key
#
# Needs: java >= 17 (a JDK: Ready.java runs as a source file), python3 (free ports), mvn (only
# to fetch the jars), openssl (with --security).
# Jars: fetched once with Maven (scripts/kafka/pom.xml pins the version) into
# ${CONVEYOR_CACHE:-~/.cache/conveyor}/kafka-VERSION/libs; a `.complete` marker is written last
# and the folder moved into place at once, so an interrupted fetch is simply redone.
# Environment knobs: KAFKA_HEAP (default "-Xms128m -Xmx512m"), KAFKA_JVM_OPTS (more JVM flags for
# the brokers; default -XX:TieredStopAtLevel=1, quicker starts; set it empty for the full JIT),
# KAFKA_EXTRA_PROPS (lines appended to every node's server.properties, for debugging; later
# lines win), KAFKA_READY_TIMEOUT_S (default 90).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
pom="$here/kafka/pom.xml"
ready_java="$here/kafka/Ready.java"
KAFKA_VERSION=$(sed -n 's:.*<kafka.version>\([^<]*\)</kafka.version>.*:\1:p' "$pom")
CACHE="${CONVEYOR_CACHE:-$HOME/.cache/conveyor}"
LIBS="$CACHE/kafka-$KAFKA_VERSION/libs"
READY_TIMEOUT_S=${KAFKA_READY_TIMEOUT_S:-90}

die() { echo "kafka.sh: $*" >&2; exit 1; }

usage() { sed -n '2,/^set -euo pipefail/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

# --- arguments ---------------------------------------------------------------------------------
nodes=1
security=0
install_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) [ $# -ge 2 ] || die "--nodes needs a value (1 or 3)"; nodes=$2; shift 2 ;;
    --nodes=*) nodes=${1#--nodes=}; shift ;;
    --security) security=1; shift ;;
    --install) install_only=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) break ;;
  esac
done
case "$nodes" in 1|3) ;; *) die "--nodes must be 1 or 3, not '$nodes'" ;; esac
[ -n "$KAFKA_VERSION" ] || die "no <kafka.version> in $pom"

# --- prerequisites -----------------------------------------------------------------------------
command -v java >/dev/null 2>&1 ||
  die "java not found; install Debian's OpenJDK 17 (a JDK: Ready.java is run as source): apt-get install -y openjdk-17-jdk-headless"
JAVA=$(command -v java)
java_major=$("$JAVA" -version 2>&1 | sed -n '1s/^[^"]*"\([0-9][0-9]*\).*/\1/p')
if [ -z "$java_major" ] || [ "$java_major" -lt 17 ]; then
  die "java >= 17 needed, found: $("$JAVA" -version 2>&1 | head -n 1) (apt-get install -y openjdk-17-jdk-headless)"
fi
if [ ! -f "$LIBS/.complete" ]; then
  command -v mvn >/dev/null 2>&1 || die "mvn not found (needed once, to fetch Kafka's jars): apt-get install -y maven"
fi
if [ "$install_only" = 0 ]; then
  command -v python3 >/dev/null 2>&1 || die "python3 not found (used to pick free ports): apt-get install -y python3"
  if [ "$security" = 1 ]; then
    command -v openssl >/dev/null 2>&1 || die "openssl not found (needed by --security): apt-get install -y openssl"
  fi
fi

# --- cleanup -----------------------------------------------------------------------------------
work=""
fetch_tmp=""
cmd_pid=""

# node_running PID DIR: PID is alive (not a zombie) and is the JVM of the node in DIR.
node_running() {
  local st cmdline
  { read -r _ _ st _ <"/proc/$1/stat"; } 2>/dev/null || return 1
  case "$st" in Z|X|x) return 1 ;; esac
  cmdline=$(tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null) || return 1
  case "$cmdline" in *"$2/server.properties"*) return 0 ;; *) return 1 ;; esac
}

# shellcheck disable=SC2317  # only called by the trap
cleanup() {
  local rc=$? f pid dir j deadline
  set +e
  trap '' INT TERM HUP
  trap - EXIT
  if [ -n "$cmd_pid" ] && kill -0 "$cmd_pid" 2>/dev/null; then
    kill -TERM "$cmd_pid" 2>/dev/null
  fi
  if [ -n "$work" ] && [ -d "$work" ]; then
    # Tests do not need a graceful stop: SIGKILL is quick and frees the ports at once.
    for f in "$work"/node*/pid; do
      [ -f "$f" ] || continue
      pid=$(cat "$f") dir=$(dirname "$f")
      if [ -n "$pid" ] && node_running "$pid" "$dir"; then kill -KILL "$pid" 2>/dev/null; fi
    done
  fi
  for j in $(jobs -p); do
    [ "$j" = "$cmd_pid" ] || kill -KILL "$j" 2>/dev/null
  done
  # The nodes are not our children (their start scripts detached them): poll until they are gone.
  deadline=$((SECONDS + 10))
  if [ -n "$work" ] && [ -d "$work" ]; then
    for f in "$work"/node*/pid; do
      [ -f "$f" ] || continue
      pid=$(cat "$f") dir=$(dirname "$f")
      while [ -n "$pid" ] && node_running "$pid" "$dir" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
    done
  fi
  if [ -n "$cmd_pid" ]; then
    while kill -0 "$cmd_pid" 2>/dev/null && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.1; done
    kill -KILL "$cmd_pid" 2>/dev/null
  fi
  wait 2>/dev/null
  [ -n "$fetch_tmp" ] && rm -rf "$fetch_tmp" "$fetch_tmp.log"
  [ -n "$work" ] && rm -rf "$work"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# --- jars --------------------------------------------------------------------------------------
fetch_libs() {
  [ -f "$LIBS/.complete" ] && return 0
  local root
  root=$(dirname "$LIBS")
  mkdir -p "$root"
  echo "kafka.sh: fetching Apache Kafka $KAFKA_VERSION from Maven Central into $LIBS (once)" >&2
  fetch_tmp=$(mktemp -d "$root/libs.tmp.XXXXXX")
  # Maven's output (Debian's 3.8 prints colour resets even with -q -B) only if it fails.
  if ! mvn -q -B -f "$pom" dependency:copy-dependencies -DoutputDirectory="$fetch_tmp" \
    >"$fetch_tmp.log" 2>&1; then
    cat "$fetch_tmp.log" >&2
    rm -f "$fetch_tmp.log"
    die "mvn could not fetch Kafka's jars (see above)"
  fi
  rm -f "$fetch_tmp.log"
  ls "$fetch_tmp"/kafka_2.13-*.jar >/dev/null 2>&1 || die "mvn put no kafka_2.13 jar into $fetch_tmp"
  touch "$fetch_tmp/.complete"
  # An earlier interrupted fetch can only have left temp folders; an incomplete $LIBS (no marker)
  # is replaced. `mv -T` fails rather than nesting if another run won the race.
  [ -d "$LIBS" ] && [ ! -f "$LIBS/.complete" ] && rm -rf "$LIBS"
  if ! mv -T "$fetch_tmp" "$LIBS" 2>/dev/null; then
    [ -f "$LIBS/.complete" ] || die "could not move $fetch_tmp to $LIBS"
    rm -rf "$fetch_tmp"
  fi
  fetch_tmp=""
  echo "kafka.sh: $(find "$LIBS" -name '*.jar' | wc -l) jars in $LIBS" >&2
}

fetch_libs
if [ "$install_only" = 1 ]; then
  exit 0
fi

t0=$(date +%s.%N)
elapsed() { python3 -c "import sys; print('%.1f' % (float(sys.argv[2]) - float(sys.argv[1])))" "$t0" "$(date +%s.%N)"; }

work=$(mktemp -d -t conveyor-kafka.XXXXXX)
echo "kafka.sh: starting $nodes node(s) of Apache Kafka $KAFKA_VERSION in $work" >&2

# --- ports: all of them first ------------------------------------------------------------------
per_node=2                      # PLAINTEXT, CONTROLLER
[ "$security" = 1 ] && per_node=4  # + SASL_SSL, SSL
port_line=$(python3 - "$((nodes * per_node))" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)
read -r -a ports <<<"$port_line"
[ "${#ports[@]}" -eq $((nodes * per_node)) ] || die "could not pick free ports (got '$port_line')"
# ports[(i-1)*per_node + k]: k=0 PLAINTEXT, 1 CONTROLLER, 2 SASL_SSL, 3 SSL
port_of() { echo "${ports[$(( ($1 - 1) * per_node + $2 ))]}"; }

voters=""
brokers=""
sasl_ssl=""
ssl=""
for i in $(seq 1 "$nodes"); do
  voters+="${voters:+,}$i@127.0.0.1:$(port_of "$i" 1)"
  brokers+="${brokers:+,}127.0.0.1:$(port_of "$i" 0)"
  if [ "$security" = 1 ]; then
    sasl_ssl+="${sasl_ssl:+,}127.0.0.1:$(port_of "$i" 2)"
    ssl+="${ssl:+,}127.0.0.1:$(port_of "$i" 3)"
  fi
done

# --- TLS material (--security) -----------------------------------------------------------------
tls="$work/tls"
sasl_user=conveyor
sasl_password=""
make_tls() {
  mkdir -p "$tls"
  (
    cd "$tls"
    cat >req.cnf <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = conveyor test CA
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EOF
    # key FILE: RSA 2048, PKCS#8 ("BEGIN PRIVATE KEY"), unencrypted -- what Kafka's PEM support
    # and librdkafka both read.
    key() { openssl genpkey -quiet -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1" 2>/dev/null ||
              openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1" 2>/dev/null; }
    # ca NAME CN: self-signed CA NAME.pem with key NAME.key
    ca() {
      key "$1.key"
      openssl req -x509 -new -key "$1.key" -config req.cnf -extensions ca -subj "/CN=$2" \
        -days 30 -sha256 -out "$1.pem"
    }
    # leaf NAME CN EXT CA: NAME.pem + NAME.key signed by CA.pem
    leaf() {
      key "$1.key"
      openssl req -new -key "$1.key" -config req.cnf -subj "/CN=$2" -out "$1.csr"
      openssl x509 -req -in "$1.csr" -CA "$4.pem" -CAkey "$4.key" -set_serial "0x$(openssl rand -hex 8)" \
        -days 30 -sha256 -extfile req.cnf -extensions "$3" -out "$1.pem" 2>/dev/null
      rm -f "$1.csr"
    }
    ca ca "conveyor test CA"
    ca other-ca "unrelated test CA"
    leaf broker localhost server ca
    leaf client conveyor client ca
    leaf other-client conveyor client other-ca
    # Kafka's file-based PEM key store: the private key and the certificate chain in one file.
    cat broker.key broker.pem ca.pem >broker-keystore.pem
    rm -f broker.key broker.pem req.cnf
    chmod 600 ./*.key broker-keystore.pem
  ) || die "openssl could not make the test certificates"
  sasl_password=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
}
[ "$security" = 1 ] && make_tls

# --- node folders ------------------------------------------------------------------------------
heap=${KAFKA_HEAP:--Xms128m -Xmx512m}
read -r -a heap_args <<<"$heap"
# C1 only: a 3-node start takes about half as long on 2 cores (C2 compiles compete with the
# brokers); KAFKA_JVM_OPTS= (set, empty) gives the full JIT, e.g. for throughput measurements.
jvm_opts=${KAFKA_JVM_OPTS--XX:TieredStopAtLevel=1}
read -r -a jvm_args <<<"$jvm_opts"
java_cmd=("$JAVA" "${heap_args[@]}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 "${jvm_args[@]}"
  -Djava.awt.headless=true
  -Dorg.slf4j.simpleLogger.defaultLogLevel=info -Dorg.slf4j.simpleLogger.showDateTime=true
  "-Dorg.slf4j.simpleLogger.dateTimeFormat=yyyy-MM-dd'T'HH:mm:ss.SSS"
  -cp "$LIBS/*" kafka.Kafka)

write_props() { # write_props I DIR
  local i=$1 dir=$2 listeners advertised protocols
  listeners="PLAINTEXT://127.0.0.1:$(port_of "$i" 0),CONTROLLER://127.0.0.1:$(port_of "$i" 1)"
  advertised="PLAINTEXT://127.0.0.1:$(port_of "$i" 0)"
  protocols="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
  if [ "$security" = 1 ]; then
    listeners+=",SASL_SSL://127.0.0.1:$(port_of "$i" 2),SSL://127.0.0.1:$(port_of "$i" 3)"
    advertised+=",SASL_SSL://127.0.0.1:$(port_of "$i" 2),SSL://127.0.0.1:$(port_of "$i" 3)"
    protocols+=",SASL_SSL:SASL_SSL,SSL:SSL"
  fi
  {
    cat <<EOF
# Written by scripts/kafka.sh: node $i of $nodes, each a combined broker+controller (KRaft).
process.roles=broker,controller
node.id=$i
# Static quorum (no dynamic voter changes needed for tests).
controller.quorum.voters=$voters
listeners=$listeners
advertised.listeners=$advertised
controller.listener.names=CONTROLLER
listener.security.protocol.map=$protocols
# Brokers and controllers talk PLAINTEXT among themselves, also with --security.
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data
# One partition per auto-sized topic (the default, stated).
num.partitions=1
# Tests create their topics explicitly (default: true).
auto.create.topics.enable=false
# A group's first rebalance starts at once instead of after 3 s.
group.initial.rebalance.delay.ms=0
# Fewer partitions for the internal topics (defaults 50), so the group and transaction
# coordinators come up quickly.
offsets.topic.num.partitions=8
transaction.state.log.num.partitions=4
EOF
    if [ "$nodes" = 1 ]; then
      cat <<'EOF'
# One node: internal topics with replication factor 1 (defaults 3, min ISR 2).
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
EOF
    else
      cat <<'EOF'
# Three nodes: new topics replicated to all three, acks=all needs two in sync.
default.replication.factor=3
min.insync.replicas=2
offsets.topic.replication.factor=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
# Fault tests: a killed broker is fenced after 4 s (default 9 s; heartbeats every 0.5 s instead
# of 2 s), a stalled follower leaves the ISR after 5 s (default 30 s), and no out-of-sync replica
# ever becomes leader (the default, stated).
broker.session.timeout.ms=4000
broker.heartbeat.interval.ms=500
replica.lag.time.max.ms=5000
unclean.leader.election.enable=false
EOF
    fi
    if [ "$security" = 1 ]; then
      cat <<EOF
# --security: TLS with PEM files (Kafka's file-based PEM key store: key + chain in one file; the
# key is unencrypted PKCS#8, so no ssl.key.password). Used by the SASL_SSL and SSL listeners.
ssl.keystore.type=PEM
ssl.keystore.location=$tls/broker-keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$tls/ca.pem
# SSL listener: mutual TLS, a client certificate signed by ca.pem is required.
listener.name.ssl.ssl.client.auth=required
# SASL_SSL listener: SCRAM-SHA-512 (user $sasl_user, added at format time), no client certificate.
listener.name.sasl_ssl.ssl.client.auth=none
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
EOF
    fi
    if [ -n "${KAFKA_EXTRA_PROPS:-}" ]; then
      echo "# KAFKA_EXTRA_PROPS"
      printf '%s\n' "$KAFKA_EXTRA_PROPS"
    fi
  } >"$dir/server.properties"
}

write_start() { # write_start I DIR
  local i=$1 dir=$2
  {
    cat <<EOF
#!/usr/bin/env bash
# (Re)starts node $i of the scripts/kafka.sh cluster in $work in the background, detached
# (setsid, stdin /dev/null, output appended to broker.log), and writes the JVM's pid to pid.
# Never formats storage. Fails if the node is still running (after waiting up to 5 s for a
# just-killed one to go). With --wait [TIMEOUT_S] (default 90) it then waits until the cluster
# lists all $nodes brokers through this node.
set -euo pipefail
dir=$(printf '%q' "$dir")
nodes=$nodes
java_cmd=($(printf '%q ' "${java_cmd[@]}"))
ready=($(printf '%q ' "$JAVA" -Dorg.slf4j.simpleLogger.defaultLogLevel=warn -cp "$LIBS/*" "$ready_java" "127.0.0.1:$(port_of "$i" 0)"))
EOF
    declare -f node_running
    cat <<'EOF'
wait_s=""
case "${1:-}" in
  "") ;;
  --wait) wait_s=${2:-90} ;;
  *) echo "usage: $0 [--wait [TIMEOUT_S]]" >&2; exit 2 ;;
esac
old=$(cat "$dir/pid" 2>/dev/null || true)
if [ -n "$old" ]; then
  for _ in $(seq 1 50); do node_running "$old" "$dir" || break; sleep 0.1; done
  if node_running "$old" "$dir"; then echo "$dir/start: node already running (pid $old)" >&2; exit 1; fi
fi
rm -f "$dir/pid.new"
echo "=== $(date -u +%Y-%m-%dT%H:%M:%SZ) start ===" >>"$dir/broker.log"
# The JVM writes its own pid: `exec` keeps the pid, whether or not setsid forks.
# shellcheck disable=SC2016  # $$ and $@ are for the inner bash
setsid bash -c 'echo $$ >"$0/pid.new"; exec "$@"' "$dir" "${java_cmd[@]}" "$dir/server.properties" \
  </dev/null >>"$dir/broker.log" 2>&1 &
for _ in $(seq 1 100); do [ -s "$dir/pid.new" ] && break; sleep 0.05; done
[ -s "$dir/pid.new" ] || { echo "$dir/start: the node did not start" >&2; exit 1; }
mv -f "$dir/pid.new" "$dir/pid"
if [ -n "$wait_s" ]; then
  "${ready[@]}" "$nodes" "$wait_s" >/dev/null
fi
EOF
  } >"$dir/start"
  cat >"$dir/stop" <<EOF
#!/usr/bin/env bash
# SIGKILLs node $i of the scripts/kafka.sh cluster in $work and waits (10 s at most) until it is
# gone. Fine if it is not running.
set -euo pipefail
dir=$(printf '%q' "$dir")
EOF
  declare -f node_running >>"$dir/stop"
  cat >>"$dir/stop" <<'EOF'
pid=$(cat "$dir/pid" 2>/dev/null || true)
[ -n "$pid" ] && node_running "$pid" "$dir" || exit 0
kill -KILL "$pid" 2>/dev/null || true
for _ in $(seq 1 100); do node_running "$pid" "$dir" || exit 0; sleep 0.1; done
echo "$dir/stop: pid $pid still running" >&2
exit 1
EOF
  chmod +x "$dir/start" "$dir/stop"
}

for i in $(seq 1 "$nodes"); do
  dir="$work/node$i"
  mkdir -p "$dir/data"
  echo "$i" >"$dir/id"
  port_of "$i" 0 >"$dir/port"
  : >"$dir/broker.log"
  write_props "$i" "$dir"
  write_start "$i" "$dir"
done

show_logs() {
  local i
  for i in $(seq 1 "$nodes"); do
    echo "kafka.sh: ---- last 80 lines of $work/node$i/broker.log ----" >&2
    tail -n 80 "$work/node$i/broker.log" >&2 || true
  done
}

# --- format storage: one cluster id for all nodes ----------------------------------------------
# A Kafka Uuid: 16 random bytes, URL-safe base64 without padding, not starting with '-' (what
# `StorageTool random-uuid` prints, without starting a JVM).
cluster_id=$(python3 -c '
import base64, os
while True:
    s = base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
    if not s.startswith("-"):
        print(s)
        break')
format_args=()
if [ "$security" = 1 ]; then
  format_args=(--add-scram "SCRAM-SHA-512=[name=$sasl_user,password=$sasl_password]")
fi
format_pids=()
for i in $(seq 1 "$nodes"); do
  dir="$work/node$i"
  "$JAVA" -Xshare:auto -XX:TieredStopAtLevel=1 -Dorg.slf4j.simpleLogger.defaultLogLevel=warn \
    -cp "$LIBS/*" kafka.tools.StorageTool format -t "$cluster_id" -c "$dir/server.properties" \
    "${format_args[@]}" >>"$dir/broker.log" 2>&1 &
  format_pids+=("$!")
done
for i in $(seq 1 "$nodes"); do
  if ! wait "${format_pids[$((i - 1))]}"; then
    show_logs
    die "formatting the storage of node $i failed (log above)"
  fi
done

# --- start, wait until ready -------------------------------------------------------------------
for i in $(seq 1 "$nodes"); do
  "$work/node$i/start" || { show_logs; die "could not start node $i"; }
done

"$JAVA" -Dorg.slf4j.simpleLogger.defaultLogLevel=warn -cp "$LIBS/*" "$ready_java" \
  "$brokers" "$nodes" "$READY_TIMEOUT_S" >"$work/ready.out" 2>&1 &
ready_pid=$!
while kill -0 "$ready_pid" 2>/dev/null; do
  for i in $(seq 1 "$nodes"); do
    if ! node_running "$(cat "$work/node$i/pid")" "$work/node$i"; then
      kill -KILL "$ready_pid" 2>/dev/null || true
      show_logs
      die "node $i exited during start (log above)"
    fi
  done
  sleep 0.2
done
if ! wait "$ready_pid"; then
  show_logs
  cat "$work/ready.out" >&2
  die "the cluster was not ready after $READY_TIMEOUT_S s (logs above)"
fi

version=$(sed -n '/Kafka version: /{s/.*Kafka version: \([^ ]*\).*/\1/p;q}' "$work/node1/broker.log")
[ -n "$version" ] || version="unknown"
if [ "$version" != "$KAFKA_VERSION" ]; then
  echo "kafka.sh: warning: the broker says it is Kafka $version, the pom pins $KAFKA_VERSION" >&2
fi

# --- exports -----------------------------------------------------------------------------------
export CONVEYOR_TEST_BROKERS="$brokers"
export CONVEYOR_TEST_KAFKA_NODES="$work"
export CONVEYOR_TEST_KAFKA_NODE_COUNT="$nodes"
export CONVEYOR_TEST_KAFKA_LIBS="$LIBS"
export CONVEYOR_TEST_KAFKA_VERSION="$version"
exported=(CONVEYOR_TEST_BROKERS CONVEYOR_TEST_KAFKA_NODES CONVEYOR_TEST_KAFKA_NODE_COUNT
  CONVEYOR_TEST_KAFKA_LIBS CONVEYOR_TEST_KAFKA_VERSION)
if [ "$security" = 1 ]; then
  export CONVEYOR_TEST_KAFKA_SASL_SSL="$sasl_ssl"
  export CONVEYOR_TEST_KAFKA_SSL="$ssl"
  export CONVEYOR_TEST_KAFKA_CA="$tls/ca.pem"
  export CONVEYOR_TEST_KAFKA_OTHER_CA="$tls/other-ca.pem"
  export CONVEYOR_TEST_KAFKA_CLIENT_CERT="$tls/client.pem"
  export CONVEYOR_TEST_KAFKA_CLIENT_KEY="$tls/client.key"
  export CONVEYOR_TEST_KAFKA_OTHER_CLIENT_CERT="$tls/other-client.pem"
  export CONVEYOR_TEST_KAFKA_OTHER_CLIENT_KEY="$tls/other-client.key"
  export CONVEYOR_TEST_KAFKA_SASL_USER="$sasl_user"
  export CONVEYOR_TEST_KAFKA_SASL_PASSWORD="$sasl_password"
  exported+=(CONVEYOR_TEST_KAFKA_SASL_SSL CONVEYOR_TEST_KAFKA_SSL CONVEYOR_TEST_KAFKA_CA
    CONVEYOR_TEST_KAFKA_OTHER_CA CONVEYOR_TEST_KAFKA_CLIENT_CERT CONVEYOR_TEST_KAFKA_CLIENT_KEY
    CONVEYOR_TEST_KAFKA_OTHER_CLIENT_CERT CONVEYOR_TEST_KAFKA_OTHER_CLIENT_KEY
    CONVEYOR_TEST_KAFKA_SASL_USER CONVEYOR_TEST_KAFKA_SASL_PASSWORD)
fi

echo "kafka.sh: Apache Kafka $version (KRaft), $nodes node(s) on $brokers ($(sed -n 1p "$work/ready.out"); started in $(elapsed) s)" >&2
for v in "${exported[@]}"; do
  case "${!v}" in
    *[!A-Za-z0-9_./:,@+=-]*) printf 'export %s=%q\n' "$v" "${!v}" >&2 ;;  # quote when needed
    *) printf 'export %s=%s\n' "$v" "${!v}" >&2 ;;
  esac
done

# --- COMMAND, or wait ----------------------------------------------------------------------------
# COMMAND runs in the background and the script `wait`s for it, so that a signal sent only to
# this script (CI timeouts, kill -INT) is handled at once. Bash would leave SIGINT/SIGQUIT
# ignored in a background command; `env --default-signal` restores them (Ctrl-C still reaches
# COMMAND), and `<&0` keeps its stdin (else bash gives it /dev/null).
if [ $# -eq 0 ]; then
  echo "kafka.sh: running; Ctrl-C stops the cluster and removes $work" >&2
  sleep infinity &
  cmd_pid=$!
  wait "$cmd_pid" || true
  exit 0
fi
if env --default-signal=INT,QUIT true 2>/dev/null; then
  env --default-signal=INT,QUIT "$@" <&0 &
else
  "$@" <&0 &
fi
cmd_pid=$!
set +e
wait "$cmd_pid"
rc=$?
set -e
cmd_pid=""
exit "$rc"
