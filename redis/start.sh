#!/bin/sh
# Starts redis-server on the shared redis.conf, its password read from a secret file and put
# in a config file of its own, never on a command line. docker compose runs it in every Redis
# container (the native stack writes the same lines itself: native/redis_files.py).
#   REDIS_PASSWORD_FILE  the password (default /run/secrets/redis_password)
#   REDIS_CONF           the shared config (default /usr/local/etc/redis/redis.conf)
#   REDIS_CLUSTER=yes    a Redis Cluster node, announcing its host name
# Further arguments go to redis-server (later ones win: --port, --dir, --bind).
set -eu
password_file=${REDIS_PASSWORD_FILE:-/run/secrets/redis_password}
password=$(cat "$password_file")
if [ -z "$password" ]; then
  echo "start.sh: no password in $password_file: set REDIS_PASSWORD (see .env.example)" >&2
  exit 1
fi
case $password in
  *'"'* | *\\* | *"
"*)
    echo 'start.sh: the Redis password must not contain ", \ or a line break' >&2
    exit 1 ;;
esac
own_conf=${TMPDIR:-/tmp}/redis-own.conf
umask 077
{
  printf 'requirepass "%s"\nmasterauth "%s"\n' "$password" "$password"
  if [ "${REDIS_CLUSTER:-}" = yes ]; then
    printf 'cluster-enabled yes\ncluster-node-timeout 5000\n'
    # Clients are sent (MOVED) to names that resolve on the compose network.
    printf 'cluster-announce-hostname %s\ncluster-preferred-endpoint-type hostname\n' "$(hostname)"
  fi
} > "$own_conf"
exec redis-server "${REDIS_CONF:-/usr/local/etc/redis/redis.conf}" --bind 0.0.0.0 --dir /data \
  --include "$own_conf" "$@"
