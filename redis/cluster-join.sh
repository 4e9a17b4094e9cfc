#!/bin/sh
# Joins Redis nodes into a cluster of three masters, each with a replica, or introduces them
# to each other again at their current addresses: a node keeps its cluster in nodes.conf, but
# after `docker compose down` and `up` (or a move) it may come back on a new address, and the
# others would go on calling the old one. Ends 0 once every node says cluster_state:ok.
# The one join logic for compose and make run (REDIS_TOPOLOGY=cluster).
#   cluster-join.sh HOST:PORT ...
#   REDISCLI_AUTH or REDIS_PASSWORD_FILE (default /run/secrets/redis_password): the password
#   CLUSTER_JOIN_TIMEOUT: seconds to wait for the nodes, then for the cluster (default 120)
set -eu
if [ -z "${REDISCLI_AUTH:-}" ]; then
  REDISCLI_AUTH=$(cat "${REDIS_PASSWORD_FILE:-/run/secrets/redis_password}")
fi
export REDISCLI_AUTH  # redis-cli reads it: the password stays off command lines

nodes=""
for node in "$@"; do
  host=${node%:*}
  ip=$(getent hosts "$host" | awk '{ print $1; exit }')
  if [ -z "$ip" ]; then
    echo "cluster-join: cannot resolve $host" >&2
    exit 1
  fi
  nodes="$nodes $ip:${node##*:}"
done
# shellcheck disable=SC2086 # split on purpose: one address per word
set -- $nodes
first=$1

cli() { address=$1; shift; redis-cli -h "${address%:*}" -p "${address##*:}" "$@"; }
field() { cli "$1" cluster info 2>/dev/null | tr -d '\r' | sed -n "s/^$2://p"; }
every_node_answers() { for n in $nodes; do cli "$n" ping 2>/dev/null | grep -q PONG || return 1; done; }
every_node_ok() { for n in $nodes; do [ "$(field "$n" cluster_state)" = ok ] || return 1; done; }
none_joined() { for n in $nodes; do [ "$(field "$n" cluster_known_nodes)" = 1 ] || return 1; done; }

deadline=$(( $(date +%s) + ${CLUSTER_JOIN_TIMEOUT:-120} ))
wait_until() {  # wait_until "what" command...
  what=$1
  shift
  until "$@"; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "cluster-join: gave up waiting for $what" >&2
      exit 1
    fi
    sleep 0.5
  done
}

wait_until "every node to answer" every_node_answers
if every_node_ok; then
  echo "cluster-join: the cluster is ok"
  exit 0
fi
if none_joined; then
  echo "cluster-join: creating the cluster of$nodes"
  # shellcheck disable=SC2086 # split on purpose: one address per word
  redis-cli --cluster create $nodes --cluster-replicas 1 --cluster-yes
else
  echo "cluster-join: introducing the nodes again at$nodes"
  for n in $nodes; do
    cli "$first" cluster meet "${n%:*}" "${n##*:}" > /dev/null
  done
fi
wait_until "cluster_state:ok on every node" every_node_ok
echo "cluster-join: the cluster is ok"
