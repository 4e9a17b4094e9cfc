#!/bin/sh
# nginx in compose: the shared template filled in from the container's environment, with the
# app's replicas by address in the upstream group, then kept in step with them.
#
# Why addresses and a reload: only an upstream group keeps connections to the app open
# between requests (keepalive), and nginx 1.22 (Debian 12's) looks a group's server names up
# only when it loads its configuration. So every CHECK_SECONDS this asks Docker's DNS which
# replicas answer to APP_HOST (compose: up --scale app=N, a recreated container); when the
# set changes, it fills the template in again and reloads nginx, which finishes the requests
# in flight on the old workers. While no replica answers, the last known set is kept.
#
#   start-in-container.sh TEMPLATE CONFIG   (environment: APP_HOST, APP_PORT,
#                                            APP_REPLICA_CHECK_SECONDS, the template's names)
set -eu
template=$1
config=$2
check_seconds=${APP_REPLICA_CHECK_SECONDS:-2}

# The template's own names, for envsubst; nginx's $variables are left as they are.
# shellcheck disable=SC2016
names='${EDGE_LISTEN} ${APP_UPSTREAM_SERVERS} ${TLS_CERT} ${TLS_KEY} ${NGINX_RUN_DIR}
${NGINX_USER} ${MAX_BODY_BYTES} ${RATE_LIMIT_RPS} ${RATE_LIMIT_BURST} ${EDGE_STATUS_LISTEN}
${EDGE_METRICS_LOG} ${TRACE_CONTEXT_TRUSTED} ${EDGE_CACHE_DIR} ${EDGE_CACHE_MAX_SIZE}'

replicas() {
  getent ahostsv4 "$APP_HOST" | awk '{ print $1 }' | sort -u | tr '\n' ' '
}

# Every address, then all again as backups (see the upstream block in the template; the
# same lines as native/configs.py upstream_servers). No address yet: one that is never tried.
server_lines() {
  if [ -z "$1" ]; then
    echo "server 127.0.0.1:9 down;"
    return
  fi
  max_conns=${EDGE_APP_MAX_CONNS:-32}
  backup=$((max_conns / 2))
  primary=$((max_conns - backup))
  for address in $1; do printf 'server %s:%s max_conns=%s max_fails=0; ' "$address" "$APP_PORT" "$primary"; done
  for address in $1; do printf 'server %s:%s max_conns=%s max_fails=0 backup; ' "$address" "$APP_PORT" "$backup"; done
}

render() {
  APP_UPSTREAM_SERVERS=$(server_lines "$1") envsubst "$names" < "$template" > "$config.new"
  mv "$config.new" "$config"
}

follow_replicas() {
  known=$1
  while sleep "$check_seconds"; do
    now=$(replicas)
    if [ -n "$now" ] && [ "$now" != "$known" ]; then
      render "$now"
      echo "start-in-container: app replicas now $now; reloading nginx" >&2
      kill -HUP "$nginx_pid"
      known=$now
    fi
  done
}

current=$(replicas)
render "$current"
# This shell's process becomes nginx's master (exec below), so the follower signals it by
# this pid; it stops with the container.
nginx_pid=$$
follow_replicas "$current" &
exec nginx -c "$config" -e stderr
