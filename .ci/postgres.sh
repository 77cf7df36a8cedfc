# Sourced by .ci/run: a throwaway PostgreSQL server on loopback for the multi-machine storage tests.
#
# Installs Debian's PostgreSQL when it is missing (apt-get, as root), starts a private cluster in a
# temporary folder on a free port (trust authentication, 127.0.0.1 only; the system's own cluster
# is not touched), creates a database, exports UNITUNE_TEST_POSTGRES_URL, and stops and removes
# the cluster when the calling shell exits. Any failure only prints why: the tests that need the
# server then skip and say so.

unitune_start_postgres() {
    if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            echo ".ci: installing PostgreSQL (apt-get)"
            apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >/dev/null \
                || return 1
        else
            echo ".ci: PostgreSQL is not installed and cannot be installed here"; return 1
        fi
    fi
    local bin port dir as
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    dir=$(mktemp -d /tmp/unitune-pg.XXXXXX)
    as=()
    if [ "$(id -u)" = 0 ]; then  # the server refuses to run as root
        chown postgres "$dir"
        as=(runuser -u postgres --)
    fi
    "${as[@]}" "$bin/initdb" -D "$dir/data" -A trust -U postgres >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log"; return 1; }
    "${as[@]}" "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off" start >/dev/null || { cat "$dir/server.log"; return 1; }
    UNITUNE_PG_STOP="${as[*]} $bin/pg_ctl -D $dir/data -m fast -w stop >/dev/null; rm -rf $dir"
    trap 'eval "$UNITUNE_PG_STOP"' EXIT
    "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres unitune_test || return 1
    export UNITUNE_TEST_POSTGRES_URL="postgresql://postgres@127.0.0.1:$port/unitune_test"
    echo ".ci: PostgreSQL on 127.0.0.1:$port (UNITUNE_TEST_POSTGRES_URL)"
}
