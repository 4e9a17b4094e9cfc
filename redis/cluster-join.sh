#!/bin/sh
# Joins Redis nodes into a cluster of three masters, each with a replica, or introduces them
# to each other again at their current addresses: a node keeps its cluster in nodes.conf, but
# after `docker compose down` and `up` (or a move) it may come back on a new address, and the
# others would go on calling the old one. Ends 0 once every node says cluster_state:ok.
# The one join logic for compose and make run (REDIS_TOPOLOGY=cluster).
#   cluster-join.sh HOST:PORT ...
#   REDISCLI_AUTH or REDIS_PASSWORD_FILE (default /run/secrets/redis_password): the password
#   CLUSTER_JOIN_TIMEOUT: seconds to wait for the nodes, then for the cluster (default 120)
#   CLUSTER_JOIN_WATCH: if set, do not end: every that many seconds, check again and
#     introduce the nodes again if they lost each other (compose: after a restart of the
#     engine or the host, the nodes come back on new addresses and this job is still running)
#   CLUSTER_JOIN_OK_FILE: a file that exists while the cluster is ok (compose's healthcheck)
set -eu
if [ -z "${REDISCLI_AUTH:-}" ]; then
  REDISCLI_AUTH=$(cat "${REDIS_PASSWORD_FILE:-/run/secrets/redis_password}")
fi
export REDISCLI_AUTH  # redis-cli reads it: the password stays off command lines

names="$*"
resolve() {  # nodes=" IP:PORT ..." from the names, at their current addresses
  nodes=""
  for node in $names; do
    host=${node%:*}
    ip=$(getent hosts "$host" | awk '{ print $1; exit }')
    if [ -z "$ip" ]; then
      echo "cluster-join: cannot resolve $host" >&2
      return 1
    fi
    nodes="$nodes $ip:${node##*:}"
  done
}

cli() { address=$1; shift; redis-cli -h "${address%:*}" -p "${address##*:}" "$@"; }
field() { cli "$1" cluster info 2>/dev/null | tr -d '\r' | sed -n "s/^$2://p"; }
every_node_answers() { for n in $nodes; do cli "$n" ping 2>/dev/null | grep -q PONG || return 1; done; }
every_node_ok() { for n in $nodes; do [ "$(field "$n" cluster_state)" = ok ] || return 1; done; }
none_joined() { for n in $nodes; do [ "$(field "$n" cluster_known_nodes)" = 1 ] || return 1; done; }

wait_until() {  # wait_until "what" command...
  what=$1
  shift
  deadline=$(( $(date +%s) + ${CLUSTER_JOIN_TIMEOUT:-120} ))
  until "$@"; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "cluster-join: gave up waiting for $what" >&2
      exit 1
    fi
    sleep 0.5
  done
}
resolved_and_answering() { resolve 2>/dev/null && every_node_answers; }

join() {  # create the cluster, or introduce its nodes again; then wait for it to be ok
  wait_until "every node to answer" resolved_and_answering
  if every_node_ok; then
    return 0
  fi
  if none_joined; then
    echo "cluster-join: creating the cluster of$nodes"
    # shellcheck disable=SC2086 # split on purpose: one address per word
    redis-cli --cluster create $nodes --cluster-replicas 1 --cluster-yes
  else
    echo "cluster-join: introducing the nodes again at$nodes"
    first=${nodes# }
    first=${first%% *}
    for n in $nodes; do
      cli "$first" cluster meet "${n%:*}" "${n##*:}" > /dev/null
    done
  fi
  wait_until "cluster_state:ok on every node" every_node_ok
}

ok_file=${CLUSTER_JOIN_OK_FILE:-}
join
echo "cluster-join: the cluster is ok"
[ -z "$ok_file" ] || touch "$ok_file"
[ -n "${CLUSTER_JOIN_WATCH:-}" ] || exit 0
while sleep "$CLUSTER_JOIN_WATCH"; do
  if resolve 2>/dev/null && every_node_ok; then
    continue
  fi
  [ -z "$ok_file" ] || rm -f "$ok_file"
  echo "cluster-join: the cluster is not ok on every node; joining again"
  join
  echo "cluster-join: the cluster is ok"
  [ -z "$ok_file" ] || touch "$ok_file"
done
